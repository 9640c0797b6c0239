"""What the job store tells of requests that may have lost their message: which are
unfinished and silent, whether they moved, and what was kept to send them again.

pipeline.recovery reads these; `JobStore` has them (it is a `RecoveryReads`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from budget.resp import decoded
from tasks.jobstate import JobKeys


class RecoveryReads:
    """Reads of a job's `touched`, `states` and `pending` hashes (no results)."""

    client: redis.Redis

    def keys(self, job_id: str) -> JobKeys:
        raise NotImplementedError

    def stale(
        self, job_id: str, *, older_than: float, limit: int | None = None
    ) -> dict[str, tuple[str, str]]:
        """Unfinished requests untouched for `older_than` seconds, oldest first.

        Returns custom_id -> (state, touched) (see `snapshot`), at most `limit` of
        them. Their message may be lost, or simply waiting (in a queue's backlog, or
        held by a worker until its countdown ends): the caller looks in the broker.
        Reads the job's touched hash (unfinished requests only; no request bodies).
        """
        k = self.keys(job_id)
        cutoff = time.time() - older_than
        old = sorted(
            (float(at), decoded(cid))
            for cid, at in self.client.hscan_iter(k.touched, count=1000)
            if float(at) < cutoff
        )
        cids = [cid for _, cid in old[:limit]]
        return {
            cid: snap
            for cid, snap in self.snapshot(job_id, cids).items()
            if snap[0] not in ("", "done", "failed")
        }

    def snapshot(self, job_id: str, custom_ids: list[str]) -> dict[str, tuple[str, str]]:
        """custom_id -> (state, last touched): equal snapshots mean nothing moved."""
        if not custom_ids:
            return {}
        k = self.keys(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(k.states, custom_ids)
        pipe.hmget(k.touched, custom_ids)
        states, touched = pipe.execute()
        return {
            cid: (decoded(s or b""), decoded(t or b""))
            for cid, s, t in zip(custom_ids, states, touched, strict=True)
        }

    def pending(self, job_id: str, custom_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The kept requests (those not finished) of `custom_ids`."""
        if not custom_ids:
            return {}
        raw = self.client.hmget(self.keys(job_id).pending, custom_ids)
        return {cid: json.loads(r) for cid, r in zip(custom_ids, raw, strict=True) if r}

    def quiet(self, job_id: str) -> dict[str, float]:
        """Seconds each unfinished request that could be sent again has been silent."""
        k = self.keys(job_id)
        now = time.time()
        touched = {
            decoded(cid): float(at) for cid, at in self.client.hscan_iter(k.touched, count=1000)
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
