"""What a job is made of in Redis: its states, its keys and its status, as values.

`jobstore.py` reads and writes them; `pipeline` displays them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

STATES = ("queued", "deferred", "running", "retrying", "done", "failed")
#: Job id for requests sent with `.delay()` without one.
ADHOC_JOB = "adhoc"
#: A finished job's keys expire this long after it finishes, unless told otherwise.
RETENTION_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class JobKeys:
    meta: str
    states: str
    counts: str
    totals: str
    results: str
    dead: str
    attempts: str
    pending: str
    touched: str
    unsent: str
    #: custom_id -> task id of a message `quotaflow cancel` stopped (dropped on arrival).
    cancelled: str

    def all(self) -> list[str]:
        return list(dataclasses.astuple(self))


def job_keys(prefix: str, job_id: str) -> JobKeys:
    tag = f"{prefix}:job:{{{job_id}}}"
    return JobKeys(
        meta=f"{tag}:meta",
        states=f"{tag}:states",
        counts=f"{tag}:counts",
        totals=f"{tag}:totals",
        results=f"{tag}:results",
        dead=f"{tag}:dead",
        attempts=f"{tag}:attempts",
        pending=f"{tag}:pending",
        touched=f"{tag}:touched",
        unsent=f"{tag}:unsent",
        cancelled=f"{tag}:cancelled",
    )


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands."""

    job_id: str
    #: Requests submitted.
    total: int
    #: Requests per state (queued, deferred, running, retrying, done, failed).
    counts: dict[str, int]
    #: Tokens charged to the budget at admission (estimates).
    tokens_estimated: int
    #: Actual prompt and completion tokens reported by the provider.
    prompt_tokens: int
    completion_tokens: int
    #: Cost of the actual usage, USD.
    cost_usd: float
    #: Times a request was postponed by the budget.
    deferrals: int
    #: Times a request was retried after a transient provider failure.
    retries: int
    #: Submission time (epoch seconds) and free-form metadata.
    created_at: float
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.counts.get("done", 0) + self.counts.get("failed", 0) >= (
            self.total
        )
