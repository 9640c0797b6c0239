"""The token gate: one shared budget per deployment, decided atomically in Redis.

Policy lives here; the atomic operations live in the Lua scripts (`store.py`).
All times are the Redis server's clock, in seconds, never the caller's.
"""

from __future__ import annotations

import enum
import logging
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from budget.errors import NeverAdmissible
from budget.keys import DeploymentKeys, deployment_keys
from budget.store import ScriptStore
from budget.window import Windows, window_state
from settings import DeploymentSettings, SettingsError

log = logging.getLogger(__name__)

_US = 1_000_000
_DIMENSIONS = {1: "tokens", 2: "requests"}
#: How long a settled marker is kept: longer than any redelivery can arrive.
_SETTLED_TTL_SECONDS = 24 * 3600
_LOG_MAX = 1_000_000
#: After a provider 429 the rate is multiplied by this (someone else uses the quota)...
_FACTOR_DECREASE = 0.85
#: ...and each success adds this back, up to the full rate.
_FACTOR_INCREASE = 0.002
#: The rate never drops below this share of the configured one.
_FACTOR_FLOOR = 0.3


class Outcome(enum.Enum):
    GRANTED = "granted"
    BOOKED = "booked"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True)
class Reservation:
    """Budget held for one call; pass it back to `settle`."""

    #: Unique id; settlement is idempotent per id.
    id: str
    #: Deployment the budget was taken from.
    deployment: str
    #: Tokens charged at admission.
    tokens: int
    #: Requests charged at admission.
    requests: int
    #: Redis time (seconds) at which the call may start.
    start_at: float


@dataclass(frozen=True)
class Decision:
    """The gate's answer to one `reserve`."""

    #: granted now, booked for later, wait and ask again, or never.
    outcome: Outcome
    #: Redis time (seconds) when the decision was made.
    now: float
    #: The reservation, when granted or booked.
    reservation: Reservation | None = None
    #: Seconds to wait before asking again (outcome WAIT).
    wait: float = 0.0
    #: The dimension that decided ("tokens" or "requests"), if any.
    dimension: str | None = None
    #: Why it can never be admitted (outcome NEVER).
    error: NeverAdmissible | None = None

    @property
    def countdown(self) -> float:
        """Seconds from the decision until the call may start (0 when granted now)."""
        if self.reservation is None:
            return self.wait
        return max(0.0, self.reservation.start_at - self.now)


@dataclass(frozen=True)
class BudgetSnapshot:
    """A deployment's budget as the gate sees it, for status displays."""

    #: Deployment name.
    deployment: str
    #: Redis time of the reading.
    now: float
    #: Tokens that could be admitted right now.
    tokens_available: float
    #: Burst capacity in tokens.
    tokens_capacity: float
    #: Requests that could be admitted right now.
    requests_available: float
    #: Burst capacity in requests.
    requests_capacity: float
    #: Seconds of quota already booked beyond the current burst.
    booked_ahead_seconds: float
    #: Seconds left of a provider cooldown (0 when none).
    cooldown_seconds: float
    #: Share of the configured rate in use (< 1 after provider 429s).
    rate_factor: float = 1.0


@dataclass(frozen=True)
class Admission:
    """One line of the admission log."""

    #: Redis time (seconds) at which the call was allowed to start.
    start_at: float
    tokens: int
    requests: int
    reservation_id: str


@dataclass(frozen=True)
class _Limits:
    settings: DeploymentSettings
    keys: DeploymentKeys
    token_interval_us: float
    request_interval_us: float
    token_tolerance_us: float
    request_tolerance_us: float
    #: The window limiter's windows; None for a bucket.
    windows: Windows | None = None


