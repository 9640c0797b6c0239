"""A new user's shared key at real time: the default settings beside a blind neighbour.

    python -m bench.shared_key [--json] [--minutes M] [--neighbour-tpm N ...] [--azure] [--write]

The simulator as OpenAI's bucket is (a minute of quota, 90k TPM / 3k RPM), answering
0.1-0.7 s after the call; a neighbour on the same key that does not ask the gate
(`--neighbour-tpm`, repeatable; default: none, then 36k TPM, 40% of the quota); and M
minutes of quota (default 3) submitted at once to two worker processes (threads, 16
each). Each strategy runs with quotaflow's default settings ("learned"), or with only
`neighbour_learning = false` ("aimd"): no time constant is scaled, as none would be by
a user. `--azure`: the simulator as Azure limits (10 s token periods, 1 s request
periods, minute counters, at a phase the client cannot know) and an `azure` deployment
(the window limiter, its 0.25 s guard band), no neighbour unless one is given.

Measured per run: provider 429s over quotaflow's calls (and those in the first minute,
the gate's first burst), the makespan, and the makespan over its bound (the work past
the full bucket at the rate the neighbour leaves); utilization: the tokens the provider
charged quotaflow and the neighbour from submit to the last result, over what it could
admit in that time (its full bucket plus the quota's rate); the neighbour share the
gate learned while the work ran (mean and peak, of the quota), and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from bench.fleets import AZURE_API_VERSION
from bench.results import cpu_model, write_section
from bench.workload import make_workload
from pipeline import app
from pipeline.app import configure
from pipeline.jobs import Jobs
from pipeline.local import LocalWorkers
from pipeline.redis_server import RedisServer
from settings import DeploymentSettings, Settings
from simulator import Simulator, SimulatorConfig
from tasks import runtime

API_KEY = "sk-bench-shared-key"
MARKERS = {
    False: ("<!-- shared-key:begin -->", "<!-- shared-key:end -->"),
    True: ("<!-- shared-key-azure:begin -->", "<!-- shared-key-azure:end -->"),
}
TPM, RPM = 90_000, 3_000


def run_one(strategy: str, minutes: float, neighbour_tpm: int, azure: bool) -> dict[str, Any]:
    server = RedisServer().start()
    sim = Simulator(
        SimulatorConfig(
            tpm=TPM, rpm=RPM, bucket_seconds=60.0, api_key=API_KEY,
            latency_ms=400.0, latency_jitter_ms=300.0, seed=11,
            policy="azure" if azure else "openai",
        )
    ).start()  # fmt: skip
    try:
        if azure:
            dep = DeploymentSettings(
                name="shared", kind="azure", model="gpt-4o-mini", base_url=sim.url,
                api_version=AZURE_API_VERSION, api_key=API_KEY, tpm=TPM, rpm=RPM,
            )  # fmt: skip
        else:
            dep = DeploymentSettings(
                name="shared", kind="compatible", model="gpt-4o-mini",
                base_url=sim.url + "/v1", api_key=API_KEY, tpm=TPM, rpm=RPM,
            )  # fmt: skip
        settings = Settings(
            redis_url=server.url, deployments=[dep],
            neighbour_learning=strategy == "learned",
        )  # fmt: skip
        configure(app, settings)
        jobs = Jobs(settings, runtime.current().jobs)
        work = make_workload(10_000, seed=3)
        # Whole requests up to `minutes` of quota, charged as the provider charges.
        bodies, total = [], 0
        for body, charge in zip(work.bodies, work.charges, strict=True):
            if total + charge > minutes * TPM:
                break
            bodies.append(body)
            total += charge
        with LocalWorkers(settings, count=2, concurrency=16, pool="threads") as w:
            w.wait_ready()
            sim.configure(neighbour_tpm=neighbour_tpm)
            time.sleep(1.0)
            base = sim.stats()
            t0 = time.monotonic()
            report = jobs.submit_bodies(bodies)
            gate = runtime.current().gate
            learned: list[float] = []
            first_minute_429s = 0
            while not (status := jobs.status(report.job_id)).finished:
                t = time.monotonic() - t0
                if t > 60 * (3 * minutes + 5):
                    raise RuntimeError(f"unfinished: {status}")
                learned.append(gate.snapshot("shared").neighbour_tpm / TPM)
                if t < 60.0:
                    first_minute_429s = sim.stats()["refused_429"] - base["refused_429"]
                time.sleep(0.5)
            makespan = time.monotonic() - t0
            snap = gate.snapshot("shared")
            end = sim.stats()
        calls = end["requests_received"] - base["requests_received"]
        refused = end["refused_429"] - base["refused_429"]
        # The bucket starts full (Azure: one token period's allowance), shared with the
        # neighbour; past it, what the neighbour leaves.
        at_once = TPM * (dep.window_seconds if azure else 60.0) / 60
        bound = max(0.0, total - at_once) / ((TPM - neighbour_tpm) / 60)
        charged = (end["tokens_charged"] - base["tokens_charged"]) + (
            end["neighbour_tokens"] - base["neighbour_tokens"]
        )
        learned = learned or [0.0]
        return {
            "policy": "azure" if azure else "openai",
            "strategy": strategy,
            "neighbour_tpm": neighbour_tpm,
            "requests": len(bodies),
            "tokens": total,
            "calls": calls,
            "provider_429s": refused,
            "share_429": round(refused / max(1, calls), 4),
            "makespan_s": round(makespan, 1),
            "makespan_over_bound": round(makespan / bound, 3) if bound else None,
            "first_minute_429s": first_minute_429s,
            "utilization": round(charged / (at_once + TPM * makespan / 60), 4),
            "learned_mean": round(sum(learned) / len(learned), 4),
            "learned_peak": round(max(learned), 4),
            "learned_neighbour_tpm": round(snap.neighbour_tpm),
            "done": status.counts["done"],
        }
    finally:
        sim.stop()
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line per strategy")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of quota sent")
    parser.add_argument(
        "--neighbour-tpm", type=int, action="append",
        help="the neighbour's tokens/min, repeatable (default: 0, then 36000)",
    )  # fmt: skip
    parser.add_argument("--strategy", choices=("learned", "aimd"), action="append")
    parser.add_argument("--azure", action="store_true", help="Azure's periods, the window limiter")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args(argv)
    rows = []
    default_neighbours = [0] if args.azure else [0, 36_000]
    for neighbour_tpm in args.neighbour_tpm or default_neighbours:
        for strategy in args.strategy or ["learned", "aimd"]:
            rows.append(run_one(strategy, args.minutes, neighbour_tpm, args.azure))
            rows[-1]["load"] = load()
            print(json.dumps(rows[-1]) if args.json else rows[-1], flush=True)
    if args.write:
        command = " ".join(["python -m bench.shared_key", *(argv or sys.argv[1:])])
        write_report(rows, args.minutes, command, args.azure)
    return 0


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def write_report(rows: list[dict[str, Any]], minutes: float, command: str, azure: bool) -> None:
    provider = (
        "the simulator limiting as Azure does (10 s token periods of a sixth of the "
        "minute's tokens, 1 s request periods, minute counters, at a phase the client "
        "cannot know), an `azure` deployment (window limiter, 0.25 s guard band)"
        if azure
        else "the simulator's bucket holding a minute as OpenAI's does"
    )
    at_once = "one token period's allowance" if azure else "its full bucket"
    lines = [
        "## A new user's shared key at real time (`python -m bench.shared_key"
        + (" --azure`)" if azure else "`)"),
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs ({cpu_model()}), shared (load average after each run in "
        f"the last column). {TPM:,} TPM / {RPM:,} RPM, {provider}, answering 0.1-0.7 s "
        "after the call, a neighbour on the key that does not ask the gate (if any), "
        f"{minutes:g} minutes of quota submitted at once to 2 worker processes (threads, "
        '16 each), every setting at its default ("learned"; "aimd" is '
        f"`neighbour_learning = false`). Bound: the work past {at_once} at the rate the "
        "neighbour leaves. Utilization: the tokens the provider charged quotaflow and "
        f"the neighbour from submit to the last result, over {at_once} plus the quota's "
        "rate for that time. Learned share: the gate's neighbour estimate while the work "
        "ran (mean / peak, of the quota), and as the last request finishes.",
        "",
        "| neighbour | strategy | requests | calls | 429s | 429s/call | 429s in the first "
        "minute | makespan, s | over the bound | utilization | learned share, mean / peak "
        "| learned tpm at the end | load |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['neighbour_tpm'] / TPM:.0%} | {r['strategy']} | {r['requests']} | "
            f"{r['calls']} | {r['provider_429s']} | {r['share_429']:.1%} | "
            f"{r['first_minute_429s']} | {r['makespan_s']} | {r['makespan_over_bound']} | "
            f"{r['utilization']:.3f} | {r['learned_mean']:.1%} / {r['learned_peak']:.1%} | "
            f"{r['learned_neighbour_tpm']:,} | {r['load']} |"
        )
    write_section(*MARKERS[azure], "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
