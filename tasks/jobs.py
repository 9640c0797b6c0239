"""Jobs in Redis: per-request state, results stored exactly once, dead letters.

Tasks write here; `pipeline` submits, reads status, exports and replays. A job's
keys share one hash tag so each script touches a single Cluster slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis

STATES = ("queued", "deferred", "running", "retrying", "done", "failed")
#: Job id for requests sent with `.delay()` without one.
ADHOC_JOB = "adhoc"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _script(client: redis.Redis, name: str) -> Any:
    text = resources.files("tasks").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(text)


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


class JobStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str = "quotaflow") -> None:
        self.client = client
        self.prefix = key_prefix
        self._transition = _script(client, "transition")
        self._record = _script(client, "record")
        self._dead = _script(client, "dead")
        self._claim = _script(client, "claim")

    def keys(self, job_id: str) -> JobKeys:
        return job_keys(self.prefix, job_id)

    @property
    def index_key(self) -> str:
        return f"{self.prefix}:jobs"

    def create(self, job_id: str, *, meta: dict[str, str] | None = None) -> None:
        k = self.keys(job_id)
        pipe = self.client.pipeline()
        pipe.hsetnx(k.meta, "created_at", repr(time.time()))
        if meta:
            pipe.hset(k.meta, mapping=meta)  # type: ignore[arg-type]
        pipe.zadd(self.index_key, {job_id: time.time()}, nx=True)
        pipe.execute()

    def add_queued(self, job_id: str, custom_ids: Iterable[str], *, estimated: int = 0) -> int:
        """Count requests into the job as queued; returns how many were new."""
        k = self.keys(job_id)
        ids = list(custom_ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for cid in ids:
            pipe.hsetnx(k.states, cid, "queued")
        added = sum(int(x) for x in pipe.execute())
        if not added and not estimated:
            return 0
        pipe = self.client.pipeline()
        pipe.hincrby(k.counts, "queued", added)
        pipe.hincrby(k.meta, "total", added)
        pipe.hincrby(k.totals, "tokens_estimated", estimated)
        # A job made by `.delay(..., job_id=...)` is never created: list it all the same.
        pipe.hsetnx(k.meta, "created_at", repr(time.time()))
        pipe.zadd(self.index_key, {job_id: time.time()}, nx=True)
        pipe.execute()
        return added

    def known(self, job_id: str, custom_ids: list[str]) -> list[bool]:
        if not custom_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for cid in custom_ids:
            pipe.hexists(self.keys(job_id).states, cid)
        return [bool(x) for x in pipe.execute()]

    def transition(self, job_id: str, custom_id: str, state: str) -> bool:
        assert state in STATES
        k = self.keys(job_id)
        return bool(
            self._transition(
                keys=[k.states, k.counts, k.touched],
                args=[custom_id, state, "0", repr(time.time())],
            )
        )

    def store_pending(self, job_id: str, requests: dict[str, dict[str, Any]]) -> None:
        """Keep each request until it finishes, so a lost message can be sent again."""
        if not requests:
            return
        k = self.keys(job_id)
        now = repr(time.time())
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            k.pending,
            mapping={cid: json.dumps(r, separators=(",", ":")) for cid, r in requests.items()},
        )
        pipe.hset(k.touched, mapping=dict.fromkeys(requests, now))
        pipe.execute()

    def stale(
        self, job_id: str, *, older_than: float, include_queued: bool
    ) -> dict[str, dict[str, Any]]:
        """Unfinished requests untouched for `older_than` seconds: their message is gone.

        A request still "queued" may simply be waiting its turn in the broker's list,
        however long the backlog; the caller includes those only when the queues
        are empty.
        """
        k = self.keys(job_id)
        limit = time.time() - older_than
        cids = [
            cid.decode()
            for cid, at in self.client.hscan_iter(k.touched, count=1000)
            if float(at) < limit
        ]
        if not cids:
            return {}
        raw = self.client.hmget(k.pending, cids)
        states = self.client.hmget(k.states, cids)
        out = {}
        for cid, r, state in zip(cids, raw, states, strict=True):
            if r is None or state in (b"done", b"failed"):
                continue
            if state == b"queued" and not include_queued:
                continue
            out[cid] = json.loads(r)
        return out

    def quiet(self, job_id: str) -> dict[str, float]:
        """Seconds each unfinished request that could be sent again has been silent."""
        k = self.keys(job_id)
        now = time.time()
        touched = {
            _text(cid): float(at) for cid, at in self.client.hscan_iter(k.touched, count=1000)
        }
        if not touched:
            return {}
        kept = self.client.hmget(k.pending, list(touched))
        return {
            cid: now - at
            for (cid, at), request in zip(touched.items(), kept, strict=True)
            if request is not None
        }

    def touch(self, job_id: str, custom_ids: Iterable[str]) -> None:
        ids = list(custom_ids)
        if ids:
            now = repr(time.time())
            self.client.hset(self.keys(job_id).touched, mapping=dict.fromkeys(ids, now))

    def count(self, job_id: str, field_name: str, amount: int = 1) -> None:
        self.client.hincrby(self.keys(job_id).totals, field_name, amount)

    def get_result(self, job_id: str, custom_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys(job_id).results, custom_id)
        return None if raw is None else json.loads(raw)

    def record_result(
        self,
        job_id: str,
        custom_id: str,
        line: dict[str, Any],
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
    ) -> bool:
        """Store the output line once; False when a result was already stored."""
        k = self.keys(job_id)
        stored = self._record(
            keys=[k.results, k.states, k.counts, k.totals, k.dead, k.pending, k.touched],
            args=[
                custom_id,
                json.dumps(line, separators=(",", ":")),
                prompt_tokens,
                completion_tokens,
                repr(cost_usd),
            ],
        )
        return bool(stored)

    def note_attempts(self, job_id: str, custom_id: str, *, deferrals: int, retries: int) -> None:
        self.client.hset(self.keys(job_id).attempts, custom_id, f"{deferrals} {retries}")

    def attempts(self, job_id: str) -> dict[str, tuple[int, int]]:
        """custom_id -> (deferrals, transient retries) of each succeeded request."""
        out = {}
        for cid, raw in self.client.hgetall(self.keys(job_id).attempts).items():
            d, r = raw.split()
            out[_text(cid)] = (int(d), int(r))
        return out

    def record_dead(self, job_id: str, custom_id: str, entry: dict[str, Any]) -> bool:
        k = self.keys(job_id)
        return bool(
            self._dead(
                keys=[k.dead, k.states, k.counts, k.results, k.pending, k.touched],
                args=[custom_id, json.dumps(entry, separators=(",", ":"), sort_keys=True)],
            )
        )

    def dead_letters(self, job_id: str) -> dict[str, str]:
        """custom_id -> raw entry JSON (raw, so a replay can claim exactly what it read)."""
        raw = self.client.hgetall(self.keys(job_id).dead)
        return {_text(k): _text(v) for k, v in raw.items()}

    def claim_dead(self, job_id: str, custom_id: str, raw_entry: str) -> bool:
        k = self.keys(job_id)
        return bool(self._claim(keys=[k.dead, k.states, k.counts], args=[custom_id, raw_entry]))

    def results(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for cid, raw in self.client.hscan_iter(self.keys(job_id).results, count=1000):
            yield cid.decode(), json.loads(raw)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys(job_id).meta))

    def job_ids(self) -> list[str]:
        return [_text(j) for j in self.client.zrange(self.index_key, 0, -1)]

    def status(self, job_id: str) -> JobStatus:
        k = self.keys(job_id)
        pipe = self.client.pipeline()
        pipe.hgetall(k.meta)
        pipe.hgetall(k.counts)
        pipe.hgetall(k.totals)
        meta_raw, counts_raw, totals_raw = pipe.execute()
        meta = {a.decode(): b.decode() for a, b in meta_raw.items()}
        counts = {s: 0 for s in STATES}
        counts.update({a.decode(): int(b) for a, b in counts_raw.items()})
        totals = {a.decode(): b.decode() for a, b in totals_raw.items()}
        return JobStatus(
            job_id=job_id,
            total=int(meta.pop("total", 0)),
            counts=counts,
            tokens_estimated=int(totals.get("tokens_estimated", 0)),
            prompt_tokens=int(totals.get("prompt_tokens", 0)),
            completion_tokens=int(totals.get("completion_tokens", 0)),
            cost_usd=float(totals.get("cost_usd", 0.0)),
            deferrals=int(totals.get("deferrals", 0)),
            retries=int(totals.get("retries", 0)),
            created_at=float(meta.pop("created_at", 0.0)),
            meta=meta,
        )
