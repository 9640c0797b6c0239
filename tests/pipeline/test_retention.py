"""Each result is kept once, and a finished job's data expires after `retention_seconds`.

A submitted request's result lives in the job store only; a `.delay()` caller's result
also in the result backend (its `AsyncResult`), without the request's arguments.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from support.workload import SIM, bodies, check_complete

from tasks import complete
from tasks.jobstore import ADHOC_JOB

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RETENTION = 3


def job_ttls(client: redis.Redis, c: Any, job_id: str) -> dict[str, int]:
    keys = c.jobs.store.keys(job_id).all()
    return {k: int(client.ttl(k)) for k in keys if client.exists(k)}


def test_a_finished_job_expires_and_keeps_no_celery_result(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM), retention_seconds=RETENTION)
    c.start_workers(1, pool="threads", concurrency=8)
    report = c.jobs.submit_bodies(bodies(5))
    c.wait(report.job_id)
    check_complete(c, report.job_id, 5)
    assert not list(redis_client.scan_iter("celery-task-meta-*"))  # the job store has them
    ttls = job_ttls(redis_client, c, report.job_id)
    assert ttls and all(0 < t <= RETENTION for t in ttls.values()), ttls
    assert report.job_id in c.jobs.store.job_ids()
    time.sleep(RETENTION + 1)
    assert not job_ttls(redis_client, c, report.job_id)
    assert report.job_id not in c.jobs.store.job_ids()


def test_delay_results_stay_retrievable_without_their_arguments(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM), retention_seconds=RETENTION)
    c.start_workers(1, pool="threads", concurrency=8)
    r = complete.delay(bodies(1)[0])
    assert r.get(timeout=60)["choices"]
    meta_key = f"celery-task-meta-{r.id}"
    raw = redis_client.get(meta_key)
    assert raw is not None and b'"args"' not in raw and b"STARTED" not in raw
    assert 0 < int(redis_client.ttl(meta_key)) <= RETENTION
    # Its adhoc job, idle: it expires; a new request stops that until it is idle again.
    (adhoc,) = [j for j in c.jobs.store.job_ids() if j.startswith(f"{ADHOC_JOB}-")]
    ttls = job_ttls(redis_client, c, adhoc)
    assert ttls and all(0 < t <= RETENTION for t in ttls.values()), ttls
    store = c.jobs.store
    store.record_published(adhoc, "in-flight", {"url": "/v1/chat/completions"})
    assert all(t == -1 for t in job_ttls(redis_client, c, adhoc).values())


def test_edge_adhoc_results_expire_under_continuous_traffic(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    # One adhoc job per second: `.delay()` traffic that never stops still leaves every
    # finished request's data on a job that finished, and so expires.
    c = cluster(simulator(**SIM), retention_seconds=60, adhoc_job_seconds=1)
    (worker,) = c.start_workers(1, pool="threads", concurrency=4)
    for body in bodies(4, seed=7):
        assert complete.delay(body).get(timeout=60)["choices"]
        time.sleep(0.6)
    worker.stop()
    time.sleep(1.0)
    in_flight = complete.delay(bodies(1, seed=8)[0])  # no worker: it stays in flight
    results = list(redis_client.scan_iter("*:results"))
    assert len(results) >= 2
    # Every stored result will expire, though a request is in flight.
    assert all(0 < int(redis_client.ttl(k)) <= 60 for k in results), {
        k: redis_client.ttl(k) for k in results
    }
    adhoc = [j for j in c.jobs.store.job_ids() if j.startswith(f"{ADHOC_JOB}-")]
    assert len(adhoc) >= 3
    (open_job,) = [j for j in adhoc if not c.jobs.status(j).finished]
    assert c.jobs.store.pending(open_job, [in_flight.id])
    assert all(t == -1 for t in job_ttls(redis_client, c, open_job).values())
