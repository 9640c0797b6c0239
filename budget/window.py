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
        )

    def push_args(
        self,
        *,
        extra_tokens: int = 0,
        remaining_tokens: float | None = None,
        remaining_requests: float | None = None,
        settled_ttl: int = 0,
    ) -> list[str | int]:
        """ARGV of `window_push.lua`."""
        return [
            max(0, extra_tokens),
            "" if remaining_tokens is None else repr(remaining_tokens),
            "" if remaining_requests is None else repr(remaining_requests),
            repr(self.token_allowance),
            repr(self.request_allowance),
            self.token_window_us,
            self.request_window_us,
            settled_ttl,
        ]


@dataclass(frozen=True)
class WindowState:
    """What the window limiter holds at one moment, for status displays."""

    #: Tokens that could start right now.
    tokens_available: float
    #: Requests that could start right now.
    requests_available: float
    #: Seconds from now to the last booked start.
    booked_ahead_seconds: float
    #: Tokens and requests per second others used beyond the gate's own starts, as
    #: header sync found them over the last window.
    neighbour_tokens_per_second: float = 0.0
    neighbour_requests_per_second: float = 0.0


def window_state(
    windows: Windows,
    starts: Sequence[tuple[bytes, float]],
    *,
    now_us: int,
    cooldown_us: int,
    factor: float,
) -> WindowState:
    """Read the window set (`(member, start_us)` pairs) as of `now_us`."""
    last = max((s for _, s in starts), default=now_us)
    ahead = max(0.0, (max(last, cooldown_us) - now_us) / _US)
    used = [0, 0]
    others = [0, 0]
    for member, start in starts:
        tokens, requests, whose = member.split()[:3]
        if now_us - windows.token_window_us < start <= now_us:
            used[0] += int(tokens)
        if now_us - windows.request_window_us < start <= now_us:
            used[1] += int(requests)
        if whose.startswith(b"n"):  # someone else's usage, seen at its id's time
            seen = int(whose[1:].split(b":")[0])
            if now_us - windows.token_window_us < seen <= now_us:
                others[0] += int(tokens)
            if now_us - windows.request_window_us < seen <= now_us:
                others[1] += int(requests)
    neighbours = {
        "neighbour_tokens_per_second": others[0] / (windows.token_window_us / _US),
        "neighbour_requests_per_second": others[1] / (windows.request_window_us / _US),
    }
    if ahead > 0:  # first in line is whoever booked last: nothing starts now
        return WindowState(0.0, 0.0, ahead, **neighbours)
    return WindowState(
        tokens_available=max(0.0, windows.token_allowance * factor - used[0]),
        requests_available=max(0.0, windows.request_allowance * factor - used[1]),
        booked_ahead_seconds=0.0,
        **neighbours,
    )
