"""The README's simulator recipe, run as written: `quotaflow simulate` in one shell, the
README's script in another, and no 429s."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import QUOTAFLOW, cli_env, quotaflow, read_jsonl, write_batch
from support.cluster import ROOT
from support.processes import stop_session

from pipeline.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def readme_blocks(section: str) -> list[str]:
    """The fenced code blocks of a README section, as written."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", body, flags=re.DOTALL)


def sim_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return dict(json.loads(r.read()))


class ReadmeSimulator:
    """`quotaflow simulate ...` exactly as the README starts it, on a free port."""

    def __init__(self, tmp_path: Path) -> None:
        start, _ = readme_blocks("Trying it against the simulator")
        (self.command,) = start.strip().splitlines()
        self.port = free_port()
        # The README's address, 127.0.0.1:8765, moved to a free port: the simulator and
        # the default deployment both follow simulator_port.
        self.env = cli_env(QUOTAFLOW_SIMULATOR_PORT=str(self.port))
        self.env["PATH"] = f"{QUOTAFLOW.parent}{os.pathsep}{self.env['PATH']}"  # activated
        self.proc = subprocess.Popen(
            shlex.split(self.command), cwd=tmp_path, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{self.port}" in line, line

    def stop(self) -> None:
        stop_session(self.proc, grace=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def readme_simulator(tmp_path: Path) -> Iterator[ReadmeSimulator]:
    sim = ReadmeSimulator(tmp_path)
    yield sim
    sim.stop()


@pytest.mark.timeout(180)
def test_the_readme_simulator_recipe_gets_no_429s(
    tmp_path: Path, readme_simulator: ReadmeSimulator
) -> None:
    _, script = readme_blocks("Trying it against the simulator")
    assert "range(100)" in script and '"max_tokens": 400' in script
    assert "accounting" not in script  # the default accounting must be the safe one
    # As written, on the simulator's port, with 90 requests instead of 100: 37,800
    # tokens, 8,800 past the 29,000-token burst, so the gate must pace the rest.
    script = (
        script.replace("8765", str(readme_simulator.port))
        .replace("range(100)", "range(90)")
        .replace("source .venv/bin/activate", f"source {QUOTAFLOW.parent / 'activate'}")
    )
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=readme_simulator.env,
        capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    stats = sim_stats(readme_simulator.port)
    assert stats["refused_429"] == 0, stats
    assert stats["admitted"] == 90
    assert stats["tokens_charged"] > 29_000 + 5_000  # the burst, and paced work past it
    assert len(read_jsonl(tmp_path / "stories.out.jsonl")) == 90
    assert '"refused_429": 0' in done.stdout  # what the README's last command shows


def test_the_default_deployment_works_with_quotaflow_simulate(
    tmp_path: Path, readme_simulator: ReadmeSimulator
) -> None:
    # The simulator started as the README shows (with --api-key sk-local), and
    # `quotaflow run` with no deployments configured at all.
    assert "--api-key" in readme_simulator.command
    ids = write_batch(tmp_path / "batch.jsonl", 3)
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1", "--concurrency", "2")
    done = quotaflow(*args, cwd=tmp_path, env=readme_simulator.env)
    assert done.returncode == 0, done.stdout + done.stderr
    stats = sim_stats(readme_simulator.port)
    assert stats["by_status"] == {"200": 3}, stats  # no 401
    assert sorted(line["custom_id"] for line in read_jsonl(tmp_path / "out.jsonl")) == ids
