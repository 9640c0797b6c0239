"""A backlog many times the booking horizon: broker messages per request, and whether
a light deployment beside the saturated one still gets through.

    python -m bench.backlog [--json] [--requests N] [--short] [--write [--before FILE]]

Time is compressed: the booking horizon is 2 s, and a batch of N chat requests
(default 600, ~45 s of the heavy deployment's quota: over 20 horizons) is submitted
at once to a simulated 90k TPM provider. Beside it, a light deployment on its own
simulator gets one request every 0.5 s, measured from submit to result; it is first
measured alone, then beside the backlog. Two workers, threads pool, 16 threads each.

Messages per request are the workers' deliveries (`deliveries_total`, every queue
and reason) over the requests of both deployments. Worker CPU is the workers'
user + system time from the submit to the end. `--write` puts the table in
bench/RESULTS.md (with `--before FILE`, a JSON line of the same run on earlier code).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.results import cpu_model, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- backlog:begin -->", "<!-- backlog:end -->"
API_KEY = "sk-bench-backlog"
HORIZON = 2.0
HEAVY_TPM, HEAVY_RPM = 90_000, 3_000
LIGHT_EVERY = 0.5
SHORT_REQUESTS = 60


def _bodies(n: int, model: str, seed: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    words = ["the", "budget", "admits", "each", "request", "once", "and", "defers", "the", "rest"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 60)))
        out.append({
            "model": model,
            "messages": [{"role": "user", "content": f"{i}: {text}"}],
            "max_tokens": rng.choice([16, 32, 64, 128]),
        })  # fmt: skip
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


class LightTraffic:
    """One light-deployment request every LIGHT_EVERY seconds, timed submit to result."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(16)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._futures: list[Any] = []

    def start(self) -> LightTraffic:
        self._thread.start()
        return self

    def _one(self, i: int, body: dict[str, Any]) -> None:
        from pipeline import app
        from tasks import runtime

        # By the app, not the shared task: a thread's current app is Celery's default.
        complete = app.tasks["quotaflow.complete"]
        jobs = runtime.current().jobs
        cid = f"{self.tag}-{i}"
        t0 = time.monotonic()
        complete.delay(body, deployment="light", job_id="light", custom_id=cid)
        deadline = t0 + 120
        while jobs.get_result("light", cid) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"light request {cid} unfinished after 120 s")
            time.sleep(0.02)
        self.latencies.append(time.monotonic() - t0)

    def _run(self) -> None:
        for i, body in enumerate(_bodies(10_000, "gpt-4.1-mini", seed=9)):
            if self._stop.wait(LIGHT_EVERY):
                break
            self._futures.append(self._pool.submit(self._one, i, body))

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()  # a request that failed fails the run
        return self.latencies


