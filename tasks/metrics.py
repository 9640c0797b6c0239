"""Counters kept in Redis so they are cluster-wide and right under any pool.

Each counter is one hash field: `name|label=value|label=value`. A per-minute copy of
the few counters the `budget` display needs lives in short-lived hashes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import redis

log = logging.getLogger(__name__)

#: Counters also kept per minute, for "in the last minute" displays.
RECENT = frozenset({"deferrals_total", "provider_responses_total", "reservations_total"})


def counter_field(name: str, labels: Mapping[str, str]) -> str:
    parts = [name, *(f"{k}={v}" for k, v in sorted(labels.items()))]
    return "|".join(parts)


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    name, *parts = raw.split("|")
    return name, dict(p.split("=", 1) for p in parts)


class Metrics:
    def __init__(self, client: redis.Redis, *, key_prefix: str = "quotaflow") -> None:
        self.client = client
        self.key = f"{key_prefix}:metrics"
        self.minute_prefix = f"{key_prefix}:metrics:minute:"

    def add(self, increments: list[tuple[str, Mapping[str, str], float]]) -> None:
        """Add to several counters in one round trip. Never raises: metrics are best effort."""
        minute = self.minute_prefix + str(int(time.time() // 60))
        pipe = self.client.pipeline(transaction=False)
        for name, labels, amount in increments:
            field = counter_field(name, labels)
            if float(amount).is_integer():
                pipe.hincrby(self.key, field, int(amount))
            else:
                pipe.hincrbyfloat(self.key, field, amount)
            if name in RECENT:
                pipe.hincrbyfloat(minute, field, amount)
                pipe.expire(minute, 180)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", exc)

    def read(self) -> dict[str, float]:
        return {_text(k): float(v) for k, v in self.client.hgetall(self.key).items()}

    def last_minute(self) -> dict[str, float]:
        """Counters over the current and previous minute buckets (60-120 s of history)."""
        now = int(time.time() // 60)
        out: dict[str, float] = {}
        for m in (now - 1, now):
            for k, v in self.client.hgetall(self.minute_prefix + str(m)).items():
                out[_text(k)] = out.get(_text(k), 0.0) + float(v)
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
