"""Many processes, many threads, one deployment: the gate under real contention."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from budget import Gate, Outcome
from settings import DeploymentSettings

#: A heavy-tailed spread: mostly small calls, some large ones.
COSTS = [random.Random(7).choice([5, 20, 50, 120, 300, 800, 2000, 6000]) for _ in range(997)]


def gate_reserve(url: str, dep: DeploymentSettings, horizon: float) -> Callable[[int], float]:
    gate = Gate(redis.Redis.from_url(url), [dep], horizon_seconds=horizon, admission_log=True)

    def reserve(cost: int) -> float:
        decision = gate.reserve(dep.name, tokens=cost)
        return decision.wait if decision.outcome is Outcome.WAIT else 0.0

    return reserve


def _thread(reserve: Callable[[int], float], seed: int, until: float) -> None:
    rng = random.Random(seed)
    while time.time() < until:
        wait = reserve(rng.choice(COSTS))
        if wait:
            time.sleep(min(wait, 0.05) * rng.random())


def _process(
    make: Callable[..., Callable[[int], float]],
    args: tuple[object, ...],
    threads: int,
    seed: int,
    seconds: float,
    start: Any,
) -> None:
    reserve = make(*args)
    start.wait()  # every process is ready: contention starts for all at once
    until = time.time() + seconds
    workers = [
        threading.Thread(target=_thread, args=(reserve, seed * 100 + i, until))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def hammer(
    make: Callable[..., Callable[[int], float]],
    args: tuple[object, ...],
    *,
    processes: int,
    threads: int,
    seconds: float,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    procs = [
        ctx.Process(target=_process, args=(make, args, threads, seed, seconds, start))
        for seed in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=seconds + 120)
        assert p.exitcode == 0, f"hammer process exited with {p.exitcode}"
