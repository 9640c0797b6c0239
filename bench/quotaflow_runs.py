"""quotaflow's runs: its settings scaled to the benchmark, its workers warmed up, one
batch submitted with `Jobs.submit_bodies` and timed from the first publish."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from celery import signals

from bench.fleets import API_KEY, AZURE_API_VERSION, WARMUP_BODY, CpuMeter, purge, start_fleet
from bench.measures import (
    LABELS,
    WINDOW_GUARD_SECONDS,
    AzureVariant,
    Context,
    RunResult,
    log,
    measure,
    record,
    wait_until,
)
from bench.workload import MODEL
from budget.keys import deployment_keys
from pipeline.local import LocalWorkers
from settings import DeploymentSettings, Settings


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
        "defer_jitter_seconds", "max_defer_seconds", "intake_poll_seconds",
    )  # fmt: skip
    return Settings(
        redis_url=ctx.redis_url,
        key_prefix="qfbench",
        deployments=deps,
        **{name: d[name] / s.scale for name in scaled},
        # A rate per second: compressed time regains it faster.
        rate_regain_per_second=d["rate_regain_per_second"] * s.scale,
    )


class PublishClock:
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
    # Every deployment: each has its own SDK client and connections in each process.
    ids = [
        jobs.submit_bodies([WARMUP_BODY] * (8 * workers), deployment=dep.name).job_id
        for dep in settings.deployments
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
    clock: PublishClock,
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
        report = jobs.submit_bodies(ctx.workload.bodies, deployment=dep_name, celery_results=True)
        clock.disarm()
        t0 = min(clock.times.values(), default=started)
        wait_until(lambda: _qf_progress(jobs, report.job_id), res.requests, t0 + ctx.cap)
        stats = ctx.sim.stats()
    res.cpu_busy = cpu.busy
    res.first_publish = t0 - started
    status = jobs.status(report.job_id)
    finished, failed = _qf_times(rt.redis, list(clock.times))
    # Never admissible: refused at submit (recorded on the job as failed), no task.
    failed.update({f"rejected-{e.line}": t0 for e in report.rejected})
    measure(ctx, res, t0, list(clock.times.values()), finished, failed, stats)
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


def run_quotaflow_fleet(
    ctx: Context, settings: Settings, workers: int, clock: PublishClock
) -> None:
    from pipeline import app as qf_app  # noqa: PLC0415

    s = ctx.scale
    log(f"quotaflow: {workers} worker processes x {s.concurrency} threads")

    def start() -> LocalWorkers:
        queues = f"{settings.queue},{settings.retry_queue}"
        ping = lambda: len(qf_app.control.ping(timeout=0.5))  # noqa: E731
        fleet = start_fleet(settings, app="pipeline", queues=queues, count=workers,
                            concurrency=s.concurrency, ping=ping, logdir=ctx.logdir)  # fmt: skip
        warm_quotaflow(ctx, settings, workers)
        return fleet

    plan = [(d.name, "openai" if d.kind == "openai" else "azure") for d in settings.deployments]
    plan = [(name, policy) for name, policy in plan if policy in s.policies]
    fleet = start()
    try:
        for dep_name, policy in plan:
            res = run_quotaflow(ctx, settings, dep_name, policy, workers, clock)
            record(ctx, res)
            if not res.finished:  # leave nothing behind for the next run
                fleet.stop()
                purge(ctx.redis_url, settings.queue, settings.retry_queue)
                fleet = start()
    finally:
        fleet.stop()
        purge(ctx.redis_url, settings.queue, settings.retry_queue)
