"""The simulated provider's admission policies, driven by an explicit clock (``now``,
monotonic seconds) so they can be tested without sleeping:

- ``TokenBucketLimiter`` (OpenAI): per dimension a bucket holding a full minute of
  quota, refilled continuously; a request is admitted iff every bucket holds its charge.
- ``WindowLimiter`` (Azure OpenAI, pay-as-you-go): tokens counted over fixed periods of
  ``check_seconds`` (10 s: TPM/6 each), requests over fixed periods of
  ``request_check_seconds`` (1 s: RPM/60 each), plus the minute counters; every period
  starts at a phase the client does not know.
- ``ProvisionedLimiter`` (Azure OpenAI provisioned throughput, PTU): utilization-based.
  A request is admitted while utilization is below 100%; its estimate is added at
  arrival and corrected to its actual usage when it completes; utilization drains
  continuously at the provisioned rate.

None is thread-safe: the server calls them under its one lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

POLICIES = ("openai", "azure", "ptu")


@dataclass(frozen=True)
class Snapshot:
    """What the ``x-ratelimit-*`` headers report."""

    #: Tokens per minute.
    limit_tokens: int
    #: Requests per minute.
    limit_requests: int
    #: Tokens that could be admitted now.
    remaining_tokens: int
    #: Requests that could be admitted now.
    remaining_requests: int
    #: Seconds until the token limit is back to its initial state.
    reset_tokens: float
    #: Seconds until the request limit is back to its initial state.
    reset_requests: float


@dataclass(frozen=True)
class Verdict:
    """The answer to one admission request."""

    #: True when the request was admitted and charged.
    admitted: bool
    #: Seconds until the request could be admitted (0 when admitted).
    retry_after: float
    #: The dimension that refused ("tokens" or "requests"); None when admitted.
    dimension: str | None
    #: True when the charge exceeds what the limit can ever hold.
    too_large: bool
    #: The limits after the decision.
    snapshot: Snapshot


class Limiter(Protocol):
    """An admission policy over tokens and requests."""

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        """Charge both dimensions if both fit, else charge nothing."""
        ...

    def take(self, tokens: int, now: float) -> int:
        """Charge up to ``tokens`` tokens (no requests); return how many fitted."""
        ...

    def snapshot(self, now: float) -> Snapshot:
        """The current state, for headers."""
        ...

    def correct(self, tokens: int, now: float) -> None:
        """When a call completes: add ``tokens`` (actual - charged; may be negative) to
        what it is counted for. Only utilization-based limits do."""
        ...


# -- admission policies -----------------------------------------------------------------


class _Bucket:
    """A continuously refilled bucket of ``capacity`` units, ``rate`` units/second."""

    def __init__(self, per_minute: float, now: float, *, bucket_seconds: float = 60.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = self.rate * bucket_seconds
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, units: float) -> float:
        return max(0.0, (units - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


class TokenBucketLimiter:
    """OpenAI-style: a minute of quota as burst (or `bucket_seconds` of it), refilled
    continuously."""

    def __init__(self, *, tpm: int, rpm: int, now: float, bucket_seconds: float = 60.0) -> None:
        self._tokens = _Bucket(tpm, now, bucket_seconds=bucket_seconds)
        self._requests = _Bucket(rpm, now, bucket_seconds=bucket_seconds)

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        tb, rb = self._tokens, self._requests
        tb.refill(now)
        rb.refill(now)
        if tokens > tb.capacity or requests > rb.capacity:
            # Waiting never helps; report a full refill so a naive client backs off.
            dim = "tokens" if tokens > tb.capacity else "requests"
            wait = max(tb.until_full(), rb.until_full(), 1.0)
            return Verdict(False, wait, dim, True, self._snap())
        t_wait, r_wait = tb.wait_for(tokens), rb.wait_for(requests)
        if t_wait > 0 or r_wait > 0:
            dim = "tokens" if t_wait >= r_wait else "requests"
            return Verdict(False, max(t_wait, r_wait), dim, False, self._snap())
        tb.level -= tokens
        rb.level -= requests
        return Verdict(True, 0.0, None, False, self._snap())

    def take(self, tokens: int, now: float) -> int:
        self._tokens.refill(now)
        taken = min(tokens, math.floor(self._tokens.level))
        if taken <= 0:
            return 0
        self._tokens.level -= taken
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._tokens.refill(now)
        self._requests.refill(now)
        return self._snap()

    def correct(self, tokens: int, now: float) -> None:
        """Charges made at arrival stand."""

    def _snap(self) -> Snapshot:
        tb, rb = self._tokens, self._requests
        return Snapshot(
            limit_tokens=int(tb.capacity),
            limit_requests=int(rb.capacity),
            remaining_tokens=max(0, math.floor(tb.level)),
            remaining_requests=max(0, math.floor(rb.level)),
            reset_tokens=tb.until_full(),
            reset_requests=rb.until_full(),
        )


class WindowLimiter:
    """Azure-style: fixed token periods, fixed request periods and minute counters.

    Every period starts ``phase`` seconds before a multiple of its length from
    ``now`` at construction (0 = aligned to construction). A token period may hold
    ``check_seconds / 60`` of the minute's tokens, a request period
    ``request_check_seconds / 60`` of its requests (at least one), which is why a
    client that bursts a whole minute's quota at once is refused on Azure.
    """

    def __init__(
        self,
        *,
        tpm: int,
        rpm: int,
        check_seconds: float,
        now: float,
        request_check_seconds: float = 1.0,
        phase: float = 0.0,
    ) -> None:
        self._tpm, self._rpm = tpm, rpm
        self._check, self._request_check = check_seconds, request_check_seconds
        self._window_tpm = tpm * check_seconds / 60.0
        self._window_rpm = max(1.0, rpm * request_check_seconds / 60.0)
        self._origin = now - phase
        self._minute = self._window = self._request_window = -1
        self._minute_tokens = self._minute_requests = 0
        self._window_tokens = self._window_requests = 0

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        self._roll(now)
        if tokens > self._window_tpm or requests > self._window_rpm:
            dim = "tokens" if tokens > self._window_tpm else "requests"
            return Verdict(False, self._minute_left(now), dim, True, self._snap(now))
        minute_t = self._minute_tokens + tokens > self._tpm
        minute_r = self._minute_requests + requests > self._rpm
        if minute_t or minute_r:
            dim = "tokens" if minute_t else "requests"
            return Verdict(False, self._minute_left(now), dim, False, self._snap(now))
        if self._window_tokens + tokens > self._window_tpm:
            return Verdict(False, self._left(now, self._check), "tokens", False, self._snap(now))
        if self._window_requests + requests > self._window_rpm:
            wait = self._left(now, self._request_check)
            return Verdict(False, wait, "requests", False, self._snap(now))
        self._charge(tokens, requests)
        return Verdict(True, 0.0, None, False, self._snap(now))

    def take(self, tokens: int, now: float) -> int:
        self._roll(now)
        room = min(self._tpm - self._minute_tokens, self._window_tpm - self._window_tokens)
        taken = min(tokens, math.floor(room))
        if taken <= 0:
            return 0
        self._charge(taken, 0)
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._roll(now)
        return self._snap(now)

    def correct(self, tokens: int, now: float) -> None:
        """Charges made at arrival stand."""

    def _charge(self, tokens: int, requests: int) -> None:
        self._minute_tokens += tokens
        self._window_tokens += tokens
        self._minute_requests += requests
        self._window_requests += requests

    def _roll(self, now: float) -> None:
        elapsed = max(0.0, now - self._origin)
        minute, window = int(elapsed // 60.0), int(elapsed // self._check)
        request_window = int(elapsed // self._request_check)
        if minute != self._minute:
            self._minute, self._minute_tokens, self._minute_requests = minute, 0, 0
        if window != self._window:
            self._window, self._window_tokens = window, 0
        if request_window != self._request_window:
            self._request_window, self._window_requests = request_window, 0

    def _minute_left(self, now: float) -> float:
        return self._origin + (self._minute + 1) * 60.0 - now

    def _left(self, now: float, period: float) -> float:
        elapsed = now - self._origin
        return (math.floor(elapsed / period) + 1) * period - elapsed

    def _snap(self, now: float) -> Snapshot:
        left = self._minute_left(now)
        # Azure reports the minute counters; the shorter periods are invisible to clients.
        return Snapshot(
            limit_tokens=self._tpm,
            limit_requests=self._rpm,
            remaining_tokens=max(0, self._tpm - self._minute_tokens),
            remaining_requests=max(0, self._rpm - self._minute_requests),
            reset_tokens=left if self._minute_tokens else 0.0,
            reset_requests=left if self._minute_requests else 0.0,
        )


class ProvisionedLimiter:
    """Azure provisioned throughput (PTU): utilization-based, no request limit.

    Utilization is a level of tokens draining at ``tpm / 60`` per second; 100% is
    ``bucket_seconds`` of that. A request is admitted while utilization is below 100%
    (it may then go over); its charge (the estimate) is added at arrival and corrected
    by ``correct`` to its actual usage when it completes.
    """

    def __init__(self, *, tpm: int, now: float, bucket_seconds: float = 60.0) -> None:
        self._rate = tpm / 60.0
        self._capacity = self._rate * bucket_seconds
        self._tpm = tpm
        self._level = 0.0
        self._stamp = now

    def _drain(self, now: float) -> None:
        if now > self._stamp:
            self._level = max(0.0, self._level - (now - self._stamp) * self._rate)
            self._stamp = now

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        self._drain(now)
        if tokens > self._capacity:
            return Verdict(False, self._capacity / self._rate, "tokens", True, self._snap())
        if self._level >= self._capacity:
            wait = (self._level - self._capacity) / self._rate + 0.001
            return Verdict(False, wait, "tokens", False, self._snap())
        self._level += tokens
        return Verdict(True, 0.0, None, False, self._snap())

    def take(self, tokens: int, now: float) -> int:
        self._drain(now)
        taken = min(tokens, math.floor(self._capacity - self._level))
        if taken <= 0:
            return 0
        self._level += taken
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._drain(now)
        return self._snap()

    def correct(self, tokens: int, now: float) -> None:
        self._drain(now)
        self._level = max(0.0, self._level + tokens)

    def _snap(self) -> Snapshot:
        left = max(0.0, self._capacity - self._level)
        return Snapshot(
            limit_tokens=self._tpm,
            limit_requests=0,
            remaining_tokens=math.floor(left),
            remaining_requests=0,
            reset_tokens=self._level / self._rate,
            reset_requests=0.0,
        )

    @property
    def utilization(self) -> float:
        return self._level / self._capacity


def make_limiter(
    policy: str,
    *,
    tpm: int,
    rpm: int,
    check_seconds: float,
    now: float,
    bucket_seconds: float = 60.0,
    request_check_seconds: float = 1.0,
    phase: float = 0.0,
) -> Limiter:
    """Build the limiter for ``policy`` ("openai", "azure" or "ptu") with full quota at
    ``now``; Azure's periods start ``phase`` seconds before ``now``."""
    if policy == "openai":
        return TokenBucketLimiter(tpm=tpm, rpm=rpm, now=now, bucket_seconds=bucket_seconds)
    if policy == "azure":
        return WindowLimiter(
            tpm=tpm, rpm=rpm, check_seconds=check_seconds, now=now,
            request_check_seconds=request_check_seconds, phase=phase,
        )  # fmt: skip
    if policy == "ptu":
        return ProvisionedLimiter(tpm=tpm, now=now, bucket_seconds=bucket_seconds)
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


def format_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers: "120ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(snap: Snapshot) -> dict[str, str]:
    """The six ``x-ratelimit-*`` headers for ``snap``."""
    return {
        "x-ratelimit-limit-requests": str(snap.limit_requests),
        "x-ratelimit-limit-tokens": str(snap.limit_tokens),
        "x-ratelimit-remaining-requests": str(snap.remaining_requests),
        "x-ratelimit-remaining-tokens": str(snap.remaining_tokens),
        "x-ratelimit-reset-requests": format_duration(snap.reset_requests),
        "x-ratelimit-reset-tokens": format_duration(snap.reset_tokens),
    }
