"""The gate at its edges: refunds against cooldowns, bookings used twice or made
stale, provider-sized cooldowns, errors that are not outages, a skewed caller clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from budget import BudgetStoreError, BudgetUnavailable, Gate, Outcome, Redemption, Reservation
from settings import DeploymentSettings, SettingsError, load_settings


def deployment(**overrides: object) -> DeploymentSettings:
    values: dict[str, object] = {
        "name": "d1",
        "model": "gpt-4o-mini",
        "tpm": 60_000,  # 1,000 tokens/s
        "rpm": 600,
        "burst_seconds": 1.0,
    }
    values.update(overrides)
    return DeploymentSettings(**values)  # type: ignore[arg-type]


def gate_for(client: redis.Redis, **overrides: object) -> Gate:
    return Gate(client, [deployment(**overrides)], horizon_seconds=30.0, admission_log=True)


def test_edge_refund_never_undoes_a_cooldown(redis_client: redis.Redis) -> None:
    # G1: ten refused calls refunded after the 429 that cooled the deployment down.
    gate = gate_for(redis_client, accounting="actual")
    held = [gate.reserve("d1", tokens=100).reservation for _ in range(10)]
    gate.cooldown("d1", 2.0)
    for r in held:
        assert r is not None
        gate.settle(r, actual_tokens=0)
    snap = gate.snapshot("d1")
    assert snap.tokens_available == 0
    after = gate.reserve("d1", tokens=1)
    assert after.reservation is not None
    # Nothing starts before the cooldown ends and the emptied bucket refills for it.
    assert after.reservation.start_at >= after.now + snap.cooldown_seconds


def test_edge_refund_outside_a_cooldown_still_applies(redis_client: redis.Redis) -> None:
    gate = gate_for(redis_client, accounting="actual")
    r = gate.reserve("d1", tokens=1000).reservation
    assert r is not None
    gate.settle(r, actual_tokens=200)
    assert gate.snapshot("d1").tokens_available > 700


def test_edge_estimate_settle_writes_nothing(redis_client: redis.Redis) -> None:
    # G10: the charge stands in estimate mode, so settling must not touch Redis.
    gate = gate_for(redis_client, accounting="estimate")
    r = gate.reserve("d1", tokens=500).reservation
    assert r is not None
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert gate.settle(r, actual_tokens=17)
    after = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert before == after


def test_edge_cooldown_is_capped(redis_client: redis.Redis) -> None:
    # C1: a provider (or proxy) asking for two hours stops the deployment for at most
    # max_cooldown_seconds.
    gate = Gate(redis_client, [deployment()], max_cooldown_seconds=5.0)
    gate.cooldown("d1", 7200.0)
    snap = gate.snapshot("d1")
    assert 0 < snap.cooldown_seconds <= 5.0
    assert snap.booked_ahead_seconds <= 5.0 + 1e-3


def book(gate: Gate) -> Reservation:
    gate.reserve("d1", tokens=1000)  # empty
    decision = gate.reserve("d1", tokens=100)
    assert decision.outcome is Outcome.BOOKED and decision.reservation is not None
    return decision.reservation


def test_edge_booking_is_single_use(redis_client: redis.Redis) -> None:
    # G3: the second copy of a booked message gets no call without a gate decision.
    gate = gate_for(redis_client)
    r = book(gate)
    answer, _ = gate.redeem(r, inline_seconds=1.0)
    assert answer is Redemption.VALID
    again, _ = gate.redeem(r, inline_seconds=1.0)
    assert again is Redemption.UNKNOWN


def test_edge_a_forged_booking_is_unknown(redis_client: redis.Redis) -> None:
    gate = gate_for(redis_client)
    now = gate.now()
    forged = Reservation(uuid.uuid4().hex, "d1", tokens=1, requests=1, start_at=now)
    assert gate.redeem(forged, inline_seconds=1.0)[0] is Redemption.UNKNOWN


def test_edge_a_booking_is_bound_to_its_slot(redis_client: redis.Redis) -> None:
    # N17: the marker held "1", so a copy of the message with an earlier start_at
    # redeemed VALID at the earlier time. The real slot stays good.
    import dataclasses

    gate = gate_for(redis_client)
    r = book(gate)
    earlier = dataclasses.replace(r, start_at=r.start_at - 0.05)
    assert gate.redeem(earlier, inline_seconds=1.0)[0] is Redemption.UNKNOWN
    assert gate.redeem(r, inline_seconds=1.0)[0] is Redemption.VALID


def test_edge_early_return_keeps_the_booking(redis_client: redis.Redis) -> None:
    gate = gate_for(redis_client)
    gate.reserve("d1", tokens=1000)
    far = gate.reserve("d1", tokens=1000).reservation  # one second out
    assert far is not None
    assert gate.redeem(far, inline_seconds=0.1)[0] is Redemption.EARLY
    assert gate.redeem(far, inline_seconds=5.0)[0] is Redemption.VALID


def test_edge_booking_made_before_a_cooldown_is_stale(redis_client: redis.Redis) -> None:
    # G2: a 429 after the booking, whose slot falls inside the cooldown: no call then.
    gate = gate_for(redis_client)
    r = book(gate)  # 0.1 s ahead
    gate.cooldown("d1", 1.0)
    assert gate.redeem(r, inline_seconds=1.0)[0] is Redemption.STALE
    assert gate.redeem(r, inline_seconds=1.0)[0] is Redemption.UNKNOWN
    # A booking made after the cooldown is good.
    fresh = gate.reserve("d1", tokens=10).reservation
    assert fresh is not None
    assert gate.redeem(fresh, inline_seconds=60.0)[0] is Redemption.VALID


def test_edge_a_booking_beyond_the_cooldown_keeps_its_slot(redis_client: redis.Redis) -> None:
    # A 429 must not throw away the whole horizon of bookings: those due after the
    # cooldown ends are still good (the cooldown already put new work behind them).
    gate = gate_for(redis_client)
    gate.reserve("d1", tokens=1000)
    gate.reserve("d1", tokens=1000)
    far = gate.reserve("d1", tokens=1000).reservation  # ~2 s out
    assert far is not None
    gate.cooldown("d1", 0.5)
    assert gate.redeem(far, inline_seconds=5.0)[0] is Redemption.VALID


def test_edge_a_script_error_is_not_an_outage(redis_client: redis.Redis) -> None:
    # G9: a corrupt bucket makes the script fail; that is reported, not waited out.
    gate = gate_for(redis_client)
    redis_client.set(gate.limits("d1").keys.tokens, "not a number")
    with pytest.raises(BudgetStoreError, match="reserve.lua"):
        gate.reserve("d1", tokens=1)


def test_edge_out_of_memory_is_not_an_outage(redis_client: redis.Redis) -> None:
    gate = gate_for(redis_client)
    redis_client.set("ballast", "x" * 100_000)
    redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(BudgetStoreError, match="OOM"):
            gate.reserve("d1", tokens=1)
    finally:
        redis_client.config_set("maxmemory", 0)


def test_edge_a_read_only_replica_is_an_outage(redis_client: redis.Redis) -> None:
    gate = gate_for(redis_client)
    redis_client.replicaof("127.0.0.1", "1")  # a primary that is not there
    try:
        with pytest.raises(BudgetUnavailable, match="READONLY"):
            gate.reserve("d1", tokens=1)
    finally:
        redis_client.replicaof("NO", "ONE")


def test_edge_a_burst_below_one_request_is_refused() -> None:
    # G4: Azure's ratio (6 RPM per 1,000 TPM) with a 5 s burst admits half a request.
    with pytest.raises(SettingsError) as caught:
        load_settings(
            deployments=[
                {"name": "az", "model": "gpt-4o", "tpm": 1000, "rpm": 6, "burst_seconds": 5}
            ]
        )
    message = str(caught.value)
    assert "less than one" in message and "burst_seconds to at least 10" in message


_CLOCK_PROBE = """
import json, sys, time
import redis
from budget import Gate
from settings import DeploymentSettings
dep = DeploymentSettings(name="skew", model="gpt-4o-mini", tpm=60000, rpm=600, burst_seconds=1)
gate = Gate(redis.Redis.from_url(sys.argv[1]), [dep], horizon_seconds=30)
gate.reserve("skew", tokens=1000)
booked = gate.reserve("skew", tokens=500)
print(json.dumps({"caller_time": time.time(), "now": booked.now,
                  "start_at": booked.reservation.start_at, "countdown": booked.countdown}))
"""


def _faketime_env() -> dict[str, str]:
    import libfaketime

    _, env = libfaketime.get_reload_information()
    env = {k: v for k, v in env.items() if k != "DONT_FAKE_MONOTONIC"}
    return {**os.environ, **env, "FAKETIME": "+2h"}


def test_edge_the_gate_runs_on_the_redis_clock(redis_server, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    # T1: a caller whose clocks (wall and monotonic) run two hours ahead still books
    # on the Redis server's clock.
    done = subprocess.run(
        [sys.executable, "-c", _CLOCK_PROBE, redis_server.url],
        env=_faketime_env(), capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    sec, usec = redis_client.time()
    redis_now = sec + usec / 1e6
    assert seen["caller_time"] - redis_now > 7000  # the skew took effect
    assert abs(seen["now"] - redis_now) < 30
    assert 0 < seen["countdown"] <= 0.5
