"""A blind neighbour on the same key: real workers learn its share from the
simulator's x-ratelimit-* headers and leave it free."""

from __future__ import annotations

import time

import pytest
from support.workload import SIM, bodies

from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _learn_beside_a_neighbour(simulator, cluster, neighbour_tpm, n=600):  # type: ignore[no-untyped-def]
    """Run `n` requests (600: ~3x what the quota admits) beside a blind neighbour; return the
    neighbour's true rate, the learned one (median while quotaflow had a backlog) and
    the simulator's counts."""
    sim = simulator(**SIM, neighbour_tpm=neighbour_tpm)
    # The simulator's bucket holds 2 s of quota, not a minute: the controller's time
    # constant and reserve shrink with it.
    c = cluster(
        sim,
        neighbour_learning=True,
        neighbour_smoothing_seconds=4.0,
        neighbour_sample_seconds=0.1,
        neighbour_reserve=0.4,
    )
    c.start_workers(2, pool="threads", concurrency=16)
    t0 = time.monotonic()
    report = c.jobs.submit_bodies(bodies(n, seed=21))
    samples = []
    span: list[tuple[float, int]] = []  # (time, neighbour tokens) while sampling
    while not (status := c.jobs.status(report.job_id)).finished:
        assert time.monotonic() - t0 < 200, status
        time.sleep(0.5)
        # Past five time constants (the controller is critically damped: from a cold
        # start it is 96% of the way there at 5T), and while quotaflow still has a
        # backlog (at the end of the job the provider's bucket fills, which is not the
        # neighbour's doing).
        if time.monotonic() - t0 > 25 and status.counts["done"] < 0.85 * status.total:
            samples.append(current().gate.snapshot("sim").neighbour_tpm)
            span.append((time.monotonic(), sim.stats()["neighbour_tokens"]))
    assert len(span) >= 2, "the job finished before the estimate could be read"
    # What the neighbour really took while the estimate was read (a neighbour that
    # finds the bucket empty takes less than it asks for).
    true_tpm = (span[-1][1] - span[0][1]) / (span[-1][0] - span[0][0]) * 60
    stats = sim.stats()
    learned = sorted(samples)[len(samples) // 2]
    print(f"\nneighbour: true {true_tpm:.0f} tpm, learned (median of {len(samples)}) "
          f"{learned:.0f} tpm, 429s {stats['refused_429']} of "
          f"{stats['requests_received']}")  # fmt: skip
    return true_tpm, learned, stats


def test_a_blind_neighbour_is_learned_and_left_its_share(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    neighbour_tpm = 18_000  # 20% of the quota, sent without asking the gate
    # 450 requests: the estimate is still read for ~15 s, past five time constants.
    true_tpm, learned, stats = _learn_beside_a_neighbour(simulator, cluster, neighbour_tpm, n=450)
    assert true_tpm > 0.9 * neighbour_tpm  # the neighbour got what it asked for
    assert stats["refused_429"] <= 0.01 * stats["requests_received"]
    # Without learning it reads 0. How close it comes: the slow test below.
    assert 0.5 * true_tpm <= learned <= 1.5 * true_tpm


@pytest.mark.slow
def test_the_learned_rate_converges_on_the_neighbours(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # Within 10%. On a fast two-core host the estimate read 1-28% low, beyond 10% in 5
    # of 16 runs, with the provider's quota 98% used and no 429 in them: the estimate
    # drifts low there, the outcome does not.
    neighbour_tpm = 18_000
    true_tpm, learned, stats = _learn_beside_a_neighbour(simulator, cluster, neighbour_tpm)
    assert true_tpm > 0.9 * neighbour_tpm
    assert abs(learned - true_tpm) <= 0.10 * true_tpm
    assert stats["refused_429"] <= 0.01 * stats["requests_received"]
