"""How late a booked call may start and still use its slot."""

from __future__ import annotations

import redis

from budget import Gate
from settings import DeploymentSettings


def test_edge_a_window_slot_leaves_half_the_guard_for_the_way_to_the_provider(
    redis_client: redis.Redis,
) -> None:
    # N9: a booked call accepted up to the whole guard late had nothing left for its
    # HTTP request and landed in the provider's next window.
    window = DeploymentSettings(
        name="w", model="gpt-4o-mini", tpm=60_000, rpm=600, limiter="window",
        window_guard_seconds=0.25,
    )  # fmt: skip
    bucket = DeploymentSettings(name="b", model="gpt-4o-mini", tpm=60_000, rpm=600)
    gate = Gate(redis_client, [window, bucket])
    assert gate.late_tolerance("w", 2.0) == 0.125
    assert gate.late_tolerance("b", 2.0) == 2.0
