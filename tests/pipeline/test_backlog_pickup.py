"""A deployment queue resumed while the Redis transport's blocking pop waits is read
within the pickup time, not when that pop's own timeout (1 s) runs out."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from pipeline.backlog import pickup

pytestmark = pytest.mark.timeout(30)

OTHER = Queue("pickup.other", Exchange("pickup.other"), routing_key="pickup.other")
LANE = Queue("pickup.lane", Exchange("pickup.lane"), routing_key="pickup.lane")


def _resumed_read_seconds(url: str, seconds: float | None) -> float:
    """Seconds from resuming LANE (and publishing to it) to its message being read,
    while a pop sent with LANE paused is waiting."""
    got: list[Any] = []
    with Connection(url) as conn:
        consumer = Consumer(conn.channel(), [OTHER], callbacks=[lambda body, msg: got.append(body)])
        consumer.consume()
        pickup(consumer, seconds)
        # Sends a BRPOP for OTHER alone and leaves it waiting.
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.01)
        consumer.add_queue(LANE)
        consumer.consume()
        producer = Producer(conn.channel())
        producer.publish(
            {"n": 1}, exchange=LANE.exchange, routing_key=LANE.routing_key, declare=[LANE]
        )
        started = time.monotonic()
        while not got:
            try:
                conn.drain_events(timeout=3.0)
            except TimeoutError:
                break
        took = time.monotonic() - started
        assert got == [{"n": 1}]
        consumer.cancel()
    return took


def test_a_short_pickup_reads_a_resumed_queue_at_once(redis_server) -> None:  # type: ignore[no-untyped-def]
    # The transport's own timeout: the waiting pop must run out first.
    assert _resumed_read_seconds(redis_server.url, None) > 0.8
    assert _resumed_read_seconds(redis_server.url, 0.05) < 0.5


def test_pickup_restores_the_transport_timeout(redis_server) -> None:  # type: ignore[no-untyped-def]
    with Connection(redis_server.url) as conn:
        consumer = Consumer(conn.channel(), [OTHER])
        default = conn.transport.brpop_timeout
        pickup(consumer, 0.25)
        assert consumer.channel.brpop_timeout == 0.25
        pickup(consumer, None)
        assert consumer.channel.brpop_timeout == default
