"""The token gate: one shared budget per deployment, decided atomically in Redis.

Policy lives here; the atomic operations live in the Lua scripts (`store.py`).
All times are the Redis server's clock, in seconds, never the caller's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping

import redis

from budget.decisions import (
    Admission,
    BudgetSnapshot,
    Decision,
    Outcome,
    Redemption,
    Reservation,
)
from budget.errors import NeverAdmissible
from budget.limits import Limits, check_admissible, number
from budget.reserve import ReserveCall
from budget.snapshot import read_snapshot
from budget.store import ScriptStore
from budget.window import COUNTER_SECONDS, Windows, member
from settings import DeploymentSettings, SettingsError

log = logging.getLogger(__name__)

_US = 1_000_000
#: How long a settled marker is kept: longer than any redelivery can arrive.
_SETTLED_TTL_SECONDS = 24 * 3600
#: How long a booking marker outlives its slot: a late task must still find it to
#: learn that it is late (it then books again); beyond that it is garbage.
_BOOKING_GRACE_MS = 60_000
_LOG_MAX = 1_000_000
#: After a provider 429 the rate is multiplied by this (someone else uses the quota)...
_FACTOR_DECREASE = 0.85
#: ...and this much of the full rate comes back per second after it (0.85 -> 1 in
#: 7.5 s, the floor -> 1 in 35 s), whatever our own throughput: what stops the next
#: 429s is the learned neighbour rate, not this.
_FACTOR_REGAIN_PER_SECOND = 0.02
#: The rate never drops below this share of the configured one.
_FACTOR_FLOOR = 0.3
#: Neighbour learning (observe.lua): the controller's time constant...
_NEIGHBOUR_SMOOTHING_SECONDS = 6.0
#: ...its updates at least this far apart...
_NEIGHBOUR_SAMPLE_SECONDS = 0.5
#: ...and the share of the provider's bucket it keeps left there, so that a
#: neighbour's burst meets tokens to spare instead of a 429. Never more than half of
#: what the gate's own burst leaves at the provider (see `_keep`).
_NEIGHBOUR_RESERVE = 0.05
#: Window limiter: usage the provider reports beyond the gate's own starts, up to this
#: share of its allowance, is read as counting noise, not as a neighbour.
_WINDOW_NOISE = 0.02


_REDEMPTIONS = {
    0: Redemption.VALID,
    1: Redemption.UNKNOWN,
    2: Redemption.STALE,
    3: Redemption.EARLY,
}


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
        max_cooldown_seconds: float = 60.0,
        neighbour_learning: bool = True,
        neighbour_smoothing_seconds: float = _NEIGHBOUR_SMOOTHING_SECONDS,
        neighbour_sample_seconds: float = _NEIGHBOUR_SAMPLE_SECONDS,
        neighbour_reserve: float = _NEIGHBOUR_RESERVE,
        inline_seconds: float = 1.0,
        rate_regain_per_second: float = _FACTOR_REGAIN_PER_SECOND,
    ) -> None:
        self.store = ScriptStore(client)
        #: A booking this close is waited for in place by the caller (not deferred).
        self.inline_seconds = inline_seconds
        self.rate_regain_per_second = rate_regain_per_second
        #: Learn the share of clients that bypass the gate from the provider's headers
        #: and leave it free (observe.lua; the neighbour benchmark in bench/RESULTS.md).
        self.neighbour_learning = neighbour_learning
        self.neighbour_smoothing_seconds = neighbour_smoothing_seconds
        self.neighbour_sample_seconds = neighbour_sample_seconds
        self.neighbour_reserve = neighbour_reserve
        self.horizon_seconds = horizon_seconds
        self.max_cooldown_seconds = max_cooldown_seconds
        self.admission_log = admission_log
        self._limits: dict[str, Limits] = {}
        for dep in deployments:
            self._limits[dep.name] = Limits.of(dep, key_prefix)
        self._reserve = {
            name: ReserveCall(
                self.store,
                lim,
                horizon_us=int(horizon_seconds * _US),
                admission_log=admission_log,
                log_max=_LOG_MAX,
                booking_grace_ms=_BOOKING_GRACE_MS,
                rate_regain_per_second=rate_regain_per_second,
            )  # fmt: skip
            for name, lim in self._limits.items()
        }

    def limits(self, deployment: str) -> Limits:
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
        try:
            call = self._reserve[deployment]
        except KeyError:
            self.limits(deployment)  # raises, naming the configured deployments
            raise
        if tokens > call.token_capacity or requests > call.request_capacity:
            try:
                self.never_admissible(deployment, tokens=tokens, requests=requests)
            except NeverAdmissible as exc:
                return Decision(
                    Outcome.NEVER, now=self.store.time(), dimension=exc.dimension, error=exc
                )
        # 128 random bits, as uuid4 has, without building a UUID for each call.
        return call(tokens, requests, reservation_id or os.urandom(16).hex())

    def redeem(
        self, reservation: Reservation, *, inline_seconds: float
    ) -> tuple[Redemption, float]:
        """Check a booking a deferred task came back with; use it up unless EARLY.

        A booking is used once: a second copy of the message finds it gone. EARLY
        (more than `inline_seconds` before the slot) keeps it for the next return.
        Returns the answer and the Redis time, in one round trip.
        """
        lim = self.limits(reservation.deployment)
        now_us, status = self.store.run(
            "redeem",
            [lim.keys.booking(reservation.id), lim.keys.cooldown],
            [int(reservation.start_at * _US), int(inline_seconds * _US)],
        )
        return _REDEMPTIONS[int(status)], now_us / _US

    def settle(self, reservation: Reservation, *, actual_tokens: int) -> bool:
        """Correct the charge by actual usage where the accounting mode says so.

        Idempotent per reservation: returns False when it was settled before. In
        `estimate` mode the admission charge stands (that is how the provider counted
        it) and nothing is written. A refund never reaches into an active cooldown.
        """
        lim = self.limits(reservation.deployment)
        if lim.settings.accounting_mode != "actual":
            return True
        delta = actual_tokens - reservation.tokens
        if lim.windows is not None:
            if delta <= 0:
                # A window's starts stand: a refund would let a window hold more than
                # the provider may already have counted in it.
                return True
            _, applied = self.store.run(
                "window_push",
                [lim.keys.window, lim.keys.settled(reservation.id)],
                lim.windows.push_args(extra_tokens=delta, settled_ttl=_SETTLED_TTL_SECONDS),
            )
            return bool(applied)
        if delta == 0:
            return True
        applied = self.store.run(
            "settle",
            [lim.keys.tokens, lim.keys.settled(reservation.id), lim.keys.cooldown],
            [
                delta,
                repr(lim.token_interval_us),
                _SETTLED_TTL_SECONDS,
                repr(lim.token_tolerance_us),
            ],
        )
        return bool(applied)

    def cooldown(self, deployment: str, seconds: float) -> None:
        """After a provider 429: admit nothing anywhere before `seconds` from now.

        The buckets are left empty at the end of the cooldown, as the provider's are.
        A booking whose slot falls inside it goes stale. `seconds` comes from the provider
        (or a proxy): it is capped at `max_cooldown_seconds`.
        """
        lim = self.limits(deployment)
        seconds = min(max(0.0, seconds), self.max_cooldown_seconds)
        offset_us = seconds * _US
        log.warning("deployment %s: provider 429, cooling down %.2fs", deployment, seconds)
        # Window limiter: the cooldown marker is the floor before which nothing starts.
        window = lim.windows is not None
        self.store.run(
            "cooldown",
            [lim.keys.tokens, lim.keys.requests, lim.keys.cooldown, lim.keys.rate],
            [
                "" if window else repr(offset_us + lim.token_tolerance_us),
                "" if window else repr(offset_us + lim.request_tolerance_us),
                max(1, math.ceil(seconds * 1000)),
                _FACTOR_DECREASE,
                _FACTOR_FLOOR,
                self.rate_regain_per_second,
            ],
        )

    def observe(
        self, deployment: str, headers: Mapping[str, str], *, sent_at: float | None = None
    ) -> bool:
        """After a successful call, read the provider's `x-ratelimit-*` headers.

        `sent_at` is the call's start (Redis time, seconds): the headers tell the
        provider's state when it counted the call, not when the reply came back.
        Bucket: when the provider reports less left than the gate believes, the bucket
        moves to match; and what disappears faster than our own calls explain is
        learned as a neighbour's rate, which the gate then leaves free (observe.lua).
        Window: usage beyond the gate's own starts over the provider's counter is a
        neighbour's, left free the same way (window_sync.lua). Without the headers
        nothing changes. Returns True when the gate tightened.
        """
        lim = self.limits(deployment)
        lower = {k.lower(): v for k, v in headers.items()}
        if lim.windows is not None:
            moved = self._observe_windows(lim, lim.windows, lower, sent_at)
        else:
            moved = self._observe_buckets(lim, lower, sent_at)
        if moved:
            log.info("deployment %s: provider reports less quota left; gate tightened", deployment)
        return bool(moved)

    def _observe_windows(
        self, lim: Limits, windows: Windows, lower: Mapping[str, str], sent_at: float | None
    ) -> int:
        dep = lim.settings
        tokens_left = number(lower.get("x-ratelimit-remaining-tokens"))
        requests_left = number(lower.get("x-ratelimit-remaining-requests"))
        if tokens_left is None and requests_left is None and self.neighbour_learning:
            return 0
        # The provider's counter: the minute, unless its limit headers name a shorter
        # period (a limit of tpm/6 is a 10 s counter).
        token_limit = number(lower.get("x-ratelimit-limit-tokens")) or dep.tpm
        period = min(COUNTER_SECONDS, max(dep.window_seconds, 60.0 * token_limit / dep.tpm))
        _, learning = self.store.run(
            "window_sync",
            [lim.keys.window, lim.keys.rate],
            [
                "" if tokens_left is None else repr(tokens_left),
                "" if requests_left is None else repr(requests_left),
                repr(dep.tpm * period / 60.0),
                repr(dep.rpm * period / 60.0),
                round(period * _US),
                # The gate's own starts up to this moment are what the provider counted.
                round((sent_at if sent_at is not None else self.store.time()) * _US),
                repr(self.neighbour_sample_seconds),
                repr(COUNTER_SECONDS),
                _WINDOW_NOISE,
                _FACTOR_FLOOR,
                "1" if self.neighbour_learning else "0",
            ],
        )
        return int(learning)

    def _keep(self, limit: float, capacity: float) -> float:
        """What the controller keeps left at the provider: a share of its bucket, but
        never more than half of what the gate's own full burst leaves there (the
        provider's bucket less the burst). Otherwise the gate's own first burst reads
        as a neighbour and the rate falls with nobody else on the key."""
        return max(0.0, min(self.neighbour_reserve * limit, (limit - capacity) / 2))

    def _observe_buckets(self, lim: Limits, lower: Mapping[str, str], sent_at: float | None) -> int:
        dep = lim.settings
        sync: list[str] = []
        left: list[str] = []
        keep: list[str] = []
        for dim, interval, tolerance, per_minute, capacity in (
            ("tokens", lim.token_interval_us, lim.token_tolerance_us, dep.tpm,
             dep.token_capacity),
            ("requests", lim.request_interval_us, lim.request_tolerance_us, dep.rpm,
             dep.request_capacity),
        ):  # fmt: skip
            remaining = number(lower.get(f"x-ratelimit-remaining-{dim}"))
            learn = remaining is not None and self.neighbour_learning
            # The provider's bucket holds its limit (a minute of quota unless it says).
            limit = number(lower.get(f"x-ratelimit-limit-{dim}")) or per_minute
            keep.append(repr(self._keep(limit, capacity)))
            left.append(repr(remaining) if learn else "")
            # The bucket holds `remaining` when its TAT is tolerance - remaining ahead.
            sync.append("" if remaining is None else repr(tolerance - remaining * interval))
        _, moved = self.store.run(
            "observe",
            [lim.keys.tokens, lim.keys.requests, lim.keys.rate],
            [
                *sync,
                *left,
                repr(dep.tpm / 60.0),
                repr(dep.rpm / 60.0),
                *keep,
                repr(self.neighbour_smoothing_seconds),
                repr(self.neighbour_sample_seconds),
                _FACTOR_FLOOR,
                "1" if self.neighbour_learning else "0",
                repr(lim.token_interval_us),
                repr(lim.request_interval_us),
                repr(lim.token_tolerance_us),
                repr(lim.request_tolerance_us),
                "" if sent_at is None else round(sent_at * _US),
            ],
        )
        return int(moved)

    def snapshot(self, deployment: str) -> BudgetSnapshot:
        """The deployment's budget as of now, for status displays (one round trip,
        and the window set for a window limiter)."""
        return read_snapshot(self.store, self.limits(deployment), self.rate_regain_per_second)

    def release(self, reservation: Reservation) -> None:
        """Give back a booked slot that will not be used (its call was never sent).

        The window limiter drops the start, so the rest of its window can be used; a
        bucket cannot give back a past slot, and keeps it (conservative).
        """
        lim = self.limits(reservation.deployment)
        if lim.windows is not None:
            self.store.zrem(
                lim.keys.window, member(reservation.tokens, reservation.requests, reservation.id)
            )

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
