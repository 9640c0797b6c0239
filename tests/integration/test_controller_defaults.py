"""The neighbour controller with its default settings, at real time, against a
provider that holds a minute of quota and answers seconds later (its headers arrive
with the response, as a real provider's do)."""

from __future__ import annotations

import time

import pytest

from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _bodies(n: int) -> list[dict[str, object]]:
    return [
        {"model": "gpt-4o-mini", "max_tokens": 1000,
         "messages": [{"role": "user", "content": f"Summarise report {i}."}]}
        for i in range(n)
    ]  # fmt: skip


def test_edge_defaults_with_no_neighbour_keep_the_full_rate(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # N10: with the default burst (58 s of a 60 s bucket) and reserve, the gate's own
    # first burst read as a neighbour: the rate fell to 0.58-0.67 with nobody else on
    # the key. 80 requests of ~1,030 tokens: the burst, then ~25 s at the quota's pace.
    sim = simulator(tpm=60_000, rpm=3_000, bucket_seconds=60.0, latency_ms=2_000,
                    latency_jitter_ms=1_000)  # fmt: skip
    c = cluster(sim, deployment={"burst_seconds": 58.0, "timeout_seconds": 30.0})
    c.start_workers(2, pool="threads", concurrency=32)
    report = c.jobs.submit_bodies(_bodies(80))
    factors, learned = [], []
    t0 = time.monotonic()
    while not (status := c.jobs.status(report.job_id)).finished:
        assert time.monotonic() - t0 < 200, status
        time.sleep(0.5)
        if status.counts["done"] < 0.9 * status.total:  # while quotaflow has a backlog
            snap = current().gate.snapshot("sim")
            factors.append(snap.rate_factor)
            learned.append(snap.neighbour_tpm)
    stats = sim.stats()
    print(f"\nfactor min {min(factors):.3f}, learned neighbour max {max(learned):.0f} tpm, "
          f"429s {stats['refused_429']}")  # fmt: skip
    assert status.counts["done"] == 80
    assert stats["refused_429"] == 0
    assert max(learned) < 0.02 * 60_000, learned
    assert min(factors) >= 0.95, factors
