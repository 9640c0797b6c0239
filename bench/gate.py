"""What the gate costs per call, next to a bare EVALSHA and the `limits` library.

Run with `make bench` or `python -m bench.gate`. Starts its own redis-server, measures
every operation from 1 and from 2 processes against that one server, prints a Markdown
table and writes it into bench/RESULTS.md between the gate markers.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import redis

from bench.results import RESULTS, cpu_model, write_section
from budget.gate import Gate
from budget.store import Packer
from pipeline.redis_server import RedisServer
from settings import DeploymentSettings

BEGIN, END = "<!-- gate:begin -->", "<!-- gate:end -->"
PROCS = (1, 2)

#: Far more quota than any run can use: every reserve is granted.
_UNLIMITED = DeploymentSettings(name="bench-granted", model="m", tpm=10**12, rpm=10**12)
#: 1 ms of quota per token and a 1 s (1000-token) burst, so one call empties it.
_SATURATED = DeploymentSettings(
    name="bench-saturated", model="m", tpm=60_000, rpm=10**9, burst_seconds=1
)
#: Booked calls cost 2 ms each against the largest horizon settings allow (3600 s):
#: a run books well under that, so every call after the drain is booked, none waits.
_BOOK_TOKENS = 2
_BOOK_HORIZON = 3600.0
#: Pushed this far ahead (past the default 300 s horizon) every reserve answers WAIT.
_BACKLOG_SECONDS = 400.0

Call = Callable[[], str]


def _gate_call(
    client: redis.Redis, dep: DeploymentSettings, tokens: int, horizon: float = 300.0
) -> Call:
    gate = Gate(client, [dep], horizon_seconds=horizon)

    def call() -> str:
        return gate.reserve(dep.name, tokens=tokens).outcome.value

    return call


def _granted(client: redis.Redis) -> Call:
    return _gate_call(client, _UNLIMITED, tokens=100)


def _booked(client: redis.Redis) -> Call:
    return _gate_call(client, _SATURATED, tokens=_BOOK_TOKENS, horizon=_BOOK_HORIZON)


def _waiting(client: redis.Redis) -> Call:
    return _gate_call(client, _SATURATED, tokens=1)


def _evalsha(client: redis.Redis) -> Call:
    # The baseline: a script called the way redis-py offers it (register_script).
    script = client.register_script("return 1")

    def call() -> str:
        script()
        return "ok"

    return call


def _evalsha_packed(client: redis.Redis) -> Call:
    # The same call on the client path Gate.reserve takes (ScriptStore.run_packed):
    # packed once, sent straight to a pooled connection.
    script = client.register_script("return 1")
    script()
    command = (Packer(script.sha, count=0, numkeys=0).head,)
    pool = client.connection_pool

    def call() -> str:
        conn = pool.get_connection()
        try:
            conn.send_packed_command(command)
            conn.read_response()
        finally:
            pool.release(conn)
        return "ok"

    return call


def _limits(client: redis.Redis) -> Call:
    from limits import RateLimitItemPerMinute  # noqa: PLC0415 - a dev-only dependency
    from limits.storage import RedisStorage  # noqa: PLC0415
    from limits.strategies import MovingWindowRateLimiter  # noqa: PLC0415

    pool = client.connection_pool.connection_kwargs
    limiter = MovingWindowRateLimiter(RedisStorage(f"redis://{pool['host']}:{pool['port']}/0"))
    item = RateLimitItemPerMinute(10**9)  # never the limit: every hit is allowed

    def call() -> str:
        return "allowed" if limiter.hit(item, "bench") else "denied"

    return call


def _drain_burst(client: redis.Redis) -> None:
    # Take the whole burst at once so the very first measured call is already booked.
    Gate(client, [_SATURATED]).reserve(
        _SATURATED.name, tokens=math.floor(_SATURATED.token_capacity)
    )


def _push_past_horizon(client: redis.Redis) -> None:
    # A long cooldown is the public way to put the bucket beyond the booking horizon.
    logging.getLogger("budget.gate").setLevel(logging.ERROR)
    Gate(client, [_SATURATED], max_cooldown_seconds=_BACKLOG_SECONDS).cooldown(
        _SATURATED.name, _BACKLOG_SECONDS
    )


@dataclass(frozen=True)
class Scenario:
    label: str
    build: Callable[[redis.Redis], Call]
    #: Run once in the parent after the flush, before the workers start.
    prepare: Callable[[redis.Redis], None] | None = None


SCENARIOS: dict[str, Scenario] = {
    "evalsha": Scenario("bare `EVALSHA` (`return 1`)", _evalsha),
    "packed": Scenario("bare `EVALSHA`, packed (the gate's client path)", _evalsha_packed),
    "granted": Scenario("`Gate.reserve`, granted", _granted),
    "booked": Scenario("`Gate.reserve`, saturated: booked", _booked, _drain_burst),
    "wait": Scenario("`Gate.reserve`, saturated: wait", _waiting, _push_past_horizon),
    "limits": Scenario("`limits` moving-window `hit`", _limits),
}
BASELINE = "evalsha"


@dataclass(frozen=True)
class WorkerResult:
    key: str
    procs: int
    latencies_ns: array[int]
    elapsed_ns: int
    outcomes: Counter[str]


#: One cell to measure: scenario key, processes taking part, warm-up and measured seconds.
Task = tuple[str, int, float, float]


def _run_cell(url: str, task: Task, barrier: Barrier) -> WorkerResult:
    key, procs, warmup, duration = task
    client = redis.Redis.from_url(url)
    call = SCENARIOS[key].build(client)
    # Warm-up loads the scripts and opens the connections before anything is timed.
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        call()
    barrier.wait(timeout=60)  # all processes measure over the same interval
    latencies: array[int] = array("q")
    outcomes: Counter[str] = Counter()
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(duration * 1e9)
    now = start
    while now < deadline:
        t0 = clock()
        outcome = call()
        now = clock()
        latencies.append(now - t0)
        outcomes[outcome] += 1
    client.close()
    return WorkerResult(key, procs, latencies, now - start, outcomes)


def _worker(
    url: str,
    barriers: dict[int, Barrier],
    tasks: Queue[Task | None],
    out: Queue[WorkerResult],
) -> None:
    # Long-lived, so the cells can be interleaved without paying a spawn for each.
    while (task := tasks.get()) is not None:
        out.put(_run_cell(url, task, barriers[task[1]]))


@dataclass(frozen=True)
class Measurement:
    key: str
    procs: int
    throughput: float
    p50_us: float
    p99_us: float
    #: Time EVALSHA spent inside Redis per call (INFO commandstats).
    server_us: float
    outcomes: Counter[str]


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in microseconds."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000


def _reset_stats(url: str) -> None:
    # Run as the barrier's action: after every warm-up, before any measured call.
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    client.close()


def _evalsha_stats(url: str) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA since the last reset."""
    client = redis.Redis.from_url(url)
    stat = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    client.close()
    return int(stat["calls"]), int(stat["usec"])


