"""The sweep's edges: what it reads, what it resends, what a publish leaves behind.

The sweep runs here in the test process (`Recovery.sweep`), against real Redis and a
real broker, with no worker consuming: what waits in a queue stays there.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError
from support.cluster import sim_deployment
from support.workload import SIM, bodies

from budget import InvalidRequest
from pipeline import recovery
from pipeline.broker import message_id, queue_lists
from pipeline.recovery import Recovery
from settings import DeploymentSettings
from tasks import complete

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = "quotaflow.sim"
#: Jobs one sweep reads of the index of open jobs (pipeline.recovery.SLICE_JOBS).
SLICE_JOBS = 1_000


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands served since the last CONFIG RESETSTAT, by name."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def assert_read_in_slices(done: dict[str, int], backlog: int) -> None:
    """The broker was read a slice at a time: each LRANGE ran inside a script call
    (find_ids.lua: one slice, only task ids returned), none read a whole list or the
    whole unacked hash in one reply (commandstats counts a script's commands too)."""
    assert done.get("evalsha", 0) >= backlog // 1_000
    assert done.get("lrange", 0) <= done.get("evalsha", 0)
    assert not done.get("hvals") and not done.get("hgetall")


def sweep(c: Any) -> int:
    rec = Recovery(c.settings, c.jobs.store)
    with rec.lock(wait=10) as lock:
        return rec.sweep(lock)


def lose(client: redis.Redis, task_id: str, queue: str = QUEUE) -> None:
    """The broker loses one waiting message."""
    for name in queue_lists(queue):
        for raw in client.lrange(name, 0, -1):
            if message_id(json.loads(raw)) == task_id:
                assert client.lrem(name, 1, raw) == 1
                return
    raise AssertionError(f"{task_id} is not waiting in {queue}")


def test_edge_failed_publish_leaves_nothing_to_resend(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    cluster(simulator(**SIM))
    # The broker refuses the message (its queue key holds something else): the publish
    # raises after Celery has built and routed it.
    redis_client.set(QUEUE, "not a list")
    with pytest.raises(OperationalError):
        complete.apply_async((bodies(1)[0],), retry=False)
    # The caller was told it failed: nothing is kept that a sweep would send.
    assert not list(redis_client.scan_iter("*:pending"))
    assert not list(redis_client.scan_iter("*:touched"))


def test_edge_delay_job_id_is_checked(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    cluster(simulator(**SIM))
    for bad in ("a{b}", "x" * 101, "with space", "-dash", ""):
        with pytest.raises(InvalidRequest, match="invalid job id"):
            complete.delay(bodies(1)[0], job_id=bad)
    assert not any(redis_client.llen(name) for name in queue_lists(QUEUE))
    complete.delay(bodies(1)[0], job_id="Job-1.a_b")
    assert redis_client.llen(QUEUE) == 1


def test_edge_sweep_reads_open_jobs_only(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM), recover_after_seconds=1.0)
    store = c.jobs.store
    finished = 3 * SLICE_JOBS
    for i in range(finished):
        job = f"done-{i}"
        store.record_published(job, "r", {"url": "/v1/chat/completions"})
        store.record_result(job, "r", {}, prompt_tokens=1, completion_tokens=1, cost_usd=0.0)
    r = complete.delay(bodies(1)[0], job_id="open")
    lose(redis_client, r.id)
    time.sleep(1.5)
    redis_client.config_resetstat()
    # Four sweeps: the lost request is found within them (slices are taken in random
    # order), and the finished jobs have left the open index by then, a slice a sweep.
    resent = sum(sweep(c) for _ in range(4))
    assert resent == 1
    assert message_id(json.loads(redis_client.lindex(QUEUE, 0))) == r.id  # type: ignore[arg-type]
    done = calls(redis_client)
    # Each sweep read a slice of the open jobs, not the 3,000 finished jobs one by one.
    assert done.get("exists", 0) == 0
    assert done.get("hlen", 0) <= 4 * (SLICE_JOBS + 1)
    assert redis_client.zcard(f"{c.settings.key_prefix}:jobs:open") <= 1 + SLICE_JOBS


def test_edge_lost_request_found_behind_a_long_backlog(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM), recover_after_seconds=1.0)
    lost = complete.delay(bodies(1)[0], job_id="small")
    backlog = 6_000  # the sweep used to stop looking past 5,000 waiting messages
    report = c.jobs.submit_bodies(bodies(backlog, seed=2), job_id="big")
    assert report.submitted == backlog
    lose(redis_client, lost.id)
    time.sleep(1.5)
    redis_client.config_resetstat()
    resent = 0
    for _ in range(6):  # candidates are taken job by job in random order
        resent += sweep(c)
        if resent:
            break
    assert resent == 1
    # Only the lost one was sent: the backlog's requests were found waiting.
    assert redis_client.llen(QUEUE) == backlog + 1
    assert message_id(json.loads(redis_client.lindex(QUEUE, 0))) == lost.id  # type: ignore[arg-type]
    done = calls(redis_client)
    assert_read_in_slices(done, backlog)


def test_edge_recover_reads_the_broker_in_slices(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM))
    backlog = 3_000
    c.jobs.submit_bodies(bodies(backlog, seed=2), job_id="big")
    lost = [complete.delay(b, job_id="big2") for b in bodies(3, seed=3)]
    for r in lost[:2]:
        lose(redis_client, r.id)
    redis_client.config_resetstat()
    rec = Recovery(c.settings, c.jobs.store)
    assert rec.recover_job("big", older_than=0) == 0  # all waiting
    assert rec.recover_job("big2", older_than=0) == 2
    assert_read_in_slices(calls(redis_client), backlog)
    assert redis_client.llen(QUEUE) == backlog + 3


