from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from support.cluster import API_KEY, Cluster, cluster_settings  # noqa: E402

from pipeline.redis_server import RedisServer  # noqa: E402
from simulator import Simulator, SimulatorConfig  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    if redis_server.proc is None:  # a test stopped it
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def start(**config: Any) -> Simulator:
        config.setdefault("api_key", API_KEY)
        config.setdefault("latency_ms", 20.0)
        config.setdefault("latency_jitter_ms", 20.0)
        sim = Simulator(SimulatorConfig(**config)).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def cluster(redis_server, redis_client) -> Iterator[Callable[..., Cluster]]:  # type: ignore[no-untyped-def]
    made: list[Cluster] = []

    def make(sim: Simulator, **overrides: Any) -> Cluster:
        c = Cluster(cluster_settings(redis_server.url, sim, **overrides))
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
