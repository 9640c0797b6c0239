"""`quotaflow run` and its files: nothing replaced that should not be, and the same
command run again resumes instead of paying again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import QUOTAFLOW, cli_env, quotaflow, read_jsonl, write_batch
from support.cluster import sim_deployment

from simulator import Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _env(sim: Simulator, **overrides: Any) -> dict[str, str]:
    return cli_env(QUOTAFLOW_DEPLOYMENTS=json.dumps([sim_deployment(sim, **overrides)]))


def _interrupt_after(args: list[str], cwd: Path, env: dict[str, str], sim: Simulator,
                     admitted: int) -> tuple[int, str]:  # fmt: skip
    """Start `quotaflow *args`, SIGTERM it once the provider admitted `admitted` calls."""
    proc = subprocess.Popen(
        [str(QUOTAFLOW), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["admitted"] < admitted:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out + err


def test_edge_the_same_run_after_an_interrupt_resumes_and_pays_nothing_twice(
    tmp_path: Path, simulator
) -> None:  # type: ignore[no-untyped-def]
    # 100 tokens/s: the batch (~2,000 tokens) takes ~18 s; SIGTERM lands in the middle.
    sim = simulator(tpm=6_000, rpm=3_000, bucket_seconds=3.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20)
    env = _env(sim, burst_seconds=2.0)
    args = ["run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1"]
    code, out = _interrupt_after(args, tmp_path, env, sim, admitted=3)
    assert code == 130, out
    assert "Traceback" not in out
    first = read_jsonl(tmp_path / "out.jsonl")
    assert len(first) >= 3
    assert len(first) == sim.stats()["admitted"]  # everything answered is in the output
    assert "resume with the same command: quotaflow run batch.jsonl -o out.jsonl" in out

    again = quotaflow(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming: {len(first)} results in out.jsonl are kept" in again.stdout
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)  # each exactly once
    assert all(line["error"] is None for line in lines)
    assert lines[: len(first)] == first  # the earlier output, kept as it was
    assert sim.stats()["admitted"] == len(ids)  # no request paid twice
    assert not list(tmp_path.glob("*.remaining.jsonl"))


def test_edge_a_finished_run_run_again_ends_at_once_and_sends_nothing(
    tmp_path: Path, simulator
) -> None:  # type: ignore[no-untyped-def]
    # The README's command typed twice: the second found nothing to send and waited for
    # ever on a job that was never made (10 minutes, until Ctrl-C).
    sim = simulator(tpm=600_000, rpm=30_000)
    ids = write_batch(tmp_path / "batch.jsonl", 3)
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1")
    first = quotaflow(*args, cwd=tmp_path, env=_env(sim))
    assert first.returncode == 0, first.stdout + first.stderr
    before = (tmp_path / "out.jsonl").read_bytes()
    again = quotaflow(*args, cwd=tmp_path, env=_env(sim), timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing left to send" in again.stdout, again.stdout
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert sim.stats()["admitted"] == len(ids)


def test_edge_output_naming_the_batch_is_refused(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    write_batch(tmp_path / "batch.jsonl", 3)
    before = (tmp_path / "batch.jsonl").read_bytes()
    for output in ("batch.jsonl", "./batch.jsonl", str(tmp_path / "batch.jsonl")):
        for extra in ((), ("--force",)):
            done = quotaflow("run", "batch.jsonl", "-o", output, *extra, cwd=tmp_path,
                             env=_env(sim), timeout=30)  # fmt: skip
            assert done.returncode == 2, done.stdout + done.stderr
            assert "is the batch file itself" in done.stderr
    assert (tmp_path / "batch.jsonl").read_bytes() == before
    assert sim.stats()["admitted"] == 0


def test_edge_an_output_of_something_else_is_kept_unless_forced(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    ids = write_batch(tmp_path / "batch.jsonl", 3)
    other = tmp_path / "notes.jsonl"
    other.write_text('{"custom_id": "someone-else", "note": "keep me"}\n')
    done = quotaflow("run", "batch.jsonl", "-o", "notes.jsonl", cwd=tmp_path, env=_env(sim),
                     timeout=30)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.jsonl exists and is not an output of batch.jsonl" in lines[0]
    assert "--force" in lines[0]
    assert other.read_text() == '{"custom_id": "someone-else", "note": "keep me"}\n'
    assert sim.stats()["admitted"] == 0

    forced = quotaflow("run", "batch.jsonl", "-o", "notes.jsonl", "--force", cwd=tmp_path,
                       env=_env(sim), timeout=90)  # fmt: skip
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert sorted(line["custom_id"] for line in read_jsonl(other)) == sorted(ids)


def test_edge_a_run_with_a_refused_line_runs_again_as_a_resume(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # A line refused at submit (here: cut-off JSON, so no custom_id of its own) has an
    # output line under `#line-N`: the output is still this batch's, and the same
    # command resumes it instead of refusing to write over "something else".
    sim = simulator(tpm=600_000, rpm=30_000)
    ids = write_batch(tmp_path / "batch.jsonl", 4, bad_line=2)
    args = ["run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1"]
    first = quotaflow(*args, cwd=tmp_path, env=_env(sim), timeout=90)
    assert first.returncode == 1, first.stdout + first.stderr  # one request failed
    refused = [line for line in read_jsonl(tmp_path / "out.jsonl") if line["error"]]
    assert [line["custom_id"] for line in refused] == ["#line-2"]

    again = quotaflow(*args, cwd=tmp_path, env=_env(sim), timeout=90)
    assert "is not an output of" not in again.stderr, again.stderr
    assert f"resuming: {len(ids)} results in out.jsonl are kept" in again.stdout, again.stdout
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in lines) == sorted([*ids, "#line-2"])
    assert sim.stats()["admitted"] == len(ids)  # nothing paid twice


@pytest.mark.parametrize(
    "options", [["--force"], ["--deployment", "sim", "--tenant", "t1"]], ids=["force", "routed"]
)
def test_edge_a_run_on_a_cluster_resumes_its_own_job(
    tmp_path: Path, simulator, redis_server, redis_client, options: list[str]
) -> None:  # type: ignore[no-untyped-def]
    # On a configured Redis an interrupted run's unfinished requests stay queued. The
    # resume command it prints must join that job: a --force run's id is its own, and
    # the deployment and tenant make the derived id (and say where requests go). Else
    # the resume makes a second job of the same requests and each is paid twice.
    sim = simulator(tpm=6_000, rpm=3_000, bucket_seconds=3.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20)
    (tmp_path / "out.jsonl").write_text('{"custom_id": "someone-else"}\n')
    env = {**_env(sim, burst_seconds=2.0), "QUOTAFLOW_REDIS_URL": redis_server.url}
    args = ["run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1"]
    if "--force" not in options:
        (tmp_path / "out.jsonl").unlink()
    code, out = _interrupt_after([*args, *options], tmp_path, env, sim, admitted=3)
    assert code == 130, out
    found = re.search(r"resume with the same command: (.+?) {3}", out)
    assert found is not None, out
    hint = found.group(1)
    assert hint.startswith("quotaflow run batch.jsonl -o out.jsonl"), out
    assert "--force" not in hint
    assert all(option in hint for option in options if option != "--force")

    again = quotaflow(*hint.split()[1:], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    assert sim.stats()["admitted"] == len(ids)  # no request paid twice
