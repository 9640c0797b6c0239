"""The pipeline end to end: real Redis, real worker processes, the simulator over HTTP."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from support.cluster import sim_deployment
from support.conformance import worst_excess
from support.workload import SIM, bodies, check_complete, deliveries

from settings import DeploymentSettings
from tasks import complete
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def run_budget_test(simulator: Any, cluster: Any, **worker_options: Any) -> None:
    sim = simulator(**SIM)
    c = cluster(sim)
    c.start_workers(2, **worker_options)
    work = bodies(150)
    report = c.jobs.submit_bodies(work)
    assert report.submitted == 150 and not report.rejected
    # Demand: everything at once, against a bucket of 3,000 tokens + 1,500/s.
    assert report.tokens_estimated >= 3 * (3_000 + 1_500 * 2)
    status = c.wait(report.job_id)
    stats = sim.stats()
    assert status.counts["done"] == 150, status
    assert stats["refused_429"] == 0, stats
    # The demand beyond the booking waits in the broker: few deferrals, if any.
    assert status.deferrals < 150
    check_complete(c, report.job_id, 150)
    # The gate's own log conforms to the deployment's limits.
    dep = c.settings.deployments[0]
    admitted = [(a.start_at, a.tokens) for a in current().gate.admissions(dep.name)]
    assert worst_excess(admitted, capacity=dep.token_capacity, rate=dep.tpm / 60) <= 1e-3
    print(
        f"\nbudget test: 429s={stats['refused_429']} deferrals={status.deferrals} "
        f"retries={status.retries} tokens_charged={stats['tokens_charged']}"
    )


def test_demand_over_quota_completes_without_a_429(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    run_budget_test(simulator, cluster)


def test_the_same_with_the_threads_pool(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    run_budget_test(simulator, cluster, pool="threads", concurrency=32)


def test_transient_faults_retry_on_the_retry_queue(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # Half the usual quota: deferrals happen however fast the workers run.
    sim = simulator(**{**SIM, "tpm": 45_000}, fail_5xx_rate=0.2, drop_rate=0.05, seed=3)
    c = cluster(sim, max_retries=10)
    c.start_workers(2)
    # 100 requests: still twice what the bucket and the booking horizon hold.
    report = c.jobs.submit_bodies(bodies(100, seed=2))
    status = c.wait(report.job_id)
    assert status.counts["done"] == 100, status
    assert status.retries > 0 and status.deferrals > 0
    check_complete(c, report.job_id, 100)
    seen = deliveries(c)
    assert seen.get(("quotaflow.retry", "retry"), 0) == status.retries
    assert seen.get(("quotaflow", "retry"), 0) == 0
    assert seen.get(("quotaflow", "deferral"), 0) == status.deferrals
    assert seen.get(("quotaflow.retry", "deferral"), 0) == 0
    stats = sim.stats()
    print(f"\nfaults: {stats['faults']} retries={status.retries} deferrals={status.deferrals}")


def test_deferrals_do_not_use_up_max_retries(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    # No booking ahead: every refusal is a deferral, many per request.
    c = cluster(sim, max_retries=1, booking_horizon_seconds=0.0, defer_jitter_seconds=0.2)
    c.start_workers(2)
    report = c.jobs.submit_bodies(bodies(80, seed=4))
    status = c.wait(report.job_id)
    assert status.counts["done"] == 80, status
    most = max(d for d, _ in c.jobs.store.attempts(report.job_id).values())
    assert most > 1, "expected a request deferred more often than max_retries"
    assert sim.stats()["refused_429"] == 0


def test_permanent_failures_dead_letter_and_replay(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM, fail_models=["gpt-missing"])
    # A second deployment for a model the provider does not have (yet): a 404.
    ghost = DeploymentSettings(**sim_deployment(sim, name="ghost", model="gpt-missing"))
    c = cluster(sim, deployments=[DeploymentSettings(**sim_deployment(sim)), ghost])
    c.start_workers(1)
    job = "perm"
    c.jobs.store.create(job)
    missing = {"model": "gpt-missing", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 5}  # fmt: skip
    huge = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50_000}  # fmt: skip
    ok = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    complete.apply_async((missing,), {"custom_id": "missing", "job_id": job})
    complete.apply_async((huge,), {"custom_id": "huge", "job_id": job})
    complete.apply_async((ok,), {"custom_id": "ok", "job_id": job})
    c.jobs.store.add_queued(job, ["missing", "huge", "ok"])
    status = c.wait(job, timeout=30)
    assert status.counts == {**status.counts, "done": 1, "failed": 2}
    dead = {cid: raw for cid, raw in c.jobs.store.dead_letters(job).items()}
    assert set(dead) == {"missing", "huge"}
    assert '"code":"never_admissible"' in dead["huge"].replace(" ", "")
    assert "not_found" in dead["missing"] or "model_not_found" in dead["missing"]
    assert status.retries == 0
    # Fix the cause, replay: the 404 goes through; the oversized one fails again.
    sim.configure(fail_models=[])
    replayed, skipped = c.jobs.replay(job)
    assert (replayed, skipped) == (2, 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = c.jobs.status(job)
        if status.counts["done"] == 2 and status.counts["failed"] == 1:
            break
        time.sleep(0.2)
    assert status.counts["done"] == 2 and status.counts["failed"] == 1, status
    assert set(c.jobs.store.dead_letters(job)) == {"huge"}
    assert c.jobs.store.get_result(job, "missing") is not None


def test_a_killed_pool_process_loses_nothing(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = cluster(sim)
    (worker,) = c.start_workers(1, concurrency=2)
    job = "kill"
    c.jobs.store.create(job)
    slow = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "slow [[latency:3]]"}]}  # fmt: skip
    c.jobs.store.add_queued(job, ["slow"])
    complete.apply_async((slow,), {"custom_id": "slow", "job_id": job})
    deadline = time.monotonic() + 20
    while c.jobs.status(job).counts["running"] == 0:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    # The call is in flight at the simulator (it answers after 3 s).
    while sim.stats()["requests_received"] == 0:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    assert sim.stats()["requests_received"] == 1
    for pid in worker.children():
        os.kill(pid, signal.SIGKILL)
    status = c.wait(job, timeout=60)
    assert status.counts["done"] == 1
    lines = list(c.jobs.output_lines(job))
    assert [line["custom_id"] for line in lines] == ["slow"]
    # Paid twice (the first call was cut off), stored once.
    assert sim.stats()["requests_received"] == 2