def test_edge_a_delivery_makes_its_request_move(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM))
    store = c.jobs.store
    store.record_published("j", "r", {"url": "/v1/chat/completions"})
    before = store.snapshot("j", ["r"])
    time.sleep(0.01)
    # A worker takes the message: the request stays "queued" until its gate answers,
    # but a sweep that looked before and after sees that it moved.
    assert store.arrive("j", "r", first=True) is None
    assert store.snapshot("j", ["r"]) != before
    store.record_result("j", "r", {}, prompt_tokens=1, completion_tokens=1, cost_usd=0.0)
    # A redelivery of a finished request touches nothing (the job stays finished).
    assert store.arrive("j", "r", first=True) == {}
    assert not redis_client.hlen(store.keys("j").touched)


def test_edge_a_message_a_stalled_worker_holds_is_not_resent(
    simulator: Any, cluster: Any, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster(simulator(**SIM), recover_after_seconds=1.0)
    r = complete.delay(bodies(1)[0], job_id="j")
    # A worker popped the message (BRPOP): it is in no list, and its event loop stalls
    # before it writes the message to the unacked hash (loaded host, GIL, slow reads).
    (raw,) = redis_client.lrange(QUEUE, 0, -1)
    lose(redis_client, r.id)
    time.sleep(1.5)
    real_sleep, sweeping = time.sleep, threading.get_ident()
    gaps: list[float] = []

    def sleep(seconds: float) -> None:
        real_sleep(seconds)
        if threading.get_ident() != sweeping:
            return
        gaps.append(seconds)
        if len(gaps) == 2:  # the loop gets to it more than a second after the first look
            entry = json.dumps([json.loads(raw), "quotaflow", QUEUE])
            redis_client.hset("unacked", "tag-1", entry)

    monkeypatch.setattr(recovery.time, "sleep", sleep)
    assert sweep(c) == 0
    assert not redis_client.llen(QUEUE)  # not sent a second time


@pytest.mark.parametrize("how", ["delay", "submit"])
def test_edge_sweep_looks_in_queues_of_other_deployments(
    how: str,
    simulator: Any,
    cluster: Any,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = simulator(**SIM)
    deps = [
        DeploymentSettings(**sim_deployment(sim)),
        DeploymentSettings(**sim_deployment(sim, name="sim2", model="gpt-4o")),
    ]
    # A publisher that knows a deployment the sweeping worker does not (a rolling deploy).
    new = cluster(sim, recover_after_seconds=1.0, deployments=deps)
    body = {**bodies(1)[0], "model": "gpt-4o"}
    if how == "delay":
        complete.delay(body, job_id="new")
    else:
        assert new.jobs.submit_bodies([body], job_id="new").submitted == 1
    assert redis_client.llen("quotaflow.sim2") == 1
    old = cluster(sim, recover_after_seconds=1.0)
    assert [d.name for d in old.settings.deployments] == ["sim"]
    time.sleep(1.5)
    with caplog.at_level(logging.WARNING, logger="pipeline.recovery"):
        assert sweep(old) == 0
    # Still waiting where it was, not sent again; and the queue no worker consumes is told.
    assert redis_client.llen("quotaflow.sim2") == 1
    assert not any(redis_client.llen(n) for q in ("quotaflow", QUEUE) for n in queue_lists(q))
    assert "quotaflow.sim2 has 1 waiting message(s) and no worker consumes it" in caplog.text
    assert new.jobs.status("new").counts["queued"] == 1


def test_jobs_made_before_the_open_index_are_adopted_once(
    simulator: Any, cluster: Any, redis_client: redis.Redis
) -> None:
    c = cluster(simulator(**SIM))
    store = c.jobs.store
    store.record_published("old", "r", {"url": "/v1/chat/completions"})
    redis_client.delete(store.open.key)  # as a Redis written before the index existed
    assert store.open.adopt(store.index_key)
    assert store.open.all() == ["old"]
    assert not store.open.adopt(store.index_key)
