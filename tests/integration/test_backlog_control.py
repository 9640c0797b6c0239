"""The intake (pipeline/backlog.py) with a real worker: it leaves a queue the operator
stopped alone, and one deployment's unreadable gate does not stop the others."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from support.cluster import sim_deployment
from support.waiting import wait_for

from pipeline import app
from pipeline.broker import deployment_queue
from settings import DeploymentSettings
from tasks import complete
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def node(worker: Any) -> str:
    return str(worker.hostname).replace("%h", socket.gethostname())


def consumed(worker: Any) -> set[str]:
    """The queues the worker's task consumer takes from now."""
    answer = app.control.inspect(destination=[node(worker)], timeout=2.0).active_queues() or {}
    return {q["name"] for q in answer.get(node(worker), [])}


def test_edge_a_queue_the_operator_cancelled_stays_cancelled(
    simulator, cluster, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # N14: `celery control cancel_consumer quotaflow.<dep>` was undone by the next
    # intake poll (0.25 s later). It now holds until `add_consumer`.
    sim = simulator(tpm=90_000, rpm=3_000, bucket_seconds=2.0)
    c = cluster(sim)
    (worker,) = c.start_workers(1, pool="threads", concurrency=4)
    queue = deployment_queue(c.settings, "sim")
    wait_for(lambda: queue in consumed(worker), 20, f"{queue} consumed")
    app.control.cancel_consumer(queue, destination=[node(worker)], reply=True, timeout=5)
    job = "n14"
    c.jobs.store.create(job)
    complete.apply_async(
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
            },
        ),
        {"custom_id": "r", "job_id": job},
    )
    for _ in range(8):  # many intake polls: none takes the queue back
        time.sleep(0.25)
        assert queue not in consumed(worker), worker.log()[-3000:]
    assert redis_client.llen(queue) == 1  # the request waits in the broker
    app.control.add_consumer(queue, destination=[node(worker)], reply=True, timeout=5)
    assert c.wait(job, timeout=30).counts["done"] == 1


def test_edge_an_unreadable_gate_does_not_stop_the_other_lanes(
    simulator, cluster, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # N16: a ValueError from one deployment's snapshot (a corrupt bucket) ended the
    # poll before the later lanes: a deployment booked far ahead was never paused.
    sim = simulator(tpm=90_000, rpm=3_000, bucket_seconds=2.0)
    broken = DeploymentSettings(**sim_deployment(sim, name="broken"))
    busy = DeploymentSettings(**sim_deployment(sim, name="busy"))
    c = cluster(sim, booking_horizon_seconds=30.0, deployments=[broken, busy])
    gate = current().gate
    redis_client.set(gate.limits("broken").keys.tokens, "not a time")
    (worker,) = c.start_workers(1, pool="threads", concurrency=4)
    queue = deployment_queue(c.settings, "busy")
    wait_for(lambda: queue in consumed(worker), 20, f"{queue} consumed")
    cap = int(busy.token_capacity)
    while gate.snapshot("busy").booked_ahead_seconds < 20:
        assert gate.reserve("busy", tokens=cap).reservation is not None
    wait_for(lambda: queue not in consumed(worker), 20, f"{queue} paused")
    assert "cannot read the gate of broken" in worker.log()
