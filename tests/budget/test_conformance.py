"""The conformance rule: over any [t1, t2], admitted <= burst + rate * (t2 - t1)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.conformance import admitted_share, window_excess, window_share, worst_excess
from support.hammer import gate_reserve, hammer

from budget import Gate, Outcome, Reservation
from settings import DeploymentSettings

#: Float seconds carry microsecond noise: allow a thousandth of a unit.
EPSILON = 1e-3


#: Each property runs 40 sequences against the real Redis, with no deadline per sequence.
SEQUENCES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: A sequence of gate calls: (call, size from 0 to 1, pause in seconds after it).
OPS = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "reserve", "reserve", "cooldown", "observe", "settle"]),
        st.floats(min_value=0.0, max_value=1.0),
        st.floats(min_value=0.0, max_value=0.004),
    ),
    min_size=1,
    max_size=60,
)


def play(
    gate: Gate,
    dep: DeploymentSettings,
    ops: list[tuple[str, float, float]],
    *,
    remaining: Callable[[float], int],
    settled: Callable[[int, float], int],
) -> None:
    """Make the calls of `ops` on `gate`. A reservation asks for `size` of the burst
    (or window allowance) up to just past it, where "never" must be answered, not
    admitted; the provider's headers say `remaining(size)` tokens are left; a settle
    reports `settled(tokens, size)` tokens used."""
    held: list[Reservation] = []
    for op, size, pause in ops:
        if op == "reserve":
            cost = max(1, int(size * dep.token_capacity * 1.05))
            decision = gate.reserve(dep.name, tokens=cost)
            if decision.reservation:
                held.append(decision.reservation)
            if cost > dep.token_capacity:
                assert decision.outcome is Outcome.NEVER
        elif op == "cooldown":
            gate.cooldown(dep.name, size * 0.01)
        elif op == "observe":
            gate.observe(dep.name, {"x-ratelimit-remaining-tokens": str(remaining(size))})
        elif op == "settle" and held:
            r = held.pop(0)
            gate.settle(r, actual_tokens=settled(r.tokens, size))
        time.sleep(pause)


def check_log(gate: Gate, dep: DeploymentSettings) -> list[tuple[float, int, int]]:
    rows = [(a.start_at, a.tokens, a.requests) for a in gate.admissions(dep.name)]
    tok = worst_excess([(t, n) for t, n, _ in rows], capacity=dep.token_capacity, rate=dep.tpm / 60)
    req = worst_excess(
        [(t, n) for t, _, n in rows], capacity=dep.request_capacity, rate=dep.rpm / 60
    )
    assert tok <= EPSILON, f"tokens overshoot the rule by {tok}"
    assert req <= EPSILON, f"requests overshoot the rule by {req}"
    return rows


@SEQUENCES
@given(
    tpm=st.integers(min_value=6_000, max_value=600_000),
    rpm=st.integers(min_value=600, max_value=60_000),
    burst=st.floats(min_value=0.05, max_value=1.0),
    horizon=st.floats(min_value=0.0, max_value=0.3),
    ops=OPS,
)
def test_every_admission_sequence_conforms(
    redis_client: redis.Redis,
    tpm: int,
    rpm: int,
    burst: float,
    horizon: float,
    ops: list[tuple[str, float, float]],
) -> None:
    assume(rpm * burst / 60 >= 1)  # the settings refuse a burst below one request
    dep = DeploymentSettings(
        name=f"p{uuid.uuid4().hex[:8]}",
        model="gpt-4o",
        tpm=tpm,
        rpm=rpm,
        burst_seconds=burst,
        accounting="actual",
    )
    gate = Gate(redis_client, [dep], horizon_seconds=horizon, admission_log=True)
    # Settles only charge: refunds return units, which the log of admissions (by
    # design) does not subtract.
    play(
        gate, dep, ops,
        remaining=lambda size: int(size * tpm),
        settled=lambda tokens, size: tokens + int(size * 10),
    )  # fmt: skip
    check_log(gate, dep)


def read_then_add(url: str, dep: DeploymentSettings, horizon: float) -> Callable[[int], float]:
    """The seed article's check: read the budget in one call, add in another."""
    client = redis.Redis.from_url(url)
    interval = 60e6 / dep.tpm
    tolerance = dep.token_capacity * interval
    key, log = f"racy:{dep.name}:tat", f"quotaflow:{{{dep.name}}}:admissions"

    def reserve(cost: int) -> float:
        sec, usec = client.time()
        now = sec * 1_000_000 + usec
        tat = max(int(client.get(key) or now), now)
        if tat + cost * interval - tolerance > now:
            return (tat + cost * interval - tolerance - now) / 1e6
        client.set(key, int(tat + cost * interval))
        client.rpush(log, f"{now} {cost} 1 racy")
        return 0.0

    return reserve


HAMMER_DEP = DeploymentSettings(
    name="hammered", model="gpt-4o", tpm=1_200_000, rpm=120_000, burst_seconds=0.5
)


