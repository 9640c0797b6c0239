"""The processes a benchmark run drives: the simulator, Celery worker fleets (through
`pipeline.local`, as the CLI and the tests start workers), and a CPU meter over the
whole host."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.workload import MODEL, Quota, Scale
from pipeline.local import LocalWorkers
from pipeline.processes import terminate
from settings import Settings

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
        terminate(self.proc, grace=10)


def start_fleet(
    settings: Settings | None,
    *,
    app: str,
    queues: str,
    count: int,
    concurrency: int,
    ping: Callable[[], int],
    logdir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> LocalWorkers:
    """`count` workers of one Celery app with the threads pool (quotaflow's launcher),
    returned once every one answers `ping`; their logs stay in `logdir`."""
    fleet = LocalWorkers(
        settings, app=app, queues=queues, count=count, concurrency=concurrency,
        pool="threads", loglevel="WARNING", name=f"{app.replace('.', '-')}-{count}",
        extra_env=extra_env, nice=WORKER_NICE, cwd=ROOT, logdir=logdir,
    )  # fmt: skip
    try:
        fleet.start().wait_ready(timeout=120, ping=ping)
    except BaseException:
        fleet.stop(grace=0)
        raise
    return fleet


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
