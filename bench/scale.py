"""What one request costs the pipeline: `python -m bench.scale --requests N [--json]`.

N requests of the benchmark workload go through `Jobs.submit` and real local workers
(threads pool) to the simulator, whose quota is far above what the host can drive, so
the pipeline, not the quota, is the limit. Measured over the run, from the first
publish to the last result:

- CPU from /proc of every process of the run (this process: the submitter; the
  workers; Redis; the simulator), and of the workers alone;
- broker messages per request (1 + deferrals + retries, from the job's counts);
- Redis `used_memory` (INFO memory): its peak, sampled while the run lasts, and what is
  left once every request has finished, over the same reading taken before the run;
- submit and end-to-end rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from pydantic import SecretStr

from bench.fleets import API_KEY, SimulatorProcess
from bench.workload import Quota, Scale, make_workload
from pipeline.app import app as celery_app
from pipeline.app import connect
from pipeline.jobs import Jobs
from pipeline.local import LocalWorkers
from pipeline.redis_server import RedisServer
from settings import DeploymentSettings, Settings

#: A quota no run on one host comes near: the gate always grants at once.
TPM = 2_000_000_000
RPM = 100_000_000
#: Requests that warm the workers up (clients, tokenizers, connections) before measuring.
WARMUP = 20
#: Seconds between two readings of Redis's memory while the run lasts.
SAMPLE_SECONDS = 0.1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScaleResult:
    """One run of N requests (the `--json` keys, in order)."""

    requests: int
    #: CPU of every process of the run (submitter, workers, Redis, simulator), ms/request.
    cpu_ms_per_request: float
    #: CPU of the worker processes alone, ms/request.
    worker_cpu_ms_per_request: float
    #: Broker messages per request: 1 + deferrals + transient retries.
    msgs_per_request: float
    #: Peak Redis memory during the run over the memory before it, per request.
    redis_peak_bytes_per_request: float
    #: Redis memory once every request finished, over the memory before it, per request.
    redis_bytes_per_request_after: float
    #: Requests published per second by one submitting process.
    submit_per_s: float
    #: Requests finished per second, from the first publish to the last result.
    requests_per_s: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14-17 of stat(5): utime, stime, cutime, cstime; [0] here is field 3.
    return sum(int(x) for x in fields[11:15]) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
    return out


def cpu_of(pids: Iterable[int]) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in pids}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


class PeakMemory:
    """Redis's largest `used_memory` while inside, read every SAMPLE_SECONDS."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.peak = used_memory(client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, used_memory(self.client))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, used_memory(self.client))


def settings_for(redis_url: str, sim_url: str) -> Settings:
    dep = DeploymentSettings(
        name="scale",
        kind="compatible",
        model="gpt-4o-mini",
        base_url=sim_url + "/v1",
        api_key=SecretStr(API_KEY),
        tpm=TPM,
        rpm=RPM,
        accounting="estimate",
        timeout_seconds=30.0,
    )
    return Settings(redis_url=redis_url, deployments=[dep])


@contextlib.contextmanager
def stack(
    workers: int, concurrency: int, latency_ms: float
) -> Iterator[tuple[Settings, LocalWorkers, int, int]]:
    """Redis, the simulator and the workers; yields (settings, workers, redis pid, sim pid)."""
    scale = Scale(
        requests=0, lower_bound=1.0, scale=1.0, workers=(), concurrency=0, policies=(),
        strategies=(), latency_ms=latency_ms, latency_jitter_ms=latency_ms,
    )  # fmt: skip
    with contextlib.ExitStack() as es:
        server = es.enter_context(RedisServer())
        sim = SimulatorProcess(scale, Quota(tpm=TPM, rpm=RPM))
        es.callback(sim.stop)
        settings = settings_for(server.url, sim.url)
        connect(celery_app, settings)
        local = LocalWorkers(
            settings, count=workers, concurrency=concurrency, pool="threads",
            loglevel="WARNING", name="scale",
        )  # fmt: skip
        es.callback(local.stop)
        # Workers log at WARNING (per-task INFO lines would be measured too), so their
        # " ready." line never shows: they are ready when every one answers a ping.
        local.start().wait_ready(
            timeout=120, ping=lambda: len(celery_app.control.ping(timeout=0.5))
        )
        assert server.proc is not None
        yield settings, local, server.proc.pid, sim.proc.pid


def wait_finished(jobs: Jobs, job_id: str, local: LocalWorkers, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not jobs.status(job_id).finished:
        local.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g}s")
        time.sleep(0.05)


def run(
    n: int, *, workers: int = 2, concurrency: int = 32, latency_ms: float = 20.0
) -> ScaleResult:
    bodies = make_workload(n).bodies
    with stack(workers, concurrency, latency_ms) as (settings, local, redis_pid, sim_pid):
        rt = connect(celery_app, settings)
        jobs = Jobs(settings, rt.jobs)
        jobs.submit_bodies(make_workload(WARMUP, seed=1).bodies, job_id="warmup")
        wait_finished(jobs, "warmup", local, timeout=120)
        time.sleep(0.5)  # the warm-up's acks and result writes land before the baseline
        worker_pids = [p for w in local.workers for p in descendants(w.pid)]
        others = [os.getpid(), redis_pid, *descendants(sim_pid)]
        before = cpu_of([*worker_pids, *others])
        base = used_memory(rt.redis)
        with PeakMemory(rt.redis) as mem:
            t0 = time.monotonic()
            report = jobs.submit_bodies(bodies, job_id="scale")
            t_submit = time.monotonic() - t0
            wait_finished(jobs, "scale", local, timeout=max(300.0, n * 0.05))
            elapsed = time.monotonic() - t0
        after_cpu = cpu_of(before)
        time.sleep(0.5)  # the last acks land
        after = used_memory(rt.redis)
        status = jobs.status("scale")
    if report.submitted != n or status.counts["done"] != n:
        raise RuntimeError(f"{report.submitted} submitted, {status.counts} of {n}")
    spent = {p: after_cpu[p] - before[p] for p in before}
    per = 1000.0 / n
    return ScaleResult(
        requests=n,
        cpu_ms_per_request=round(sum(spent.values()) * per, 3),
        worker_cpu_ms_per_request=round(sum(spent[p] for p in worker_pids) * per, 3),
        msgs_per_request=round((n + status.deferrals + status.retries) / n, 3),
        redis_peak_bytes_per_request=round((mem.peak - base) / n, 1),
        redis_bytes_per_request_after=round((after - base) / n, 1),
        submit_per_s=round(n / t_submit, 1),
        requests_per_s=round(n / elapsed, 1),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, required=True, help="requests to run (N)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--workers", type=int, default=2, help="worker processes (threads pool)")
    p.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulator base latency")
    args = p.parse_args(argv)
    if args.requests < 1:
        p.error("--requests must be at least 1")
    result = run(
        args.requests, workers=args.workers, concurrency=args.concurrency,
        latency_ms=args.latency_ms,
    )  # fmt: skip
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for key, value in asdict(result).items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
