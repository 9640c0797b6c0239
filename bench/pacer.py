"""The single-process pacer, the benchmarks' sixth strategy: one process, asyncio, paced
like the OpenAI cookbook's `api_request_parallel_processor.py`. No Celery.

Its time constants are scaled like the Celery strategies' (`bench.alternatives`), and it
writes its outcomes under the same `bench:<run>:*` keys.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from typing import Any

import httpx
import redis

from bench.alternatives import keys

#: The cookbook: pause 15 s after a 429, 5 attempts per request, loop every 1 ms.
PACER_PAUSE_AFTER_429 = 15.0
PACER_MAX_ATTEMPTS = 5
PACER_LOOP_SLEEP = 0.001


def cookbook_tokens(body: dict[str, Any], encoding: Any) -> int:
    """`num_tokens_consumed_from_request` of the cookbook, for chat completions."""
    tokens = 0
    for message in body["messages"]:
        tokens += 4
        for key, value in message.items():
            tokens += len(encoding.encode(value))
            if key == "name":
                tokens -= 1
    tokens += 2
    return tokens + int(body.get("max_tokens", 15)) * int(body.get("n", 1))


def run_pacer(
    bodies: list[dict[str, Any]], rids: list[str], p: dict[str, Any], go: Any = None
) -> None:
    """Send every body once capacity allows, like the cookbook's parallel processor."""
    import tiktoken  # noqa: PLC0415 - only the pacer process needs it

    os.nice(int(p.get("nice", 0)))  # as nice as the Celery workers
    from budget.encodings import register_offline_encodings  # noqa: PLC0415

    register_offline_encodings()
    encoding = tiktoken.get_encoding("cl100k_base")
    costs = [cookbook_tokens(b, encoding) for b in bodies]
    if go is not None:
        r = redis.Redis.from_url(p["redis_url"])
        r.set(keys(p["run"])["ready"], "1", ex=600)
        r.close()
        go.wait(timeout=120)
    asyncio.run(_pace(bodies, rids, p, costs))


async def _pace(
    bodies: list[dict[str, Any]],
    rids: list[str],
    p: dict[str, Any],
    costs: list[int],
) -> None:
    scale = p["scale"]
    # The cookbook's capacities hold one minute of quota; here, one scaled minute.
    max_tokens = p["tpm"] * (60.0 / scale) / 60.0
    max_requests = p["rpm"] * (60.0 / scale) / 60.0
    token_rate, request_rate = p["tpm"] / 60.0, p["rpm"] / 60.0
    pause = PACER_PAUSE_AFTER_429 / scale
    r = redis.Redis.from_url(p["redis_url"])
    k = keys(p["run"])
    pending = deque(range(len(bodies)))
    retry: deque[int] = deque()
    attempts = [PACER_MAX_ATTEMPTS] * len(bodies)
    state = {"in_flight": 0, "last_429": -math.inf}
    available_tokens, available_requests = max_tokens, max_requests
    last = time.monotonic()
    if p["kind"] == "azure":
        url = f"{p['base_url']}/openai/deployments/{bodies[0]['model']}/chat/completions"
        params = {"api-version": p["api_version"]}
        headers = {"api-key": p["api_key"]}
    else:
        url, params = f"{p['base_url']}/v1/chat/completions", {}
        headers = {"Authorization": f"Bearer {p['api_key']}"}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:

        async def send(i: int) -> None:
            try:
                resp = await http.post(url, params=params, headers=headers, json=bodies[i])
                status = resp.status_code
            except httpx.HTTPError:
                status = 0
            state["in_flight"] -= 1
            if status == 200:
                r.hset(k["done"], rids[i], repr(time.time()))
                return
            if status == 429:
                state["last_429"] = time.monotonic()
            attempts[i] -= 1
            if attempts[i] > 0:
                r.hincrby(k["counts"], "retries", 1)
                retry.append(i)
            else:
                r.hset(k["failed"], rids[i], repr(time.time()))

        tasks: set[asyncio.Task[None]] = set()
        nxt: int | None = None
        checked = time.monotonic()
        while pending or retry or nxt is not None or state["in_flight"]:
            if time.monotonic() - checked > 0.1:  # the harness may call the run off
                checked = time.monotonic()
                if not r.exists(k["live"]):
                    break
            if nxt is None:
                if retry:
                    nxt = retry.popleft()
                elif pending:
                    nxt = pending.popleft()
            now = time.monotonic()
            elapsed, last = now - last, now
            available_tokens = min(available_tokens + token_rate * elapsed, max_tokens)
            available_requests = min(available_requests + request_rate * elapsed, max_requests)
            if nxt is not None and available_requests >= 1 and available_tokens >= costs[nxt]:
                available_requests -= 1
                available_tokens -= costs[nxt]
                state["in_flight"] += 1
                task = asyncio.create_task(send(nxt))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                nxt = None
            await asyncio.sleep(PACER_LOOP_SLEEP)
            since = time.monotonic() - state["last_429"]
            if since < pause:
                await asyncio.sleep(pause - since)
        for task in list(tasks):
            task.cancel()
    r.close()