def run(n: int) -> dict[str, Any]:
    from pipeline import app
    from pipeline.app import configure
    from pipeline.jobs import Jobs
    from pipeline.local import LocalWorker
    from pipeline.redis_server import RedisServer
    from settings import DeploymentSettings, Settings
    from simulator import Simulator, SimulatorConfig
    from tasks import runtime
    from tasks.metrics import parse_field

    heavy_sim = Simulator(
        SimulatorConfig(tpm=HEAVY_TPM, rpm=HEAVY_RPM, bucket_seconds=2.0, latency_ms=20,
                        latency_jitter_ms=20, api_key=API_KEY)
    ).start()  # fmt: skip
    light_sim = Simulator(
        SimulatorConfig(tpm=600_000, rpm=6_000, bucket_seconds=2.0, latency_ms=20,
                        latency_jitter_ms=20, api_key=API_KEY)
    ).start()  # fmt: skip
    server = RedisServer().start()
    logdir = Path(tempfile.mkdtemp(prefix="qf-backlog-"))
    workers: list[LocalWorker] = []
    try:

        def dep(name: str, model: str, sim: Simulator, tpm: int, rpm: int) -> DeploymentSettings:
            return DeploymentSettings(
                name=name, kind="compatible", model=model, base_url=sim.url + "/v1",
                api_key=API_KEY, tpm=tpm, rpm=rpm, burst_seconds=1.0, accounting="estimate",
                timeout_seconds=5.0,
            )  # fmt: skip

        heavy = dep("heavy", "gpt-4o-mini", heavy_sim, HEAVY_TPM, HEAVY_RPM)
        settings = Settings(
            redis_url=server.url,
            booking_horizon_seconds=HORIZON,
            max_defer_seconds=HORIZON,
            defer_jitter_seconds=0.5,
            late_tolerance_seconds=1.0,
            budget_outage_wait_seconds=5.0,
            deployments=[heavy, dep("light", "gpt-4.1-mini", light_sim, 600_000, 6_000)],
        )
        configure(app, settings)
        rt = runtime.current()
        jobs = Jobs(settings, rt.jobs)
        for i in range(2):
            w = LocalWorker(
                settings, hostname=f"w{i}@%h", log_path=logdir / f"w{i}.log", cwd=ROOT,
                pool="threads", concurrency=16,
            )  # fmt: skip
            workers.append(w)
        for w in workers:
            w.wait_ready(timeout=120)

        alone = LightTraffic("alone").start()
        time.sleep(10.0)
        alone_lat = alone.stop()

        rt.metrics.client.delete(rt.metrics.key)  # count the combined run only
        cpu0 = sum(_cpu_seconds(w.pid) for w in workers)
        light = LightTraffic("beside").start()
        t0 = time.monotonic()
        report = jobs.submit_bodies(_bodies(n, "gpt-4o-mini", seed=5), job_id="heavy")
        charged = report.tokens_estimated
        deadline = t0 + 600
        while not (status := jobs.status("heavy")).finished:
            if time.monotonic() > deadline:
                raise RuntimeError(f"heavy job unfinished after 600 s: {status}")
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        light_lat = light.stop()
        cpu = sum(_cpu_seconds(w.pid) for w in workers) - cpu0

        deliveries = 0.0
        for raw, value in rt.metrics.read().items():
            name, _labels = parse_field(raw)
            if name == "deliveries_total":
                deliveries += value
        requests = n + len(light_lat)
        rate = HEAVY_TPM / 60
        # What the gate could admit from submit to the last result: the burst + the rate.
        capacity = rate * (heavy.burst_seconds + elapsed)
        stats = heavy_sim.stats()
        return {
            "requests": requests,
            "backlog_over_horizon": round(charged / rate / HORIZON, 1),
            "msgs_per_request": round(deliveries / requests, 3),
            "provider_429s": stats["refused_429"] + light_sim.stats()["refused_429"],
            "utilization": round(stats["tokens_charged"] / capacity, 3),
            "other_deployment_p95_s": round(_p95(light_lat), 3),
            "worker_cpu_ms_per_request": round(1000 * cpu / requests, 2),
            "other_deployment_alone_p95_s": round(_p95(alone_lat), 3),
            "heavy_done": status.counts["done"],
            "heavy_deferrals": status.deferrals,
            "heavy_seconds": round(elapsed, 1),
        }
    finally:
        for w in workers:
            w.stop()
        server.cleanup()
        heavy_sim.stop()
        light_sim.stop()


def write_report(after: dict[str, Any], before: dict[str, Any] | None) -> None:
    keys = [
        ("requests", "requests (both deployments)"),
        ("backlog_over_horizon", "backlog / booking horizon"),
        ("msgs_per_request", "broker messages per request"),
        ("heavy_deferrals", "deferrals (heavy deployment)"),
        ("provider_429s", "provider 429s"),
        ("utilization", "utilization of the heavy deployment"),
        ("other_deployment_alone_p95_s", "light deployment p95, alone, s"),
        ("other_deployment_p95_s", "light deployment p95, beside the backlog, s"),
        ("worker_cpu_ms_per_request", "worker CPU per request, ms"),
        ("short_backlog_worker_cpu_ms_per_request", "worker CPU per request, short backlog, ms"),
    ]
    rows = ["| | before (deferral churn) | after (backlog in the broker) |", "|---|--:|--:|"]
    for key, label in keys:
        b = before.get(key, "") if before else ""
        rows.append(f"| {label} | {b} | {after.get(key, '')} |")
    section = "\n".join([
        "## A backlog of many booking horizons (`python -m bench.backlog`)",
        "",
        f"Made on {os.cpu_count()} CPUs ({cpu_model()}), shared. Booking horizon {HORIZON:g} s;",
        f"{after['heavy_done']} requests submitted at once to a 90k TPM deployment (a backlog",
        f"of {after['backlog_over_horizon']:g} horizons); a light deployment beside it gets one",
        "request every 0.5 s for as long as the backlog lasts (so a longer run has more of",
        "them). Two workers, threads pool, 16 threads each. Before: the same benchmark on",
        "the code without per-deployment queues (every request on the main queue; one",
        "beyond the horizon is deferred again and again). Utilization: tokens the provider",
        "charged over what the deployment allowed from submit to the last result (burst +",
        "rate x time). The short backlog: the same run with "
        f"{SHORT_REQUESTS} heavy requests (about two horizons).",
        "",
        *rows,
        "",
    ])  # fmt: skip
    write_section(BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    parser.add_argument("--before", type=Path, help="JSON of the same run on earlier code")
    parser.add_argument("--short", action="store_true", help="also run a short backlog")
    args = parser.parse_args(argv)
    result = run(args.requests)
    if args.short:
        # The same pipeline with a backlog of about two horizons: CPU per request
        # should be no worse with the long one.
        short = run(SHORT_REQUESTS)
        result["short_backlog_over_horizon"] = short["backlog_over_horizon"]
        result["short_backlog_worker_cpu_ms_per_request"] = short["worker_cpu_ms_per_request"]
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    if args.write:
        before = json.loads(args.before.read_text()) if args.before else None
        write_report(result, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