@pytest.mark.timeout(120)
def test_many_processes_conform_and_saturate(redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    dep = HAMMER_DEP
    hammer(gate_reserve, (redis_server.url, dep, 0.2), processes=4, threads=4, seconds=4)
    gate = Gate(redis_client, [dep], admission_log=True)
    rows = check_log(gate, dep)
    assert len(rows) > 50
    share = admitted_share(
        [(t, n) for t, n, _ in rows], capacity=dep.token_capacity, rate=dep.tpm / 60
    )
    print(f"admitted share of the rule: {share:.4f} over {len(rows)} admissions")
    assert share >= 0.95, f"only {share:.3f} of the allowed tokens were admitted"


@pytest.mark.timeout(120)
def test_the_check_catches_a_read_then_add_gate(redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    """The same hammer against the racy two-call check must overshoot: the test has teeth."""
    dep = HAMMER_DEP
    hammer(read_then_add, (redis_server.url, dep, 0.2), processes=4, threads=4, seconds=3)
    gate = Gate(redis_client, [dep], admission_log=True)
    rows = [(a.start_at, a.tokens) for a in gate.admissions(dep.name)]
    assert worst_excess(rows, capacity=dep.token_capacity, rate=dep.tpm / 60) > 1


# -- the window limiter: one window's allowance in every window, at any phase --------------


def check_windows(gate: Gate, dep: DeploymentSettings, *, guarded: bool = True) -> list[Row]:
    """Every interval of a window's length holds at most its allowance, on both
    dimensions; with `guarded`, also every interval of the gate's longer window."""
    rows = [(a.start_at, a.tokens, a.requests) for a in gate.admissions(dep.name)]
    guard = dep.window_guard_seconds if guarded else 0.0
    for window in {dep.window_seconds, dep.window_seconds + guard}:
        tok = window_excess([(t, n) for t, n, _ in rows], window=window,
                            allowance=dep.token_capacity)  # fmt: skip
        assert tok <= EPSILON, f"tokens overfill a {window:g}s window by {tok}"
    for window in {dep.request_window_seconds, dep.request_window_seconds + guard}:
        req = window_excess([(t, n) for t, _, n in rows], window=window,
                            allowance=dep.request_capacity)  # fmt: skip
        assert req <= EPSILON, f"requests overfill a {window:g}s window by {req}"
    return rows


Row = tuple[float, int, int]


@SEQUENCES
@given(
    tpm=st.integers(min_value=6_000, max_value=600_000),
    rpm=st.integers(min_value=600, max_value=60_000),
    window=st.floats(min_value=0.02, max_value=0.3),
    request_window=st.floats(min_value=0.01, max_value=0.3),
    guard=st.floats(min_value=0.0, max_value=0.05),
    horizon=st.floats(min_value=0.0, max_value=0.3),
    ops=OPS,
)
def test_every_window_sequence_conforms(
    redis_client: redis.Redis,
    tpm: int,
    rpm: int,
    window: float,
    request_window: float,
    guard: float,
    horizon: float,
    ops: list[tuple[str, float, float]],
) -> None:
    assume(rpm * request_window / 60 >= 1 and tpm * window / 60 >= 1)
    dep = DeploymentSettings(
        name=f"w{uuid.uuid4().hex[:8]}",
        model="gpt-4o",
        tpm=tpm,
        rpm=rpm,
        limiter="window",
        window_seconds=window,
        request_window_seconds=request_window,
        window_guard_seconds=guard,
        accounting="actual",
    )
    gate = Gate(redis_client, [dep], horizon_seconds=horizon, admission_log=True)
    # Settles refund and charge: neither may let a window hold more.
    play(
        gate, dep, ops,
        remaining=lambda size: int(size * dep.token_capacity),
        settled=lambda tokens, size: max(0, tokens + int((size - 0.5) * 20)),
    )  # fmt: skip
    check_windows(gate, dep)


WINDOW_DEP = DeploymentSettings(
    name="hammered-window", model="gpt-4o", tpm=2_400_000, rpm=120_000, limiter="window",
    window_seconds=0.5, request_window_seconds=0.5, window_guard_seconds=0.02,
)  # fmt: skip


@pytest.mark.timeout(120)
def test_many_processes_fill_windows_and_never_overfill(redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    dep = WINDOW_DEP
    hammer(gate_reserve, (redis_server.url, dep, 0.2), processes=4, threads=4, seconds=4)
    gate = Gate(redis_client, [dep], admission_log=True)
    rows = check_windows(gate, dep)
    assert len(rows) > 50
    share = window_share(
        [(t, n) for t, n, _ in rows],
        window=dep.window_seconds + dep.window_guard_seconds,
        allowance=dep.token_capacity,
    )
    print(f"window share: {share:.4f} over {len(rows)} admissions")
    # Windows are filled, not merely kept under the allowance (a limiter that admits
    # next to nothing would pass the check above); the gap to 1 is packing, not speed.
    assert share >= 0.8, f"only {share:.3f} of the windows' allowance was admitted"


@pytest.mark.timeout(120)
def test_the_window_check_catches_a_bucket_at_full_rate(redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Negative control: a token bucket at the provider's full rate, even with a burst
    of only a tenth of a window, overfills windows of the provider's length."""
    bucket = DeploymentSettings(
        name=WINDOW_DEP.name, model="gpt-4o", tpm=WINDOW_DEP.tpm, rpm=WINDOW_DEP.rpm,
        limiter="bucket", burst_seconds=WINDOW_DEP.window_seconds / 10,
    )  # fmt: skip
    hammer(gate_reserve, (redis_server.url, bucket, 0.2), processes=4, threads=4, seconds=3)
    gate = Gate(redis_client, [bucket], admission_log=True)
    rows = [(a.start_at, a.tokens) for a in gate.admissions(bucket.name)]
    check_log(gate, bucket)  # the bucket keeps its own promise...
    excess = window_excess(rows, window=WINDOW_DEP.window_seconds,
                           allowance=WINDOW_DEP.token_capacity)  # fmt: skip
    assert excess > 1, f"a bucket at full rate should overfill a window; excess {excess}"
