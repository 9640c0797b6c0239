"""A killed worker's running and deferred requests come back with the default settings."""

from __future__ import annotations

import math
import time

import pytest
import redis
from support.workload import SHORT_RUN, SIM, bodies, check_complete

from pipeline.broker import queue_depth
from settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_edge_worker_kill_recovers_with_defaults(
    simulator, cluster, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = cluster(sim, **SHORT_RUN)
    # Not hand-set: derived from the (test-sized) countdowns and run time, in the
    # workers as here.
    assert c.settings.visibility_timeout_seconds is None
    assert "QUOTAFLOW_VISIBILITY_TIMEOUT_SECONDS" not in settings_env(c.settings)
    vt = c.settings.visibility_timeout
    assert vt == math.ceil(c.settings.longest_hold_seconds)
    (first,) = c.start_workers(1, pool="threads", concurrency=8)
    n = 120
    report = c.jobs.submit_bodies(bodies(n, seed=21))
    deadline = time.monotonic() + 60
    while c.jobs.status(report.job_id).counts["done"] < 20:
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.1)
    # Kill while the worker holds some: between two intakes it may hold none.
    while (held := queue_depth(redis_client, c.settings).held_total) == 0:
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.02)
    first.kill()  # SIGKILL to the whole worker: threads pool, nothing is handed back
    killed_at = time.monotonic()
    c.start_workers(1, pool="threads", concurrency=8)
    status = c.wait(report.job_id, timeout=3 * vt + 60)
    assert held > 0  # the kill took running and deferred requests with it
    assert status.counts["done"] == n, status
    check_complete(c, report.job_id, n)  # each result exactly once
    print(f"\nthreads worker SIGKILL: all done {time.monotonic() - killed_at:.0f}s after the "
          f"kill ({held} messages held; visibility timeout {vt}s)")  # fmt: skip
