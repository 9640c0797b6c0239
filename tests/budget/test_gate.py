from __future__ import annotations

import time

import pytest
import redis
from support.conformance import worst_excess

from budget import BudgetUnavailable, Gate, NeverAdmissible, Outcome
from settings import DeploymentSettings


def deployment(**overrides: object) -> DeploymentSettings:
    values: dict[str, object] = {
        "name": "d1",
        "model": "gpt-4o-mini",
        "tpm": 60_000,
        "rpm": 600,
        "burst_seconds": 1.0,
    }
    values.update(overrides)
    return DeploymentSettings(**values)  # type: ignore[arg-type]


def make_gate(client: redis.Redis, horizon: float = 5.0, **overrides: object) -> Gate:
    return Gate(client, [deployment(**overrides)], horizon_seconds=horizon, admission_log=True)


def test_granted_now_while_the_burst_lasts(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)  # burst: 1000 tokens, 10 requests
    first = gate.reserve("d1", tokens=600)
    second = gate.reserve("d1", tokens=400)
    assert first.outcome is Outcome.GRANTED and second.outcome is Outcome.GRANTED
    assert first.countdown == 0 and first.reservation is not None
    assert first.reservation.tokens == 600


def test_booked_at_the_earliest_conforming_time(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    first = gate.reserve("d1", tokens=1000)  # empties the token bucket
    booked = gate.reserve("d1", tokens=500)  # refill is 1000 tokens/s
    assert booked.outcome is Outcome.BOOKED
    assert booked.dimension == "tokens"
    assert booked.reservation is not None
    # Exact on the Redis clock, however long the round trips took.
    assert booked.reservation.start_at - first.now == pytest.approx(0.5, abs=1e-5)
    later = gate.reserve("d1", tokens=250)
    assert later.reservation is not None and booked.reservation is not None
    assert later.reservation.start_at - booked.reservation.start_at == pytest.approx(0.25, abs=1e-5)


def test_requests_dimension_binds_for_small_calls(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)  # 10 requests at once, then one per 0.1 s
    decisions = [gate.reserve("d1", tokens=1)]
    while decisions[-1].outcome is Outcome.GRANTED:
        decisions.append(gate.reserve("d1", tokens=1))
    # On the Redis clock: the burst, plus what refilled while asking (a loaded host).
    refilled = int((decisions[-1].now - decisions[0].now) / 0.1)
    assert 10 <= len(decisions) - 1 <= 10 + refilled
    assert decisions[-1].outcome is Outcome.BOOKED
    assert decisions[-1].dimension == "requests"


def test_wait_beyond_the_horizon_with_a_hint(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=0.5)
    first = gate.reserve("d1", tokens=1000)  # bucket empty, nothing booked ahead
    assert gate.reserve("d1", tokens=300).outcome is Outcome.BOOKED  # 0.3 s ahead
    assert gate.reserve("d1", tokens=600).outcome is Outcome.BOOKED  # 0.9 s ahead
    refused = gate.reserve("d1", tokens=10)
    assert refused.outcome is Outcome.WAIT
    assert refused.reservation is None
    # 0.9 s booked ahead of the first decision, 0.5 s horizon: exact on the Redis clock.
    assert refused.wait + (refused.now - first.now) == pytest.approx(0.4, abs=1e-5)


def test_large_requests_are_not_starved_by_small_ones(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=0.5)
    gate.reserve("d1", tokens=1000)
    # Booking depends on what is booked ahead, not on size: a large request books
    # as readily as a small one.
    assert gate.reserve("d1", tokens=900).outcome is Outcome.BOOKED


def test_never_admissible_answers_at_once_with_the_numbers(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    decision = gate.reserve("d1", tokens=1001)
    assert decision.outcome is Outcome.NEVER
    assert isinstance(decision.error, NeverAdmissible)
    assert decision.error.requested == 1001 and decision.error.capacity == 1000
    assert "1001 tokens" in str(decision.error) and "1000" in str(decision.error)
    assert gate.admissions("d1") == []


def test_unknown_deployment_is_a_clear_error(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    with pytest.raises(ValueError, match="unknown deployment 'nope'; configured: d1"):
        gate.reserve("nope", tokens=1)


def test_settle_in_actual_mode_refunds_once(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, accounting="actual")
    decision = gate.reserve("d1", tokens=1000)
    assert decision.reservation is not None
    assert gate.snapshot("d1").tokens_available < 10
    assert gate.settle(decision.reservation, actual_tokens=200) is True
    assert gate.snapshot("d1").tokens_available == pytest.approx(800, abs=20)
    # A redelivered task settling again changes nothing.
    assert gate.settle(decision.reservation, actual_tokens=200) is False
    assert gate.snapshot("d1").tokens_available == pytest.approx(800, abs=20)


def test_settle_in_actual_mode_charges_overuse(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, accounting="actual")
    decision = gate.reserve("d1", tokens=100)
    assert decision.reservation is not None
    gate.settle(decision.reservation, actual_tokens=700)
    assert gate.snapshot("d1").tokens_available == pytest.approx(300, abs=20)


def test_settle_in_estimate_mode_keeps_the_charge(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, accounting="estimate")
    decision = gate.reserve("d1", tokens=1000)
    assert decision.reservation is not None
    assert gate.settle(decision.reservation, actual_tokens=10) is True
    assert gate.snapshot("d1").tokens_available < 30


def test_cooldown_admits_nothing_before_it_ends(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=10)
    gate.cooldown("d1", 2.0)
    snap = gate.snapshot("d1")
    assert 1.0 < snap.cooldown_seconds <= 2.0
    decision = gate.reserve("d1", tokens=1)
    assert decision.outcome is Outcome.BOOKED
    # Empty at the end of the cooldown: the first call waits for its own refill too.
    assert decision.countdown >= 2.0


def test_cooldown_never_moves_the_bucket_earlier(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=10)
    gate.cooldown("d1", 3.0)
    gate.cooldown("d1", 0.5)
    assert gate.snapshot("d1").cooldown_seconds > 2.5


def test_observe_tightens_when_the_provider_has_less(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    moved = gate.observe(
        "d1", {"X-RateLimit-Remaining-Tokens": "300", "x-ratelimit-remaining-requests": "9"}
    )
    assert moved
    snap = gate.snapshot("d1")
    assert snap.tokens_available == pytest.approx(300, abs=5)
    assert snap.requests_available == pytest.approx(9, abs=0.1)


def test_observe_never_loosens(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.reserve("d1", tokens=900)
    assert not gate.observe("d1", {"x-ratelimit-remaining-tokens": "1000"})
    assert gate.snapshot("d1").tokens_available < 150
    assert not gate.observe("d1", {"x-ratelimit-remaining-tokens": "garbage"})
    assert not gate.observe("d1", {})


def test_fails_closed_when_redis_is_down(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    gate = make_gate(redis_client)
    assert gate.reserve("d1", tokens=1).outcome is Outcome.GRANTED
    redis_server.stop()
    try:
        with pytest.raises(BudgetUnavailable, match="nothing is admitted"):
            gate.reserve("d1", tokens=1)
        with pytest.raises(BudgetUnavailable):
            gate.snapshot("d1")
    finally:
        redis_server.start()
    # The scripts are loaded again on their own after the restart.
    assert gate.reserve("d1", tokens=1).outcome is Outcome.GRANTED


def test_keys_share_one_hash_slot_per_deployment(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client)
    gate.reserve("d1", tokens=5)
    keys = [k.decode() for k in redis_client.keys("*")]
    assert keys and all(k.startswith("quotaflow:{d1}:") for k in keys)


def test_admission_log_conforms_for_a_sequence(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=0.3)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        decision = gate.reserve("d1", tokens=137)
        if decision.outcome is Outcome.WAIT:
            time.sleep(decision.wait)
    admissions = gate.admissions("d1")
    assert len(admissions) > 15
    points = [(a.start_at, a.tokens) for a in admissions]
    # Float seconds carry microsecond noise: allow a thousandth of a token.
    assert worst_excess(points, capacity=1000, rate=1000) <= 1e-3


def test_a_429_slows_the_rate_and_time_wins_it_back(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=60)
    gate.cooldown("d1", 0.001)
    assert gate.snapshot("d1").rate_factor == pytest.approx(0.85, abs=0.01)
    first = gate.reserve("d1", tokens=500)
    second = gate.reserve("d1", tokens=500)
    assert first.reservation is not None and second.reservation is not None
    # 500 tokens at 1000/s take 0.5 s; at ~85% of the rate, ~0.5 / 0.85 s.
    gap = second.reservation.start_at - first.reservation.start_at
    assert gap == pytest.approx(0.5 / 0.85, abs=0.01)
    # Successes do not speed it up; time does (G6).
    for _ in range(100):
        gate.observe("d1", {})
    assert gate.snapshot("d1").rate_factor < 0.9
    state = gate.limits("d1").keys.rate
    redis_client.hset(state, "cut_at", int((gate.now() - 8) * 1e6))  # 8 s later
    assert gate.snapshot("d1").rate_factor == 1.0


def test_the_rate_factor_has_a_floor_and_never_makes_a_request_inadmissible(
    redis_client: redis.Redis,
) -> None:
    gate = make_gate(redis_client, horizon=600)
    for _ in range(50):
        gate.cooldown("d1", 0.001)
        time.sleep(0.002)  # each its own overload: the cooldown before has ended
    assert gate.snapshot("d1").rate_factor == pytest.approx(0.3, abs=0.01)
    # A full burst still fits (it is spaced out, not refused for ever).
    time.sleep(0.01)
    assert gate.reserve("d1", tokens=1000).outcome in (Outcome.GRANTED, Outcome.BOOKED)


def test_the_429s_of_one_overload_slow_the_rate_once(redis_client: redis.Redis) -> None:
    gate = make_gate(redis_client, horizon=60)
    for _ in range(5):  # five workers refused in the same moment
        gate.cooldown("d1", 1.0)
    assert gate.snapshot("d1").rate_factor == pytest.approx(0.85, abs=0.01)
