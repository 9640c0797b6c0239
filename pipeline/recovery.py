"""Requests whose message the broker lost are sent again, by the workers themselves.

A Redis broker can lose a message: one popped by a worker as Redis went away, a
publish cut short. quotaflow keeps every request (its body and task id, in the job's
`pending` hash) from the moment it is published until it finishes:

- `quotaflow submit` writes them in chunks before publishing them in pipelined
  batches (pipeline.jobs, pipeline.sending's `send_all`);
- any other publish of a quotaflow task (`complete.delay(...)`) is recorded by a
  `before_task_publish` hook (pipeline.sending), on the publisher's side, before any
  worker can see the message: one pipelined round trip per publish.

Every worker (`celery -A pipeline worker`) runs a sweep thread. Every
`recover_after_seconds / 2` one worker of the cluster (whoever sets the `due` key
first) sweeps, holding a Redis lock (SET NX PX, extended as it goes) so that no two
recoveries ever run at once. A request is lost when it is unfinished, untouched for
`recover_after_seconds`, its task id is in no queue and held by no worker (looked
for twice, a second apart: a message moves from a queue to the unacked hash in two
steps), and it has not moved in the meantime. It is sent again under its own task
id, so an `AsyncResult` the caller holds still resolves.

Cost of one sweep, whatever the backlog: one HLEN per job in the index (jobs expire
after retention_seconds); of the jobs with unfinished requests, at most
SWEEP_MAX_SCANNED entries of their `touched` hashes (custom ids and timestamps, no
bodies), each job's scan continuing where the last sweep left it (a cursor kept in
Redis), so a lost request is found within ceil(unfinished / SWEEP_MAX_SCANNED) sweeps;
when some are stale, the kept requests of at most SWEEP_MAX_CANDIDATES of them and two
reads of the broker: at most SWEEP_MAX_WAITING waiting messages and the unacked hash
(what the workers hold: bounded by their concurrency and worker_eta_task_limit, not by
the backlog), task ids read without decoding bodies. While more than
SWEEP_MAX_WAITING messages wait, the broker is not read: a lost message is sent again
once the backlog is down to that size.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from typing import Any, cast

import redis
from celery import signals
from redis.lock import Lock

from pipeline.broker import UNACKED_KEY, all_queues, queue_lists, raw_message_id
from pipeline.sending import send
from settings import Settings
from tasks import runtime
from tasks.errors import NotConfigured
from tasks.jobstore import JobStore

log = logging.getLogger(__name__)

#: Most messages waiting in the queues that a sweep reads to find lost ones.
SWEEP_MAX_WAITING = 5_000
#: Most stale requests one sweep checks (oldest first).
SWEEP_MAX_CANDIDATES = 1_000
#: Most entries of the jobs' `touched` hashes one sweep reads.
SWEEP_MAX_SCANNED = 20_000
_SCAN_STEP = 1_000
#: The lock's expiry: a recovery that dies holding it frees it after this long.
LOCK_SECONDS = 60.0
#: Gap between the two looks into the broker.
LOOK_GAP_SECONDS = 1.0

#: (job id, custom id) -> (state, touched), as read before looking in the broker.
Candidates = dict[tuple[str, str], tuple[str, str]]


class Recovery:
    """Finds requests whose message is lost and sends them again, one holder at a time."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.client = store.client
        self.due_key = f"{store.prefix}:recover:due"
        self.lock_key = f"{store.prefix}:recover:lock"
        #: Per job, where the sweeps' scan of its `touched` hash goes on.
        self.cursor_key = f"{store.prefix}:recover:cursor"

    @property
    def interval(self) -> float:
        """Seconds between sweeps of the cluster."""
        return max(1.0, self.settings.recover_after_seconds / 2)

    def lock(self, *, wait: float | None) -> Lock:
        return Lock(self.client, self.lock_key, timeout=LOCK_SECONDS, blocking_timeout=wait)

    def sweep_if_due(self) -> int:
        """Sweep when no worker of the cluster has in this interval; returns requests resent."""
        due = self.client.set(
            self.due_key, socket.gethostname(), nx=True, px=int(self.interval * 1000)
        )
        if not due:
            return 0
        lock = self.lock(wait=0)
        if not lock.acquire(blocking=False):
            return 0
        try:
            return self.sweep(lock)
        finally:
            _release(lock)

    def sweep(self, lock: Lock) -> int:
        """Every job's lost requests, sent again; the caller holds `lock`."""
        if self._waiting() > SWEEP_MAX_WAITING:
            return 0
        limit = self.settings.recover_after_seconds
        candidates: Candidates = {}
        jobs = self.store.open_jobs()
        # Random order and a share each: a large job cannot keep the others unswept.
        random.shuffle(jobs)
        share = max(_SCAN_STEP, SWEEP_MAX_SCANNED // max(1, len(jobs)))
        scanned = 0
        for job_id in jobs:
            room = SWEEP_MAX_CANDIDATES - len(candidates)
            if room <= 0 or scanned >= SWEEP_MAX_SCANNED:
                break
            n, stale = self._stale_slice(job_id, older_than=limit, limit=room, scan=share)
            scanned += n
            candidates.update({(job_id, cid): snap for cid, snap in stale.items()})
        resent = self._resend_lost(candidates, lock) if candidates else 0
        if resent:
            log.warning("recovery: %d request(s) whose message was lost sent again", resent)
        return resent

    def _stale_slice(
        self, job_id: str, *, older_than: float, limit: int, scan: int
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        """`JobStore.stale` over the next `scan` entries of the job's touched hash
        (from the cursor the last sweep left); returns (entries read, stale)."""
        touched = self.store.keys(job_id).touched
        cursor = int(self.client.hget(self.cursor_key, job_id) or 0)
        cutoff = time.time() - older_than
        old: list[tuple[float, str]] = []
        read = 0
        while read < scan:
            cursor, found = self.client.hscan(touched, cursor, count=_SCAN_STEP)
            entries = cast(dict[bytes, bytes], found)
            read += len(entries)
            old += [(float(at), _text(cid)) for cid, at in entries.items() if float(at) < cutoff]
            if cursor == 0:
                break
        if cursor:
            self.client.hset(self.cursor_key, job_id, cursor)
        else:
            self.client.hdel(self.cursor_key, job_id)
        cids = [cid for _, cid in sorted(old)[:limit]]
        snaps = self.store.snapshot(job_id, cids)
        return read, {c: s for c, s in snaps.items() if s[0] not in ("", "done", "failed")}

    def recover_job(self, job_id: str, *, older_than: float) -> int:
        """One job's lost requests, sent again (waits for the lock)."""
        with self.lock(wait=LOCK_SECONDS) as lock:
            stale = self.store.stale(job_id, older_than=older_than)
            candidates = {(job_id, c): s for c, s in stale.items()}
            return self._resend_lost(candidates, lock, max_waiting=None)

    def resend_unsent(self, job_id: str, custom_ids: list[str]) -> int:
        """Of requests a killed submit had marked, send those that never reached the broker.

        One that reached it has left "queued", finished, or has its message in the
        broker; the others are sent under their kept task id. Returns how many.
        """
        with self.lock(wait=LOCK_SECONDS) as lock:
            snaps = self.store.snapshot(job_id, custom_ids)
            candidates = {(job_id, c): s for c, s in snaps.items() if s[0] == "queued"}
            resent = self._resend_lost(candidates, lock, max_waiting=None)
        self.store.end_publish(job_id, custom_ids)
        return resent

    def _resend_lost(
        self, candidates: Candidates, lock: Lock, *, max_waiting: int | None = SWEEP_MAX_WAITING
    ) -> int:
        kept: dict[tuple[str, str], dict[str, Any]] = {}
        for job_id in {j for j, _ in candidates}:
            cids = [c for j, c in candidates if j == job_id]
            kept.update({(job_id, c): r for c, r in self.store.pending(job_id, cids).items()})
        missing = list(kept)
        for look in range(2):
            if look:
                time.sleep(LOOK_GAP_SECONDS)
            present = self._in_broker(max_waiting)
            if present is None:
                return 0  # too long a backlog to read now
            missing = [key for key in missing if kept[key]["task_id"] not in present]
            if not missing:
                return 0
        lock.extend(LOCK_SECONDS, replace_ttl=True)
        resent = 0
        for job_id in {j for j, _ in missing}:
            cids = [c for j, c in missing if j == job_id]
            now = self.store.snapshot(job_id, cids)
            # Anything that moved while we looked (a worker took it, it finished) is not lost.
            lost = [c for c in cids if now[c] == candidates[(job_id, c)]]
            self.store.touch(job_id, lost)
            for cid in lost:
                send(job_id, cid, kept[(job_id, cid)])
            resent += len(lost)
        return resent

    def _waiting(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for name in self._lists():
            pipe.llen(name)
        return sum(pipe.execute())

    def _lists(self) -> list[str]:
        return [name for queue in all_queues(self.settings) for name in queue_lists(queue)]

    def _in_broker(self, max_waiting: int | None) -> set[str] | None:
        """Task ids of every message waiting in a queue or held (unacked) by a worker.

        None when more than `max_waiting` messages wait in the queues.
        """
        if max_waiting is not None and self._waiting() > max_waiting:
            return None
        # Each list read up to the bound, so a backlog that grew since the count
        # still costs no more than the bound (and is then not read at all).
        last = -1 if max_waiting is None else max_waiting
        pipe = self.client.pipeline(transaction=True)
        for name in self._lists():
            pipe.lrange(name, 0, last)
        pipe.hvals(UNACKED_KEY)
        *lists, unacked = pipe.execute()
        if max_waiting is not None and sum(map(len, lists)) > max_waiting:
            return None
        ids = {raw_message_id(raw) for lst in lists for raw in lst}
        ids.update(raw_message_id(raw) for raw in unacked)
        return ids


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _release(lock: Lock) -> None:
    # Expired (a very long sweep): another holder may have it now.
    with contextlib.suppress(redis.exceptions.LockError):
        lock.release()


class Sweeper:
    """The thread in each worker's main process that runs `Recovery.sweep_if_due`."""

    def __init__(self, recovery: Recovery) -> None:
        self.recovery = recovery
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quotaflow-recovery", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.recovery.interval
        # Spread the workers over the interval; whichever is first sweeps.
        while not self._stop.wait(interval * random.uniform(0.5, 1.0)):
            try:
                self.recovery.sweep_if_due()
            except redis.RedisError as exc:
                log.warning("recovery sweep skipped: Redis: %s", exc)
            except Exception:
                log.exception("recovery sweep failed")


_sweeper: Sweeper | None = None


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    global _sweeper
    try:
        rt = runtime.current()
    except NotConfigured:
        return
    _sweeper = Sweeper(Recovery(rt.settings, rt.jobs)).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
