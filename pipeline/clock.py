"""This machine's clock against the Redis server's.

The gate decides on the Redis clock, but a deferred task's ETA is set on the
publishing worker's clock and fired on the consuming worker's. A booked task comes
back `inline_seconds` (1 s) early and waits the rest on the Redis clock, so a skew
well under that costs nothing; a larger one makes booked calls miss their slots, and
a worker ahead of the others restores their unacknowledged messages early (kombu
times the visibility timeout on each worker's own clock). Workers need NTP.
"""

from __future__ import annotations

import time

import redis

#: Skew above which a worker warns at start.
WARN_SKEW_SECONDS = 0.1


def skew_seconds(client: redis.Redis, samples: int = 3) -> float:
    """How far this machine's clock is ahead of the Redis server's (negative: behind),
    from the sample with the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time()
        sec, usec = client.time()
        after = time.time()
        sample = (after - before, (before + after) / 2 - (int(sec) + int(usec) / 1e6))
        if best is None or sample[0] < best[0]:
            best = sample
    assert best is not None
    return best[1]


def skew_warning(skew: float) -> str | None:
    """What to tell the operator about `skew`, or None when it is small."""
    if abs(skew) <= WARN_SKEW_SECONDS:
        return None
    way = "ahead of" if skew > 0 else "behind"
    return (
        f"this machine's clock is {abs(skew):.2f}s {way} the Redis server's: booked calls "
        "may miss their slots and messages may be redelivered early; keep every worker's "
        f"clock in sync with NTP (within {WARN_SKEW_SECONDS:g}s)"
    )


def check_clock(client: redis.Redis) -> str | None:
    """A warning when this machine's clock is off the Redis server's, else None."""
    try:
        return skew_warning(skew_seconds(client))
    except redis.RedisError as exc:
        return f"could not compare this machine's clock with the Redis server's ({exc})"
