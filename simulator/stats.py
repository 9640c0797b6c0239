"""Counts of what the simulated provider admitted, refused and failed."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: Admissions kept in ``stats()["admissions"]``; older ones are dropped.
MAX_ADMISSIONS = 200_000


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
        return data
