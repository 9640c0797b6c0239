"""The alternatives' runs (naive retry, Celery rate_limit, the article's check, LiteLLM,
the single-process pacer): the same batch, published straight to `bench.alternatives` or
handed to `bench.pacer`."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import redis

from bench import alternatives, pacer
from bench.fleets import (
    API_KEY,
    AZURE_API_VERSION,
    WARMUP_BODY,
    WORKER_NICE,
    CpuMeter,
    purge,
    start_fleet,
)
from bench.measures import LABELS, Context, RunResult, log, measure, record, wait_until
from bench.workload import MODEL

TASKS = {
    "naive": "bench.naive",
    "ratelimit": "bench.ratelimited",
    "article": "bench.article",
    "litellm": "bench.litellm",
}


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
            target=pacer.run_pacer, args=(ctx.workload.bodies, rids, p, go), daemon=True
        )
        proc.start()
        wait_until(lambda: int(client.exists(k["ready"])), 1, time.time() + 60)
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
        wait_until(lambda: _alt_progress(client, run), n, t0 + ctx.cap)
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
    measure(ctx, res, t0, published, done, failed, stats)
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
        alternatives.app.send_task("bench.naive", args=(WARMUP_BODY, str(i), p))
    wait_until(lambda: _alt_progress(client, run), 8 * workers, time.time() + 60)
    client.delete(alternatives.keys(run)["live"])
    client.close()


def run_alternatives_fleet(ctx: Context, workers: int, strategies: list[str]) -> None:
    s = ctx.scale
    per_worker = rate_limit_per_worker(ctx, workers)
    log(f"alternatives: {workers} worker processes x {s.concurrency} threads, "
         f"rate_limit {per_worker:.2f}/s each")  # fmt: skip
    env = {"BENCH_REDIS_URL": ctx.redis_url, "BENCH_RATE_LIMIT": f"{per_worker:.4f}/s"}
    ping = lambda: len(alternatives.app.control.ping(timeout=0.5))  # noqa: E731
    # Not quotaflow's app: no quotaflow settings, the alternatives read BENCH_* alone.
    fleet = start_fleet(None, app="bench.alternatives", queues=alternatives.QUEUE, count=workers,
                        concurrency=s.concurrency, ping=ping, logdir=ctx.logdir,
                        extra_env=env)  # fmt: skip
    try:
        warm_alternatives(ctx, workers)
        for policy in s.policies:
            for strategy in strategies:
                record(ctx, run_alternative(ctx, strategy, policy, workers))
                purge(ctx.redis_url, alternatives.QUEUE)
    finally:
        fleet.stop()
        purge(ctx.redis_url, alternatives.QUEUE)
