"""Counts of what the simulated provider admitted, refused and failed."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Admissions kept in ``stats()["admissions"]``; older ones are dropped.
MAX_ADMISSIONS = 200_000
#: API requests kept in ``stats()["requests"]`` (path and headers), newest last.
MAX_REQUESTS = 100
#: Headers recorded as "***": they carry the caller's key.
_SECRET_HEADERS = frozenset({"authorization", "api-key"})


@dataclass
class Stats:
    """What the simulator did since start or the last reset (``GET /stats``)."""

    requests_received: int = 0
    admitted: int = 0
    refused_429: int = 0
    #: 429s by the dimension that refused ("tokens" or "requests").
    refused_by: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=lambda: {"5xx": 0, "timeout": 0, "drop": 0})
    tokens_charged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    neighbour_tokens: int = 0
    first_admitted_at: float | None = None
    last_admitted_at: float | None = None
    admissions: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_ADMISSIONS)
    )
    #: The last API requests as received, so tests can see what a client sent.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_REQUESTS))

    def record_request(self, target: str, headers: Mapping[str, str]) -> None:
        shown = {k: "***" if k in _SECRET_HEADERS else v for k, v in headers.items()}
        self.requests.append({"path": target, "headers": shown})

    def record_admission(self, charge: int) -> None:
        now = time.time()
        self.admitted += 1
        self.tokens_charged += charge
        self.admissions.append((now, charge))
        self.first_admitted_at = self.first_admitted_at or now
        self.last_admitted_at = now

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["faults"] = dict(self.faults)
        data["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        data["refused_by"] = dict(self.refused_by)
        data["admissions"] = list(self.admissions)
        data["requests"] = list(self.requests)
        return data
