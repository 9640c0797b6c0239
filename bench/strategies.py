"""quotaflow against the usual alternatives: one workload, one Redis, one simulator.

Run with `make bench` or `python -m bench.strategies` (`--quick` for a small smoke run).
Starts a throwaway redis-server and the simulator (`python -m simulator`), then,
for each worker count, real `celery -A pipeline worker` processes (quotaflow) and real
`celery -A bench.alternatives worker` processes (naive retry, Celery rate_limit, the
article's budget check), and last a single-process asyncio pacer (the cookbook's). Each
run submits the same requests at once and records what the simulator admitted and
refused, when each request finished, and how many broker messages it took. Tables and
plots go to bench/RESULTS.md (between the strategies markers) and bench/strategies_*.png.

Time is scaled down (`bench.workload.Scale`): one provider minute lasts `60 / scale`
seconds, and every time constant of every strategy is scaled alike; latency is not.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import signals

from bench import alternatives
from bench.redis_proc import RedisProcess
from bench.results import RESULTS
from bench.workload import MODEL, Quota, Scale, Workload, describe, make_workload, quota_for
from budget.keys import deployment_keys
from settings import DeploymentSettings, LimiterKind, Settings, settings_env

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench-7c41e0a9"
AZURE_API_VERSION = "2024-10-21"
#: The token bucket's burst against the Azure-style policy, in real seconds: the
#: provider's window (the row the window limiter is compared with).
AZURE_BUCKET_BURST = 10.0
#: The window limiter's guard band, in seconds, not compressed: it absorbs the time
#: between a call's slot and its arrival at the provider, which is this host's
#: scheduling and HTTP delay (tens of ms with a saturated CPU), not a quota time.
#: quotaflow's default (0.25 s) is meant for real providers over the network.
WINDOW_GUARD_SECONDS = 0.04
#: Worker processes (and the pacer) run this much nicer than the submitter, Redis and the
#: simulator, which stand for other machines: the client's and the provider's.
WORKER_NICE = 10
#: A run is called off after this many lower bounds.
CAP_FACTOR = 3.0
STRATEGIES = ("quotaflow", "naive", "ratelimit", "article", "litellm", "pacer")
LABELS = {
    "quotaflow": "quotaflow (gate)",
    "naive": "naive retry (backoff + jitter)",
    "ratelimit": "Celery rate_limit (per worker)",
    "article": "article (fixed window, get+add)",
    "litellm": "LiteLLM Router (usage-based-routing-v2)",
    "pacer": "single-process pacer (cookbook)",
}
TASKS = {
    "naive": "bench.naive",
    "ratelimit": "bench.ratelimited",
    "article": "bench.article",
    "litellm": "bench.litellm",
}
_TINY = {"model": MODEL, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------


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


# -- results -------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One strategy, one policy, one worker count."""

    strategy: str
    policy: str
    #: Worker processes; None for the pacer (one process, no workers).
    workers: int | None
    label: str
    requests: int
    done: int = 0
    failed: int = 0
    finished: bool = True
    #: Calls the provider received, refused with 429, and tokens it charged.
    received: int = 0
    refused_429: int = 0
    tokens_charged: int = 0
    utilization: float = 0.0
    #: Seconds from the first publish to the last result; None when called off.
    makespan: float | None = None
    #: Seconds the run lasted (the cap when called off).
    elapsed: float = 0.0
    lower_bound: float = 0.0
    #: The lower bound less what the provider admits at once from a standing start.
    lower_bound_burst: float = 0.0
    p50: float | None = None
    p95: float | None = None
    #: Broker messages per request (1 + deferrals + retries); None without a broker.
    messages: float | None = None
    wasted: int = 0
    cpu_busy: float | None = None
    #: quotaflow: burst_seconds in real seconds, and the gate's TPM over the quota.
    burst_real: float | None = None
    tpm_share: float = 1.0
    #: quotaflow: the gate's limiter ("bucket" or "window").
    limiter: str = "bucket"
    #: Azure policy: seconds since the provider's periods began, at the reset.
    phase: float = 0.0
    #: The provider's 429s by the dimension that refused.
    refused_by: dict[str, int] = field(default_factory=dict)
    #: Seconds from the start of submission to the first publish (the clock starts there).
    first_publish: float = 0.0
    #: Seconds from the first publish to the last (0 for the pacer, which has no broker).
    publish_seconds: float = 0.0
    note: str = ""
    #: (seconds from the first publish, tokens) of each admission, for plots.
    admissions: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def share_429(self) -> float:
        return self.refused_429 / self.received if self.received else 0.0

    @property
    def span(self) -> float:
        return self.makespan if self.makespan is not None else self.elapsed


