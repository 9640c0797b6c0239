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


def test_header_sync_adds_only_what_someone_else_used(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.reserve("w1", tokens=300)
    # The provider's count matches the gate's own: nothing moves.
    assert not gate.observe("w1", {"x-ratelimit-remaining-tokens": "700"})
    assert gate.reserve("w1", tokens=700).outcome is Outcome.GRANTED
    redis_client.delete("quotaflow:{w1}:window")
    gate.reserve("w1", tokens=300)
    # Someone else used 500 in the provider's window: only 200 more fit now.
    assert gate.observe("w1", {"x-ratelimit-remaining-tokens": "200"})
    assert gate.reserve("w1", tokens=200).outcome is Outcome.GRANTED
    assert gate.reserve("w1", tokens=1).outcome is Outcome.BOOKED
    snap = gate.snapshot("w1")
    assert snap.tokens_available == 0
    # The 500 someone else used in the last window (1 s + the guard) is their rate.
    assert snap.neighbour_tpm == pytest.approx(500 / (1 + GUARD) * 60)
    assert snap.effective_tpm == pytest.approx(60_000 - snap.neighbour_tpm)


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
    assert gate.late_tolerance("w1", 2.0) == GUARD / 2


def test_the_window_set_is_trimmed_and_expires(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, window_seconds=0.05, request_window_seconds=0.05,
                     window_guard_seconds=0.0, tpm=600_000, rpm=600_000)  # fmt: skip
    for _ in range(200):
        gate.reserve("w1", tokens=10)
    key = "quotaflow:{w1}:window"
    assert redis_client.zcard(key) <= 200
    assert 0 < redis_client.pttl(key) <= 60_000


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
