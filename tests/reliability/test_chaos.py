"""The soak behind `make chaos`: load, faults of every kind, crashes, a Redis restart,
bad input, and a neighbour on the same deployment. Prints its report (the soak table
of bench/CHAOS.md); it writes no tracked file."""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, cluster_settings
from support.workload import bodies

from pipeline.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N = 600


def bad_lines() -> list[str]:
    ok = bodies(1)[0]
    return [
        "{truncated",
        json.dumps({"custom_id": "no-url", "method": "POST", "body": ok}),
        json.dumps(
            {
                "custom_id": "bad-body",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": [1, 2],
            }
        ),
        json.dumps(
            {
                "custom_id": "huge",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**ok, "max_tokens": 100_000},
            }
        ),
        json.dumps(
            {
                "custom_id": "long",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**ok, "messages": [{"role": "user", "content": "x " * 140_000}]},
            }
        ),
        json.dumps(
            {
                "custom_id": "wrong-type",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**ok, "max_tokens": "ten"},
            }
        ),
    ]


def test_chaos_soak(simulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    redis_server = RedisServer(appendonly=True).start()
    sim = simulator(
        tpm=90_000,
        rpm=3_000,
        bucket_seconds=2.0,
        fail_5xx_rate=0.2,
        timeout_rate=0.1,
        timeout_hang_seconds=3.0,
        drop_rate=0.03,
        neighbour_tpm=15_000,
        seed=11,
    )
    c = Cluster(
        cluster_settings(
            redis_server.url,
            sim,
            budget_outage_wait_seconds=20,
            max_retries=12,
            deployment={"timeout_seconds": 1.0},
        )
    )
    rng = random.Random(5)
    events: Counter[str] = Counter()
    t0 = time.monotonic()
    try:
        c.start_workers(2)
        path = tmp_path / "chaos.jsonl"
        good = bodies(N, seed=12)
        lines = [
            json.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
            )
            for i, b in enumerate(good)
        ]
        bad = bad_lines()
        for text in bad:
            lines.insert(rng.randrange(len(lines)), text)
        path.write_text("\n".join(lines) + "\n")
        report = c.jobs.submit_file(path)
        assert report.submitted == N and len(report.rejected) == len(bad)

        def live_worker() -> Any:
            return next(w for w in c.workers if w.proc.poll() is None)

        recovered = 0
        step = 0
        while not c.jobs.status(report.job_id).finished:
            assert time.monotonic() - t0 < 800, c.jobs.status(report.job_id)
            time.sleep(3)
            step += 1
            if step in (3, 6, 9, 12):  # pool children die mid-call
                for pid in live_worker().children()[:2]:
                    os.kill(pid, signal.SIGKILL)
                    events["pool process SIGKILL"] += 1
            if step == 8:  # a whole worker dies; a supervisor starts another
                live_worker().kill()
                events["worker main process SIGKILL"] += 1
                c.start_workers(1)
            if step == 14:  # Redis restarts (AOF on)
                alive = [w for w in c.workers if w.proc.poll() is None]
                redis_server.stop()
                time.sleep(3)
                redis_server.start()
                events["Redis restart"] += 1
                time.sleep(2)
                for w in alive:
                    if w.proc.poll() is not None:
                        events["worker crashed by the restart (restarted)"] += 1
                        c.start_workers(1)
            recovered += c.jobs.recover(report.job_id)
        elapsed = time.monotonic() - t0
        status = c.jobs.status(report.job_id)
        out = list(c.jobs.output_lines(report.job_id))
        ids = [o["custom_id"] for o in out]
        expected = {f"r{i}" for i in range(N)}
        got_ok = {o["custom_id"] for o in out if o["response"] and o["error"] is None}
        dead = {o["custom_id"] for o in out if o["error"] is not None}
        lost = expected - got_ok - dead
        duplicates = len(ids) - len(set(ids))
        stats = sim.stats()
        assert not lost and duplicates == 0
        reasons = Counter(
            json.loads(raw)["error"]["code"]
            for raw in c.jobs.store.dead_letters(report.job_id).values()
        )
        write_report(
            tmp_path / "CHAOS.md",
            elapsed=elapsed,
            status=status,
            stats=stats,
            events=events,
            lost=len(lost),
            duplicates=duplicates,
            recovered=recovered,
            rejected=report.rejected,
            reasons=reasons,
            ok=len(got_ok & expected),
        )
    finally:
        c.stop()
        redis_server.cleanup()


def write_report(path: Path, **f: Any) -> None:
    stats, status = f["stats"], f["status"]
    calls = stats["requests_received"]
    faults = ("5xx", "timeout", "drop")
    machine = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, " + (
        f"Python {platform.python_version()}, "
        + subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
        .stdout.split(" v=")[-1]
        .split()[0]
    )
    rows = [
        ("requests submitted (valid)", N),
        ("bad input lines tried", len(f["rejected"])),
        ("succeeded", f["ok"]),
        ("dead-lettered with a reason", sum(f["reasons"].values())),
        ("**lost**", f["lost"]),
        ("**duplicated results**", f["duplicates"]),
        ("provider calls", calls),
        ("provider 429s (simulator's count)", stats["refused_429"]),
        ("429 share of calls", f"{stats['refused_429'] / max(1, calls):.4f}"),
        ("neighbour tokens consumed", stats["neighbour_tokens"]),
        ("injected 5xx / timeouts / drops", " / ".join(str(stats["faults"][k]) for k in faults)),
        ("transient retries (retry queue)", status.retries),
        ("deferrals (main queue)", status.deferrals),
        ("requests re-sent after a lost message", f["recovered"]),
        ("wall time, s", f"{f['elapsed']:.0f}"),
    ]
    lines = [
        "# Chaos soak",
        "",
        "Made by `make chaos` (tests/reliability/test_chaos.py) on " + machine + ".",
        "",
        f"Load: one batch of {N} chat requests with heavy-tailed sizes, submitted at once:",
        f"{status.tokens_estimated} tokens estimated, {status.tokens_estimated / 1500:.0f} s of",
        "the simulated quota (90k TPM = 1,500 tokens/s, 2 s bucket; a neighbour takes",
        "15k TPM of it), 2 worker processes (prefork, 4 each), broker and budget on one",
        "Redis with AOF on. Faults: 20% 5xx, 10% timeouts, 3% dropped connections.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
        "",
        "Events injected:",
        "",
        *(f"- {k}: {v}" for k, v in sorted(f["events"].items())),
        "",
        "Bad inputs (each rejected at submit with one message; the valid lines ran):",
        "",
        *(f"- {e}" for e in f["rejected"]),
        "",
        "Dead letters by reason: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(f["reasons"].items())) or "none"),
        "",
    ]
    path.write_text("\n".join(lines))
    print("\n" + "\n".join(lines) + f"\n(written to {path})")
