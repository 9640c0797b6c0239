"""Learning a neighbour's share from the provider's headers (observe.lua).

A stand-in provider here is a plain token bucket that a blind neighbour drains at a
steady rate; the gate sees only what a real provider's `x-ratelimit-*` headers say.
"""

from __future__ import annotations

import time

import redis

from budget import Gate, Outcome
from settings import DeploymentSettings

RATE = 1000.0  # tokens per second (tpm 60,000)
# The burst below the provider's bucket, leaving room for the reserve (gate._keep).
DEP = DeploymentSettings(
    name="shared", model="gpt-4o-mini", tpm=60_000, rpm=6_000, burst_seconds=0.5
)


class Provider:
    """A bucket of RATE tokens/s holding one second, shared with a neighbour who takes
    what it wants when it is there, and less when the bucket is empty."""

    def __init__(self, neighbour: float) -> None:
        self.level = RATE
        self.neighbour = neighbour
        self.at = time.monotonic()
        self.refused = 0
        self.neighbour_taken = 0.0

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self.at = now - self.at, now
        self.level = min(RATE, self.level + RATE * dt)
        taken = min(self.level, self.neighbour * dt)
        self.level -= taken
        self.neighbour_taken += taken

    def call(self, tokens: int) -> dict[str, str] | None:
        """The headers of a success, or None for a 429."""
        self._advance()
        if tokens > self.level:
            self.refused += 1
            return None
        self.level -= tokens
        return {
            "x-ratelimit-limit-tokens": str(int(RATE)),
            "x-ratelimit-remaining-tokens": str(int(self.level)),
        }


def drive(gate: Gate, provider: Provider, seconds: float) -> int:
    """Send as fast as the gate allows; returns the calls made."""
    calls = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        decision = gate.reserve("shared", tokens=50)
        if decision.outcome is Outcome.WAIT:
            time.sleep(decision.wait)
            continue
        time.sleep(decision.countdown)
        headers = provider.call(50)
        if headers is None:  # as the task does on a 429
            gate.cooldown("shared", 0.05)
        else:
            gate.observe("shared", headers)
        calls += 1
    return calls


def learning_gate(client: redis.Redis) -> Gate:
    """Learning on, every time constant shortened to this test's seconds (the
    provider's bucket holds one second here, not a minute)."""
    return Gate(
        client, [DEP], horizon_seconds=2.0,
        neighbour_smoothing_seconds=1.0, neighbour_sample_seconds=0.2, inline_seconds=2.0,
        neighbour_learning=True, rate_regain_per_second=0.2, neighbour_reserve=0.5,
    )  # fmt: skip


def test_the_neighbours_rate_is_learned_and_left_free(redis_client: redis.Redis) -> None:
    gate = learning_gate(redis_client)
    provider = Provider(neighbour=300.0)
    drive(gate, provider, 4.0)  # learning
    provider.refused, provider.neighbour_taken = 0, 0.0
    t0 = time.monotonic()
    calls = drive(gate, provider, 4.0)
    true_rate = provider.neighbour_taken / (time.monotonic() - t0)
    snap = gate.snapshot("shared")
    learned = snap.neighbour_tpm / 60
    assert true_rate > 250  # the neighbour got (nearly) all it wanted
    assert abs(learned - true_rate) <= 0.15 * true_rate, (true_rate, snap)
    # The gate now leaves the neighbour its share: together they use the quota.
    assert abs(snap.effective_tpm / 60 + true_rate - RATE) <= 0.05 * RATE, snap
    assert provider.refused <= 0.02 * calls, (provider.refused, calls)


def test_the_share_comes_back_once_the_neighbour_goes_quiet(redis_client: redis.Redis) -> None:
    gate = learning_gate(redis_client)
    provider = Provider(neighbour=400.0)
    drive(gate, provider, 4.0)
    busy = gate.snapshot("shared").neighbour_tpm
    assert busy > 0.5 * 400 * 60
    provider.neighbour = 0.0
    drive(gate, provider, 4.0)  # four smoothing times
    quiet = gate.snapshot("shared")
    assert quiet.neighbour_tpm < 0.1 * busy, quiet
    assert quiet.effective_tpm > 0.8 * DEP.tpm, quiet


def test_without_headers_nothing_is_learned(redis_client: redis.Redis) -> None:
    gate = Gate(redis_client, [DEP], neighbour_learning=True, neighbour_sample_seconds=0.0)
    for _ in range(20):
        gate.reserve("shared", tokens=10)
        gate.observe("shared", {})
    snap = gate.snapshot("shared")
    assert snap.neighbour_tpm == 0 and snap.rate_factor == 1.0


def test_switching_learning_off_forgets_the_share(redis_client: redis.Redis) -> None:
    gate = learning_gate(redis_client)
    drive(gate, Provider(neighbour=400.0), 3.0)
    assert gate.snapshot("shared").neighbour_tpm > 0
    headers = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900"}
    Gate(redis_client, [DEP], neighbour_learning=False).observe("shared", headers)
    assert gate.snapshot("shared").neighbour_tpm == 0
    # No learned factor left for reserve.lua (an AIMD cut after a 429 may remain).
    assert redis_client.hget(gate.limits("shared").keys.rate, "f_t") is None
