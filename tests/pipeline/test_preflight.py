"""A worker refuses a Redis that may evict keys, and says why and how to fix it."""

from __future__ import annotations

import os
import subprocess

import pytest
from support.cluster import Worker, cluster_settings

from pipeline.redis_server import RedisServer

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
    # As on managed Redis services, where CONFIG is disabled or renamed.
    server = RedisServer(extra_args=("--rename-command", "CONFIG", "")).start()
    worker = Worker(cluster_settings(server.url, simulator()), name=f"noconf-{os.getpid()}")
    try:
        worker.wait_ready()
        assert "could not check Redis maxmemory-policy: CONFIG GET was refused" in worker.log()
    finally:
        worker.stop()
        server.cleanup()
