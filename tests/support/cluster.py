"""Real Celery workers in separate processes, started and stopped by tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import app
from pipeline.app import configure
from pipeline.jobs import Jobs
from settings import DeploymentSettings, Settings, settings_env
from simulator import Simulator
from tasks import runtime
from tasks.jobs import JobStatus

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-4d1f9c2b7e"


class Worker:
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
        self.log_path = Path(tempfile.mkstemp(prefix=f"qf-{name}-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
        env.update(settings_env(settings))
        env.update(extra_env or {})
        env["PYTHONUNBUFFERED"] = "1"
        queues = f"{settings.queue},{settings.retry_queue}"
        args = [
            sys.executable, "-m", "celery", "-A", "pipeline", "worker",
            "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.kill()
        self._log.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)


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
        # The visibility timeout is derived from these (40 s).
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

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
