"""What a look for task ids in a long backlog costs the Redis server: the sliced
look-up that recovery uses (pipeline.broker.BrokerLookup) next to reading every list
and the unacked hash in one MULTI (the look-up before it).

    python -m bench.lookup [--waiting 100000]

Starts its own redis-server, submits `--waiting` requests with no worker (they wait in
the deployment's queue), looks for a task id that is not there (the whole backlog is
read), and prints what the server's SLOWLOG timed: the commands, the median, 99th
percentile and longest of one command (how long the gate's reservations could wait
behind one), and their sum.
"""

from __future__ import annotations

import argparse
import random
import statistics

import redis

from pipeline import app
from pipeline.app import configure
from pipeline.broker import UNACKED_KEY, BrokerLookup, all_queues, queue_lists
from pipeline.jobs import Jobs
from pipeline.redis_server import RedisServer
from settings import DeploymentSettings, Settings
from tasks import runtime


def _bodies(n: int) -> list[dict[str, object]]:
    rng = random.Random(1)
    words = ["the", "budget", "admits", "each", "request", "once", "and", "defers"]
    return [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": " ".join(rng.choices(words, k=200))}],
            "max_tokens": 64,
        }
        for _ in range(n)
    ]


def _timed(client: redis.Redis) -> list[int]:
    """Microseconds of each command since the last SLOWLOG RESET (SLOWLOG's own left out)."""
    log = client.slowlog_get(1_000_000)
    client.slowlog_reset()
    return [int(e["duration"]) for e in log if not bytes(e["command"]).startswith(b"SLOWLOG")]


def _line(name: str, us: list[int]) -> str:
    us = sorted(us)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    return (
        f"| {name} | {len(us):,} | {statistics.median(us) / 1000:.2f} | {p99 / 1000:.2f} "
        f"| {us[-1] / 1000:.1f} | {sum(us) / 1000:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    args = parser.parse_args()
    with RedisServer() as server:
        dep = DeploymentSettings(
            name="sim", kind="compatible", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1",
            api_key="sk-bench", tpm=10_000_000, rpm=100_000,
        )  # fmt: skip
        settings = Settings(redis_url=server.url, deployments=[dep])
        configure(app, settings)
        Jobs(settings, runtime.current().jobs).submit_bodies(_bodies(args.waiting), job_id="big")
        client = redis.Redis.from_url(server.url)
        lists = [name for queue in all_queues(settings) for name in queue_lists(queue)]
        size = client.memory_usage(f"{settings.queue}.sim") or 0
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1_000_000)
        client.slowlog_reset()
        BrokerLookup(client).present(["not-in-the-broker"], lists)
        sliced = _timed(client)
        pipe = client.pipeline(transaction=True)
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.hvals(UNACKED_KEY)
        pipe.execute()
        whole = _timed(client)
    print(f"{args.waiting:,} waiting messages ({size / 1e6:.0f} MB in the queue's list)\n")
    print("| look-up | commands | median ms | p99 ms | longest ms | sum ms |")
    print("|---|---|---|---|---|---|")
    print(_line("sliced (BrokerLookup)", sliced))
    print(_line("one MULTI (before)", whole))


if __name__ == "__main__":
    main()
