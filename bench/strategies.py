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
import os
import subprocess
import time
from pathlib import Path

import redis

from bench import alternatives, report
from bench.alternative_runs import run_alternative, run_alternatives_fleet
from bench.fleets import ROOT, CpuMeter, SimulatorProcess
from bench.measures import STRATEGIES, Context, log, record
from bench.quotaflow_runs import PublishClock, quotaflow_settings, run_quotaflow_fleet
from bench.results import RESULTS
from bench.workload import Scale, describe, make_workload, quota_for
from pipeline.redis_server import RedisServer


def run_all(ctx: Context) -> None:
    from pipeline import app as qf_app  # noqa: PLC0415 - importing builds quotaflow's app
    from pipeline.app import configure  # noqa: PLC0415

    s = ctx.scale
    variants = ctx.azure_variants() if "azure" in s.policies else []
    settings = quotaflow_settings(ctx, variants)
    configure(qf_app, settings)
    clock = PublishClock()
    alts: list[str] = [a for a in ("naive", "ratelimit", "article", "litellm") if a in s.strategies]
    if "litellm" in alts and not alternatives.HAVE_LITELLM:
        log("litellm is not installed (pip install -e '.[bench]'): skipping its rows")
        alts.remove("litellm")
    for workers in s.workers:
        if "quotaflow" in s.strategies:
            run_quotaflow_fleet(ctx, settings, workers, clock)
        if alts:
            run_alternatives_fleet(ctx, workers, alts)
    if "pacer" in s.strategies:
        for policy in s.policies:
            record(ctx, run_alternative(ctx, "pacer", policy, None))


def code_version() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.rstrip()  # porcelain lines may start with a space

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    measured = ("settings", "budget", "tasks", "pipeline", "simulator")
    dirty = git("status", "--porcelain", "--", *measured)
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
    log(f"workload: {describe(workload)}")
    log(f"quota: TPM {quota.tpm:,}, RPM {quota.rpm:,}; logs and per-run data in {logdir}")
    with RedisServer() as server:
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
    runtime_s = time.time() - started
    log(f"runs finished in {runtime_s / 60:.1f} min")
    if quick or args.no_write:
        print(report.render(ctx, runtime_s, []))
        return 0
    from bench import plots  # noqa: PLC0415 - matplotlib only once there is something to draw

    section = report.render(ctx, runtime_s, plots.plot_strategies(ctx))
    report.write_results(section)
    log(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
