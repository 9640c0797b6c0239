"""Lost messages: an interrupted submit resumes exactly; a lost `.delay()` comes back."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from support.cli import QUOTAFLOW, cli_env
from support.workload import SIM, bodies

from pipeline.broker import message_id, queue_lists
from settings import settings_env
from tasks import complete
from tasks.jobstore import ADHOC_JOB, job_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


#: Where new requests for the test deployment ("sim") wait.
QUEUE = "quotaflow.sim"


def waiting(client: redis.Redis, queue: str = QUEUE) -> list[dict[str, Any]]:
    """The messages waiting in a queue's lists, decoded."""
    return [json.loads(raw) for name in queue_lists(queue) for raw in client.lrange(name, 0, -1)]


def custom_id(message: dict[str, Any]) -> str:
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return str(kwargs["custom_id"])


def test_edge_interrupted_submit_resumes(
    tmp_path: Path, simulator, cluster, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    c = cluster(simulator(**SIM))  # no workers: every message stays in the queue
    n = 6_000
    batch = tmp_path / "batch.jsonl"
    with batch.open("w") as fh:
        for i, body in enumerate(bodies(n, seed=3)):
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")
    env = cli_env(**settings_env(c.settings))
    submit = [str(QUOTAFLOW), "submit", str(batch), "--job-id", "J"]
    unsent_key = job_keys(c.settings.key_prefix, "J").unsent

    # Kill the submitter while a chunk (500 requests) is kept and marked unsent but not
    # yet in the broker (a chunk goes out in one round trip). The window is short: stop
    # the process, and kill it only if it stopped inside it.
    proc = subprocess.Popen(submit, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120

    def in_window() -> bool:
        sent = redis_client.llen(QUEUE)
        return (
            sent >= 1_000
            and bool(redis_client.scard(unsent_key))
            and (sent < c.jobs.status("J").total)
        )

    while True:
        if in_window():
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)  # the stop lands
            if in_window():
                proc.send_signal(signal.SIGKILL)
                break
            proc.send_signal(signal.SIGCONT)
        assert proc.poll() is None, "submit ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.wait(timeout=10)
    published = redis_client.llen(QUEUE)
    assert 0 < published < n
    # The kill left requests the job knows but never published.
    assert redis_client.scard(unsent_key) > 0
    assert c.jobs.status("J").total > published

    done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 rejected" in done.stdout

    # Every request is in the queue exactly once: nothing skipped, nothing twice.
    counts = Counter(custom_id(m) for m in waiting(redis_client))
    assert set(counts) == {f"r{i}" for i in range(n)}
    assert max(counts.values()) == 1
    assert redis_client.scard(unsent_key) == 0
    status = c.jobs.status("J")
    assert status.total == n and status.counts["queued"] == n

    # A third run finds everything published and sends nothing.
    again = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
    assert f"0 queued, {n} skipped" in again.stdout, again.stdout + again.stderr
    assert redis_client.llen(QUEUE) == n


def test_edge_lost_delay_request_recovered(simulator, cluster, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(**SIM)
    # Silent for 3 s: sent again (the workers sweep every 1.5 s).
    c = cluster(sim, recover_after_seconds=3.0)
    sent = [complete.delay(body) for body in bodies(5, seed=4)]
    sent.append(complete.delay(bodies(1, seed=5)[0], custom_id="named", tenant="t"))
    # The broker loses two messages before any worker takes them.
    lost = {sent[2].id, sent[5].id}
    for raw in redis_client.lrange(QUEUE, 0, -1):
        if message_id(json.loads(raw)) in lost:
            assert redis_client.lrem(QUEUE, 1, raw) == 1
    assert redis_client.llen(QUEUE) == 4
    # The publisher kept them: the `.delay()` requests are known and recoverable.
    (adhoc,) = [j for j in c.jobs.store.job_ids() if j.startswith(f"{ADHOC_JOB}-")]
    keys = job_keys(c.settings.key_prefix, adhoc)
    assert redis_client.hexists(keys.pending, sent[2].id)
    assert redis_client.hexists(keys.pending, "named")

    # Workers only: no CLI process runs recovery.
    c.start_workers(2, pool="threads", concurrency=4)
    replies = [r.get(timeout=60) for r in sent]
    assert all(reply["choices"] for reply in replies)
    status = c.jobs.status(adhoc)
    assert status.counts["done"] == 6 and status.total == 6
    # Each request reached the provider once: the lost ones were sent once more, not twice.
    assert sim.stats()["requests_received"] == 6
    assert not redis_client.hlen(keys.pending)
    logs = "".join(w.log() for w in c.workers)
    assert "whose message was lost sent again" in logs