@dataclass(frozen=True)
class AzureVariant:
    """One quotaflow deployment for the Azure-style policy."""

    name: str
    #: "window" (quotaflow's default for Azure) or "bucket".
    limiter: LimiterKind
    #: Bucket: burst_seconds in real (unscaled) seconds.
    burst_real: float = AZURE_BUCKET_BURST


@dataclass
class Context:
    scale: Scale
    workload: Workload
    quota: Quota
    redis_url: str
    sim: SimulatorProcess
    logdir: Path
    redis_version: str = ""
    #: The quotaflow code measured: git commit, and whether it had uncommitted changes.
    code_version: str = ""
    #: Share of the CPU busy before the benchmark started (other work on the host).
    background_cpu: float | None = None
    results: list[RunResult] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        """max(charged tokens / TPM, requests / RPM), in seconds."""
        n, t = len(self.workload.bodies), self.workload.total_tokens
        return max(t / self.quota.token_rate, n / self.quota.request_rate)

    @property
    def cap(self) -> float:
        return CAP_FACTOR * self.lower_bound

    def provider_burst(self, policy: str) -> float:
        """Seconds of quota the provider admits at once from a standing start."""
        return self.scale.minute if policy == "openai" else self.scale.check_seconds

    def capacity(self, policy: str, seconds: float, phase: float = 0.0) -> float:
        """Most tokens the provider can admit in the first `seconds` after a reset
        (Azure: whole periods begun, the first `phase` seconds old at the reset)."""
        r = self.quota.token_rate
        if policy == "openai":
            return r * (self.scale.minute + seconds)
        window = self.scale.check_seconds
        into = phase % window
        return r * window * (math.floor((seconds + into) / window) + 1)

    def azure_variants(self) -> list[AzureVariant]:
        return [
            AzureVariant("bench-azure-window", "window"),
            AzureVariant(f"bench-azure-b{AZURE_BUCKET_BURST:g}", "bucket"),
        ]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _measure(
    ctx: Context,
    res: RunResult,
    t0: float,
    published: list[float],
    finished: dict[str, float],
    failed: dict[str, float],
    stats: dict[str, Any],
) -> None:
    """Fill `res` from the finish times and the simulator's own counts."""
    res.lower_bound = ctx.lower_bound
    res.lower_bound_burst = ctx.lower_bound - ctx.provider_burst(res.policy)
    res.done, res.failed = len(finished), len(failed)
    res.finished = res.done + res.failed >= res.requests
    ends = [*finished.values(), *failed.values()]
    last = max(ends) - t0 if ends else ctx.cap
    res.makespan = last if res.finished else None
    res.elapsed = min(ctx.cap, last) if res.finished else ctx.cap
    # The batch is handed over at t0; a request's latency runs from there to its result.
    latencies = [end - t0 for end in finished.values()]
    res.p50, res.p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    res.publish_seconds = max(published, default=t0) - t0
    res.received = int(stats["requests_received"])
    res.refused_429 = int(stats["refused_429"])
    res.refused_by = {str(k): int(v) for k, v in (stats.get("refused_by") or {}).items()}
    res.tokens_charged = int(stats["tokens_charged"])
    res.admissions = [(float(t) - t0, int(c)) for t, c in stats["admissions"]]
    res.phase = float(stats.get("phase_seconds") or 0.0)
    if res.admissions:
        span = max(0.0, max(t for t, _ in res.admissions))
        res.utilization = res.tokens_charged / ctx.capacity(res.policy, span, res.phase)
    res.wasted = res.received - res.done


