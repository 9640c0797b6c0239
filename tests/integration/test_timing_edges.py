"""Timing and message-format edges of the task, with real workers, real Redis and the
simulator over HTTP: skewed clocks, late slots, headers from another version."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.cluster import ROOT
from support.waiting import wait_for
from support.workload import SIM, booked

from pipeline.local import LocalWorker
from tasks import complete
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def chat(text: str, max_tokens: int = 16) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def test_edge_headers_from_another_version_are_read_leniently(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # N17: a booking or a kept reply whose fields changed (a rolling upgrade) was
    # dead-lettered as internal_error, and the paid reply thrown away. Now a booking
    # with an extra field is used, one missing a field is asked for again, and a kept
    # reply is stored from its body and usage without calling again.
    sim = simulator(**SIM)
    c = cluster(sim)
    reservation = booked(c)
    newer = {**dataclasses.asdict(reservation), "slot_us": 1, "pool": "p"}
    older = {k: v for k, v in dataclasses.asdict(reservation).items() if k != "start_at"}
    older["id"] = "o" * 32
    body = {
        "id": "chatcmpl-kept",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "kept"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    kept = {"body": body, "status": 200, "cached": True}  # no headers, usage or id fields
    job = "n17"
    c.jobs.store.create(job)
    for cid, headers in (
        ("newer", {"quotaflow_booking": newer}),
        ("older", {"quotaflow_booking": older}),
        ("kept", {"quotaflow_reply": kept}),
    ):
        complete.apply_async(
            (chat(f"headers {cid}"),), {"custom_id": cid, "job_id": job},
            headers={**headers, "quotaflow_deferrals": 1},
        )  # fmt: skip
    (worker,) = c.start_workers(1)
    status = c.wait(job, timeout=60)
    assert status.counts["done"] == 3, worker.log()[-4000:]
    # The kept reply was not paid for again; the other two called once each.
    assert sim.stats()["requests_received"] == 2
    line = c.jobs.store.get_result(job, "kept")
    assert line is not None and "kept" in str(line)
    admitted = [a.reservation_id for a in current().gate.admissions("sim")]
    assert reservation.id in admitted and "o" * 32 not in admitted


def worker_on(c: Any, name: str, queues: str, extra_env: dict[str, str] | None = None) -> Any:
    """A worker of `c` that consumes `queues` only."""
    log_path = Path(tempfile.mkstemp(prefix=f"qf-{name}-", suffix=".log")[1])
    w = LocalWorker(
        c.settings, hostname=f"{name}-{os.getpid()}@%h", log_path=log_path, cwd=ROOT,
        concurrency=4, queues=queues, extra_env=extra_env,
    )  # fmt: skip
    c.workers.append(w)
    return w.wait_ready()


def lagging_clock(seconds: float) -> dict[str, str]:
    """The environment for a process whose wall clock runs `seconds` behind."""
    import libfaketime

    _, env = libfaketime.get_reload_information()
    return {**env, "FAKETIME": f"-{seconds:g}"}


def test_edge_a_worker_whose_clock_lags_still_uses_its_booked_slot(
    simulator, cluster, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # N8: a deferral's ETA is set on the publisher's clock and fired on the consumer's.
    # A consumer 0.8 s behind fired it 0.55 s after the slot (it woke 0.25 s early),
    # past the late tolerance: the slot was lost and the request booked again at the
    # back of the line. Waking a whole inline_seconds early and waiting the rest on the
    # Redis clock keeps the slot; the worker says at start that its clock is off.
    sim = simulator(**SIM)
    c = cluster(sim, booking_horizon_seconds=30.0, late_tolerance_seconds=0.3)
    gate = current().gate
    cap = int(c.settings.deployments[0].token_capacity)
    for _ in range(8):  # about 8 s of quota booked ahead
        assert gate.reserve("sim", tokens=cap).reservation is not None
    ahead = len(gate.admissions("sim"))
    job = "n8"
    c.jobs.store.create(job)
    for i in range(3):
        complete.apply_async((chat(f"lagging {i}"),), {"custom_id": f"r{i}", "job_id": job})
    # The consumer of the deferrals: the main queue, its clock 0.8 s behind. Started
    # first, so that a slow start on a loaded host cannot make the slots pass.
    late = worker_on(c, "lagging", c.settings.queue, lagging_clock(0.8))
    # The publisher of the deferrals: the deployment's queue only, on the true clock.
    worker_on(c, "publisher", f"{c.settings.queue}.sim")
    wait_for(lambda: len(gate.admissions("sim")) == ahead + 3, 30, "three deferrals")
    status = c.wait(job, timeout=60)
    assert status.counts["done"] == 3, late.log()[-4000:]
    assert "booking again" not in late.log(), late.log()[-4000:]
    assert len(gate.admissions("sim")) == ahead + 3  # no request booked twice
    assert sim.stats()["requests_received"] == 3
    assert "behind the Redis server's" in late.log()


class DrippingProvider:
    """An OpenAI-compatible endpoint that sends its reply a few bytes at a time, each
    within any per-read timeout, the whole over `seconds`."""

    def __init__(self, seconds: float) -> None:
        body = json.dumps({
            "id": "chatcmpl-drip", "object": "chat.completion", "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "slow"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }).encode()  # fmt: skip
        pieces = 8

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = -(-len(body) // pieces)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                    time.sleep(seconds / pieces)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_edge_a_provider_call_has_a_total_deadline(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # N7: the SDK's timeout is per read, so a reply sent a few bytes at a time kept a
    # call (and its task, on the threads pool) running past timeout_seconds and past
    # the task time limit. The call now ends as a timeout at timeout_seconds.
    drip = DrippingProvider(seconds=4.0)
    try:
        sim = simulator(**SIM)
        c = cluster(
            sim, max_retries=0,
            deployment={"base_url": drip.url + "/v1", "timeout_seconds": 1.0},
        )  # fmt: skip
        (worker,) = c.start_workers(1, pool="threads", concurrency=4)
        job = "n7"
        c.jobs.store.create(job)
        complete.apply_async((chat("drip"),), {"custom_id": "r", "job_id": job})
        status = c.wait(job, timeout=60)
        assert status.counts["failed"] == 1, worker.log()[-3000:]
        entry = json.loads(c.jobs.store.dead_letters(job)["r"])
        assert entry["error"]["code"] == "retries_exhausted"
        assert "timed out after 1s" in entry["error"]["message"]
    finally:
        drip.stop()


def test_edge_a_hard_time_limit_requeues_instead_of_acking() -> None:
    # N7: Celery acks a message whose task hit the hard time limit (prefork), with no
    # result and no dead letter. quotaflow's tasks requeue it; failures are acked after
    # their dead letter is written.
    assert complete.acks_late and complete.acks_on_timeout is False
    assert complete.acks_on_failure is True
