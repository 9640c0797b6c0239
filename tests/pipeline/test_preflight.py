"""A worker refuses a Redis that may evict keys or is too old, and says why and how to fix it."""

from __future__ import annotations

import os
import subprocess

import pytest
import redis
from support.cluster import Worker, cluster_settings

from pipeline.preflight import MIN_REDIS, check_redis_version
from pipeline.redis_server import RedisServer
from settings import SettingsError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_edge_worker_refuses_a_redis_that_may_evict(simulator) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(maxmemory_policy="volatile-ttl").start()
    worker = Worker(cluster_settings(server.url, simulator()), name=f"evict-{os.getpid()}")
    try:
        try:
            code = worker.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker ran on an evicting Redis:\n{worker.log()}")
        log = worker.log()
        assert code != 0
        assert "maxmemory-policy is 'volatile-ttl'; quotaflow needs 'noeviction'" in log
        assert "CONFIG SET maxmemory-policy noeviction" in log
        assert " ready." not in log
    finally:
        worker.stop()
        server.cleanup()


def test_edge_worker_warns_when_it_cannot_read_the_eviction_policy(simulator) -> None:  # type: ignore[no-untyped-def]
    # As on managed Redis services, where CONFIG (here INFO too) is disabled or renamed.
    server = RedisServer(
        extra_args=("--rename-command", "CONFIG", "", "--rename-command", "INFO", "")
    ).start()
    worker = Worker(cluster_settings(server.url, simulator()), name=f"noconf-{os.getpid()}")
    try:
        worker.wait_ready()
        log = worker.log()
        assert "could not check Redis maxmemory-policy: CONFIG GET was refused" in log
        # The version check runs at worker start too (the refusal itself: below).
        assert "could not check the Redis version: INFO was refused" in log
        assert "it must be 6.2+" in log
    finally:
        worker.stop()
        server.cleanup()


def test_edge_a_redis_older_than_the_floor_is_refused(redis_client: redis.Redis) -> None:
    # No Redis older than 6.2 runs here: the real INFO is read, against a floor just
    # above the version it reports.
    version = str(redis_client.info("server")["redis_version"])
    found = tuple(int(part) for part in version.split("."))
    assert MIN_REDIS == (6, 2) and found >= MIN_REDIS
    assert check_redis_version(redis_client) is None
    assert check_redis_version(redis_client, floor=found) is None
    newer = (*found[:-1], found[-1] + 1)
    need = ".".join(map(str, newer))
    with pytest.raises(SettingsError) as caught:
        check_redis_version(redis_client, floor=newer)
    assert str(caught.value).startswith(
        f"Redis {version} is too old: quotaflow needs Redis {need} or newer"
    )