def _wait(poll: Callable[[], int], n: int, deadline: float) -> None:
    while time.time() < deadline and poll() < n:
        time.sleep(0.05)


# -- quotaflow -----------------------------------------------------------------------------


def quotaflow_settings(ctx: Context, variants: list[AzureVariant]) -> Settings:
    """quotaflow's defaults, with its time-like settings divided by the scale."""
    s, q = ctx.scale, ctx.quota
    default_burst = DeploymentSettings.model_fields["burst_seconds"].default
    # The provider's bucket (a minute) and, if different, quotaflow's default burst.
    openai_bursts = dict.fromkeys([60.0, float(default_burst)])
    deps = [
        DeploymentSettings(
            name=f"bench-openai-b{burst:g}",
            kind="openai",
            model=MODEL,
            base_url=ctx.sim.url + "/v1",
            api_key=API_KEY,
            tpm=q.tpm,
            rpm=q.rpm,
            burst_seconds=burst / s.scale,
            timeout_seconds=10.0,
        )
        for burst in openai_bursts
    ]
    for v in variants:
        window: dict[str, Any] = {
            "window_seconds": s.check_seconds,
            "request_window_seconds": s.request_check_seconds,
            "window_guard_seconds": WINDOW_GUARD_SECONDS,
        }
        deps.append(
            DeploymentSettings(
                name=v.name,
                kind="azure",
                model=MODEL,
                base_url=ctx.sim.url,
                api_version=AZURE_API_VERSION,
                api_key=API_KEY,
                tpm=q.tpm,
                rpm=q.rpm,
                limiter=v.limiter,
                burst_seconds=v.burst_real / s.scale,
                timeout_seconds=10.0,
                **(window if v.limiter == "window" else {}),
            )  # fmt: skip
        )
    d = {name: f.default for name, f in Settings.model_fields.items()}
    scaled = (
        "booking_horizon_seconds", "backoff_base_seconds", "backoff_cap_seconds",
        "defer_jitter_seconds", "max_defer_seconds",
    )  # fmt: skip
    return Settings(
        redis_url=ctx.redis_url,
        key_prefix="qfbench",
        deployments=deps,
        **{name: d[name] / s.scale for name in scaled},
    )


