"""The periodic readings of the broker cost the same whatever the backlog: queue depth
(status, watch, metrics) and the recovery sweep read bounded slices, and still count
right."""

from __future__ import annotations

import json
import time

import pytest
import redis
from kombu.utils.json import dumps as kombu_dumps
from support.workload import SIM, bodies

from pipeline import broker, recovery
from pipeline.broker import UNACKED_KEY, held_message, queue_depth, raw_message_id
from pipeline.recovery import Recovery
from pipeline.views import queue_line
from tasks import complete

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = "quotaflow.sim"


def _hscans(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hscan", {"calls": 0})["calls"])


def test_queue_depth_reads_a_bounded_slice_and_counts_exactly(
    simulator, cluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    c = cluster(simulator(**SIM))  # no workers: the messages stay where they are put
    # Two real messages, one deferred (with an ETA), held the way kombu holds them.
    complete.apply_async((bodies(1)[0],), queue=c.settings.queue)
    complete.apply_async((bodies(1)[0],), queue=c.settings.retry_queue, countdown=30)
    (now,) = redis_client.lrange(c.settings.queue, 0, -1)
    (later,) = redis_client.lrange(c.settings.retry_queue, 0, -1)
    redis_client.delete(c.settings.queue, c.settings.retry_queue)
    held = {}
    for i in range(300):  # past a listpack's size, so HSCAN really pages
        raw, queue = (later, c.settings.retry_queue) if i % 3 == 0 else (now, c.settings.queue)
        held[f"tag-{i}"] = kombu_dumps([json.loads(raw), "", queue])
    redis_client.hset(UNACKED_KEY, mapping=held)
    assert held_message(held["tag-0"].encode()) == (c.settings.retry_queue, True)
    assert held_message(held["tag-1"].encode()) == (c.settings.queue, False)
    assert raw_message_id(held["tag-0"].encode()) == json.loads(later)["headers"]["id"]

    monkeypatch.setattr(broker, "HELD_PER_READING", 100)
    monkeypatch.setattr(broker, "_SCAN_STEP", 50)
    readings = []
    for _ in range(6):
        before = _hscans(redis_client)
        readings.append(queue_depth(redis_client, c.settings))
        # Each reading pages through at most its share of the hash.
        assert _hscans(redis_client) - before <= 100 // 50 + 1
    first = readings[0]
    assert not first.complete and first.held_total == 300
    assert sum(first.unacked.values()) < 300
    assert ">=" in queue_line(first.ready, first.deferred, complete=first.complete)
    # Once a pass has ended, every reading gives the last full pass's counts.
    done = [r for r in readings if r.complete]
    assert done
    for r in done:
        assert r.unacked[c.settings.queue] == 200 and r.unacked[c.settings.retry_queue] == 100
        assert r.deferred[c.settings.retry_queue] == 100 and r.deferred[c.settings.queue] == 0
        assert r.ready[c.settings.queue] == 0


def test_recovery_sweeps_a_large_job_a_slice_at_a_time(
    simulator, cluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    c = cluster(simulator(**SIM), recover_after_seconds=1.0)  # no workers
    n = 600
    c.jobs.submit_bodies(bodies(n, seed=9), job_id="big")
    waiting = redis_client.lrange(QUEUE, 0, -1)
    lost = {raw_message_id(raw) for raw in waiting[::50]}  # 12 of them
    for raw in waiting[::50]:
        assert redis_client.lrem(QUEUE, 1, raw) == 1
    time.sleep(1.2)  # every request is now silent for longer than recover_after_seconds

    monkeypatch.setattr(recovery, "SWEEP_MAX_SCANNED", 200)
    monkeypatch.setattr(recovery, "_SCAN_STEP", 100)
    monkeypatch.setattr(recovery, "LOOK_GAPS_SECONDS", (0.1, 0.1))
    sweeper = Recovery(c.settings, c.jobs.store)
    resent = []
    for _ in range(8):
        with sweeper.lock(wait=10) as lock:
            resent.append(sweeper.sweep(lock))
    # A sweep reads a slice of the job, so the lost ones come back over several sweeps,
    # each once: then the scan wraps around and finds nothing more.
    assert sum(resent) == len(lost)
    assert max(resent) < len(lost)
    ids = [raw_message_id(raw) for raw in redis_client.lrange(QUEUE, 0, -1)]
    assert len(ids) == n and set(ids) >= lost
