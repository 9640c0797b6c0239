"""The gate's answers: values with names, one `#:` line per field.

`gate.py` produces them; callers (tasks, pipeline) read them. Nothing here talks to
Redis.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from budget.errors import NeverAdmissible


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


class Redemption(enum.Enum):
    """What a booked task finds when it comes back (`Gate.redeem`)."""

    #: The booking is good and now used up: call at its start.
    VALID = "valid"
    #: The task came back well before its slot: the booking is kept; wait again.
    EARLY = "early"
    #: The slot falls inside a provider cooldown that came after the booking: calling
    #: then would meet a provider that refuses us. Used up; ask the gate again.
    STALE = "stale"
    #: No such booking: already used (a duplicated message), expired, or never made
    #: by the gate (a forged header). Ask the gate again.
    UNKNOWN = "unknown"


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
    #: Share of the configured token rate the gate admits now (< 1 after a 429 or
    #: while a neighbour is learned).
    rate_factor: float = 1.0
    #: Share of the configured request rate the gate admits now.
    request_rate_factor: float = 1.0
    #: Tokens per minute that other clients on the key are learned to use.
    neighbour_tpm: float = 0.0
    #: Requests per minute that other clients on the key are learned to use.
    neighbour_rpm: float = 0.0
    #: Tokens per minute the gate admits now (configured tpm x rate_factor).
    effective_tpm: float = 0.0
    #: Requests per minute the gate admits now.
    effective_rpm: float = 0.0


@dataclass(frozen=True)
class Admission:
    """One line of the admission log."""

    #: Redis time (seconds) at which the call was allowed to start.
    start_at: float
    tokens: int
    requests: int
    reservation_id: str
