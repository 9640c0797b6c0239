"""Crash recovery with the default settings: from the fault to every request done.

    nice python -m bench.recovery            # every scenario, in parallel; ~15 minutes
    python -m bench.recovery --only threads-sigkill

Each scenario runs in its own process with its own redis-server (AOF on), its own
simulated provider and its own workers, with quotaflow's default settings (only the
Redis URL and the deployment are set; the visibility timeout is derived). A batch
is submitted to one worker; once some requests are done, others running and others
deferred (booked ahead, held by the worker), the fault strikes; a supervisor starts
a worker again where one died. The time measured runs from the fault to the last
request done. Results go to the recovery section of bench/CHAOS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench.results import cpu_model
from pipeline.local import LocalWorker
from pipeline.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
CHAOS = Path(__file__).resolve().parent / "CHAOS.md"
BEGIN, END = "<!-- recovery:begin -->", "<!-- recovery:end -->"
API_KEY = "sk-bench-recovery"
N = 48

#: name -> (pool, what happens)
SCENARIOS = {
    "none": ("threads", "none (baseline: the same point of the same batch, no fault)"),
    "threads-sigkill": ("threads", "SIGKILL of the whole worker (threads pool)"),
    "prefork-sigkill": ("prefork", "SIGKILL of the whole worker (prefork: main and children)"),
    "prefork-child-sigkill": ("prefork", "SIGKILL of the prefork pool children only"),
    "connection-drop": ("threads", "broker connections dropped (`CLIENT KILL TYPE normal`)"),
    "redis-restart": ("threads", "Redis restart (SIGTERM, 3 s down, AOF on)"),
}


def _bodies(n: int) -> list[dict[str, Any]]:
    text = "summarise the budget that admits each request once and defers the rest " * 4
    return [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"{i}: {text}"}],
            "max_tokens": 400,
        }
        for i in range(n)
    ]


def run_scenario(name: str) -> dict[str, Any]:
    """One scenario, in this process: returns its figures."""
    from pipeline import app
    from pipeline.app import configure
    from pipeline.broker import queue_depth
    from pipeline.jobs import Jobs
    from settings import DeploymentSettings, Settings
    from simulator import Simulator, SimulatorConfig
    from tasks import runtime

    pool, _ = SCENARIOS[name]
    sim = Simulator(
        SimulatorConfig(tpm=12_000, rpm=600, latency_ms=3000, latency_jitter_ms=500,
                        api_key=API_KEY)
    ).start()  # fmt: skip
    server = RedisServer(appendonly=True).start()
    logdir = Path(tempfile.mkdtemp(prefix=f"qf-recovery-{name}-"))
    workers: list[LocalWorker] = []
    try:
        dep = DeploymentSettings(
            name="sim", kind="compatible", model="gpt-4o-mini", base_url=sim.url + "/v1",
            api_key=API_KEY, tpm=12_000, rpm=600, accounting="estimate",
        )  # fmt: skip
        settings = Settings(redis_url=server.url, deployments=[dep])  # the defaults otherwise
        configure(app, settings)
        rt = runtime.current()
        jobs = Jobs(settings, rt.jobs)

        def start() -> LocalWorker:
            name = f"w{len(workers)}"
            w = LocalWorker(
                settings, hostname=f"{name}@%h", log_path=logdir / f"{name}.log", cwd=ROOT,
                pool=pool, concurrency=8 if pool == "threads" else 4,
            )  # fmt: skip
            workers.append(w)
            return w.wait_ready(timeout=120)

        first = start()
        report = jobs.submit_bodies(_bodies(N))
        deadline = time.monotonic() + 300
        while True:
            status = jobs.status(report.job_id)
            depth = queue_depth(rt.redis, settings)
            if status.counts["done"] >= 8 and sum(depth.deferred.values()) > 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no deferrals to lose: {status}")
            time.sleep(0.2)
        held = sum(depth.unacked.values())
        deferred = sum(depth.deferred.values())
        calls_before = sim.stats()["requests_received"]
        fault = time.monotonic()
        if name in ("threads-sigkill", "prefork-sigkill"):
            first.kill()
            start()  # the supervisor's restart
        elif name == "prefork-child-sigkill":
            for pid in first.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif name == "connection-drop":
            admin = redis.Redis.from_url(server.url)
            admin.client_kill_filter(_type="normal", skipme=True)
            admin.close()
        elif name == "redis-restart":
            server.restart(down_seconds=3.0)
        restarted = 0
        deadline = time.monotonic() + 3600
        while True:
            if not any(w.alive() for w in workers):
                start()  # a worker the fault crashed; the supervisor starts it again
                restarted += 1
            try:
                status = jobs.status(report.job_id)
            except redis.ConnectionError:
                status = None
            if status is not None and status.finished:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: unfinished after an hour: {status}")
            time.sleep(0.5)
        elapsed = time.monotonic() - fault
        out = list(jobs.output_lines(report.job_id))
        ids = [o["custom_id"] for o in out]
        ok = sum(1 for o in out if o["error"] is None)
        return {
            "scenario": name,
            "pool": pool,
            "held": held,
            "deferred": deferred,
            "seconds": round(elapsed, 1),
            "visibility_timeout": settings.visibility_timeout,
            "requests": N,
            "succeeded": ok,
            "duplicates": len(ids) - len(set(ids)),
            "calls_after_fault": sim.stats()["requests_received"] - calls_before,
            "workers_restarted": restarted,
        }
    finally:
        for w in workers:
            w.stop()
        server.cleanup()
        sim.stop()


def _run_child(name: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.recovery", "--child", name],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def write_report(rows: list[dict[str, Any]]) -> None:
    vt = rows[0]["visibility_timeout"]
    table = [
        "| fault | pool | held by the worker (deferred) | fault to all done, s | "
        "succeeded | duplicated results |",
        "|---|---|---|--:|--:|--:|",
    ]
    for r in rows:
        table.append(
            f"| {SCENARIOS[r['scenario']][1]} | {r['pool']} | {r['held']} ({r['deferred']}) "
            f"| {r['seconds']:.0f} | {r['succeeded']}/{r['requests']} | {r['duplicates']} |"
        )
    section = "\n".join([
        "## Crash recovery with the default settings",
        "",
        f"Made by `nice python -m bench.recovery` on {os.cpu_count()} CPUs ({cpu_model()}).",
        "",
        f"Default settings: the visibility timeout is derived ({vt} s: twice the longer of",
        "the longest countdown, 360 s, and the task time limit, 370 s). Each row: one worker,",
        f"a batch of {N} chat requests (400 max_tokens) on a simulated 12k TPM provider",
        "with 3 s latency, so some requests run and others are booked ahead (held by the",
        "worker as ETA tasks) when the fault strikes; a supervisor restarts a dead worker.",
        "",
        *table,
        "",
        "A message a worker held when it died (running, or deferred with a countdown)",
        "stays in Redis's unacked hash and returns once the visibility timeout has passed",
        "(kombu looks every 10 s): the visibility timeout is the recovery time. Prefork",
        "children killed alone are requeued at once (`task_reject_on_worker_lost`). When",
        "the connection drops and Redis stays up, the worker hands its messages back as",
        "it reconnects: no delay beyond the baseline. When Redis itself restarts, the",
        "worker cannot hand them back (and may exit; the supervisor restarts it): they",
        "return after the visibility timeout. Lower it by shortening",
        "`booking_horizon_seconds`, `max_defer_seconds` and `budget_outage_wait_seconds`.",
        "",
    ])  # fmt: skip
    text = CHAOS.read_text(encoding="utf-8") if CHAOS.exists() else "# Chaos\n"
    block = f"{BEGIN}\n{section}{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    CHAOS.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--child", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_scenario(args.child)), flush=True)
        return 0
    if args.report:  # rewrite the section from the JSON lines a run printed
        rows = [json.loads(line) for line in args.report.read_text().splitlines() if line]
        write_report(rows)
        return 0
    names = args.only or list(SCENARIOS)
    with ThreadPoolExecutor(len(names)) as pool:
        rows = list(pool.map(_run_child, names))
    for r in rows:
        print(json.dumps(r))
    write_report(rows)
    print(f"wrote {CHAOS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
