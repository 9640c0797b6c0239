"""The task's promises off the happy path, with real workers, real Redis and the
simulator over HTTP: nothing lost, nothing paid twice, no call without the gate."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import redis
from support.waiting import wait_for
from support.workload import SIM, booked, deliveries

from tasks import complete
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def chat(text: str, max_tokens: int = 16, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def dead_entry(c: Any, job: str, cid: str) -> dict[str, Any]:
    return json.loads(c.jobs.store.dead_letters(job)[cid])


def test_edge_huge_retry_after_is_capped(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # C1: a provider (or proxy) answering `retry-after: 7200`. Every countdown stays
    # below the visibility timeout (30 s here): no second delivery, no two-hour stall.
    sim = simulator(**SIM)
    c = cluster(sim, max_retries=2, max_cooldown_seconds=3.0)
    (worker,) = c.start_workers(1)
    job = "c1"
    c.jobs.store.create(job)
    complete.apply_async(
        (chat("[[status:429]] [[retry_after:7200]]"),), {"custom_id": "r", "job_id": job}
    )
    status = c.wait(job, timeout=60)
    assert status.counts["failed"] == 1
    assert dead_entry(c, job, "r")["error"]["code"] == "retries_exhausted"
    seen = deliveries(c)
    # One new delivery and two retries (deferred by the cooldowns in between), each
    # calling once: nothing delivered twice.
    assert seen[("quotaflow.sim", "new")] == 1 and seen[("quotaflow.retry", "retry")] == 2, seen
    assert sim.stats()["requests_received"] == 3
    assert "7200" not in worker.log() or "cooling down 3.00s" in worker.log()
    assert current().gate.snapshot("sim").cooldown_seconds <= 3.0


def test_edge_insufficient_quota_is_permanent(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # C7: a 429 that waiting cannot cure: dead-lettered at once, no cooldown, no rate cut.
    sim = simulator(**SIM)
    c = cluster(sim)
    c.start_workers(1)
    job = "c7"
    c.jobs.store.create(job)
    body = chat("[[status:429]] [[code:insufficient_quota]]")
    complete.apply_async((body,), {"custom_id": "r", "job_id": job})
    c.wait(job, timeout=30)
    entry = dead_entry(c, job, "r")
    assert entry["error"]["code"] == "insufficient_quota" and entry["attempts"] == 1
    assert sim.stats()["requests_received"] == 1
    snap = current().gate.snapshot("sim")
    assert snap.cooldown_seconds == 0 and snap.rate_factor == 1.0


def test_edge_unknown_model_is_refused(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # C6: refused at submit with the line number and the configured models, and
    # dead-lettered at run time; no deployment is charged, the provider is not called.
    sim = simulator(**SIM)
    c = cluster(sim)
    report = c.jobs.submit_bodies([chat("ok"), chat("nope", model="gpt-nope")])
    assert report.submitted == 1 and len(report.rejected) == 1
    refused = str(report.rejected[0])
    assert refused.startswith("line 2:") and "'gpt-4o-mini' (deployment 'sim')" in refused
    c.start_workers(1)
    c.wait(report.job_id, timeout=30)
    job = "c6"
    c.jobs.store.create(job)
    complete.apply_async((chat("nope", model="gpt-nope"),), {"custom_id": "r", "job_id": job})
    c.wait(job, timeout=30)
    assert dead_entry(c, job, "r")["error"]["code"] == "model_not_configured"
    assert sim.stats()["requests_received"] == 1  # only the valid line of the batch
    assert len(current().gate.admissions("sim")) == 1


def test_edge_a_booking_header_cannot_skip_the_gate(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # G3: two messages carry one real booking (a duplicate), a third a forged one.
    # Every call the provider sees had its own gate decision.
    sim = simulator(**SIM)
    c = cluster(sim)
    reservation = booked(c)
    real = dataclasses.asdict(reservation)
    forged = {**real, "id": "f" * 32}
    job = "g3"
    c.jobs.store.create(job)
    for cid, booking in (("a", real), ("b", real), ("c", forged)):
        complete.apply_async(
            (chat(f"booked {cid}"),), {"custom_id": cid, "job_id": job},
            headers={"quotaflow_booking": booking, "quotaflow_deferrals": 1},
        )  # fmt: skip
    c.start_workers(1)
    status = c.wait(job, timeout=60)
    assert status.counts["done"] == 3
    calls = sim.stats()["requests_received"]
    admitted = {a.reservation_id for a in current().gate.admissions("sim")}
    # The two drain reservations, the one real booking (used once), and one fresh
    # decision for each of the two messages that could not use it.
    assert calls == 3 and len(admitted) == 2 + calls


def _paid_call_then_writes_paused(
    simulator: Any, cluster: Any, client: redis.Redis, job: str, *, outage_wait: float
) -> tuple[Any, Any, Any]:
    """One slow call; once the provider has it, Redis takes no writes for 20 s (the
    call returns in ~3 s, so its writes time out after it). Returns (sim, cluster,
    worker) once the job is finished."""
    sim = simulator(**SIM)
    c = cluster(sim, budget_outage_wait_seconds=outage_wait)
    (worker,) = c.start_workers(1)
    c.jobs.store.create(job)
    complete.apply_async((chat("slow [[latency:3]]"),), {"custom_id": "r", "job_id": job})
    wait_for(lambda: sim.stats()["requests_received"] >= 1, 30, "the call", worker.log)
    client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
    status = c.wait(job, timeout=90)
    assert status.counts["done"] == 1, worker.log()[-3000:]
    return sim, c, worker


def test_edge_a_failed_result_write_never_pays_twice(simulator, cluster, redis_client) -> None:  # type: ignore[no-untyped-def]
    # C5: the call succeeded, then Redis stopped taking writes for longer than a socket
    # timeout. The reply is kept and its write retried; the provider is not called again.
    sim, _, worker = _paid_call_then_writes_paused(
        simulator, cluster, redis_client, "c5w", outage_wait=60.0
    )
    assert sim.stats()["requests_received"] == 1, worker.log()[-3000:]


def test_edge_an_outage_past_the_wait_requeues_the_request(
    simulator, cluster, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # C5: Redis stays away past budget_outage_wait_seconds after a paid call. The
    # request goes back on the main queue with its reply, instead of being acked
    # without a result; the next delivery stores the reply without calling again.
    sim, c, worker = _paid_call_then_writes_paused(
        simulator, cluster, redis_client, "c5o", outage_wait=1.0
    )
    assert "held back" in worker.log(), worker.log()[-5000:]
    assert sim.stats()["requests_received"] == 1
    assert c.jobs.store.get_result("c5o", "r") is not None


def test_edge_failed_calls_keep_their_charge(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # G5: in `actual` accounting a 5xx or a timeout is not refunded: the provider may
    # have counted it. A slow bucket (10 tokens/s) shows whether the charge stayed.
    sim = simulator(**SIM)
    slow = {"tpm": 600, "rpm": 60, "burst_seconds": 60.0, "accounting": "actual"}
    c = cluster(sim, max_retries=0, deployment=slow)
    c.start_workers(1)
    job = "g5"
    c.jobs.store.create(job)
    complete.apply_async(
        (chat("[[status:503]]", max_tokens=480),), {"custom_id": "r", "job_id": job}
    )
    c.wait(job, timeout=30)
    assert dead_entry(c, job, "r")["error"]["code"] == "retries_exhausted"
    assert current().gate.snapshot("sim").tokens_available < 300
