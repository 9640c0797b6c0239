"""A new user's small mistakes with the `quotaflow` command: each gets one line that
says what to fix, and nothing is sent or written."""

from __future__ import annotations

import io
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from support.cli import cli_env, quotaflow, write_batch

from pipeline import app
from pipeline.app import configure
from pipeline.batchfile import read_batch
from pipeline.redis_server import free_port
from pipeline.views import budget_view
from settings import Settings, settings_env
from tasks.runtime import current

pytestmark = pytest.mark.timeout(120)


def test_edge_a_pool_that_is_not_installed_is_refused_in_one_line(tmp_path: Path) -> None:
    write_batch(tmp_path / "batch.jsonl", 2)
    done = quotaflow(
        "run", "batch.jsonl", "-o", "out.jsonl", "--pool", "gevent", cwd=tmp_path, env=cli_env()
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--pool gevent needs the gevent package" in line and "--pool threads" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_edge_submit_of_a_directory_says_it_is_one(tmp_path: Path) -> None:
    (tmp_path / "batches").mkdir()
    for args in (("submit", "batches"), ("run", "batches", "-o", "out.jsonl")):
        done = quotaflow(*args, cwd=tmp_path, env=cli_env(QUOTAFLOW_REDIS_URL="redis://x:1/0"))
        assert done.returncode == 2
        assert "batches is a directory: give the batch file in it" in done.stderr
        assert "not found" not in done.stderr


def test_edge_a_cut_off_json_line_is_reported_where_it_ends(tmp_path: Path) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [], "max_tokens": 5}}  # fmt: skip
    whole = json.dumps(line)
    path = tmp_path / "b.jsonl"
    broken = whole.replace('"POST"', '"POST" x', 1)
    path.write_text(f"{whole[:-2]}\n{whole[:20]}\n{broken}\n")
    errors = [str(e) for e in read_batch(path)]
    end = len(whole) - 2
    assert errors[0] == (
        f"line 1: not valid JSON: the line ends early, after column {end} "
        "(Expecting ',' delimiter); cut off?"
    )
    assert errors[1].startswith("line 2: not valid JSON: the line ends early, after column 20")
    assert "a string opened at column 20 is never closed" in errors[1]
    # An error inside the line gives its real column.
    column = broken.index(" x") + 2
    assert errors[2] == f"line 3: not valid JSON: Expecting ',' delimiter at column {column}"


def test_edge_a_line_without_a_body_says_so_in_json_words(tmp_path: Path) -> None:
    # Not "body must be a JSON object, got NoneType": the user wrote JSON, not Python.
    head = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    path = tmp_path / "b.jsonl"
    rows = [head, {**head, "custom_id": "b", "body": None}, {**head, "custom_id": "c", "body": [1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    errors = [str(e) for e in read_batch(path)]
    assert errors == [
        'line 1: body is missing: give the request as "body": {...}',
        "line 2: body must be a JSON object, got null",
        "line 3: body must be a JSON object, got an array",
        "line 4: must be a JSON object, got an array",
    ]


def test_edge_version_is_printed(tmp_path: Path) -> None:
    done = quotaflow("--version", cwd=tmp_path, env=cli_env())
    assert done.returncode == 0
    assert done.stdout.strip() == f"quotaflow {metadata.version('quotaflow')}"


def test_edge_the_budget_footnote_says_what_its_counts_span(
    redis_server: Any, redis_client: Any
) -> None:
    configure(app, Settings(redis_url=redis_server.url))
    out = Console(width=80, record=True, file=io.StringIO())
    minutes = {time.strftime("%H:%M", time.localtime((time.time() // 60 - 1) * 60))}
    out.print(budget_view(current()))
    minutes.add(time.strftime("%H:%M", time.localtime((time.time() // 60 - 1) * 60)))
    text = out.export_text()
    # The counts start at the previous clock minute, and the title says so.
    assert any(f"since {m}:00*" in text for m in minutes), text
    footnote = " ".join(text[text.index("* the previous") :].split())
    assert footnote.startswith(
        "* the previous clock minute and this one so far (counts are kept per minute); "
        "granted, booked, wait, never: the gate's answers"
    ), footnote
    assert "..." not in text
    # Whole, footnotes and queue line included, in a 24-line terminal (under `--watch`,
    # Live cuts what does not fit; it prints the footnotes once, above).
    assert len(text.rstrip().splitlines()) <= 24, text
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(budget_view(current(), notes=False))
    assert "* the previous" not in out.export_text()


def test_edge_run_says_at_once_when_nothing_answers_at_the_deployment(tmp_path: Path) -> None:
    # The simulator not started (a README reader's first slip): every call fails to
    # connect and is retried for minutes while the run shows only "retrying".
    port = free_port()  # nothing listens there
    dep = {"name": "local", "kind": "compatible", "model": "gpt-4o-mini",
           "base_url": f"http://127.0.0.1:{port}/v1", "tpm": 30_000, "rpm": 600}  # fmt: skip
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=json.dumps([dep]), QUOTAFLOW_MAX_RETRIES="1",
                  QUOTAFLOW_BACKOFF_CAP_SECONDS="1")  # fmt: skip
    write_batch(tmp_path / "b.jsonl", 1)
    args = ("run", "b.jsonl", "-o", "out.jsonl", "--workers", "1", "--concurrency", "1")
    done = quotaflow(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    stderr = " ".join(done.stderr.split())
    assert (
        f"warning: nothing answers at http://127.0.0.1:{port}/v1 (deployment 'local': "
        "connection refused): start the server first (`quotaflow simulate` for the simulator)"
    ) in stderr, stderr
    (line,) = (json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines())
    assert f"connection to http://127.0.0.1:{port}/v1 failed" in line["error"]["message"]


def test_edge_replay_of_a_job_without_failures_says_there_is_nothing_to_replay(
    tmp_path: Path, simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    # Not "0 requests resubmitted, 0 not replayable (invalid input lines)".
    c = cluster(simulator())
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    report = c.jobs.submit_bodies([{**body, "max_tokens": 5}])
    env = cli_env(**settings_env(c.settings))
    done = quotaflow("replay", report.job_id, cwd=tmp_path, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip() == f"job {report.job_id}: nothing to replay (it has no failed requests)"
    )
