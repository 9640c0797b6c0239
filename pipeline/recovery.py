"""Requests whose message the broker lost are sent again, by the workers themselves.

A Redis broker can lose a message: one popped by a worker as Redis went away, a
publish cut short. quotaflow keeps every request (its body and task id, in the job's
`pending` hash) from the moment it is published until it finishes:

- `quotaflow submit` writes them in chunks before publishing them in pipelined
  batches (pipeline.jobs, pipeline.sending's `send_all`);
- any other publish of a quotaflow task (`complete.delay(...)`) is recorded by an
  `after_task_publish` hook (pipeline.sending), on the publisher's side, once the
  broker has it: one pipelined round trip per publish.

Every worker (`celery -A pipeline worker`) runs a sweep thread. Every
`recover_after_seconds / 2` one worker of the cluster (whoever sets the `due` key
first) sweeps, holding a Redis lock (SET NX PX, extended as it goes) so that no two
recoveries ever run at once. A request is lost when it is unfinished, untouched for
`recover_after_seconds` (a worker touches it as a delivery begins), its task id is in
no queue and held by no worker (looked for three times, over LOOK_GAPS_SECONDS: a
message moves from a queue to the unacked hash in two steps, and a busy worker can
take a while between them), and it has not moved in the meantime. It is sent again
under its own task id, so an `AsyncResult` the caller holds still resolves.

The queues looked in are every queue a request was ever published to or a worker
consumed (a set in Redis), not only this worker's own: during a rolling deploy an old
worker does not know a new deployment's queue, and must not take the requests
waiting there for lost. A queue with waiting messages that no worker has consumed
for a while is logged as a warning.

Cost of one sweep, whatever the backlog and however many jobs there were: one slice
of the index of open jobs (SLICE_JOBS jobs, one HLEN each, continuing the last
sweep's scan); of those, at most SWEEP_MAX_SCANNED entries of their `touched` hashes
(custom ids and timestamps, no bodies), each job's scan continuing where the last
sweep left it (a cursor kept in Redis), so a lost request is found within
ceil(unfinished / SWEEP_MAX_SCANNED) sweeps; when some are stale, the kept requests
of at most SWEEP_MAX_CANDIDATES of them and up to three looks into the broker, each
a series of bounded commands (pipeline.broker's BrokerLookup: a slice of FIND_SLICE
messages of one list per command, only task ids leaving Redis; then the unacked
hash, which holds what the workers hold), stopping once every candidate is found.
While more than SWEEP_MAX_WAITING messages wait, the sweep does not look (a look
costs Redis time in proportion to the backlog): a lost message is sent again once
the backlog is down to that size, or at once by `quotaflow recover`.
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

from budget import QuotaflowError
from budget.resp import decoded
from pipeline.broker import BrokerLookup, all_queues, queue_lists
from pipeline.sending import send
from settings import Settings
from tasks import runtime
from tasks.errors import NotConfigured
from tasks.jobstore import JobStore

log = logging.getLogger(__name__)

#: Most messages waiting in the queues that a sweep looks through to find lost ones
#: (looks are read in bounded slices; this bounds the Redis time a sweep takes).
SWEEP_MAX_WAITING = 100_000
#: Most jobs of the index of open jobs one sweep reads.
SLICE_JOBS = 1_000
#: Most stale requests one sweep checks (oldest first).
SWEEP_MAX_CANDIDATES = 1_000
#: Most entries of the jobs' `touched` hashes one sweep reads.
SWEEP_MAX_SCANNED = 20_000
_SCAN_STEP = 1_000
#: The lock's expiry: a recovery that dies holding it frees it after this long.
LOCK_SECONDS = 60.0
#: Gaps between the three looks into the broker: a message a worker popped is in no
#: list and not yet in the unacked hash until its event loop gets to it.
LOOK_GAPS_SECONDS = (1.0, 2.0)
#: A queue with waiting messages that no worker said it consumes for this many sweep
#: intervals is warned about.
UNCONSUMED_INTERVALS = 4

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
        #: Queue -> when a worker last said it consumes it.
        self.consumed_key = f"{store.prefix}:queues:consumed"
        self.broker = BrokerLookup(self.client)

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
        queues = self.queues()
        lists = [name for queue in queues for name in queue_lists(queue)]
        waiting = self._waiting(lists)
        self._warn_unconsumed(queues, waiting)
        if sum(waiting.values()) > SWEEP_MAX_WAITING:
            return 0
        limit = self.settings.recover_after_seconds
        candidates: Candidates = {}
        jobs = self.store.open.slice(size=SLICE_JOBS)
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
        resent = self._resend_lost(candidates, lock, lists) if candidates else 0
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
            old += [(float(at), decoded(cid)) for cid, at in entries.items() if float(at) < cutoff]
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
            return self._resend_lost(candidates, lock, self._lists())

    def resend_unsent(self, job_id: str, custom_ids: list[str]) -> int:
        """Of requests a killed submit had marked, send those that never reached the broker.

        One that reached it has left "queued", finished, or has its message in the
        broker; the others are sent under their kept task id. Returns how many.
        """
        with self.lock(wait=LOCK_SECONDS) as lock:
            snaps = self.store.snapshot(job_id, custom_ids)
            candidates = {(job_id, c): s for c, s in snaps.items() if s[0] == "queued"}
            resent = self._resend_lost(candidates, lock, self._lists())
        self.store.end_publish(job_id, custom_ids)
        return resent

    def _resend_lost(self, candidates: Candidates, lock: Lock, lists: list[str]) -> int:
        kept: dict[tuple[str, str], dict[str, Any]] = {}
        for job_id in {j for j, _ in candidates}:
            cids = [c for j, c in candidates if j == job_id]
            kept.update({(job_id, c): r for c, r in self.store.pending(job_id, cids).items()})
        missing = list(kept)
        for gap in (0.0, *LOOK_GAPS_SECONDS):
            if gap:
                time.sleep(gap)
                lock.extend(LOCK_SECONDS, replace_ttl=True)
            present = self.broker.present((kept[key]["task_id"] for key in missing), lists)
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
                try:
                    send(job_id, cid, kept[(job_id, cid)])
                except QuotaflowError as exc:  # kept before its publisher checked it
                    log.error("recovery: request %s of job %s not sent: %s", cid, job_id, exc)
                    continue
                resent += 1
        return resent

    def queues(self) -> list[str]:
        """Every queue a request was published to or a worker consumed (this worker's
        own queues included: they are added to the set)."""
        own = all_queues(self.settings)
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self.store.queues_key, *own)
        pipe.smembers(self.store.queues_key)
        _, known = pipe.execute()
        return sorted(set(own) | {decoded(q) for q in known})

    def consuming(self, queues: list[str]) -> None:
        """Say that this worker consumes `queues` (and add them to the set of queues)."""
        if queues:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self.store.queues_key, *queues)
            pipe.hset(self.consumed_key, mapping=dict.fromkeys(queues, repr(time.time())))
            pipe.execute()

    def _lists(self) -> list[str]:
        return [name for queue in self.queues() for name in queue_lists(queue)]

    def _waiting(self, lists: list[str]) -> dict[str, int]:
        """Messages waiting per list."""
        pipe = self.client.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
        return dict(zip(lists, map(int, pipe.execute()), strict=True))

    def _warn_unconsumed(self, queues: list[str], waiting: dict[str, int]) -> None:
        """Log the queues whose messages wait while no worker consumes them."""
        per_queue: dict[str, int] = {}
        for queue in queues:
            per_queue[queue] = sum(waiting.get(name, 0) for name in queue_lists(queue))
        busy = [q for q, n in per_queue.items() if n]
        if not busy:
            return
        seen = self.client.hmget(self.consumed_key, busy)
        since = time.time() - UNCONSUMED_INTERVALS * self.interval
        for queue, at in zip(busy, seen, strict=True):
            if at is None or float(at) < since:
                log.warning(
                    "queue %s has %d waiting message(s) and no worker consumes it: start a "
                    "worker for it (celery -A pipeline worker -Q %s), or add its deployment "
                    "back to the settings",
                    queue, per_queue[queue], queue,
                )  # fmt: skip


def _release(lock: Lock) -> None:
    # Expired (a very long sweep): another holder may have it now.
    with contextlib.suppress(redis.exceptions.LockError):
        lock.release()


class Sweeper:
    """The thread in each worker's main process that runs `Recovery.sweep_if_due`."""

    def __init__(self, recovery: Recovery, consumes: list[str]) -> None:
        self.recovery = recovery
        #: The queues this worker consumes, said every interval (see `Recovery.consuming`).
        self.consumes = consumes
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
                self.recovery.consuming(self.consumes)
                self.recovery.sweep_if_due()
            except redis.RedisError as exc:
                log.warning("recovery sweep skipped: Redis: %s", exc)
            except Exception:
                log.exception("recovery sweep failed")


_sweeper: Sweeper | None = None


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper
    try:
        rt = runtime.current()
    except NotConfigured:
        return
    recovery = Recovery(rt.settings, rt.jobs)
    try:  # the queues chosen with -Q (all the app's queues without it)
        consumes = sorted(sender.app.amqp.queues.consume_from)
    except AttributeError:
        consumes = all_queues(rt.settings)
    try:
        recovery.consuming(consumes)
        rt.jobs.open.adopt(rt.jobs.index_key)  # jobs made before the index of open jobs
    except redis.RedisError as exc:
        log.warning("queues not registered for recovery (Redis: %s)", exc)
    _sweeper = Sweeper(recovery, consumes).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
