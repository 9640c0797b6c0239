"""The job store in Redis: per-request state, results stored exactly once, dead letters.

Tasks write here; `pipeline` submits, reads status, exports and replays. A job's
keys share one hash tag so each script touches a single Cluster slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis

from budget.resp import command, decoded, execute_packed
from tasks.errors import Cancelled
from tasks.jobindex import OpenJobs, script
from tasks.jobrecovery import RecoveryReads
from tasks.jobstate import (  # noqa: F401  - re-exported: callers import them from here
    ADHOC_JOB,
    RETENTION_SECONDS,
    STATES,
    JobKeys,
    JobStatus,
    job_keys,
    queues_key,
)


class JobStore(RecoveryReads):
    """A job's keys expire `retention_seconds` after its last request finishes (done
    or dead-lettered) and stop expiring when a new request is added to it."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "quotaflow",
        retention_seconds: int = RETENTION_SECONDS,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.retention_seconds = retention_seconds
        self._transition = script(client, "transition")
        self._record = script(client, "record")
        self._dead = script(client, "dead")
        self._claim = script(client, "claim")
        self._queue = script(client, "queue")
        self._add_queued = script(client, "add_queued")
        self._arrive = script(client, "arrive")
        self._cancel = script(client, "cancel")
        #: The jobs that may have unfinished requests (pipeline.recovery reads it).
        self.open = OpenJobs(client, key_prefix=key_prefix)

    def keys(self, job_id: str) -> JobKeys:
        return job_keys(self.prefix, job_id)

    @property
    def index_key(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def queues_key(self) -> str:
        return queues_key(self.prefix)

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
        added = int(self._add_queued(keys=[k.states], args=ids))
        if not added and not estimated:
            return 0
        self._count_in(job_id, added, estimated)
        return added

    def _count_in(self, job_id: str, added: int, estimated: int) -> None:
        k = self.keys(job_id)
        pipe = self.client.pipeline()
        if added:
            _persist(pipe, k)  # a job with a new request is unfinished: it does not expire
        pipe.hincrby(k.counts, "queued", added)
        pipe.hincrby(k.meta, "total", added)
        pipe.hincrby(k.totals, "tokens_estimated", estimated)
        # A job made by `.delay(..., job_id=...)` is never created: list it all the same.
        pipe.hsetnx(k.meta, "created_at", repr(time.time()))
        pipe.execute()
        self._list(job_id)

    def _list(self, job_id: str, pipe: Any = None) -> None:
        """List the job in the index and the open jobs (after its requests' `touched`
        entries are written: see tasks.jobindex)."""
        now = time.time()
        p = self.client.pipeline(transaction=False) if pipe is None else pipe
        p.zadd(self.index_key, {job_id: now}, nx=True)
        p.zadd(self.open.key, {job_id: now})
        if pipe is None:
            p.execute()

    def record_published(
        self, job_id: str, custom_id: str, request: dict[str, Any], *, queue: str | None = None
    ) -> None:
        """Count one request in and keep it for recovery, once its message is published
        (to `queue`, which joins the set of queues ever used).

        One pipelined round trip: the script (the job's keys), the job indexes, the queues.
        """
        k = self.keys(job_id)
        now = repr(time.time())
        first = [k.meta, k.states, k.counts, k.pending, k.touched]
        pipe = self.client.pipeline(transaction=False)
        self._queue(
            keys=[*first, *(key for key in k.all() if key not in first)],
            args=[custom_id, json.dumps(request, separators=(",", ":")), now],
            client=pipe,
        )
        self._list(job_id, pipe)
        if queue:
            pipe.sadd(self.queues_key, queue)
        pipe.execute()

    def begin_publish(self, job_id: str, requests: dict[str, dict[str, Any]]) -> None:
        """Keep requests about to be published, marked unsent until `end_publish`.

        A submit killed in between leaves the mark: its re-run checks those requests
        against the broker and sends the ones that never reached it.
        """
        if not requests:
            return
        k = self.keys(job_id)
        ids = [cid.encode() for cid in requests]
        execute_packed(
            self.client,
            [
                command(b"MULTI"),
                *_keep_pending(k, requests),
                command(b"SADD", k.unsent.encode(), *ids),
                command(b"EXEC"),
                self._listing(job_id),
            ],
            retry=True,
        )

    def _listing(self, job_id: str) -> bytes:
        """`_list` for the open jobs, as one packed command to send after the requests."""
        return command(b"ZADD", self.open.key.encode(), repr(time.time()).encode(), job_id.encode())

    def end_publish(self, job_id: str, custom_ids: Iterable[str]) -> None:
        ids = [cid.encode() for cid in custom_ids]
        if ids:
            key = self.keys(job_id).unsent.encode()
            execute_packed(self.client, [command(b"SREM", key, *ids)], retry=True)

    def unsent(self, job_id: str, custom_ids: list[str]) -> list[bool]:
        """For each id: was it marked by a publish that did not finish?"""
        if not custom_ids:
            return []
        return [bool(x) for x in self.client.smismember(self.keys(job_id).unsent, custom_ids)]

    def known(self, job_id: str, custom_ids: list[str]) -> list[bool]:
        if not custom_ids:
            return []
        key = self.keys(job_id).states.encode()
        (states,) = execute_packed(
            self.client, [command(b"HMGET", key, *(c.encode() for c in custom_ids))], retry=True
        )
        return [x is not None for x in states]

    def transition(self, job_id: str, custom_id: str, state: str) -> bool:
        assert state in STATES
        k = self.keys(job_id)
        moved = self._transition(
            keys=[k.states, k.counts, k.touched], args=[custom_id, state, "0", repr(time.time())]
        )
        return int(moved) == 1

    def start(self, job_id: str, custom_id: str, *, task_id: str) -> bool:
        """Mark the request running, just before its call. False when it must not be
        called: it is done (a copy of its message succeeded), or `cancel` stopped this
        message after it arrived (cancel leaves running requests alone: one wins)."""
        k = self.keys(job_id)
        moved = self._transition(
            keys=[k.states, k.counts, k.touched, k.cancelled],
            args=[custom_id, "running", "0", repr(time.time()), task_id],
        )
        return int(moved) >= 0

    def store_pending(self, job_id: str, requests: dict[str, dict[str, Any]]) -> None:
        """Keep each request until it finishes, so a lost message can be sent again."""
        if not requests:
            return
        execute_packed(
            self.client,
            [*_keep_pending(self.keys(job_id), requests), self._listing(job_id)],
            retry=True,
        )

    def count(self, job_id: str, field_name: str, amount: int = 1) -> None:
        self.client.hincrby(self.keys(job_id).totals, field_name, amount)

    def arrive(
        self, job_id: str, custom_id: str, *, first: bool, task_id: str = ""
    ) -> dict[str, Any] | None:
        """A delivery begins: the stored result if there is one (a redelivery), and on a
        first delivery the request counted in if its publisher did not. An unfinished
        request is touched (the recovery sweep sees it moved). One round trip when its
        publisher counted it in (every submit and `.delay()`). Raises Cancelled for a
        message that `cancel` stopped (a replay sends the request under a new task id)."""
        k = self.keys(job_id)
        raw, added, cancelled = self._arrive(
            keys=[k.results, k.states, k.touched, k.cancelled],
            args=[custom_id, "1" if first else "0", repr(time.time()), task_id],
        )
        if cancelled:
            raise Cancelled(
                f"cancelled: request {custom_id} of job {job_id} was cancelled before it "
                f"was sent; `quotaflow replay {job_id}` sends it again"
            )
        if added:
            self._count_in(job_id, 1, 0)
        return None if raw is None else json.loads(raw)

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
        deferrals: int = 0,
        retries: int = 0,
    ) -> bool:
        """Store the output line once, with the request's deferrals and retries;
        False when a result was already stored."""
        k = self.keys(job_id)
        first = [k.results, k.states, k.counts, k.totals, k.dead, k.pending, k.touched,
                 k.attempts, k.meta]  # fmt: skip
        stored = self._record(
            keys=[*first, *(key for key in k.all() if key not in first)],
            args=[
                custom_id,
                json.dumps(line, separators=(",", ":")),
                prompt_tokens,
                completion_tokens,
                repr(cost_usd),
                f"{deferrals} {retries}",
                self.retention_seconds,
            ],
        )
        return bool(stored)

    def attempts(self, job_id: str) -> dict[str, tuple[int, int]]:
        """custom_id -> (deferrals, transient retries) of each succeeded request."""
        out = {}
        for cid, raw in self.client.hgetall(self.keys(job_id).attempts).items():
            d, r = raw.split()
            out[decoded(cid)] = (int(d), int(r))
        return out

    def record_dead(self, job_id: str, custom_id: str, entry: dict[str, Any]) -> bool:
        k = self.keys(job_id)
        first = [k.dead, k.states, k.counts, k.results, k.pending, k.touched, k.meta]
        return bool(
            self._dead(
                keys=[*first, *(key for key in k.all() if key not in first)],
                args=[
                    custom_id,
                    json.dumps(entry, separators=(",", ":"), sort_keys=True),
                    self.retention_seconds,
                ],
            )
        )

    def dead_letters(self, job_id: str) -> dict[str, str]:
        """custom_id -> raw entry JSON (raw, so a replay can claim exactly what it read)."""
        raw = self.client.hgetall(self.keys(job_id).dead)
        return {decoded(k): decoded(v) for k, v in raw.items()}

    def cancel(self, job_id: str, entries: dict[str, dict[str, Any]]) -> int:
        """Dead-letter those of `entries` (custom_id -> dead-letter entry, with the
        `task_id` of the request's message) that are still waiting, and mark their
        messages to be dropped on arrival; returns how many were cancelled."""
        if not entries:
            return 0
        k = self.keys(job_id)
        first = [k.states, k.counts, k.dead, k.pending, k.touched, k.cancelled, k.results,
                 k.unsent, k.meta]  # fmt: skip
        args: list[Any] = [self.retention_seconds]
        for cid, entry in entries.items():
            args += [cid, json.dumps(entry, separators=(",", ":"), sort_keys=True),
                     entry["task_id"]]  # fmt: skip
        return int(
            self._cancel(keys=[*first, *(key for key in k.all() if key not in first)], args=args)
        )

    def claim_dead(self, job_id: str, custom_id: str, raw_entry: str) -> bool:
        k = self.keys(job_id)
        return bool(self._claim(keys=[k.dead, k.states, k.counts], args=[custom_id, raw_entry]))

    def results(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for cid, raw in self.client.hscan_iter(self.keys(job_id).results, count=1000):
            yield cid.decode(), json.loads(raw)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys(job_id).meta))

    def job_ids(self, *, last: int | None = None) -> list[str]:
        """The jobs in the index, oldest first (only the `last` most recent when given);
        those whose data has expired leave it here."""
        while True:
            start = 0 if last is None else -last
            ids = [decoded(j) for j in self.client.zrange(self.index_key, start, -1)]
            if not ids:
                return []
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(self.keys(job_id).meta)
            alive = pipe.execute()
            gone = [j for j, a in zip(ids, alive, strict=True) if not a]
            if not gone:
                return ids
            self.client.zrem(self.index_key, *gone)
            if last is None:
                return [j for j, a in zip(ids, alive, strict=True) if a]

    def job_count(self) -> int:
        """Jobs in the index (some may have expired since the last `job_ids`)."""
        return int(self.client.zcard(self.index_key))

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


def _persist(pipe: Any, k: JobKeys) -> None:
    """A job that gets a request again stops expiring."""
    for key in k.all():
        pipe.persist(key)


def _keep_pending(k: JobKeys, requests: dict[str, dict[str, Any]]) -> list[bytes]:
    """Commands that keep each request's body until it finishes, touched now (and the
    job from expiring). Packed at once: redis-py's per-argument packing cost more than
    the rest of a submit's job-store writes (a chunk is thousands of arguments)."""
    now = repr(time.time()).encode()
    pending: list[bytes] = []
    touched: list[bytes] = []
    for cid, request in requests.items():
        key = cid.encode()
        pending += (key, json.dumps(request, separators=(",", ":")).encode())
        touched += (key, now)
    return [
        *(command(b"PERSIST", key.encode()) for key in k.all()),
        command(b"HSET", k.pending.encode(), *pending),
        command(b"HSET", k.touched.encode(), *touched),
    ]
