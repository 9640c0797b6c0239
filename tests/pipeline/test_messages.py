"""A submit's messages, built from templates: what Celery would send, run by a real
worker, and found by recovery when the broker loses them."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis
from support.workload import SIM, bodies

from pipeline.app import app as celery_app
from pipeline.broker import message_id, queue_lists, raw_message_id
from pipeline.messages import Batch
from pipeline.sending import H_RECORDED, pending_request, send
from tasks import complete

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = "quotaflow.sim"
#: Per-message values: every other byte must be what Celery's path writes.
_PER_MESSAGE_HEADERS = ("id", "root_id")
_PER_MESSAGE_PROPERTIES = ("correlation_id", "delivery_tag")


def _events(pubsub: redis.client.PubSub, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(out) < n and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "pmessage":
            out.append({"channel": msg["channel"], **json.loads(msg["data"])})
    return out


def _normalised(message: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in message["headers"].items() if k not in _PER_MESSAGE_HEADERS}
    props = {k: v for k, v in message["properties"].items() if k not in _PER_MESSAGE_PROPERTIES}
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "headers": headers, "properties": props, "body": body}


def _normalised_event(event: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(base64.b64decode(event["body"]))
    for per_message in ("uuid", "root_id", "clock", "timestamp"):
        body.pop(per_message)
    props = {k: v for k, v in event["properties"].items() if k != "delivery_tag"}
    return {**event, "properties": props, "body": body}


@pytest.mark.parametrize("show_arguments", [False, True])
def test_a_template_message_is_what_celery_sends(
    simulator, cluster, redis_client: redis.Redis, show_arguments: bool
) -> None:  # type: ignore[no-untyped-def]
    cluster(simulator(**SIM), show_task_arguments=show_arguments)  # no workers
    body = bodies(1, seed=7)[0]
    body["messages"][0]["content"] += ' é ✓ {braces} "quotes" \\ %s'
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("*celeryev*")
    pubsub.get_message(timeout=1)

    # The same request, once through Celery's path and once from a template.
    celery_id, template_id = "celery-path-id", "template-path-id"
    pending = pending_request("/v1/chat/completions", body, None, "team-a", celery_id)
    send("J", "r1", pending, celery_result=False)
    with celery_app.connection_for_write() as conn:
        channel = conn.channel()
        batch = Batch(
            celery_app, complete, channel,
            options={"ignore_result": True, "headers": {H_RECORDED: True}},
        )  # fmt: skip
        kwargs = {"custom_id": "r1", "job_id": "J", "deployment": None, "tenant": "team-a"}
        assert batch.send([(template_id, (body,), kwargs)]) == 1
        channel.close()

    raw_template, raw_celery = redis_client.lrange(QUEUE, 0, -1)  # newest first
    by_celery, by_template = json.loads(raw_celery), json.loads(raw_template)
    assert message_id(by_celery) == celery_id and message_id(by_template) == template_id
    assert by_template["headers"]["root_id"] == template_id
    assert by_template["properties"]["correlation_id"] == template_id
    assert by_template["properties"]["delivery_tag"] != by_celery["properties"]["delivery_tag"]
    assert _normalised(by_template) == _normalised(by_celery)
    # Byte for byte too, once the per-message values are swapped: the same JSON layout.
    swapped = raw_template.replace(template_id.encode(), celery_id.encode()).replace(
        by_template["properties"]["delivery_tag"].encode(),
        by_celery["properties"]["delivery_tag"].encode(),
    )
    assert swapped == raw_celery
    if not show_arguments:
        assert "the" not in by_template["headers"]["argsrepr"]  # the prompt stays hidden

    sent_celery, sent_template = _events(pubsub, 2)
    assert sent_celery["channel"] == sent_template["channel"]
    assert _normalised_event(sent_template) == _normalised_event(sent_celery)
    fields = json.loads(base64.b64decode(sent_template["body"]))
    assert fields["uuid"] == fields["root_id"] == template_id
    assert fields["type"] == "task-sent" and fields["queue"] == QUEUE
    pubsub.close()


def test_template_messages_run_and_lost_ones_are_recovered(
    simulator, cluster, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = cluster(sim, recover_after_seconds=3.0)
    n = 40
    report = c.jobs.submit_bodies(bodies(n, seed=8), job_id="T")
    assert report.submitted == n
    waiting = [raw for name in queue_lists(QUEUE) for raw in redis_client.lrange(name, 0, -1)]
    assert len(waiting) == n
    # Task ids read without decoding bodies are the ones in the messages.
    assert [raw_message_id(raw) for raw in waiting] == [
        message_id(json.loads(raw)) for raw in waiting
    ]
    # The broker loses three of them before any worker takes one.
    for raw in waiting[:3]:
        assert redis_client.lrem(QUEUE, 1, raw) == 1

    c.start_workers(2, pool="threads", concurrency=4)
    status = c.wait("T", timeout=120)
    assert status.counts["done"] == n
    # Each reached the provider once: the lost ones were sent again by the workers' sweep.
    assert sim.stats()["requests_received"] == n
    logs = "".join(w.log() for w in c.workers)
    assert "3 request(s) whose message was lost sent again" in logs
