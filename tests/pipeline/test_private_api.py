"""What quotaflow assumes of Celery's and kombu's internals, checked one by one, so an
upgrade that changes one fails here with the assumption named, and not somewhere
downstream as a silent misbehaviour. And: quotaflow's adjustments of kombu and
Celery apply to its own app only; another app in the same process is left as it was.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.amqp import AMQP
from celery.worker import pidbox, strategy
from celery.worker.consumer import Consumer
from celery.worker.consumer.control import Control
from celery.worker.control import Panel
from kombu import Connection, Exchange, Producer, Queue
from kombu import pidbox as kombu_pidbox
from kombu.transport import redis as kombu_redis
from support.cluster import cluster_settings

from pipeline import app
from pipeline.app import configure
from pipeline.broker import PRIORITY_SEP, PRIORITY_STEPS, UNACKED_KEY, held_message, raw_message_id
from pipeline.compat import QuotaflowChannel, QuotaflowQoS, QuotaflowTransport
from tasks import complete


def need(condition: object, what: str) -> None:
    """Fail with the assumption that no longer holds and where quotaflow relies on it."""
    if not condition:
        pytest.fail(f"Celery/kombu changed: {what}", pytrace=False)


@pytest.fixture
def configured(redis_server, redis_client, simulator) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    settings = cluster_settings(redis_server.url, simulator())
    configure(app, settings)
    yield settings


def test_edge_another_app_in_the_process_keeps_stock_kombu_and_celery(configured) -> None:  # type: ignore[no-untyped-def]
    # The guard on restore_unacked, the cached channel client and the hidden inspect
    # answers were patched into kombu's Redis QoS and Channel and Celery's control
    # Panel, process-wide: a user's own Celery app next to quotaflow got them too.
    other = Celery("theirs", broker=configured.redis_url, set_as_current=False)
    with other.connection_for_write() as conn:
        channel = conn.default_channel
        assert type(channel) is kombu_redis.Channel
        assert type(channel.qos) is kombu_redis.QoS
    assert not hasattr(kombu_redis.QoS.restore_unacked, "_quotaflow_guarded")
    assert not hasattr(kombu_redis.Channel._create_client, "_quotaflow_reused")
    for name in ("active", "reserved", "scheduled"):
        assert not getattr(Panel.data[name], "quotaflow_hides", False), name
    # quotaflow's own connections have them.
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert type(channel) is QuotaflowChannel and type(channel.qos) is QuotaflowQoS
        assert channel._create_client() is channel._create_client()


# pipeline/compat.py: subclasses of kombu's Redis transport.


def test_the_redis_transport_has_what_compat_overrides(configured) -> None:  # type: ignore[no-untyped-def]
    need(kombu_redis.Channel.QoS is kombu_redis.QoS, "redis Channel.QoS names the QoS class")
    need(kombu_redis.Transport.Channel is kombu_redis.Channel, "redis Transport.Channel")
    params = inspect.signature(kombu_redis.Channel._create_client).parameters
    need(list(params) == ["self", "asynchronous"], "Channel._create_client(self, asynchronous)")
    need(
        list(inspect.signature(kombu_redis.QoS.restore_unacked).parameters) == ["self", "client"],
        "QoS.restore_unacked(self, client=None)",
    )
    with Connection(configured.redis_url) as conn:
        need(conn.get_transport_cls() is kombu_redis.Transport, "redis:// -> redis Transport")
    with app.connection_for_write() as conn:
        need(isinstance(conn.transport, QuotaflowTransport), "Connection.get_transport_cls used")
        channel = conn.default_channel
        need(channel.pool is not None, "Channel.pool: the sync connection pool")
        need(isinstance(channel.qos._delivered, dict), "QoS._delivered: delivered tags")


# pipeline/app.py `configure`: cached properties of the app's AMQP, reset by popping.


def test_amqp_caches_what_configure_resets() -> None:
    fresh = Celery("probe", set_as_current=False)
    amqp = fresh.amqp
    for name in ("queues", "default_queue", "router", "send_task_message"):
        first = getattr(amqp, name)
        need(name in amqp.__dict__, f"AMQP.{name} is a cached property kept in __dict__")
        amqp.__dict__.pop(name)
        need(getattr(amqp, name) is not first or name == "default_queue", f"AMQP.{name} rebuilt")
    need(
        hasattr(amqp, "_rtable") and hasattr(amqp, "_producer_pool"), "AMQP._rtable/_producer_pool"
    )
    need(hasattr(fresh, "_pool") and hasattr(fresh._local, "__dict__"), "Celery._pool, _local")


# pipeline/publish.py: QuotaflowAMQP.as_task_v2 and the HideArguments step.


def test_as_task_v2_takes_what_quotaflow_amqp_passes() -> None:
    params = inspect.signature(AMQP.as_task_v2).parameters
    names = list(params)
    need(names[:5] == ["self", "task_id", "name", "args", "kwargs"], f"as_task_v2{names[:5]}")
    for kw in ("argsrepr", "kwargsrepr"):
        need(kw in params, f"as_task_v2 takes {kw}")
    need(hasattr(AMQP, "argsrepr_maxsize") or "argsrepr_maxsize" in inspect.getsource(AMQP),
         "AMQP.argsrepr_maxsize")  # fmt: skip


def test_control_handlers_are_a_node_attribute_hide_arguments_can_replace() -> None:
    need(Control.__init__ and "self.box" in inspect.getsource(Control.__init__), "Control.box")
    need("handlers=control.Panel.data" in inspect.getsource(pidbox.Pidbox.__init__),
         "Pidbox.node is built with Panel.data as its handlers")  # fmt: skip
    need("self.handlers[method]" in inspect.getsource(kombu_pidbox.Node),
         "kombu's pidbox Node looks commands up in self.handlers at each message")  # fmt: skip
    for name in ("active", "reserved", "scheduled"):
        need(name in Panel.data and name in Panel.meta, f"control command {name}")


# pipeline/backlog.py: the consumer's strategies and the transport's BRPOP timeout.


def test_consumer_strategies_are_refilled_in_place() -> None:
    source = inspect.getsource(Consumer.update_strategies)
    need("self.strategies[" in source, "Consumer.update_strategies fills self.strategies")
    need("def task_message_handler(message," in inspect.getsource(strategy.default),
         "a task strategy takes the message first")  # fmt: skip


def test_the_brpop_timeout_is_a_channel_attribute(configured) -> None:  # type: ignore[no-untyped-def]
    need(isinstance(kombu_redis.Transport.brpop_timeout, int | float), "Transport.brpop_timeout")
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        need("brpop_timeout" in channel.__dict__, "Channel.brpop_timeout, set per channel")
        need("self.brpop_timeout" in inspect.getsource(kombu_redis.Channel._brpop_start),
             "the BRPOP is sent with the channel's brpop_timeout")  # fmt: skip


# pipeline/messages.py and pipeline/sending.py: the Redis channel's publish internals.


def test_the_redis_channel_has_what_batched_publishing_uses(configured) -> None:  # type: ignore[no-untyped-def]
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in ("_put", "_put_fanout", "_q_for_pri", "_get_message_priority",
                     "_get_publish_topics", "conn_or_acquire", "global_keyprefix"):  # fmt: skip
            need(hasattr(channel, name), f"redis Channel.{name}")
        need(channel._q_for_pri("q", 3) == f"q{PRIORITY_SEP}3", "priority list names")
    need("max_size" in inspect.signature(Producer.batch).parameters
         if hasattr(Producer, "batch") else False, "Producer.batch(max_size=...)")  # fmt: skip
    need(callable(getattr(app.clock, "forward", None)), "app.clock.forward")


# pipeline/broker.py: how the Redis transport keeps delivered, unacked messages.


def test_an_unacked_message_has_the_layout_the_broker_reader_expects(
    configured, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    queue = "quotaflow.layout"
    q = Queue(queue, Exchange(queue), routing_key=queue)
    result = complete.apply_async(
        ({"model": "gpt-4o-mini", "messages": []},), {"custom_id": "x"},
        queue=q, countdown=30,
    )  # fmt: skip
    need(PRIORITY_STEPS == (3, 6, 9), "kombu's default priority steps")
    with app.connection_for_read() as conn:
        channel = conn.channel()
        message = q(channel).get(no_ack=False)
        need(message is not None, "a published task message is in its queue's list")
        raw = redis_client.hgetall(UNACKED_KEY)
        need(len(raw) == 1, "a delivered, unacked message is kept in the 'unacked' hash")
        (entry,) = raw.values()
        decoded = json.loads(entry)
        need(isinstance(decoded, list) and len(decoded) == 3, "[message, exchange, routing_key]")
        need(held_message(entry) == (queue, True), "routing key last, the ETA in the headers")
        need(raw_message_id(entry) == result.id, '"id": "<task id>" is the first such key')
        message.ack()
        channel.close()
