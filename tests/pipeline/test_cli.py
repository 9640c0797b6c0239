"""The `quotaflow` command, run as users run it: a subprocess, real Redis, real workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.cluster import sim_deployment

from budget import Gate
from pipeline.simulator import Simulator
from settings import DeploymentSettings
from tasks.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUOTAFLOW = Path(sys.executable).with_name("quotaflow")


def deployments(sim: Simulator, **overrides: Any) -> str:
    return json.dumps([sim_deployment(sim, **overrides)])


def cli_env(**values: str) -> dict[str, str]:
    """The environment without any QUOTAFLOW_* of the caller's, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
    env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(values)
    return env


def quotaflow(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUOTAFLOW), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def write_batch(path: Path, n: int, *, bad_line: int | None = None) -> list[str]:
    """`n` chat requests; line `bad_line` (1-based) is broken. Returns the valid ids."""
    ids = []
    with path.open("w") as fh:
        for i in range(1, n + 1):
            if i == bad_line:
                fh.write(
                    '{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions"\n'
                )
                continue
            cid = f"req-{i}"
            ids.append(cid)
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"request {i}: " + "word " * (5 * i)}],
                "max_tokens": 24,
            }
            line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(json.dumps(line) + "\n")
    return ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_end_to_end_with_a_private_redis(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # 500 tokens/s and a 1 s burst against a batch of ~1,600 tokens: the gate must wait.
    # The provider's bucket is larger by 2 s, more than a call can start late.
    sim = simulator(tpm=30_000, rpm=3_000, bucket_seconds=3.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20, bad_line=9)
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=deployments(sim), QUOTAFLOW_LATE_TOLERANCE_SECONDS="0.5")
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1", "--concurrency", "4")
    done = quotaflow(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr

    lines = read_jsonl(tmp_path / "out.jsonl")
    seen = [line["custom_id"] for line in lines]
    assert sorted(seen) == sorted([*ids, "line-9"])  # every request exactly once
    by_id = {line["custom_id"]: line for line in lines}
    for cid in ids:
        line = by_id[cid]
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert line["id"].startswith("batch_req_")
    bad = by_id["line-9"]
    assert bad["response"] is None
    assert bad["error"]["code"] == "invalid_request"
    assert "line 9" in bad["error"]["message"]
    assert "19 done" in done.stdout and "1 failed" in done.stdout
    assert sim.stats()["refused_429"] == 0
    assert sim.stats()["admitted"] == 19


def test_an_interrupted_run_keeps_what_is_done(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # 100 tokens/s: the batch (~2,000 tokens) takes ~18 s; SIGTERM lands in the middle.
    sim = simulator(tpm=6_000, rpm=3_000, bucket_seconds=3.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20)
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=deployments(sim, burst_seconds=2.0))
    proc = subprocess.Popen(
        [str(QUOTAFLOW), "run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["admitted"] < 3:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err

    finished = read_jsonl(tmp_path / "out.jsonl")
    remaining = read_jsonl(tmp_path / "out.remaining.jsonl")
    done_ids = {line["custom_id"] for line in finished}
    rest_ids = {line["custom_id"] for line in remaining}
    assert len(finished) >= 3 and remaining
    assert not done_ids & rest_ids
    assert done_ids | rest_ids == set(ids)  # nothing lost
    # Everything the provider answered is in the output.
    assert len(finished) == sim.stats()["admitted"]
    assert all(line["body"]["messages"] for line in remaining)
    assert "resume with: quotaflow run out.remaining.jsonl" in out


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
    done = quotaflow("budget", cwd=tmp_path, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "gpt4o" in line)
    cells = [c.strip() for c in row.strip(" │|").split("│")]
    assert cells[0] == "gpt4o"
    assert cells[1].endswith("/ 10,000")  # burst: 60,000 tokens/min x 10 s
    assert cells[2].endswith("/ 100")
    assert float(cells[3].rstrip("s")) > 0  # the cooldown pushes the bucket ahead
    assert 15 < float(cells[4].rstrip("s")) <= 30  # seconds left of the 30 s cooldown
    assert cells[5:8] == ["7", "2", "5/0/0/0"]
    assert cells[8].endswith("%")
    assert "quotaflow: 0 waiting" in done.stdout


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
    ],
    ids=["missing-file", "no-redis", "unreachable-redis", "bad-setting", "unknown-deployment"],
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
