"""The window limiter (`limiter = "window"`): one window's allowance in every interval
of a window's length, at any phase; exact slots; cooldown, header sync, settings."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError
from support.conformance import window_excess

from budget import Gate, NeverAdmissible, Outcome
from settings import DeploymentSettings

GUARD = 0.1


def deployment(**overrides: object) -> DeploymentSettings:
    values: dict[str, object] = {
        "name": "w1",
        "model": "gpt-4o-mini",
        "tpm": 60_000,  # 1,000 tokens per 1 s window
        "rpm": 600,  # 10 requests per 1 s window
        "limiter": "window",
        "window_seconds": 1.0,
        "request_window_seconds": 1.0,
        "window_guard_seconds": GUARD,
    }
    values.update(overrides)
    return DeploymentSettings(**values)  # type: ignore[arg-type]


def make_gate(client: redis.Redis, horizon: float = 5.0, **overrides: object) -> Gate:
    return Gate(client, [deployment(**overrides)], horizon_seconds=horizon, admission_log=True)


def starts(gate: Gate) -> list[tuple[float, int]]:
    return [(a.start_at, a.tokens) for a in gate.admissions("w1")]


def test_a_window_allowance_at_once_then_the_exact_slot(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    first = gate.reserve("w1", tokens=600)
    second = gate.reserve("w1", tokens=400)
    assert first.outcome is Outcome.GRANTED and second.outcome is Outcome.GRANTED
    assert first.reservation is not None
    booked = gate.reserve("w1", tokens=300)
    assert booked.outcome is Outcome.BOOKED and booked.dimension == "tokens"
    assert booked.reservation is not None
    # The first start must leave the (guarded) window before 300 more fit.
    assert booked.reservation.start_at == pytest.approx(first.reservation.start_at + 1 + GUARD)


def test_starts_are_first_in_first_out(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.reserve("w1", tokens=1000)
    big = gate.reserve("w1", tokens=900)
    small = gate.reserve("w1", tokens=1)
    assert big.reservation is not None and small.reservation is not None
    # The small one would fit beside nothing earlier, but never jumps the queue.
    assert small.reservation.start_at >= big.reservation.start_at
    assert window_excess(starts(gate), window=1 + GUARD, allowance=1000) <= 0


def test_a_small_request_fills_a_gap_a_large_one_left(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    first = gate.reserve("w1", tokens=600)
    large = gate.reserve("w1", tokens=500)  # does not fit beside the 600: next window
    small = gate.reserve("w1", tokens=300)  # fits beside the 600, before the large one
    assert large.outcome is Outcome.BOOKED and small.outcome is Outcome.GRANTED
    assert first.reservation and large.reservation and small.reservation
    assert large.reservation.start_at == pytest.approx(first.reservation.start_at + 1 + GUARD)
    # ...but not beside the large one as well: 300 + 500 + 300 > 1000 in its window.
    later = gate.reserve("w1", tokens=300)
    assert later.reservation is not None
    assert later.reservation.start_at >= large.reservation.start_at
    assert window_excess(starts(gate), window=1 + GUARD, allowance=1000) <= 0


def test_a_long_line_of_bookings_still_conforms(redis_client: redis.Redis) -> None:
    # More bookings ahead than the gap search looks at: it stops short, never overfills.
    gate = make_gate(redis_client, horizon=300.0, rpm=60_000)  # 1,000 requests per window
    sizes = [7, 120, 3, 450, 60, 999, 1, 250]
    for i in range(500):
        decision = gate.reserve("w1", tokens=sizes[i % len(sizes)])
        assert decision.outcome is not Outcome.WAIT
    assert window_excess(starts(gate), window=1 + GUARD, allowance=1000) <= 0
    assert window_excess(starts(gate), window=1, allowance=1000) <= 0


def test_requests_bind_for_small_calls(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    decisions = [gate.reserve("w1", tokens=1) for _ in range(11)]
    assert [d.outcome for d in decisions[:10]] == [Outcome.GRANTED] * 10
    assert decisions[10].outcome is Outcome.BOOKED and decisions[10].dimension == "requests"
    assert decisions[0].reservation is not None and decisions[10].reservation is not None
    assert decisions[10].reservation.start_at == pytest.approx(
        decisions[0].reservation.start_at + 1 + GUARD
    )


def test_bigger_than_a_window_is_never_with_the_numbers(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    decision = gate.reserve("w1", tokens=1001)
    assert decision.outcome is Outcome.NEVER and decision.error is not None
    text = str(decision.error)
    assert "1001 tokens" in text and "1000 tokens" in text and "window_seconds" in text
    with pytest.raises(NeverAdmissible):
        gate.never_admissible("w1", tokens=1001)
    assert gate.reserve("w1", tokens=1000).outcome is Outcome.GRANTED  # exactly one window


def test_wait_beyond_the_horizon(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=0.5)
    assert gate.reserve("w1", tokens=1000).outcome is Outcome.GRANTED
    # Nothing booked ahead yet: booked a (guarded) window ahead, past the horizon.
    assert gate.reserve("w1", tokens=1000).outcome is Outcome.BOOKED
    refused = gate.reserve("w1", tokens=1)
    assert refused.outcome is Outcome.WAIT
    assert refused.wait == pytest.approx(1 + GUARD - 0.5, abs=0.05)


def test_cooldown_is_a_floor_for_every_start(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.cooldown("w1", 0.8)
    decision = gate.reserve("w1", tokens=10)
    assert decision.outcome is Outcome.BOOKED and decision.reservation is not None
    assert decision.countdown == pytest.approx(0.8, abs=0.05)
    assert gate.snapshot("w1").cooldown_seconds > 0.5
    # A 429 also lowers the rate: each window now leaves room for someone else.
    assert gate.snapshot("w1").rate_factor == pytest.approx(0.85, abs=0.01)


def test_a_lowered_rate_shrinks_the_allowance_but_never_below_one_request(
    redis_client: redis.Redis,
) -> None:
    gate = make_gate(redis_client)
    # As a 429 just now would leave it, at half the rate.
    redis_client.hset(
        "quotaflow:{w1}:rate", mapping={"cut": "0.5", "cut_at": int(gate.now() * 1e6)}
    )
    assert gate.reserve("w1", tokens=500).outcome is Outcome.GRANTED
    assert gate.reserve("w1", tokens=1).outcome is Outcome.BOOKED
    redis_client.delete("quotaflow:{w1}:window")
    assert gate.reserve("w1", tokens=900).outcome is Outcome.GRANTED  # alone in its window


def test_header_sync_leaves_a_neighbour_what_it_used_over_the_minute(
    redis_client: redis.Redis,
) -> None:
    gate = Gate(redis_client, [deployment()], horizon_seconds=5.0, neighbour_sample_seconds=0)
    gate.reserve("w1", tokens=300)
    # Azure's headers count the minute: the gate's own 300 explain what is gone.
    assert not gate.observe("w1", {"x-ratelimit-remaining-tokens": str(60_000 - 300)})
    assert gate.snapshot("w1").neighbour_tpm == 0
    # Someone else used 30,000 of the minute: their rate (less the noise allowance)
    # is left free, and each window holds that much less.
    assert gate.observe("w1", {"x-ratelimit-remaining-tokens": str(60_000 - 300 - 30_000)})
    snap = gate.snapshot("w1")
    assert snap.neighbour_tpm == pytest.approx(30_000 - 0.02 * 60_000, rel=1e-3)
    assert snap.effective_tpm == pytest.approx(60_000 - snap.neighbour_tpm, rel=1e-3)
    assert snap.tokens_available == pytest.approx(1000 * snap.rate_factor - 300, abs=1)


def test_edge_header_sync_counts_a_neighbour_once(redis_client: redis.Redis) -> None:
    # N2: every response reported the same neighbour usage again while bookings lay
    # ahead; each was added at the back of the line, and the line moved back with each.
    gate = Gate(redis_client, [deployment()], horizon_seconds=5.0, neighbour_sample_seconds=0)
    for _ in range(3):
        gate.reserve("w1", tokens=300)
    booked = gate.reserve("w1", tokens=300)
    assert booked.outcome is Outcome.BOOKED
    ahead = gate.snapshot("w1").booked_ahead_seconds
    headers = {"x-ratelimit-remaining-tokens": str(60_000 - 900 - 6_000),
               "x-ratelimit-remaining-requests": str(600 - 3 - 60)}  # fmt: skip
    for _ in range(10):
        gate.observe("w1", headers)
    snap = gate.snapshot("w1")
    # One neighbour of 6,000 tokens and 60 requests a minute (less the noise allowance).
    assert snap.neighbour_tpm == pytest.approx(6_000 - 1_200, rel=1e-3)
    assert snap.neighbour_rpm == pytest.approx(60 - 12, rel=1e-3)
    assert snap.effective_rpm == pytest.approx(600 - snap.neighbour_rpm, rel=1e-3)
    # Nothing was pushed to the back of the line.
    assert gate.snapshot("w1").booked_ahead_seconds <= ahead
    assert redis_client.zcard("quotaflow:{w1}:window") == 4


def test_actual_accounting_charges_extra_usage_once(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, accounting="actual")
    decision = gate.reserve("w1", tokens=400)
    assert decision.reservation is not None
    assert gate.settle(decision.reservation, actual_tokens=900)
    assert not gate.settle(decision.reservation, actual_tokens=900)  # idempotent
    # 400 admitted + 500 found at settle: 100 left in this window.
    assert gate.reserve("w1", tokens=100).outcome is Outcome.GRANTED
    assert gate.reserve("w1", tokens=1).outcome is Outcome.BOOKED


def test_a_released_slot_is_free_again(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    taken = gate.reserve("w1", tokens=1000)
    assert taken.reservation is not None
    assert gate.reserve("w1", tokens=1).outcome is Outcome.BOOKED
    gate.release(taken.reservation)  # its call was never sent
    assert gate.reserve("w1", tokens=999).outcome is Outcome.GRANTED


def test_snapshot_and_late_tolerance(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.reserve("w1", tokens=250)
    snap = gate.snapshot("w1")
    assert snap.tokens_capacity == 1000 and snap.tokens_available == 750
    assert snap.requests_capacity == 10 and snap.requests_available == 9
    gate.reserve("w1", tokens=750)
    gate.reserve("w1", tokens=10)
    assert gate.snapshot("w1").booked_ahead_seconds > 1
    assert gate.late_tolerance("w1", 2.0) == GUARD


def test_the_window_set_is_trimmed_and_expires(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, window_seconds=0.05, request_window_seconds=0.05,
                     window_guard_seconds=0.0, tpm=600_000, rpm=600_000)  # fmt: skip
    for _ in range(200):
        gate.reserve("w1", tokens=10)
    key = "quotaflow:{w1}:window"
    assert redis_client.zcard(key) <= 200
    # Kept for header sync's minute past the last start, then gone.
    assert 60_000 < redis_client.pttl(key) <= 62_000


def test_edge_a_backfill_keeps_the_bookings_ahead(redis_client: redis.Redis) -> None:
    # N1: a backfilled start shortened the set's expiry to its own window; the set
    # expired with bookings ahead, and the gate over-admitted into their windows.
    import time

    gate = make_gate(redis_client)
    decisions = [gate.reserve("w1", tokens=900) for _ in range(4)]
    assert [d.outcome for d in decisions][1:] == [Outcome.BOOKED] * 3
    assert gate.reserve("w1", tokens=50).outcome is Outcome.GRANTED  # backfill, now
    key = "quotaflow:{w1}:window"
    newest = redis_client.zrange(key, -1, -1, withscores=True)[0][1]
    now_us = gate.now() * 1e6
    assert redis_client.pttl(key) >= (newest - now_us) / 1000 + 1000
    # A quiet spell longer than one window plus the old expiry margin (1 s).
    time.sleep(1 + GUARD + 1.2)
    gate.reserve("w1", tokens=900)
    assert window_excess(starts(gate), window=1 + GUARD, allowance=1000) <= 0


# -- settings ------------------------------------------------------------------------------


def test_limiter_defaults_follow_the_provider() -> None:
    azure = DeploymentSettings(name="a", kind="azure", model="m", base_url="https://x",
                               api_version="2024-10-21", tpm=90_000, rpm=540)  # fmt: skip
    assert azure.limiter == "window"
    assert (azure.window_seconds, azure.request_window_seconds) == (10.0, 1.0)
    assert azure.token_capacity == 15_000 and azure.request_capacity == 9
    assert DeploymentSettings(name="o", model="m", tpm=1000, rpm=60).limiter == "bucket"
    bucket = DeploymentSettings(name="o", kind="azure", model="m", base_url="https://x",
                                api_version="v", tpm=1000, rpm=60, limiter="bucket")  # fmt: skip
    assert bucket.limiter == "bucket"


def test_window_settings_that_admit_nothing_say_what_to_change() -> None:
    with pytest.raises(ValidationError, match="raise request_window_seconds to at least 10"):
        deployment(tpm=1000, rpm=6)  # Azure's 6 RPM per 1,000 TPM, counted per second
    assert deployment(tpm=1000, rpm=6, request_window_seconds=10).request_capacity == 1
    with pytest.raises(ValidationError, match="raise window_seconds"):
        deployment(tpm=30, window_seconds=1)
    with pytest.raises(ValidationError, match="must not exceed 60s"):
        deployment(window_seconds=60, window_guard_seconds=1)
