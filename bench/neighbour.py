"""A blind neighbour on the same key: learned share against AIMD alone, side by side.

Run with `python -m bench.neighbour` (`--quick` for one scenario, `--json` for one JSON
line per run, `--defaults` for quotaflow's defaults at real time, below). For each
scenario (a neighbour taking 10%, 20% or 40% of the quota, steady or on for 30 s and
off for 30 s) and each strategy, real workers run three times
the work the quota admits in the measured minute, against the simulator with its
neighbour. "learned" is quotaflow's default: it also learns the neighbour's share from
the provider's x-ratelimit-* headers; "aimd" is `neighbour_learning = false` (header
sync; 429s cool down and cut the rate, which time wins back).

Measured per run, over the minute after a 10 s warm-up (the provider's bucket starts
full): provider 429s per quotaflow call; utilization of the quota by quotaflow and the
neighbour together while quotaflow has work waiting; for the on/off neighbour, the
seconds from the neighbour stopping until quotaflow admits 90% of the quota over 3 s.
Table in bench/RESULTS.md (between the neighbour markers), plot in bench/neighbour.png.

`--defaults` runs what a new user runs: OpenAI's bucket (a minute of quota, 90k TPM),
the default burst (58 s) and controller settings, a response 0.1-0.7 s after the call
(the headers with it), no neighbour or one steady at 40%, for 2.5 minutes of real time.
Besides the above it reports the 429s in the first minute (the gate's first burst) and
the neighbour share the gate learned (mean and peak over the measured span, as a share
of the quota); its table goes between the neighbour-defaults markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

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

HERE = Path(__file__).resolve().parent
API_KEY = "sk-bench-neighbour-51d2"
STRATEGIES = ("learned", "aimd")


@dataclass(frozen=True)
class Profile:
    """The provider, the gate's settings and the run's length."""

    tpm: int
    rpm: int
    #: Seconds of quota the provider's bucket holds (OpenAI's: 60).
    bucket_seconds: float
    #: The gate's burst, the controller's time constant and reserve, with the booking
    #: horizon and backoff scaled to the bucket; None: every setting at its default.
    burst_seconds: float | None
    smoothing_seconds: float | None
    reserve: float | None
    latency_ms: float
    latency_jitter_ms: float
    warmup: float
    measured: float
    #: Work submitted, as a multiple of what the provider admits over the run.
    work_factor: float
    scenarios: tuple[tuple[float, str], ...]
    markers: tuple[str, str]


#: The provider's bucket holds 6 s (OpenAI's holds 60): short, so that a one-minute
#: run is not mostly the first full bucket. The gate's burst stays a little under it,
#: as the default 58 s is under OpenAI's 60. The controller is scaled to that bucket:
#: the defaults (6 s, 0.05 of the limit) are for a minute-long one. The reserve over a
#: time constant's quota is kept about as there (0.6 here, 0.5 there); the time
#: constant is not cut below 2 s, which would approach the pipeline's own delay (a
#: booking half a second ahead, plus the call).
COMPRESSED = Profile(
    tpm=300_000, rpm=3_000, bucket_seconds=6.0, burst_seconds=5.8, smoothing_seconds=2.0,
    reserve=0.2, latency_ms=150.0, latency_jitter_ms=100.0, warmup=10.0, measured=60.0,
    work_factor=3.0,
    scenarios=tuple((s, p) for s in (0.1, 0.2, 0.4) for p in ("steady", "bursty")),
    markers=("<!-- neighbour:begin -->", "<!-- neighbour:end -->"),
)  # fmt: skip
#: quotaflow's defaults against OpenAI's minute-long bucket, at real time. 2.5 minutes:
#: the first full bucket, then a minute and a half at the rate; the work outlasts it.
DEFAULTS = Profile(
    tpm=90_000, rpm=3_000, bucket_seconds=60.0, burst_seconds=None, smoothing_seconds=None,
    reserve=None, latency_ms=400.0, latency_jitter_ms=300.0, warmup=10.0, measured=140.0,
    work_factor=1.3, scenarios=((0.0, "steady"), (0.4, "steady")),
    markers=("<!-- neighbour-defaults:begin -->", "<!-- neighbour-defaults:end -->"),
)  # fmt: skip


@dataclass
class Run:
    strategy: str
    share: float
    pattern: str
    calls: int = 0
    provider_429s: int = 0
    #: 429s in the run's first minute (the gate's first burst, the neighbour's start).
    first_minute_429s: int = 0
    utilization: float = 0.0
    #: The neighbour share the gate learned over the measured span, of the quota.
    learned_mean: float = 0.0
    learned_peak: float = 0.0
    #: Seconds from the neighbour stopping until quotaflow uses 90% of the quota.
    recovery_s: float | None = None
    #: (t, our tokens/min over 3 s, neighbour tokens/min, gate effective tpm,
    #: learned neighbour tpm, 429s so far)
    series: list[tuple[float, float, float, float, float, int]] = field(default_factory=list)

    @property
    def share_429(self) -> float:
        return self.provider_429s / max(1, self.calls)


def settings_for(redis_url: str, sim: Simulator, strategy: str, prof: Profile) -> Settings:
    # "learned": quotaflow's default; "aimd" switches neighbour learning off.
    learning = strategy == "learned"
    if prof.burst_seconds is None:  # every setting at its default, as a new user's
        dep = DeploymentSettings(
            name="shared", kind="compatible", model="gpt-4o-mini", base_url=sim.url + "/v1",
            api_key=API_KEY, tpm=prof.tpm, rpm=prof.rpm,
        )  # fmt: skip
        return Settings(redis_url=redis_url, deployments=[dep], neighbour_learning=learning)
    assert prof.smoothing_seconds is not None and prof.reserve is not None
    dep = DeploymentSettings(
        name="shared", kind="compatible", model="gpt-4o-mini", base_url=sim.url + "/v1",
        api_key=API_KEY, tpm=prof.tpm, rpm=prof.rpm, burst_seconds=prof.burst_seconds,
        accounting="estimate", timeout_seconds=10.0,
    )  # fmt: skip
    return Settings(
        redis_url=redis_url, deployments=[dep], booking_horizon_seconds=30.0,
        max_defer_seconds=30.0, backoff_cap_seconds=10.0, neighbour_learning=learning,
        neighbour_smoothing_seconds=prof.smoothing_seconds, neighbour_reserve=prof.reserve,
    )  # fmt: skip


def neighbour_on(pattern: str, t: float) -> bool:
    return pattern == "steady" or (t % 60.0) < 30.0


def run_one(strategy: str, share: float, pattern: str, redis_url: str, prof: Profile) -> Run:
    run = Run(strategy, share, pattern)
    tpm, warmup, span_s = prof.tpm, prof.warmup, prof.warmup + prof.measured
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    sim = Simulator(
        SimulatorConfig(
            tpm=tpm, rpm=prof.rpm, bucket_seconds=prof.bucket_seconds, api_key=API_KEY,
            latency_ms=prof.latency_ms, latency_jitter_ms=prof.latency_jitter_ms, seed=7,
        )
    ).start()  # fmt: skip
    settings = settings_for(redis_url, sim, strategy, prof)
    configure(app, settings)
    jobs = Jobs(settings, runtime.current().jobs)
    gate = runtime.current().gate
    # A multiple of what the provider admits over the run: the full bucket, then the rate.
    budget = prof.work_factor * tpm * (prof.bucket_seconds + span_s) / 60
    work = make_workload(int(budget / 700) + 50, seed=int(share * 100) + len(pattern))
    with LocalWorkers(settings, count=2, concurrency=16, pool="threads") as w:
        w.wait_ready()
        neighbour_tpm = int(share * tpm)
        sim.configure(neighbour_tpm=neighbour_tpm)
        t0 = time.monotonic()
        report = jobs.submit_bodies(work.bodies)
        base = sim.stats()
        last: list[tuple[float, int, int]] = []  # (t, ours, neighbour) cumulative
        while (t := time.monotonic() - t0) < span_s:
            on = neighbour_on(pattern, t)
            if sim.config.neighbour_tpm != (neighbour_tpm if on else 0):
                sim.configure(neighbour_tpm=neighbour_tpm if on else 0)
            stats = sim.stats()
            ours = stats["tokens_charged"] - base["tokens_charged"]
            theirs = stats["neighbour_tokens"] - base["neighbour_tokens"]
            last.append((t, ours, theirs))
            while last and t - last[0][0] > 3.0:
                last.pop(0)
            span = max(1e-6, t - last[0][0])
            snap = gate.snapshot("shared")
            run.series.append((
                round(t, 2),
                (ours - last[0][1]) / span * 60,
                (theirs - last[0][2]) / span * 60,
                snap.effective_tpm,
                snap.neighbour_tpm,
                stats["refused_429"] - base["refused_429"],
            ))  # fmt: skip
            if t < 60.0:
                run.first_minute_429s = run.series[-1][5]
            time.sleep(0.5)
        status = jobs.status(report.job_id)
        still_waiting = status.total - status.counts["done"] - status.counts["failed"] > 0
        end = sim.stats()
    sim.stop()
    run.calls = end["requests_received"] - base["requests_received"]
    run.provider_429s = end["refused_429"] - base["refused_429"]
    measured = [s for s in run.series if s[0] >= warmup]
    used = sum(s[1] + s[2] for s in measured) / max(1, len(measured))
    run.utilization = used / tpm if still_waiting else float("nan")
    learned = [s[4] / tpm for s in measured] or [0.0]
    run.learned_mean, run.learned_peak = sum(learned) / len(learned), max(learned)
    if pattern == "bursty":
        for s in run.series:
            if s[0] >= 30.0 + 3.0 and s[1] >= 0.9 * tpm:
                run.recovery_s = round(s[0] - 30.0, 1)
                break
    client.close()
    return run


def table(runs: list[Run]) -> str:
    lines = [
        "| neighbour | pattern | strategy | calls | 429s | 429s/call | 429s in the first minute "
        "| utilization | learned share, mean / peak | back to 90% after the neighbour stops |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        back = "" if r.pattern == "steady" else (
            f"{r.recovery_s:.1f} s" if r.recovery_s is not None else "not within 30 s"
        )  # fmt: skip
        lines.append(
            f"| {r.share:.0%} | {r.pattern} | {r.strategy} | {r.calls} | {r.provider_429s} | "
            f"{r.share_429:.1%} | {r.first_minute_429s} | {r.utilization:.3f} | "
            f"{r.learned_mean:.1%} / {r.learned_peak:.1%} | {back} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path, tpm: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [r for r in runs if r.pattern == "bursty" and abs(r.share - 0.2) < 1e-9]
    if not picked:
        picked = runs[:4]
    fig, axes = plt.subplots(len(picked), 1, figsize=(9, 3.2 * len(picked)), sharex=True)
    axes_list = axes if len(picked) > 1 else [axes]
    for ax, r in zip(axes_list, picked, strict=True):
        t = [s[0] for s in r.series]
        ax.plot(t, [s[1] for s in r.series], label="quotaflow admitted (tpm, 3 s)")
        ax.plot(t, [s[2] for s in r.series], label="neighbour (true, tpm)")
        ax.plot(t, [s[3] for s in r.series], label="gate effective tpm", linestyle="--")
        ax.plot(t, [s[4] for s in r.series], label="learned neighbour tpm", linestyle=":")
        hits = [s[0] for i, s in enumerate(r.series) if i and s[5] > r.series[i - 1][5]]
        ax.scatter(hits, [tpm * 1.05] * len(hits), marker="x", color="red", label="429s")
        ax.axhline(tpm, color="grey", linewidth=0.8)
        # The first full bucket drains at many times the rate: clipped, so the rate shows.
        ax.set_ylim(0, 1.6 * tpm)
        on = "on 30 s / off 30 s" if r.pattern == "bursty" else "steady"
        ax.set_title(f"{r.strategy}: neighbour {r.share:.0%} of {tpm:,} TPM, {on}")
        ax.set_ylabel("tokens / min")
        ax.legend(fontsize=7, loc="lower right")
    axes_list[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def describe(prof: Profile, runs: list[Run], command: str, png: str) -> str:
    """The RESULTS.md section for a profile's runs."""
    if prof is DEFAULTS:
        head = (
            "## A blind neighbour on the key, quotaflow's defaults at real time\n\n"
            f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} CPUs ({cpu_model()}), shared (load average {load()} at the "
            f"end). {prof.tpm:,} TPM / {prof.rpm:,} RPM, the simulator's OpenAI-style bucket "
            f"holding {prof.bucket_seconds:g} s as OpenAI's does, answers "
            f"{(prof.latency_ms - prof.latency_jitter_ms) / 1000:g}-"
            f"{(prof.latency_ms + prof.latency_jitter_ms) / 1000:g} s after the call; every "
            "setting at its default (burst 58 s; neighbour reserve 0.05, which the gate "
            "caps at half of what its own burst leaves at the provider: 1 s of quota; time "
            "constant 6 s, sample 0.5 s; booking horizon 300 s, backoff cap 60 s; "
            '"aimd" is `neighbour_learning = false`). 2 worker processes (threads, '
            f"16 each); the work outlasts the run ({prof.warmup + prof.measured:g} s). "
            f"Utilization: quotaflow's and the neighbour's tokens over the {prof.measured:g} s "
            f"after a {prof.warmup:g} s warm-up (the first full bucket drains in it), over "
            "the quota's rate. The learned share is the gate's neighbour estimate over "
            "the same span, as a share of the quota.\n\n"
        )
    else:
        head = (
            "## A blind neighbour on the key\n\n"
            f"`{command}`, {time.strftime('%Y-%m-%d')}, {cpu_model()}. "
            f"{prof.tpm:,} TPM / {prof.rpm:,} RPM, the simulator's OpenAI-style bucket holding "
            f"{prof.bucket_seconds:g} s (gate burst {prof.burst_seconds:g} s), 2 worker "
            "processes (threads, 16 each), three times the work the quota admits. "
            f'"learned" holds the provider\'s bucket at {prof.reserve:g} of its limit with a '
            f"{prof.smoothing_seconds:g} s time constant (the defaults, 0.05 and 6 s, scaled "
            'from a minute\'s bucket to this one); "aimd" is header sync and the 429 path '
            "alone. Utilization is quotaflow's and the neighbour's tokens over "
            f"{prof.measured:g} s after a {prof.warmup:g} s warm-up, while quotaflow had "
            "work waiting (above 1: the full bucket drained).\n\n"
        )
    return head + table(runs) + f"\n![effective rate, neighbour and 429s over time]({png})\n"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20%% bursty only")
    parser.add_argument(
        "--defaults", action="store_true",
        help="quotaflow's defaults against a minute-long bucket at real time, 0%% and 40%% steady",
    )  # fmt: skip
    parser.add_argument("--strategy", choices=STRATEGIES, action="append")
    parser.add_argument(
        "--share", type=float, action="append", help="only the scenarios with this neighbour share"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument(
        "--series", type=Path, help="also write each run's series here (JSON lines)"
    )
    parser.add_argument("--no-write", action="store_true", help="leave bench/ untouched")
    args = parser.parse_args(argv)
    prof = DEFAULTS if args.defaults else COMPRESSED
    scenarios = [(0.2, "bursty")] if args.quick else list(prof.scenarios)
    if args.share:
        scenarios = [sc for sc in scenarios if any(abs(sc[0] - x) < 1e-9 for x in args.share)]
    runs = []
    with RedisServer() as server:
        for share, pattern in scenarios:
            for strategy in args.strategy or STRATEGIES:
                run = run_one(strategy, share, pattern, server.url, prof)
                runs.append(run)
                row = {k: v for k, v in asdict(run).items() if k != "series"}
                print(json.dumps(row) if args.json else table([run]).splitlines()[-1],
                      f"load {load()}", flush=True)  # fmt: skip
                if args.series:
                    with args.series.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(asdict(run)) + "\n")
    if not args.no_write:
        png = "neighbour_defaults.png" if args.defaults else "neighbour.png"
        plot(runs, HERE / png, prof.tpm)
        command = " ".join(["python -m bench.neighbour", *(argv or sys.argv[1:])])
        write_section(*prof.markers, describe(prof, runs, command, png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
