"""Crashes, Redis restarts and outages, and secrets: nothing lost, nothing twice, nothing leaked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer
from support.cluster import API_KEY, Cluster, cluster_settings
from support.conformance import worst_excess
from support.workload import SHORT_RUN, SIM, bodies, check_complete

from pipeline.redis_server import RedisServer
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """Broker and budget on one Redis with AOF on, as in docker-compose."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


def make_cluster(url: str, sim: Any, **overrides: Any) -> Cluster:
    return Cluster(cluster_settings(url, sim, **overrides))


def check_conforms(c: Cluster) -> None:
    dep = c.settings.deployments[0]
    log = [(a.start_at, a.tokens) for a in current().gate.admissions(dep.name)]
    assert worst_excess(log, capacity=dep.token_capacity, rate=dep.tpm / 60) <= 1e-3


def test_a_killed_worker_main_process_comes_back(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    # The short countdowns of the test settings, a short outage wait and call timeout
    # make the derived visibility timeout short (26 s), so the killed worker's messages
    # return within the test.
    c = cluster(sim, **SHORT_RUN)
    (first,) = c.start_workers(1)
    report = c.jobs.submit_bodies(bodies(120, seed=7))
    deadline = time.monotonic() + 30
    while c.jobs.status(report.job_id).counts["done"] < 20:
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.1)
    first.kill()  # SIGKILL to the main process and its pool
    c.start_workers(1)
    status = c.wait(report.job_id, timeout=120)
    assert status.counts["done"] == 120, status
    check_complete(c, report.job_id, 120)
    assert sim.stats()["refused_429"] == 0
    check_conforms(c)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["restart", "unreachable"])
def test_redis_restart_and_outage_lose_nothing(simulator, aof_redis, outage) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = make_cluster(aof_redis.url, sim, budget_outage_wait_seconds=20)
    try:
        c.start_workers(2)
        report = c.jobs.submit_bodies(bodies(150, seed=8))
        deadline = time.monotonic() + 90
        while c.jobs.status(report.job_id).counts["done"] < 30:
            assert time.monotonic() < deadline, c.workers[0].log()[-3000:]
            time.sleep(0.1)
        calls_before = sim.stats()["requests_received"]
        aof_redis.stop(kill=outage == "unreachable")
        if outage == "unreachable":
            time.sleep(6)
            # Fail closed: while Redis is gone no call reaches the provider unguarded
            # (calls already admitted may still be in flight).
            in_flight = sim.stats()["requests_received"] - calls_before
            assert in_flight <= 2 * 8, in_flight
        aof_redis.start()
        # kombu's Redis transport can crash a worker's main process when the broker
        # connection drops while it restores unacked messages; a supervisor (compose's
        # restart policy) starts it again, and its messages return after the
        # visibility timeout. Play the supervisor here and count the crashes.
        time.sleep(2)
        crashed = [w for w in c.workers if w.proc.poll() is not None]
        for _ in crashed:
            c.start_workers(1)
        # A message being delivered when Redis went away can be lost by the broker;
        # the job still knows the request and sends it again once it is stale.
        recovered = 0
        deadline = time.monotonic() + 200
        while not c.jobs.status(report.job_id).finished:
            assert time.monotonic() < deadline, c.jobs.status(report.job_id)
            recovered += c.jobs.recover(report.job_id)
            time.sleep(1)
        status = c.jobs.status(report.job_id)
        assert status.counts["done"] == 150, status
        check_complete(c, report.job_id, 150)
        assert sim.stats()["refused_429"] == 0
        # With AOF the gate kept its state: the admissions before and after the
        # restart conform together (nothing was admitted twice from a reset bucket).
        check_conforms(c)
        print(f"\n{outage}: workers crashed: {len(crashed)} of 2; requests recovered: {recovered}")
    finally:
        c.stop()


def test_a_pickle_message_is_refused_not_run(simulator, cluster, redis_server) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = cluster(sim)
    (worker,) = c.start_workers(1)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    with Connection(redis_server.url) as conn:
        producer = Producer(conn, exchange=Exchange("quotaflow", type="direct"))
        producer.publish(
            [[body], {"custom_id": "pickled", "job_id": "evil"}, {}],
            routing_key="quotaflow",
            serializer="pickle",
            headers={"task": "quotaflow.complete", "id": "pickled-1", "lang": "py"},
        )
    deadline = time.monotonic() + 20
    while "pickle" not in worker.log().lower() or "refus" not in worker.log().lower():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    assert sim.stats()["requests_received"] == 0
    assert not c.jobs.store.exists("evil") and c.jobs.store.get_result("evil", "pickled") is None


def test_the_api_key_appears_nowhere(simulator, cluster, redis_client) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    c = cluster(sim)
    (worker,) = c.start_workers(1)
    report = c.jobs.submit_bodies(bodies(20, seed=9))
    c.wait(report.job_id)
    # A wrong key on the provider side: a 401 whose error goes to logs and dead letters.
    sim.configure(api_key="sk-some-other-key-000")
    bad = c.jobs.submit_bodies(bodies(2, seed=10))
    status = c.wait(bad.job_id)
    assert status.counts["failed"] == 2
    dumped = []
    for key in redis_client.scan_iter(count=1000):
        kind = redis_client.type(key).decode()
        if kind == "string":
            dumped.append(redis_client.get(key))
        elif kind == "hash":
            dumped.extend(k + b"=" + v for k, v in redis_client.hgetall(key).items())
        elif kind == "list":
            dumped.extend(redis_client.lrange(key, 0, -1))
        elif kind == "zset":
            dumped.extend(m for m, _ in redis_client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            dumped.extend(redis_client.smembers(key))
        dumped.append(key)
    blob = b"\n".join(d for d in dumped if d)
    assert len(blob) > 1000
    assert API_KEY.encode() not in blob
    assert API_KEY not in worker.log()
    assert "401" in worker.log() or "authentication" in worker.log().lower()


def test_redis_auth_is_used_and_required(simulator) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(password="s3cret-pass").start()
    try:
        sim = simulator(**SIM)
        c = make_cluster(server.url, sim)
        try:
            c.start_workers(1)
            report = c.jobs.submit_bodies(bodies(10, seed=11))
            assert c.wait(report.job_id).counts["done"] == 10
        finally:
            c.stop()
        bare = f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(bare).ping()
    finally:
        server.cleanup()
