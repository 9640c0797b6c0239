"""Submitting jobs: every bad input gets one clear error; valid lines still run."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import app
from pipeline.app import configure
from pipeline.batchfile import BatchFileError, read_batch
from pipeline.jobs import Jobs
from settings import DeploymentSettings, Settings, SettingsError
from tasks.runtime import current

DEP = DeploymentSettings(
    name="small",
    model="gpt-4o-mini",
    kind="compatible",
    base_url="http://127.0.0.1:9/v1",
    tpm=60_000,
    rpm=600,
    burst_seconds=10,
    context_window=4_096,
)
EMBED = DEP.model_copy(update={"name": "embed", "model": "text-embedding-3-small"})


@pytest.fixture
def jobs(redis_server: Any, redis_client: redis.Redis) -> Iterator[Jobs]:
    settings = Settings(redis_url=redis_server.url, deployments=[DEP, EMBED])
    configure(app, settings)
    yield Jobs(settings, current().jobs)


def chat(content: str = "hello", max_tokens: int = 10) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }


def line(cid: str, body: Any, url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


#: Where new chat requests for DEP wait (embeddings wait in `quotaflow.embed`).
QUEUE = "quotaflow.small"


def queued(client: redis.Redis) -> int:
    queues = ("quotaflow", "quotaflow.retry", QUEUE, "quotaflow.embed")
    return sum(int(client.llen(q)) for q in queues)


def test_a_mixed_file_runs_its_valid_lines(
    jobs: Jobs, tmp_path: Path, redis_client: redis.Redis
) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                line("ok-1", chat()),
                "{not json",
                json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": chat()}),
                line("bad-url", chat(), url="/v1/completions"),
                line("bad-body", "text"),
                line("no-messages", {"model": "gpt-4o-mini", "max_tokens": 5}),
                line("bad-max", chat(max_tokens=-3)),
                line("too-long", chat("word " * 5000, max_tokens=10)),
                line("ok-1", chat()),
                "",
                line("ok-2", {"model": "text-embedding-3-small", "input": "hi"}, "/v1/embeddings"),
                line("no-model", {**chat(), "model": "gpt-nope"}),
            ]
        )
        + "\n"
    )
    report = jobs.submit_file(path)
    assert report.submitted == 2 and queued(redis_client) == 2
    errors = {e.line: str(e) for e in report.rejected}
    assert errors[2].startswith("line 2: not valid JSON")
    assert "custom_id is missing" in errors[3]
    assert "url must be one of" in errors[4] and "/v1/completions" in errors[4]
    assert "body must be a JSON object, got a string" in errors[5]
    assert "messages" in errors[6]
    assert "max_tokens" in errors[7]
    assert "context window" in errors[8]
    assert "repeats an earlier line" in errors[9]
    assert "no deployment serves model 'gpt-nope'" in errors[12]
    assert "'text-embedding-3-small' (deployment 'embed')" in errors[12]
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8, 9, 12}
    status = jobs.status(report.job_id)
    assert status.total == 2 + len(report.rejected)
    assert status.counts["failed"] == len(report.rejected)
    out = {line["custom_id"]: line for line in jobs.output_lines(report.job_id)}
    assert out["#line-2"]["error"]["message"].startswith("line 2: not valid JSON")


def test_a_request_bigger_than_the_burst_is_refused_at_submit(jobs: Jobs) -> None:
    big = DeploymentSettings(**{**DEP.model_dump(), "burst_seconds": 1.0, "api_key": None})
    jobs.settings = Settings(redis_url=jobs.settings.redis_url, deployments=[big])
    report = jobs.submit_bodies([chat(max_tokens=2_000), chat()])
    assert report.submitted == 1
    (err,) = report.rejected
    assert "admits at most 1000 tokens at once" in str(err) and "line 1" in str(err)


def test_unknown_deployment_fails_before_anything_is_queued(
    jobs: Jobs, redis_client: redis.Redis
) -> None:
    with pytest.raises(SettingsError, match="unknown deployment 'nope'; configured: small"):
        jobs.submit_bodies([chat()], deployment="nope")
    assert queued(redis_client) == 0


def test_empty_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BatchFileError, match="is empty"):
        list(read_batch(empty))
    with pytest.raises(BatchFileError, match="not found"):
        list(read_batch(tmp_path / "nope.jsonl"))
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BatchFileError, match="not UTF-8"):
        list(read_batch(binary))


def test_resubmitting_a_job_skips_what_it_has(jobs: Jobs, redis_client: redis.Redis) -> None:
    first = jobs.submit_bodies([chat(), chat()], job_id="again")
    second = jobs.submit_bodies([chat(), chat(), chat()], job_id="again")
    assert (first.submitted, second.submitted, second.skipped) == (2, 1, 2)
    assert queued(redis_client) == 3
    assert jobs.status("again").total == 3


def test_status_of_an_unknown_job_says_how_to_find_one(jobs: Jobs) -> None:
    with pytest.raises(SettingsError, match="no job 'ghost'"):
        jobs.status("ghost")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_huge_batch_streams_without_holding_it_in_memory(
    jobs: Jobs, tmp_path: Path, redis_client: redis.Redis
) -> None:
    path = tmp_path / "huge.jsonl"
    n = 100_000
    with path.open("w") as fh:
        for i in range(n):
            fh.write(line(f"r{i}", chat(f"request number {i} " + "lorem ipsum " * 20)) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    report = jobs.submit_file(path)
    elapsed = time.monotonic() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert report.submitted == n and queued(redis_client) == n
    print(
        f"\n100k lines submitted in {elapsed:.1f}s ({n / elapsed:,.0f} requests/s); "
        f"peak RSS grew {grown_mb:.0f} MB"
    )
    # The file is ~40 MB of JSON: streaming keeps growth well below holding it all.
    assert grown_mb < 150


def test_recover_resends_only_the_message_the_broker_lost(
    jobs: Jobs, redis_client: redis.Redis
) -> None:
    report = jobs.submit_bodies([chat("a"), chat("b"), chat("c")], job_id="lossy")
    assert queued(redis_client) == 3
    # Everything is in the queue: nothing is lost, however old.
    assert jobs.recover("lossy", older_than=0) == 0
    # The broker loses one message (popped by a consumer that then died with Redis).
    lost = json.loads(redis_client.rpop(QUEUE))
    held = redis_client.rpop(QUEUE)
    redis_client.hset("unacked", "tag-1", json.dumps([json.loads(held), "", QUEUE]))
    assert jobs.recover("lossy", older_than=0) == 1
    assert queued(redis_client) == 2
    resent = json.loads(redis_client.lindex(QUEUE, 0))
    # Under its own task id: an AsyncResult the caller holds still resolves.
    assert resent["headers"]["id"] == lost["headers"]["id"]
    assert resent["headers"]["kwargsrepr"] == lost["headers"]["kwargsrepr"]
    # Nothing is lost any more; and a young silence is never taken for a loss.
    assert jobs.recover("lossy", older_than=0) == 0
    assert jobs.recover(report.job_id) == 0


def test_edge_a_refused_line_never_takes_a_real_custom_id(jobs: Jobs, tmp_path: Path) -> None:
    # N19: line 2 cannot be read, and a later line's own custom_id is "line-2"; line 5
    # is refused with its custom_id "b", which a later valid line repeats.
    path = tmp_path / "ids.jsonl"
    path.write_text(
        "\n".join(
            [
                line("a", chat()),
                "{not json",
                line("line-2", chat()),
                line("#line-9", chat()),
                line("b", chat(), url="/v1/completions"),
                line("b", chat()),
            ]
        )
        + "\n"
    )
    report = jobs.submit_file(path)
    assert report.submitted == 2 and report.skipped == 0
    errors = {e.line: str(e) for e in report.rejected}
    assert set(errors) == {2, 4, 5, 6}
    assert "'#line-9' is reserved" in errors[4] and "repeats an earlier line" in errors[6]
    status = jobs.status(report.job_id)
    assert status.total == 6 and status.counts["failed"] == 4
    out = {line["custom_id"]: line for line in jobs.output_lines(report.job_id)}
    assert "line-2" not in out  # queued, not failed: it runs
    assert out["#line-2"]["error"]["message"].startswith("line 2: not valid JSON")
    assert out["#line-4"]["error"]["message"].startswith("line 4: custom_id '#line-9'")
    assert out["b"]["error"]["message"].startswith("line 5: url must be one of")
    assert "line 6" in out["#line-6"]["error"]["message"]
