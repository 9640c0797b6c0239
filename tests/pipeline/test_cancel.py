"""`quotaflow cancel J`: a job's waiting requests stop, what is done stays, nothing more
is sent; the cancelled requests replay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli_env, quotaflow
from support.waiting import wait_for

from settings import settings_env
from tasks import complete
from tasks.errors import Cancelled
from tasks.jobstore import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def small(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"request {i}"}],
        "max_tokens": 20,
    }


def test_edge_cancel_sends_nothing_more_and_keeps_what_is_done(
    tmp_path: Path, simulator: Any, cluster: Any
) -> None:
    # ~30 tokens a request at 50 tokens/s: the 20 requests take ~12 s; most wait (in
    # the deployment's queue, or deferred in the worker's memory) when cancel comes.
    sim = simulator(tpm=3_000, rpm=3_000, bucket_seconds=3.0)
    c = cluster(sim)
    c.start_workers(1, concurrency=4)
    report = c.jobs.submit_bodies([small(i) for i in range(20)], job_id="j1")
    assert report.submitted == 20
    # A `.delay()` request of the job too: its caller's `.get()` says it was cancelled.
    late = complete.apply_async((small(99),), {"custom_id": "late", "job_id": "j1"}, countdown=3)
    wait_for(lambda: c.jobs.status("j1").counts["done"] >= 2)

    env = cli_env(**settings_env(c.settings))
    done = quotaflow("cancel", "j1", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "waiting requests cancelled" in out and "done kept" in out, out
    assert "quotaflow replay j1" in out

    status = c.wait("j1", timeout=30)  # the ones running finish; nothing else waits
    dead = {cid: json.loads(raw) for cid, raw in c.jobs.store.dead_letters("j1").items()}
    cancelled = {cid for cid, e in dead.items() if e["error"]["code"] == "cancelled"}
    assert cancelled and "late" in cancelled
    assert status.counts["done"] + len(cancelled) == 21, status
    with pytest.raises(Cancelled):
        late.get(timeout=30)
    # The cancelled messages reach the worker (the broker's backlog, the deferred ones
    # at their countdown, `.delay()`'s at 3 s) and are dropped there: none is sent.
    settle = c.settings.booking_horizon_seconds + c.settings.max_defer_seconds + 2
    time.sleep(settle)
    assert sim.stats()["admitted"] == c.jobs.status("j1").counts["done"] == status.counts["done"]
    kept = {line["custom_id"] for line in c.jobs.output_lines("j1") if line["error"] is None}
    assert len(kept) == status.counts["done"]

    # Replayed, each runs once: the old messages stay dropped, the new ones are sent.
    replayed, skipped = c.jobs.replay("j1")
    assert (replayed, skipped) == (len(cancelled), 0)
    final = c.wait("j1", timeout=60)
    assert final.counts["done"] == 21 and final.counts["failed"] == 0, final
    assert sim.stats()["admitted"] == 21
    assert sim.stats()["refused_429"] == 0


def test_edge_cancel_of_an_unknown_job_says_how_to_find_one(
    tmp_path: Path, redis_server: Any, redis_client: Any
) -> None:
    env = cli_env(QUOTAFLOW_REDIS_URL=redis_server.url)
    done = quotaflow("cancel", "nope", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "no job 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_edge_a_message_cancelled_after_it_arrived_is_not_called(redis_client: Any) -> None:
    # A worker took the message (arrive) and is asking the gate when `cancel` comes: the
    # request is still waiting, so it is cancelled; the worker's move to "running", just
    # before the call, must then refuse the call (cancel leaves running requests alone).
    store = JobStore(redis_client)
    request = {"url": "/v1/chat/completions", "body": small(1), "deployment": None,
               "tenant": None, "task_id": "t-old"}  # fmt: skip
    store.record_published("j1", "a", request)
    assert store.arrive("j1", "a", first=True, task_id="t-old") is None
    entry = {"custom_id": "a", "task_id": "t-old", "error": {"code": "cancelled"}}
    assert store.cancel("j1", {"a": entry}) == 1
    assert not store.start("j1", "a", task_id="t-old")
    assert store.status("j1").counts["failed"] == 1
    # Replayed, it goes under a new task id: that message is called, once.
    (raw,) = store.dead_letters("j1").values()
    assert store.claim_dead("j1", "a", raw)
    assert store.start("j1", "a", task_id="t-new")
    assert store.status("j1").counts["running"] == 1


def test_edge_a_copy_of_a_message_that_succeeded_meanwhile_is_not_called(
    redis_client: Any,
) -> None:
    store = JobStore(redis_client)
    request = {"url": "/v1/chat/completions", "body": small(1), "deployment": None,
               "tenant": None, "task_id": "t"}  # fmt: skip
    store.record_published("j1", "a", request)
    assert store.arrive("j1", "a", first=True, task_id="t") is None
    line = {"custom_id": "a", "response": {"status_code": 200, "body": {"ok": 1}}, "error": None}
    assert store.record_result("j1", "a", line, prompt_tokens=1, completion_tokens=1,
                               cost_usd=0.0, deferrals=0, retries=0)  # fmt: skip
    assert not store.start("j1", "a", task_id="t")
    counts = store.status("j1").counts
    assert counts["done"] == 1 and counts["running"] == 0
