"""A request body is data, wherever it comes in: SDK call options among its keys are
refused at submit (the line, by number; the other lines run), at `.delay()` (one error
naming the key), and by the worker for a message that skipped both (dead-lettered
before the gate, never sent). Real workers, Redis, the CLI and the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from support.cli import cli_env, quotaflow, read_jsonl
from support.cluster import sim_deployment

from budget import InvalidRequest
from tasks import complete, embed
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HEADERS = {
    "OpenAI-Organization": "org-someone-else",
    "OpenAI-Project": "proj-other",
    "X-Victim": "1",
}
#: Header names a body must never set on the call.
FORGED = {"openai-organization", "openai-project", "x-victim"}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        **extra,
    }


def forged_requests(sim: Any) -> list[dict[str, Any]]:
    requests = sim.stats()["requests"]
    return [r for r in requests if FORGED & set(r["headers"]) or "api-version" in r["path"]]


def test_edge_call_options_are_refused_at_delay(simulator, cluster, redis_client) -> None:  # type: ignore[no-untyped-def]
    cluster(simulator())
    with pytest.raises(InvalidRequest, match="body key 'extra_headers' is not a request field"):
        complete.delay(chat("hi", extra_headers=HEADERS), custom_id="r1")
    with pytest.raises(InvalidRequest, match="'extra_query'"):
        embed.delay({"input": "hi", "extra_query": {"api-version": "1999-01-01"}})
    with pytest.raises(InvalidRequest, match="'timeout'"):
        complete.apply_async((chat("hi", timeout=0.001),), {"custom_id": "r2"})
    queued = [k for k in redis_client.keys("quotaflow*") if redis_client.type(k) == b"list"]
    assert queued == []  # nothing was published


def test_edge_a_message_with_call_options_is_dead_lettered_unsent(  # type: ignore[no-untyped-def]
    simulator, cluster, redis_server
) -> None:
    # A publisher without quotaflow's checks (another Celery app, an old client) sends
    # a body with extra_headers: the worker refuses it before the gate, and nothing
    # reaches the provider.
    sim = simulator()
    c = cluster(sim)
    c.start_workers(1)
    job = "forged"
    c.jobs.store.create(job)
    plain = Celery("plain", broker=redis_server.url, set_as_current=False)
    try:
        for cid, body in (
            ("headers", chat("hi", extra_headers=HEADERS)),
            ("query", chat("hi", extra_query={"api-version": "1999-01-01"})),
        ):
            plain.send_task(
                "quotaflow.complete", args=[body], kwargs={"custom_id": cid, "job_id": job},
                queue=c.settings.queue,
            )  # fmt: skip
    finally:
        plain.close()
    status = c.wait(job, timeout=60)
    assert status.counts["failed"] == 2
    for cid, key in (("headers", "extra_headers"), ("query", "extra_query")):
        entry = json.loads(c.jobs.store.dead_letters(job)[cid])
        assert entry["error"]["code"] == "invalid_request"
        assert f"body key '{key}' is not a request field" in entry["error"]["message"]
    assert sim.stats()["requests_received"] == 0 and forged_requests(sim) == []
    assert current().gate.admissions("sim") == []  # refused before the gate


def test_edge_a_batch_line_with_call_options_is_refused_at_submit(  # type: ignore[no-untyped-def]
    tmp_path: Path, simulator
) -> None:
    sim = simulator(tpm=60_000, rpm=3_000)
    lines = [
        {"custom_id": "ok-1", "body": chat("one")},
        {"custom_id": "forged", "body": chat("two", extra_headers=HEADERS)},
        {"custom_id": "ok-3", "body": chat("three", top_k=5)},  # unknown fields are data
    ]
    (tmp_path / "batch.jsonl").write_text(
        "".join(
            json.dumps({**line, "method": "POST", "url": "/v1/chat/completions"}) + "\n"
            for line in lines
        )
    )
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=json.dumps([sim_deployment(sim)]))
    done = quotaflow(
        "run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1", cwd=tmp_path, env=env
    )
    assert done.returncode == 1, done.stdout + done.stderr  # a request failed: the forged one
    assert "line 2: body key 'extra_headers' is not a request field" in done.stdout + done.stderr
    out = {line["custom_id"]: line for line in read_jsonl(tmp_path / "out.jsonl")}
    assert out["ok-1"]["error"] is None and out["ok-3"]["error"] is None
    assert out["forged"]["error"]["code"] == "invalid_request"
    assert "line 2: body key 'extra_headers'" in out["forged"]["error"]["message"]
    assert sim.stats()["requests_received"] == 2 and forged_requests(sim) == []
