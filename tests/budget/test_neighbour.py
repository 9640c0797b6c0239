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


def test_edge_the_gates_own_first_burst_is_no_neighbour(redis_client: redis.Redis) -> None:
    # N10: with the defaults (58 s of a 60 s bucket, 5% reserve) the gate's own legal
    # burst left the provider below the set level: the factor fell to 0.67 at once
    # with nobody else on the key.
    dep = DeploymentSettings(name="oa", model="gpt-4o-mini", tpm=30_000, rpm=500)
    gate = Gate(redis_client, [dep], neighbour_sample_seconds=0)
    for _ in range(int(dep.token_capacity) // 1000):
        assert gate.reserve("oa", tokens=1000).outcome is Outcome.GRANTED
    # The provider holds a minute: the burst left it 60 - 58 = 2 s of quota.
    headers = {
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "471",
    }
    for _ in range(6):
        gate.observe("oa", headers)
    snap = gate.snapshot("oa")
    assert snap.rate_factor == 1.0 and snap.neighbour_tpm == 0, snap
    # A real neighbour still shows: the provider drained below the reserve.
    gate.observe("oa", {**headers, "x-ratelimit-remaining-tokens": "0"})
    assert gate.snapshot("oa").rate_factor < 1.0


def test_edge_a_learned_share_slows_large_requests_too(redis_client: redis.Redis) -> None:
    # N11: the slowed charge was capped at the burst, so a request near the burst's
    # size was charged as if the factor were ~1 and ignored the neighbour's share.
    dep = DeploymentSettings(name="oa", model="gpt-4o-mini", tpm=60_000, rpm=6_000)
    gate = Gate(redis_client, [dep], horizon_seconds=300)
    # Half the quota is learned to be someone else's.
    redis_client.hset("quotaflow:{oa}:rate", mapping={"f_t": "0.5", "f_r": "1"})
    first = gate.reserve("oa", tokens=40_000)
    second = gate.reserve("oa", tokens=40_000)
    assert first.reservation is not None and second.reservation is not None
    # 40,000 tokens at half of 1,000 tokens/s: 80 s apart, not the burst's 58 s.
    gap = second.reservation.start_at - first.reservation.start_at
    assert gap >= 80 - 0.01, gap


def test_edge_the_refill_during_a_cooldown_is_not_unlearned(redis_client: redis.Redis) -> None:
    # After a 429 the gate admits nothing for the cooldown; the provider's bucket
    # refills meanwhile. Read as a smaller neighbour, that refill gave the share back
    # and the next burst met the neighbour again (a 429 after each cooldown).
    dep = DeploymentSettings(name="oa", model="gpt-4o-mini", tpm=30_000, rpm=500)
    gate = Gate(redis_client, [dep])
    last = int((gate.now() - 1.0) * 1e6)  # the last reading, a second ago
    redis_client.hset("quotaflow:{oa}:rate", mapping={"n_t": "200", "x_t": "0", "at": last})
    gate.cooldown("oa", 2.0)
    # The provider holds half its bucket again: nothing of ours explains it but the pause.
    gate.observe(
        "oa", {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "15000"}
    )
    snap = gate.snapshot("oa")
    assert snap.neighbour_tpm == 200 * 60, snap