class _PublishClock:
    """When the harness published each task (Celery's before_task_publish).

    The first publish resets the provider and starts the clock: `Jobs.submit_bodies`
    estimates and checks a whole chunk of up to 500 requests before it publishes any, a
    fixed cost that the time compression would magnify; it is reported separately.
    """

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.first: Callable[[], None] | None = None
        signals.before_task_publish.connect(self._seen, weak=False)

    def arm(self, first: Callable[[], None]) -> None:
        self.times.clear()
        self.first = first

    def disarm(self) -> None:
        self.first = None

    def _seen(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        if self.first is None or not headers or "id" not in headers:
            return
        if not self.times:
            self.first()
        self.times[headers["id"]] = time.time()


def clear_gate(client: redis.Redis, settings: Settings, dep_name: str) -> None:
    """Forget everything the gate keeps for a deployment (buckets, cooldown, rate factor).

    Each run starts from a fresh gate, as the provider starts from a reset.
    """
    pattern = deployment_keys(settings.key_prefix, dep_name).tokens.rsplit(":tat:", 1)[0]
    for key in client.scan_iter(match=pattern + ":*", count=1000):
        client.delete(key)


def warm_quotaflow(ctx: Context, settings: Settings, workers: int) -> None:
    """Let each worker process load what it loads once (tiktoken, clients, scripts).

    Workers are long-lived in production; at this time scale a first-use cost of a few
    hundred ms per process would otherwise land inside the measured runs. The provider
    is reset to the roomy bucket first, so the warm-up leaves no 429 behind in the gate.
    """
    from pipeline.jobs import Jobs  # noqa: PLC0415 - needs the app configured first
    from tasks import runtime  # noqa: PLC0415

    rt = runtime.current()
    jobs = Jobs(settings, rt.jobs)
    ctx.sim.configure(policy="openai")
    ctx.sim.reset()
    kinds = {dep.kind: dep.name for dep in reversed(settings.deployments)}  # one of each
    ids = [
        jobs.submit_bodies([_TINY] * (8 * workers), deployment=name).job_id
        for name in kinds.values()
    ]
    deadline = time.time() + 60
    while time.time() < deadline and not all(jobs.status(j).finished for j in ids):
        time.sleep(0.1)
    for dep in settings.deployments:
        clear_gate(rt.redis, settings, dep.name)


def run_quotaflow(
    ctx: Context,
    settings: Settings,
    dep_name: str,
    policy: str,
    workers: int,
    clock: _PublishClock,
) -> RunResult:
    from pipeline.jobs import Jobs  # noqa: PLC0415
    from tasks import runtime  # noqa: PLC0415

    rt = runtime.current()
    jobs = Jobs(settings, rt.jobs)
    dep = settings.deployment(dep_name)
    clear_gate(rt.redis, settings, dep_name)
    burst_real = round(dep.burst_seconds * ctx.scale.scale, 3)
    share = dep.tpm / ctx.quota.tpm
    if dep.limiter == "window":
        label = LABELS["quotaflow"] + (
            f", window limiter (default), guard {dep.window_guard_seconds * 1000:g} ms"
        )
    else:
        label = LABELS["quotaflow"] + f", bucket, burst {burst_real:g} s"
        if burst_real == DeploymentSettings.model_fields["burst_seconds"].default:
            label += " (default)"
    label += f", gate at {share:.0%} TPM" if share < 1 else ""
    res = RunResult("quotaflow", policy, workers, label, len(ctx.workload.bodies))
    res.burst_real = None if dep.limiter == "window" else burst_real
    res.tpm_share, res.limiter = min(1.0, share), dep.limiter
    ctx.sim.configure(policy=policy)
    with CpuMeter() as cpu:
        started = time.time()
        clock.arm(ctx.sim.reset)
        report = jobs.submit_bodies(ctx.workload.bodies, deployment=dep_name)
        clock.disarm()
        t0 = min(clock.times.values(), default=started)
        _wait(lambda: _qf_progress(jobs, report.job_id), res.requests, t0 + ctx.cap)
        stats = ctx.sim.stats()
    res.cpu_busy = cpu.busy
    res.first_publish = t0 - started
    status = jobs.status(report.job_id)
    finished, failed = _qf_times(rt.redis, list(clock.times))
    # Never admissible: refused at submit (recorded on the job as failed), no task.
    failed.update({f"rejected-{e.line}": t0 for e in report.rejected})
    _measure(ctx, res, t0, list(clock.times.values()), finished, failed, stats)
    if report.rejected:
        res.note = f"{len(report.rejected)} refused at submit"
    if report.submitted:
        res.messages = (report.submitted + status.deferrals + status.retries) / report.submitted
    return res


def _qf_progress(jobs: Any, job_id: str) -> int:
    counts = jobs.status(job_id).counts
    return int(counts.get("done", 0) + counts.get("failed", 0))


Times = dict[str, float]


def _qf_times(client: redis.Redis, task_ids: list[str]) -> tuple[Times, Times]:
    """Finish times of the job's tasks: the result backend's `date_done`."""
    done: Times = {}
    failed: Times = {}
    for i in range(0, len(task_ids), 500):
        chunk = task_ids[i : i + 500]
        raws = client.mget([f"celery-task-meta-{t}" for t in chunk])
        for tid, raw in zip(chunk, raws, strict=True):
            meta = json.loads(raw) if raw else {}
            if meta.get("status") not in ("SUCCESS", "FAILURE") or not meta.get("date_done"):
                continue
            when = datetime.fromisoformat(meta["date_done"])
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            (done if meta["status"] == "SUCCESS" else failed)[tid] = when.timestamp()
    return done, failed


# -- the alternatives ----------------------------------------------------------------------


def _alt_params(ctx: Context, policy: str, run: str) -> dict[str, Any]:
    return {
        "run": run,
        "redis_url": ctx.redis_url,
        "kind": "azure" if policy == "azure" else "openai",
        "base_url": ctx.sim.url,
        "api_key": API_KEY,
        "api_version": AZURE_API_VERSION,
        "model": MODEL,
        "scale": ctx.scale.scale,
        "tpm": ctx.quota.tpm,
        "rpm": ctx.quota.rpm,
        # The article budgets one (scaled) minute of tokens per window.
        "window_tokens": ctx.quota.tpm / ctx.scale.scale,
        "nice": WORKER_NICE,
    }


def _alt_progress(client: redis.Redis, run: str) -> int:
    k = alternatives.keys(run)
    pipe = client.pipeline(transaction=False)
    pipe.hlen(k["done"])
    pipe.hlen(k["failed"])
    return int(sum(pipe.execute()))


def rate_limit_per_worker(ctx: Context, workers: int) -> float:
    """Tasks per second per worker: the quota in mean-sized requests, split over W."""
    return ctx.quota.tpm / 60.0 / ctx.workload.mean_tokens / workers


def run_alternative(ctx: Context, strategy: str, policy: str, workers: int | None) -> RunResult:
    client = redis.Redis.from_url(ctx.redis_url)
    run = f"{strategy}-{policy}-{workers or 0}-{int(time.time() * 1000)}"
    p = _alt_params(ctx, policy, run)
    k = alternatives.keys(run)
    n = len(ctx.workload.bodies)
    rids = [str(i) for i in range(n)]
    res = RunResult(strategy, policy, workers, LABELS[strategy], n)
    client.set(k["live"], "1", ex=3600)
    published: list[float] = []
    ctx.sim.configure(policy=policy)
    proc = go = None
    if strategy == "pacer":
        # Loaded (imports, token counts) before the clock starts, like a started script.
        spawn = mp.get_context("spawn")
        go = spawn.Event()
        proc = spawn.Process(
            target=alternatives.run_pacer, args=(ctx.workload.bodies, rids, p, go), daemon=True
        )
        proc.start()
        _wait(lambda: int(client.exists(k["ready"])), 1, time.time() + 60)
    with CpuMeter() as cpu:
        ctx.sim.reset()
        t0 = time.time()
        if go is not None:
            go.set()
        else:
            task = alternatives.app.signature(TASKS[strategy])
            with alternatives.app.producer_or_acquire() as producer:
                for rid, body in zip(rids, ctx.workload.bodies, strict=True):
                    task.apply_async(args=(body, rid, p), producer=producer)
                    published.append(time.time())
        _wait(lambda: _alt_progress(client, run), n, t0 + ctx.cap)
        stats = ctx.sim.stats()
    client.delete(k["live"])  # whatever is still queued or held returns without a call
    if proc is not None:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()
    res.cpu_busy = cpu.busy
    done = {a.decode(): float(b) for a, b in client.hgetall(k["done"]).items()}
    failed = {a.decode(): float(b) for a, b in client.hgetall(k["failed"]).items()}
    counts = {a.decode(): int(b) for a, b in client.hgetall(k["counts"]).items()}
    client.close()
    _measure(ctx, res, t0, published, done, failed, stats)
    if strategy != "pacer":
        res.messages = 1 + (counts.get("retries", 0) + counts.get("deferrals", 0)) / n
    notes = [f"{len(failed)} gave up"] if failed else []
    if strategy == "ratelimit" and workers:
        rate = len(done) / max(1e-9, max(done.values(), default=t0) - t0)
        notes.append(f"{rate:.0f} req/s got through, {rate_limit_per_worker(ctx, 1):.0f} set")
    res.note = "; ".join(notes)
    return res


def warm_alternatives(ctx: Context, workers: int) -> None:
    """As `warm_quotaflow`, for the alternatives' workers (clients, connections)."""
    ctx.sim.configure(policy="openai")
    ctx.sim.reset()
    client = redis.Redis.from_url(ctx.redis_url)
    run = f"warmup-{workers}-{int(time.time() * 1000)}"
    p = _alt_params(ctx, "openai", run)
    client.set(alternatives.keys(run)["live"], "1", ex=600)
    for i in range(8 * workers):
        alternatives.app.send_task("bench.naive", args=(_TINY, str(i), p))
    _wait(lambda: _alt_progress(client, run), 8 * workers, time.time() + 60)
    client.delete(alternatives.keys(run)["live"])
    client.close()


# -- the whole benchmark -------------------------------------------------------------------


def _purge(ctx: Context, *queues: str) -> None:
    client = redis.Redis.from_url(ctx.redis_url)
    client.delete(*queues, "unacked", "unacked_index")
    client.close()


def _record(ctx: Context, res: RunResult) -> None:
    ctx.results.append(res)
    mk = f"{res.makespan:.1f}s" if res.makespan is not None else f"off at {res.elapsed:.0f}s"
    _log(
        f"  {res.policy:6} W={res.workers or '-':>2} {res.label:52} done={res.done}/{res.requests}"
        f" 429={res.refused_429} ({res.share_429:.0%}) util={res.utilization:.2f} {mk}"
        f" ÷LB={res.span / res.lower_bound:.2f} msgs={res.messages or 0:.2f}"
        f" cpu={res.cpu_busy or 0:.0%} {res.note}"
    )
    name = f"{res.policy}-{res.workers or 0}-{res.strategy}-{res.limiter}-{res.burst_real or 0:g}"
    (ctx.logdir / f"{name}-{res.tpm_share:.2f}.json").write_text(json.dumps(res.__dict__))
    # In-flight calls of a finished or called-off run end before the next reset.
    time.sleep(0.3)


def run_quotaflow_fleet(
    ctx: Context, settings: Settings, workers: int, clock: _PublishClock
) -> None:
    from pipeline import app as qf_app  # noqa: PLC0415

    s = ctx.scale
    _log(f"quotaflow: {workers} worker processes x {s.concurrency} threads")

    def start() -> Fleet:
        queues = f"{settings.queue},{settings.retry_queue}"
        ping = lambda: len(qf_app.control.ping(timeout=0.5))  # noqa: E731
        fleet = Fleet("pipeline", queues, workers, s.concurrency, settings_env(settings), ping,
                      ctx.logdir)  # fmt: skip
        warm_quotaflow(ctx, settings, workers)
        return fleet

    plan = [(d.name, "openai" if d.kind == "openai" else "azure") for d in settings.deployments]
    plan = [(name, policy) for name, policy in plan if policy in s.policies]
    fleet = start()
    try:
        for dep_name, policy in plan:
            res = run_quotaflow(ctx, settings, dep_name, policy, workers, clock)
            _record(ctx, res)
            if not res.finished:  # leave nothing behind for the next run
                fleet.stop()
                _purge(ctx, settings.queue, settings.retry_queue)
                fleet = start()
    finally:
        fleet.stop()
        _purge(ctx, settings.queue, settings.retry_queue)


def run_alternatives_fleet(ctx: Context, workers: int, strategies: list[str]) -> None:
    s = ctx.scale
    per_worker = rate_limit_per_worker(ctx, workers)
    _log(f"alternatives: {workers} worker processes x {s.concurrency} threads, "
         f"rate_limit {per_worker:.2f}/s each")  # fmt: skip
    env = {"BENCH_REDIS_URL": ctx.redis_url, "BENCH_RATE_LIMIT": f"{per_worker:.4f}/s"}
    ping = lambda: len(alternatives.app.control.ping(timeout=0.5))  # noqa: E731
    fleet = Fleet("bench.alternatives", alternatives.QUEUE, workers, s.concurrency, env, ping,
                  ctx.logdir)  # fmt: skip
    try:
        warm_alternatives(ctx, workers)
        for policy in s.policies:
            for strategy in strategies:
                _record(ctx, run_alternative(ctx, strategy, policy, workers))
                _purge(ctx, alternatives.QUEUE)
    finally:
        fleet.stop()
        _purge(ctx, alternatives.QUEUE)


def run_all(ctx: Context) -> None:
    from pipeline import app as qf_app  # noqa: PLC0415 - importing builds quotaflow's app
    from pipeline.app import configure  # noqa: PLC0415

    s = ctx.scale
    variants = ctx.azure_variants() if "azure" in s.policies else []
    settings = quotaflow_settings(ctx, variants)
    configure(qf_app, settings)
    clock = _PublishClock()
    alts: list[str] = [a for a in ("naive", "ratelimit", "article", "litellm") if a in s.strategies]
    if "litellm" in alts and not alternatives.HAVE_LITELLM:
        _log("litellm is not installed (pip install -e '.[bench]'): skipping its rows")
        alts.remove("litellm")
    for workers in s.workers:
        if "quotaflow" in s.strategies:
            run_quotaflow_fleet(ctx, settings, workers, clock)
        if alts:
            run_alternatives_fleet(ctx, workers, alts)
    if "pacer" in s.strategies:
        for policy in s.policies:
            _record(ctx, run_alternative(ctx, "pacer", policy, None))


def code_version() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "settings", "budget", "tasks", "pipeline")
    files = [line[3:] for line in dirty.splitlines()]
    return head + (f" plus uncommitted changes to {', '.join(files)}" if files else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.strategies", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("--requests", type=int, default=400, help="requests per run (default %(default)s)")
    add("--lower-bound", type=float, default=6.0,
        help="seconds the workload takes at the quota's rate (default %(default)s)")  # fmt: skip
    add("--scale", type=float, default=30.0, help="time compression (default %(default)s)")
    add("--workers", default="2,8,16", help="worker process counts (default %(default)s)")
    add("--concurrency", type=int, default=16, help="threads per worker (default %(default)s)")
    add("--policies", default="openai,azure", help="simulator policies (default %(default)s)")
    add("--strategies", default=",".join(STRATEGIES), help="which strategies to run")
    add("--quick", action="store_true", help="a small smoke run; RESULTS.md is left alone")
    add("--no-write", action="store_true", help="print the section; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    quick = args.quick
    scale = Scale(
        requests=120 if quick else args.requests,
        lower_bound=4.0 if quick else args.lower_bound,
        scale=args.scale,
        workers=(2,) if quick else tuple(int(x) for x in args.workers.split(",")),
        concurrency=args.concurrency,
        policies=tuple(p for p in args.policies.split(",") if p),
        strategies=tuple(p for p in args.strategies.split(",") if p),
    )
    started = time.time()
    with CpuMeter() as background:
        time.sleep(1.0)
    workload = make_workload(scale.requests)
    quota = quota_for(workload, scale)
    logdir = Path(os.environ.get("BENCH_LOGDIR") or f"/tmp/qf-bench-{os.getpid()}")
    logdir.mkdir(parents=True, exist_ok=True)
    _log(f"workload: {describe(workload)}")
    _log(f"quota: TPM {quota.tpm:,}, RPM {quota.rpm:,}; logs and per-run data in {logdir}")
    with RedisProcess() as server:
        client = redis.Redis.from_url(server.url)
        version = str(client.info("server")["redis_version"])
        client.close()
        alternatives.app.conf.broker_url = server.url
        sim = SimulatorProcess(scale, quota)
        ctx = Context(
            scale, workload, quota, server.url, sim, logdir, version, code_version(),
            background.busy,
        )  # fmt: skip
        try:
            run_all(ctx)
        finally:
            sim.stop()
    from bench import plot  # noqa: PLC0415 - matplotlib only once there is something to draw

    runtime_s = time.time() - started
    _log(f"runs finished in {runtime_s / 60:.1f} min")
    if quick or args.no_write:
        print(plot.render(ctx, runtime_s, []))
        return 0
    section = plot.render(ctx, runtime_s, plot.plot_strategies(ctx))
    plot.write_results(section)
    _log(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
