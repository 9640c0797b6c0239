"""The `quotaflow` command, run as users run it: a subprocess, real Redis, real workers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from support.cli import (
    NO_KEY,
    cli_env,
    quotaflow,
    read_jsonl,
    write_batch,
)
from support.cluster import sim_deployment

from budget import Gate
from settings import DeploymentSettings, settings_env
from simulator import Simulator
from tasks.jobstore import JobStore
from tasks.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def deployments(sim: Simulator, **overrides: Any) -> str:
    return json.dumps([sim_deployment(sim, **overrides)])


def test_run_end_to_end_with_a_private_redis(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # 500 tokens/s and a 1 s burst against a batch of ~1,600 tokens: the gate must wait.
    # The provider's bucket is larger by 2 s, more than a call can start late.
    sim = simulator(tpm=30_000, rpm=3_000, bucket_seconds=3.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20, bad_line=9)
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=deployments(sim), QUOTAFLOW_LATE_TOLERANCE_SECONDS="0.5")
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1", "--concurrency", "4")
    done = quotaflow(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr  # one request failed
    assert "1 requests failed: their error lines are in out.jsonl" in done.stderr
    assert "Traceback" not in done.stderr

    lines = read_jsonl(tmp_path / "out.jsonl")
    seen = [line["custom_id"] for line in lines]
    assert sorted(seen) == sorted([*ids, "#line-9"])  # every request exactly once
    by_id = {line["custom_id"]: line for line in lines}
    for cid in ids:
        line = by_id[cid]
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert line["id"].startswith("batch_req_")
    bad = by_id["#line-9"]
    assert bad["response"] is None
    assert bad["error"]["code"] == "invalid_request"
    assert "line 9" in bad["error"]["message"]
    assert "19 done" in done.stdout and "1 failed" in done.stdout
    assert sim.stats()["refused_429"] == 0
    assert sim.stats()["admitted"] == 19


def test_budget_shows_each_deployment(tmp_path: Path, redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    dep = DeploymentSettings(
        name="gpt4o", model="gpt-4o", kind="compatible", base_url="http://127.0.0.1:9/v1",
        tpm=60_000, rpm=600, burst_seconds=10.0,
    )  # fmt: skip
    gate = Gate(redis_client, [dep])
    assert gate.reserve("gpt4o", tokens=4_000).reservation is not None
    gate.cooldown("gpt4o", 30.0)
    Metrics(redis_client).add(
        [
            ("deferrals_total", {"deployment": "gpt4o"}, 7),
            ("provider_responses_total", {"deployment": "gpt4o", "status": "429"}, 2),
            ("reservations_total", {"deployment": "gpt4o", "outcome": "granted"}, 5),
        ]
    )
    env = cli_env(
        QUOTAFLOW_REDIS_URL=redis_server.url,
        QUOTAFLOW_DEPLOYMENTS=json.dumps([dep.model_dump(mode="json", exclude_none=True)]),
    )
    done = quotaflow("budget", cwd=tmp_path, env={**env, "COLUMNS": "80"}, timeout=30)
    assert done.returncode == 0, done.stderr
    now, rates, last = [
        re.split(r"\s{2,}", line.strip())
        for line in done.stdout.splitlines()
        if line.strip().startswith("gpt4o")
    ]
    assert now[1].endswith("/ 10,000")  # burst: 60,000 tokens/min x 10 s
    assert now[2].endswith("/ 100")
    assert float(now[3].rstrip("s")) > 0  # the cooldown pushes the bucket ahead
    assert 15 < float(now[4].rstrip("s")) <= 30  # seconds left of the 30 s cooldown
    assert now[5].endswith("%")
    assert rates[1:3] == ["60,000", "0"]
    assert 50_000 < int(rates[3].replace(",", "")) < 60_000  # the 429 cut the rate
    assert last[1:] == ["7", "2", "5", "0", "0", "0"]
    assert "quotaflow: 0 waiting" in done.stdout
    # At 80 columns every header is whole (no "…").
    assert "…" not in done.stdout
    for header in ("tokens free /", "requests free /", "booked ahead", "cooldown", "deferrals"):
        assert header in done.stdout


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("run", "missing.jsonl", "-o", "out.jsonl"), {}, "batch file not found: missing.jsonl"),
        (("submit", "batch.jsonl"), {}, "QUOTAFLOW_REDIS_URL is not set"),
        (
            ("status",),
            {"QUOTAFLOW_REDIS_URL": "redis://:hunter2secret@127.0.0.1:1/0"},
            "Redis at redis://:***@127.0.0.1:1/0 failed",
        ),
        (("status",), {"QUOTAFLOW_REDIS_URL": "http://example"}, "redis_url:"),
        (
            ("run", "batch.jsonl", "-o", "out.jsonl", "--deployment", "nope"),
            {},
            "unknown deployment 'nope'",
        ),
        (("run", "batch.jsonl", "-o", "."), {}, "--output . is a directory"),
        (("metrics", "--port", "99999"), {}, "--port must be between 1 and 65535, got 99999"),
        (("metrics", "--port", "-1"), {}, "--port must be between 1 and 65535, got -1"),
        (
            ("run", "batch.jsonl", "-o", "out.jsonl", "--job-id", "bad job/id*"),
            {},
            "invalid job id 'bad job/id*': use 1-100 letters, digits",
        ),
        (("submit", "batch.jsonl", "--job-id", "{x}"), {}, "invalid job id '{x}'"),
        (
            ("run", "batch.jsonl", "-o", "out.jsonl"),
            {"QUOTAFLOW_DEPLOYMENTS": json.dumps([NO_KEY])},
            "deployments: 'gpt4o' (kind 'openai') has no api_key",
        ),
    ],
    ids=[
        "missing-file",
        "no-redis",
        "unreachable-redis",
        "bad-setting",
        "unknown-deployment",
        "output-is-a-directory",
        "port-too-big",
        "port-negative",
        "bad-job-id",
        "job-id-with-braces",
        "openai-without-key",
    ],  # fmt: skip
)
def test_user_errors_are_one_red_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    write_batch(tmp_path / "batch.jsonl", 2)
    done = quotaflow(*args, cwd=tmp_path, env=cli_env(**env), timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "hunter2secret" not in done.stderr
    assert not list(tmp_path.glob(".*.partial"))  # refused before any work


def test_help_says_what_the_commands_do(tmp_path: Path) -> None:
    env = cli_env(COLUMNS="200")
    sim = quotaflow("simulate", "--help", cwd=tmp_path, env=env, timeout=30)
    assert sim.stdout.startswith("usage: quotaflow simulate ")
    assert "0 picks a free one (default 8765)" in sim.stdout
    run = quotaflow("run", "--help", cwd=tmp_path, env=env, timeout=30)
    assert "worker pool: prefork, threads, gevent, eventlet, solo" in run.stdout
    # Each paragraph of the description is one line, as written.
    assert "Ctrl-C stops and writes what is done." in run.stdout


def test_status_lists_jobs_made_with_delay_and_says_what_is_known(
    tmp_path: Path, simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    from tasks import complete

    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim)
    c.start_workers(1, concurrency=2)
    body = {"model": "gpt-4o-mini", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
    assert complete.delay(body, job_id="my-job", custom_id="one").get(timeout=60)["choices"]
    JobStore(c.jobs.store.client).create("20261130-072257-f7db68")  # as `submit` makes one
    env = cli_env(COLUMNS="80", **settings_env(c.settings))
    listing = quotaflow("status", cwd=tmp_path, env=env, timeout=30)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line.strip()}
    assert rows["my-job"][-5:-1] == ["1", "1", "0", "0"]  # total, done, failed, pending
    assert "20261130-072257-f7db68" in rows  # a whole job id, at 80 columns
    one = quotaflow("status", "my-job", cwd=tmp_path, env=env, timeout=30)
    assert one.returncode == 0, one.stderr
    assert "1 done" in one.stdout
    assert "estimated at submit" not in one.stdout  # nothing was estimated at submit
    assert "prompt +" in one.stdout


def test_recover_says_what_it_waits_for(tmp_path: Path, redis_server, redis_client) -> None:  # type: ignore[no-untyped-def]
    write_batch(tmp_path / "batch.jsonl", 2)
    deployment = {"name": "sim", "kind": "compatible", "model": "gpt-4o-mini",
                  "base_url": "http://127.0.0.1:9/v1", "tpm": 60_000, "rpm": 600}  # fmt: skip
    env = cli_env(
        QUOTAFLOW_REDIS_URL=redis_server.url,
        QUOTAFLOW_RECOVER_AFTER_SECONDS="300",
        QUOTAFLOW_DEPLOYMENTS=json.dumps([deployment]),
    )
    # No worker: the requests wait in the queue, just submitted.
    submitted = quotaflow("submit", "batch.jsonl", "--job-id", "j1", cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert "follow it with: quotaflow status j1 --watch" in submitted.stdout
    done = quotaflow("recover", "j1", cwd=tmp_path, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert out.startswith("job j1: 0 lost requests sent again; 2 moved less than 300s ago")
    assert "(recover_after_seconds)" in out
    found = re.search(r"could qualify in (\d+)s", out)
    assert found is not None and 290 <= int(found.group(1)) <= 300, out
    assert "run `quotaflow recover j1` then" in out


def test_follow_up_commands_are_shell_quoted() -> None:
    from pipeline.cli.options import cmd

    assert cmd("run", Path("my batch.jsonl"), "-o", "out.jsonl") == (
        "quotaflow run 'my batch.jsonl' -o out.jsonl"
    )


def test_the_live_line_counts_the_last_minute_not_the_first_burst() -> None:
    from pipeline.views import RecentTokens

    recent = RecentTokens(start=0.0, window=60.0)
    assert recent.add(5.0, 29_000) == (29_000, 5.0)  # the burst: 29,000 in 5 s, not a rate
    for t in range(6, 125):
        tokens, seconds = recent.add(float(t), 29_000 + 500 * (t - 5))
    assert seconds == 60.0
    assert tokens == 30_000  # 500 tokens/s over the last minute