def _prepare(url: str, key: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()  # every cell starts from full buckets and empty lists
    prepare = SCENARIOS[key].prepare
    if prepare is not None:
        prepare(client)
    client.close()


def _summarise(
    key: str, procs: int, results: list[WorkerResult], server: list[tuple[int, int]]
) -> Measurement:
    merged = sorted(lat for r in results for lat in r.latencies_ns)
    rounds = len(results) // procs
    outcomes: Counter[str] = sum((r.outcomes for r in results), Counter())
    return Measurement(
        key=key,
        procs=procs,
        # Each process's rate, summed over processes, averaged over rounds.
        throughput=sum(len(r.latencies_ns) / (r.elapsed_ns / 1e9) for r in results) / rounds,
        p50_us=_percentile(merged, 0.50),
        p99_us=_percentile(merged, 0.99),
        server_us=sum(us for _, us in server) / max(1, sum(n for n, _ in server)),
        outcomes=outcomes,
    )


def measure_all(url: str, rounds: int, warmup: float, duration: float) -> list[Measurement]:
    """Every (scenario, procs) cell, `rounds` times over, interleaved.

    Interleaving spreads any load from elsewhere on the host over all cells alike,
    instead of letting it land on whichever cell happened to run at the time.
    """
    cells = [(key, procs) for procs in PROCS for key in SCENARIOS]
    ctx = mp.get_context("spawn")
    barriers = {n: ctx.Barrier(n, action=partial(_reset_stats, url)) for n in PROCS}
    out: Queue[WorkerResult] = ctx.Queue()
    inboxes: list[Queue[Task | None]] = [ctx.Queue() for _ in range(max(PROCS))]
    workers = [
        ctx.Process(target=_worker, args=(url, barriers, inbox, out), daemon=True)
        for inbox in inboxes
    ]
    for w in workers:
        w.start()
    collected: dict[tuple[str, int], list[WorkerResult]] = {cell: [] for cell in cells}
    server: dict[tuple[str, int], list[tuple[int, int]]] = {cell: [] for cell in cells}
    try:
        for r in range(rounds):
            # Rotate the order too, so no cell always follows the same one.
            shift = r * len(cells) // rounds
            for key, procs in cells[shift:] + cells[:shift]:
                _prepare(url, key)
                for inbox in inboxes[:procs]:
                    inbox.put((key, procs, warmup, duration))
                for _ in range(procs):
                    res = out.get(timeout=warmup + duration + 60)
                    collected[(res.key, res.procs)].append(res)
                server[(key, procs)].append(_evalsha_stats(url))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for w in workers:
            w.join(timeout=30)
    return [_summarise(*cell, collected[cell], server[cell]) for cell in cells]


def render(results: list[Measurement], redis_version: str, rounds: int, duration: float) -> str:
    base = {m.procs: m for m in results if m.key == BASELINE}
    lines = [
        "## Gate overhead: `Gate.reserve` vs bare `EVALSHA` vs `limits`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"redis-server {redis_version}; clients and server on the same host. "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; each cell measured {rounds} × {duration:g} s "
        "after warm-up, cells interleaved.",
        "Rerun: `make bench` or `.venv/bin/python -m bench.gate`.",
        "",
        "| Operation | Procs | calls/s (total) | p50 µs | p99 µs | in Redis µs "
        "| calls/s ÷ EVALSHA | p50 ÷ EVALSHA |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in results:
        b = base[m.procs]
        lines.append(
            f"| {SCENARIOS[m.key].label} | {m.procs} | {m.throughput:,.0f} | {m.p50_us:.0f} "
            f"| {m.p99_us:.0f} | {m.server_us:.1f} | {m.throughput / b.throughput:.2f} "
            f"| {m.p50_us / b.p50_us:.2f} |"
        )
    mix = "; ".join(
        f"{m.key}×{m.procs}: "
        + ", ".join(f"{n / m.outcomes.total():.0%} {o}" for o, n in m.outcomes.most_common())
        for m in results
        if m.key != BASELINE
    )
    lines += [
        "",
        f"Outcomes in the measured interval: {mix}.",
        "",
        "Notes: each process has its own client and loops over one call; latency is one "
        "call's wall time (perf_counter_ns) including the client library, so `Gate.reserve` "
        "also pays for its reservation id, its arguments and its result objects. `Gate.reserve` "
        "sends a command packed once per deployment (only the costs and the id are formatted "
        "per call) straight to a pooled connection; the packed row is a bare `EVALSHA` on that "
        "same path, the baseline the redis-py `Script` call an application would make. "
        "`in Redis µs` is "
        "EVALSHA's own time inside redis-server over the measured interval (INFO "
        "commandstats); the rest of p50 is client code, the socket round trip and scheduling. "
        "Granted and booked run `reserve.lua` (TIME, HMGET of the rate state, MGET of the two "
        "TATs, 2 SET PX; booked also sets its single-use marker); wait stops after the reads; "
        "`limits` runs its moving-window script (LINDEX, LPUSH, LTRIM, EXPIRE). With 2 "
        "processes the clients and redis-server share 2 cores, so totals show contention, "
        "not Redis's ceiling.",
    ]
    return "\n".join(lines) + "\n"


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell per round")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before measuring")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        version = str(client.info("server")["redis_version"])
        client.close()
        results = measure_all(server.url, args.rounds, args.warmup, args.duration)
    section = render(results, version, args.rounds, args.duration)
    print(section)
    if not args.no_write:
        write_results(section)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
