"""Azure-style windows end to end: real Redis, real worker processes, the simulator's
Azure policy at a random phase, limiter = "window"."""

from __future__ import annotations

from typing import Any

import pytest
from support.conformance import window_excess
from support.workload import bodies, check_complete

from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

#: Azure's periods, compressed tenfold: tokens per 1 s (TPM/60 = 1,500), requests per
#: 0.1 s (RPM/600 = 5), the minute counter; periods at a phase drawn at random.
AZURE_SIM = {"policy": "azure", "tpm": 90_000, "rpm": 3_000, "check_seconds": 1.0,
             "request_check_seconds": 0.1}  # fmt: skip


def azure_deployment(sim: Any) -> dict[str, Any]:
    return {
        "kind": "azure",
        "base_url": sim.url,
        "api_version": "2024-10-21",
        "window_seconds": AZURE_SIM["check_seconds"],
        "request_window_seconds": AZURE_SIM["request_check_seconds"],
        # The periods are compressed tenfold, the host's scheduling delays are not: on a
        # loaded two-core CI machine calls reach the provider later than on a real one.
        "window_guard_seconds": 0.75,
    }


def test_window_limiter_meets_azure_windows_without_a_429(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**AZURE_SIM)
    c = cluster(sim, deployment=azure_deployment(sim))
    dep = c.settings.deployments[0]
    assert dep.limiter == "window"  # the default for kind azure
    c.start_workers(2)
    work = bodies(120, seed=5)
    sim.reset()  # fresh periods, at a new random phase
    report = c.jobs.submit_bodies(work)
    assert report.submitted == 120 and not report.rejected
    # Demand: everything at once, three times what the first three periods admit.
    assert report.tokens_estimated >= 3 * 3 * dep.token_capacity
    status = c.wait(report.job_id)
    stats = sim.stats()
    assert status.counts["done"] == 120, status
    assert stats["refused_429"] == 0, stats
    assert status.deferrals > 0
    check_complete(c, report.job_id, 120)
    # The gate's own log: one window's allowance in every (guarded) window.
    rows = [(a.start_at, a.tokens, a.requests) for a in current().gate.admissions(dep.name)]
    guarded = dep.window_seconds + dep.window_guard_seconds
    assert window_excess([(t, n) for t, n, _ in rows], window=guarded,
                         allowance=dep.token_capacity) <= 1e-3  # fmt: skip
    assert window_excess([(t, n) for t, _, n in rows], window=dep.request_window_seconds,
                         allowance=dep.request_capacity) <= 1e-3  # fmt: skip
    print(
        f"\nazure windows: phase={stats['phase_seconds']:.2f}s 429s={stats['refused_429']} "
        f"deferrals={status.deferrals} tokens_charged={stats['tokens_charged']}"
    )