class Gate:
    """Reserve, settle, cool down and observe the shared budget of each deployment."""

    def __init__(
        self,
        client: redis.Redis,
        deployments: Iterable[DeploymentSettings],
        *,
        key_prefix: str = "quotaflow",
        horizon_seconds: float = 300.0,
        admission_log: bool = False,
    ) -> None:
        self.store = ScriptStore(client)
        self.horizon_seconds = horizon_seconds
        self.admission_log = admission_log
        self._limits: dict[str, _Limits] = {}
        for dep in deployments:
            token_interval = 60 * _US / dep.tpm
            request_interval = 60 * _US / dep.rpm
            self._limits[dep.name] = _Limits(
                settings=dep,
                keys=deployment_keys(key_prefix, dep.name),
                token_interval_us=token_interval,
                request_interval_us=request_interval,
                token_tolerance_us=dep.token_capacity * token_interval,
                request_tolerance_us=dep.request_capacity * request_interval,
                windows=Windows.of(dep),
            )

    def limits(self, deployment: str) -> _Limits:
        try:
            return self._limits[deployment]
        except KeyError:
            known = ", ".join(self._limits)
            raise SettingsError(f"unknown deployment {deployment!r}; configured: {known}") from None

    def never_admissible(self, deployment: str, *, tokens: int, requests: int = 1) -> None:
        """Raise NeverAdmissible when the cost exceeds a burst (no Redis needed)."""
        check_admissible(self.limits(deployment).settings, tokens=tokens, requests=requests)

    def reserve(
        self,
        deployment: str,
        *,
        tokens: int,
        requests: int = 1,
        reservation_id: str | None = None,
    ) -> Decision:
        """Ask for `tokens` and `requests` on `deployment`, in one round trip.

        Raises BudgetUnavailable when Redis cannot be reached: nothing is admitted.
        """
        if tokens < 0 or requests < 0:
            raise ValueError("costs must be >= 0")
        lim = self.limits(deployment)
        rid = reservation_id or uuid.uuid4().hex
        try:
            self.never_admissible(deployment, tokens=tokens, requests=requests)
        except NeverAdmissible as exc:
            return Decision(
                Outcome.NEVER, now=self.store.time(), dimension=exc.dimension, error=exc
            )
        if lim.windows is not None:
            script = "window"
            keys = [lim.keys.window, lim.keys.cooldown, lim.keys.factor, lim.keys.log]
            args = lim.windows.reserve_args(
                tokens=tokens, requests=requests, horizon_us=int(self.horizon_seconds * _US),
                log=self.admission_log, log_max=_LOG_MAX, reservation_id=rid,
            )  # fmt: skip
        else:
            script = "reserve"
            keys = [lim.keys.tokens, lim.keys.requests, lim.keys.log, lim.keys.factor]
            args = [
                tokens,
                requests,
                repr(lim.token_interval_us),
                repr(lim.request_interval_us),
                repr(lim.token_tolerance_us),
                repr(lim.request_tolerance_us),
                int(self.horizon_seconds * _US),
                "1" if self.admission_log else "0",
                _LOG_MAX,
                rid,
            ]
        code, now_us, start_us, wait_us, binding = self.store.run(script, keys, args)
        now = now_us / _US
        dimension = _DIMENSIONS.get(int(binding))
        if code == 3:
            # Only reachable when settings changed under a running worker.
            cost, cap = (tokens, lim.settings.token_capacity)
            if dimension == "requests":
                cost, cap = (requests, lim.settings.request_capacity)
            err = NeverAdmissible(
                deployment=deployment, dimension=dimension or "tokens", requested=cost,
                capacity=cap, hint=lim.settings.capacity_hint,
            )  # fmt: skip
            return Decision(Outcome.NEVER, now=now, dimension=dimension, error=err)
        if code == 2:
            return Decision(Outcome.WAIT, now=now, wait=wait_us / _US, dimension=dimension)
        reservation = Reservation(
            id=rid, deployment=deployment, tokens=tokens, requests=requests, start_at=start_us / _US
        )
        outcome = Outcome.GRANTED if code == 0 else Outcome.BOOKED
        return Decision(outcome, now=now, reservation=reservation, dimension=dimension)

    def settle(self, reservation: Reservation, *, actual_tokens: int) -> bool:
        """Correct the charge by actual usage where the accounting mode says so.

        Idempotent per reservation: returns False when it was settled before.
        In `estimate` mode the admission charge stands (that is how the provider
        counted it) and only the settled marker is written.
        """
        lim = self.limits(reservation.deployment)
        delta = 0
        if lim.settings.accounting_mode == "actual":
            delta = actual_tokens - reservation.tokens
        if lim.windows is not None:
            if delta > 0:
                _, applied = self.store.run(
                    "window_push",
                    [lim.keys.window, lim.keys.settled(reservation.id), lim.keys.factor],
                    lim.windows.push_args(extra_tokens=delta, settled_ttl=_SETTLED_TTL_SECONDS),
                )
                return bool(applied)
            # A window's starts stand: a refund would let a window hold more than the
            # provider may already have counted in it.
            delta = 0
        applied = self.store.run(
            "settle",
            [lim.keys.tokens, lim.keys.settled(reservation.id)],
            [delta, repr(lim.token_interval_us), _SETTLED_TTL_SECONDS],
        )
        return bool(applied)

    def cooldown(self, deployment: str, seconds: float) -> None:
        """After a provider 429: admit nothing anywhere before `seconds` from now.

        The buckets are left empty at the end of the cooldown, as the provider's are.
        """
        lim = self.limits(deployment)
        seconds = max(0.0, seconds)
        offset_us = seconds * _US
        log.warning("deployment %s: provider 429, cooling down %.2fs", deployment, seconds)
        # Window limiter: the cooldown marker is the floor before which nothing starts.
        window = lim.windows is not None
        self.store.run(
            "push",
            [lim.keys.tokens, lim.keys.requests, lim.keys.cooldown, lim.keys.factor],
            [
                "" if window else repr(offset_us + lim.token_tolerance_us),
                "" if window else repr(offset_us + lim.request_tolerance_us),
                max(1, math.ceil(seconds * 1000)),
                f"x{_FACTOR_DECREASE}",
                _FACTOR_FLOOR,
            ],
        )

    def observe(self, deployment: str, headers: Mapping[str, str]) -> bool:
        """After a successful call: match the provider's `x-ratelimit-remaining-*`
        when it reports less left, and win back some of the rate a 429 took.

        Someone else sharing the key (another tenant, another tool) shows up here.
        Returns True when a bucket moved.
        """
        lim = self.limits(deployment)
        lower = {k.lower(): v for k, v in headers.items()}
        if lim.windows is not None:
            # "Remaining" is what the provider's window still admits; usage beyond the
            # gate's own starts of the last window is added at the back of the line.
            _, moved = self.store.run(
                "window_push",
                [lim.keys.window, lim.keys.settled("-"), lim.keys.factor],
                lim.windows.push_args(
                    remaining_tokens=_number(lower.get("x-ratelimit-remaining-tokens")),
                    remaining_requests=_number(lower.get("x-ratelimit-remaining-requests")),
                    factor_increase=_FACTOR_INCREASE,
                ),
            )
        else:
            moved = self._observe_buckets(lim, lower)
        if moved:
            log.info("deployment %s: provider reports less quota left; gate tightened", deployment)
        return bool(moved)

    def _observe_buckets(self, lim: _Limits, lower: Mapping[str, str]) -> int:
        args: list[str] = []
        for dim, interval, tolerance in (
            ("tokens", lim.token_interval_us, lim.token_tolerance_us),
            ("requests", lim.request_interval_us, lim.request_tolerance_us),
        ):
            remaining = _number(lower.get(f"x-ratelimit-remaining-{dim}"))
            # The bucket holds `remaining` when its TAT is tolerance - remaining ahead.
            args.append("" if remaining is None else repr(tolerance - remaining * interval))
        _, moved = self.store.run(
            "push",
            [lim.keys.tokens, lim.keys.requests, lim.keys.cooldown, lim.keys.factor],
            [*args, 0, f"+{_FACTOR_INCREASE}", _FACTOR_FLOOR],
        )
        return int(moved)

    def snapshot(self, deployment: str) -> BudgetSnapshot:
        lim = self.limits(deployment)
        now_us, tok_us, req_us, cool_us, factor_ppm = self.store.run(
            "snapshot", [lim.keys.tokens, lim.keys.requests, lim.keys.cooldown, lim.keys.factor], []
        )
        dep = lim.settings

        def available(tat: int, tolerance: float, interval: float, capacity: float) -> float:
            return max(0.0, min(capacity, (tolerance - max(0, tat - now_us)) / interval))

        if lim.windows is not None:
            state = window_state(
                lim.windows, self.store.zrange(lim.keys.window), now_us=now_us,
                cooldown_us=cool_us, factor=factor_ppm / 1e6,
            )  # fmt: skip
            return BudgetSnapshot(
                deployment=deployment,
                now=now_us / _US,
                tokens_available=state.tokens_available,
                tokens_capacity=dep.token_capacity,
                requests_available=state.requests_available,
                requests_capacity=dep.request_capacity,
                booked_ahead_seconds=state.booked_ahead_seconds,
                cooldown_seconds=max(0.0, (cool_us - now_us) / _US),
                rate_factor=factor_ppm / 1e6,
            )
        ahead = max(tok_us - lim.token_tolerance_us, req_us - lim.request_tolerance_us) - now_us
        return BudgetSnapshot(
            deployment=deployment,
            now=now_us / _US,
            tokens_available=available(
                tok_us, lim.token_tolerance_us, lim.token_interval_us, dep.token_capacity
            ),
            tokens_capacity=dep.token_capacity,
            requests_available=available(
                req_us, lim.request_tolerance_us, lim.request_interval_us, dep.request_capacity
            ),
            requests_capacity=dep.request_capacity,
            booked_ahead_seconds=max(0.0, ahead / _US),
            cooldown_seconds=max(0.0, (cool_us - now_us) / _US),
            rate_factor=factor_ppm / 1e6,
        )

    def release(self, reservation: Reservation) -> None:
        """Give back a booked slot that will not be used (its call was never sent).

        The window limiter drops the start, so the rest of its window can be used; a
        bucket cannot give back a past slot, and keeps it (conservative).
        """
        lim = self.limits(reservation.deployment)
        if lim.windows is not None:
            member = f"{reservation.tokens} {reservation.requests} {reservation.id}"
            self.store.zrem(lim.keys.window, member)

    def late_tolerance(self, deployment: str, default: float) -> float:
        """How late a booked call may start and still use its slot: `default` for a
        bucket; the guard band for a window limiter (later, it would count in the
        provider's next window)."""
        windows = self.limits(deployment).windows
        return default if windows is None else windows.guard_seconds

    def now(self) -> float:
        """The Redis server's clock, in seconds."""
        return self.store.time()

    def admissions(self, deployment: str) -> list[Admission]:
        """The admission log (empty unless the gate was built with admission_log=True)."""
        out = []
        for raw in self.store.lrange(self.limits(deployment).keys.log):
            start, tokens, requests, rid = raw.decode().split(" ")
            out.append(Admission(int(start) / _US, int(tokens), int(requests), rid))
        return out


def check_admissible(dep: DeploymentSettings, *, tokens: int, requests: int = 1) -> None:
    """Raise NeverAdmissible when a cost exceeds the deployment's burst (or a window's
    allowance) in any dimension."""
    for dimension, cost, capacity in (
        ("tokens", tokens, dep.token_capacity),
        ("requests", requests, dep.request_capacity),
    ):
        if cost > capacity:
            raise NeverAdmissible(
                deployment=dep.name, dimension=dimension, requested=cost, capacity=capacity,
                hint=dep.capacity_hint,
            )  # fmt: skip


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
