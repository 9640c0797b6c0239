"""Real Celery workers in separate processes, started and stopped by tests."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import app
from pipeline.app import configure
from pipeline.jobs import Jobs
from pipeline.local import LocalWorker, stop_workers
from settings import DeploymentSettings, Settings
from simulator import Simulator
from tasks import runtime
from tasks.jobstore import JobStatus

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-4d1f9c2b7e"


class Worker(LocalWorker):
    """A worker started for a test: its log kept in a temp file, the repository as cwd."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        pool: str = "prefork",
        concurrency: int = 4,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        log_path = Path(tempfile.mkstemp(prefix=f"qf-{name}-", suffix=".log")[1])
        super().__init__(
            settings,
            hostname=f"{name}@%h",
            log_path=log_path,
            cwd=ROOT,
            concurrency=concurrency,
            pool=pool,
            extra_env=extra_env,
        )

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)


def start_workers(settings: Settings, count: int, **options: object) -> list[Worker]:
    workers = [Worker(settings, name=f"w{i}-{os.getpid()}", **options) for i in range(count)]  # type: ignore[arg-type]
    for w in workers:
        w.wait_ready()
    return workers


def sim_deployment(sim: Simulator, **overrides: Any) -> dict[str, Any]:
    """A deployment on `sim` with its quota, as plain JSON-ready values."""
    return {
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
        **overrides,
    }


def cluster_settings(redis_url: str, sim: Simulator, **overrides: Any) -> Settings:
    dep = sim_deployment(sim)
    dep.update(overrides.pop("deployment", {}))
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "booking_horizon_seconds": 5.0,
        "late_tolerance_seconds": 1.0,
        "backoff_base_seconds": 0.2,
        "backoff_cap_seconds": 2.0,
        "defer_jitter_seconds": 0.5,
        "max_defer_seconds": 5.0,
        # The visibility timeout is derived from these (42 s).
        "budget_outage_wait_seconds": 5.0,
        "admission_log": True,
        "recover_after_seconds": 10.0,
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

    def stop(self, grace: float = 15.0) -> None:
        stop_workers(list(self.workers), grace)
