"""What a job is made of in Redis: its states, its keys and its status, as values.

`jobstore.py` reads and writes them; `pipeline` displays them.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

STATES = ("queued", "deferred", "running", "retrying", "done", "failed")
#: Job ids of requests sent with `.delay()` without one start with this (`adhoc_job`).
ADHOC_JOB = "adhoc"
#: Such requests are grouped in one job per this many seconds (UTC), unless told otherwise:
#: a job that keeps getting requests never finishes, so it would never expire.
ADHOC_JOB_SECONDS = 3600
#: Job ids are Redis key parts (a brace would move the keys to another Cluster slot) and
#: shell words: no spaces, slashes, braces or quotes.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: A finished job's keys expire this long after it finishes, unless told otherwise.
RETENTION_SECONDS = 7 * 24 * 3600


def job_id_error(job_id: object) -> str | None:
    """What is wrong with `job_id`, or None when it is a valid job id."""
    if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
        return None
    return (
        f"invalid job id {job_id!r}: use 1-100 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def adhoc_job(at: float, seconds: int = ADHOC_JOB_SECONDS) -> str:
    """The job of a request sent at `at` (epoch seconds) without a job id:
    `adhoc-YYYYMMDD-HHMMSS`, the UTC start of its period of `seconds`."""
    start = int(at) // seconds * seconds
    return time.strftime(f"{ADHOC_JOB}-%Y%m%d-%H%M%S", time.gmtime(start))


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


def queues_key(prefix: str) -> str:
    """The set of every queue a request was published to or a worker consumed."""
    return f"{prefix}:queues"


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
