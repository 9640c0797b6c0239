"""The window limiter (`limiter = "window"`): the arguments of its Lua scripts and the
reading of its state.

Azure OpenAI counts tokens over 10-second periods and requests over 1-second periods
(plus the minute), at a phase the client cannot see. A token bucket at the full rate
can put more than a period's allowance into one period whatever its burst; this
limiter instead keeps, for every interval of a window's length at any phase, the
starts inside it within one window's allowance (`lua/window.lua`), booking each
request at the earliest start that keeps that promise. The gate's windows
are the provider's plus `window_guard_seconds`, so a call that reaches the provider a
little after its slot still lands where the gate counted it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from settings import DeploymentSettings

_US = 1_000_000
#: The provider's counter behind its x-ratelimit-remaining-* headers, when its
#: x-ratelimit-limit-* headers do not say otherwise: Azure reports the minute.
COUNTER_SECONDS = 60.0


def member(tokens: int, requests: int, reservation_id: str) -> str:
    """A window set member, as `window.lua` writes it (`common.lua`: window_member)."""
    return f"{tokens} {requests} {reservation_id}"


def units(raw: bytes) -> tuple[int, int]:
    """The tokens and requests of a window set member."""
    tokens, requests = raw.split(b" ", 2)[:2]
    return int(tokens), int(requests)


@dataclass(frozen=True)
class Windows:
    """A deployment's windows as the gate enforces them."""

    #: Tokens allowed in any token window.
    token_allowance: float
    #: Requests allowed in any request window.
    request_allowance: float
    #: The gate's token window (the provider's plus the guard), microseconds.
    token_window_us: int
    #: The gate's request window (the provider's plus the guard), microseconds.
    request_window_us: int
    #: Seconds a call may reach the provider after its slot and still be counted right.
    guard_seconds: float
    #: How long past starts are kept: the longest window, or the provider's counter
    #: (plus the guard) that header sync compares them with, whichever is longer.
    memory_us: int

    @classmethod
    def of(cls, dep: DeploymentSettings) -> Windows | None:
        """The windows of a `limiter = "window"` deployment; None for a bucket."""
        if dep.limiter != "window":
            return None
        guard = dep.window_guard_seconds
        return cls(
            token_allowance=dep.token_capacity,
            request_allowance=dep.request_capacity,
            token_window_us=round((dep.window_seconds + guard) * _US),
            request_window_us=round((dep.request_window_seconds + guard) * _US),
            guard_seconds=guard,
            memory_us=round((max(dep.window_seconds, dep.request_window_seconds,
                                 COUNTER_SECONDS) + guard) * _US),
        )  # fmt: skip

    def push_args(self, *, extra_tokens: int, settled_ttl: int) -> list[str | int]:
        """ARGV of `window_push.lua`: our own extra usage found at settle."""
        return [max(0, extra_tokens), settled_ttl, self.memory_us]


@dataclass(frozen=True)
class WindowState:
    """What the window limiter holds at one moment, for status displays."""

    #: Tokens that could start right now.
    tokens_available: float
    #: Requests that could start right now.
    requests_available: float
    #: Seconds from now to the last booked start.
    booked_ahead_seconds: float


def window_state(
    windows: Windows,
    starts: Sequence[tuple[bytes, float]],
    *,
    now_us: int,
    cooldown_us: int,
    token_factor: float,
    request_factor: float,
) -> WindowState:
    """Read the window set's starts from one window ago on (`(member, start_us)`
    pairs) as of `now_us`."""
    last = max((s for _, s in starts), default=now_us)
    ahead = max(0.0, (max(last, cooldown_us) - now_us) / _US)
    if ahead > 0:  # first in line is whoever booked last: nothing starts now
        return WindowState(0.0, 0.0, ahead)
    used = [0, 0]
    for raw, start in starts:
        tokens, requests = units(raw)
        if now_us - windows.token_window_us < start <= now_us:
            used[0] += tokens
        if now_us - windows.request_window_us < start <= now_us:
            used[1] += requests
    return WindowState(
        tokens_available=max(0.0, windows.token_allowance * token_factor - used[0]),
        requests_available=max(0.0, windows.request_allowance * request_factor - used[1]),
        booked_ahead_seconds=0.0,
    )
