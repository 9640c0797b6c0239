from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.cluster import Worker, start_workers

from pipeline import app
from pipeline.app import configure
from pipeline.jobs import Jobs
from pipeline.simulator import Simulator, SimulatorConfig
from settings import DeploymentSettings, Settings
from tasks import runtime
from tasks.jobs import JobStatus

API_KEY = "sk-test-4d1f9c2b7e"


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


def cluster_settings(redis_url: str, sim: Simulator, **overrides: Any) -> Settings:
    dep: dict[str, Any] = {
        "name": "sim",
        "kind": "compatible",
        "model": "gpt-4o-mini",
        "base_url": sim.url + "/v1",
        "api_key": API_KEY,
        "tpm": sim.config.tpm,
        "rpm": sim.config.rpm,
        "burst_seconds": 1.0,
        "accounting": "estimate",
        "timeout_seconds": 5.0,
        "price_input_per_1m": 0.15,
        "price_output_per_1m": 0.6,
    }
    dep.update(overrides.pop("deployment", {}))
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "booking_horizon_seconds": 5.0,
        "late_tolerance_seconds": 1.0,
        "backoff_base_seconds": 0.2,
        "backoff_cap_seconds": 2.0,
        "defer_jitter_seconds": 0.5,
        "max_defer_seconds": 5.0,
        "visibility_timeout_seconds": 30,
        "admission_log": True,
        "deployments": [DeploymentSettings(**dep)],
    }
    values.update(overrides)
    return Settings(**values)


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        configure(app, settings)
        self.jobs = Jobs(settings, runtime.current().jobs)
        self.workers: list[Worker] = []

    def start_workers(self, count: int, **options: Any) -> list[Worker]:
        started = start_workers(self.settings, count, **options)
        self.workers.extend(started)
        return started

    def wait(self, job_id: str, timeout: float = 120) -> JobStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.jobs.status(job_id)
            if status.finished:
                return status
            time.sleep(0.2)
        logs = "\n".join(w.log()[-3000:] for w in self.workers)
        raise AssertionError(f"job {job_id} unfinished: {self.jobs.status(job_id)}\n{logs}")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


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
