"""The processes a benchmark run drives: the simulator, Celery worker fleets, and a CPU
meter over the whole host."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.workload import MODEL, Quota, Scale

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench-7c41e0a9"
AZURE_API_VERSION = "2024-10-21"
#: Worker processes (and the pacer) run this much nicer than the submitter, Redis and the
#: simulator, which stand for other machines: the client's and the provider's.
WORKER_NICE = 10
#: A tiny request that warms a fleet up before it is measured.
WARMUP_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "warm up"}],
    "max_tokens": 1,
}


class SimulatorProcess:
    """`python -m simulator` in its own process, driven over HTTP."""

    def __init__(self, scale: Scale, quota: Quota) -> None:
        args = [
            sys.executable, "-m", "simulator", "--port", "0",
            "--tpm", str(quota.tpm), "--rpm", str(quota.rpm),
            "--bucket-seconds", repr(scale.minute), "--check-seconds", repr(scale.check_seconds),
            "--request-check-seconds", repr(scale.request_check_seconds),
            "--latency-ms", repr(scale.latency_ms),
            "--latency-jitter-ms", repr(scale.latency_jitter_ms),
            "--api-key", API_KEY, "--seed", "7",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = found.group(1)
        self.http = httpx.Client(base_url=self.url, timeout=30.0)

    def configure(self, **changes: Any) -> None:
        self.http.post("/admin/config", json=changes).raise_for_status()

    def reset(self) -> None:
        """Zero the counts and refill the limits (Azure windows start here)."""
        self.http.post("/stats/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        resp = self.http.get("/stats")
        resp.raise_for_status()
        return dict(resp.json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Fleet:
    """`count` worker processes of one Celery app, each with the threads pool."""

    def __init__(
        self,
        app_module: str,
        queues: str,
        count: int,
        concurrency: int,
        env: dict[str, str],
        ping: Callable[[], int],
        logdir: Path,
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith(("QUOTAFLOW_", "BENCH_"))}
        base.update(env, PYTHONUNBUFFERED="1")
        tag = app_module.replace(".", "-")
        logs = [logdir / f"{tag}-{count}-{i}.log" for i in range(count)]
        for i, log in enumerate(logs):
            args = [
                "nice", "-n", str(WORKER_NICE),
                sys.executable, "-m", "celery", "-A", app_module, "worker", "-Q", queues,
                "-P", "threads", "-c", str(concurrency), "-n", f"{tag}{i}@%h",
                "--without-gossip", "--without-mingle", "-l", "WARNING",
            ]  # fmt: skip
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        args,
                        cwd=ROOT,
                        env=base,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                )
        deadline = time.monotonic() + 120
        while ping() < count:
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
                raise RuntimeError(f"{app_module} workers did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


class CpuMeter:
    """Share of the machine's CPU time that was busy (every process) while inside."""

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def __enter__(self) -> CpuMeter:
        self.busy: float | None = None
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        total, idle = self._read()
        dt, di = total - self._start[0], idle - self._start[1]
        self.busy = (dt - di) / dt if dt else None


def purge(redis_url: str, *queues: str) -> None:
    """Empty the broker's queues (and Kombu's unacked set) between runs."""
    client = redis.Redis.from_url(redis_url)
    client.delete(*queues, "unacked", "unacked_index")
    client.close()
