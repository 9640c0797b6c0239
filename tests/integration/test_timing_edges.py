"""Timing and message-format edges of the task, with real workers, real Redis and the
simulator over HTTP: skewed clocks, late slots, headers from another version."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support.workload import SIM

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
    gate = current().gate
    cap = int(c.settings.deployments[0].token_capacity)
    gate.reserve("sim", tokens=cap)  # empty: the next reservation is booked
    booked = gate.reserve("sim", tokens=100)
    assert booked.reservation is not None
    newer = {**dataclasses.asdict(booked.reservation), "slot_us": 1, "pool": "p"}
    older = {k: v for k, v in dataclasses.asdict(booked.reservation).items() if k != "start_at"}
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
    admitted = [a.reservation_id for a in gate.admissions("sim")]
    assert booked.reservation.id in admitted and "o" * 32 not in admitted
