"""Settings at their point of use: invalid ones stop `.delay()` before anything is sent;
the keys are asked for only where calls are made."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.cli import NO_KEY, NO_KEY_AZURE, QUOTAFLOW, cli_env, quotaflow, write_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: A deployment that can never admit a token: the settings are invalid.
BROKEN = [{"name": "gpt4o", "kind": "compatible", "model": "gpt-4o-mini",
           "base_url": "http://127.0.0.1:9/v1", "tpm": 0, "rpm": 10}]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DELAY = """
import pipeline
from settings import SettingsError
from tasks import complete
body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
try:
    complete.delay(body, custom_id="secret-prompt")
except SettingsError as exc:
    print("REFUSED:", exc)
else:
    print("PUBLISHED")
"""


def test_edge_delay_with_invalid_settings_raises_and_sends_nothing(
    tmp_path: Path, redis_server, redis_client
) -> None:  # type: ignore[no-untyped-def]
    env = cli_env(QUOTAFLOW_REDIS_URL=redis_server.url, QUOTAFLOW_DEPLOYMENTS=json.dumps(BROKEN))
    done = subprocess.run(
        [sys.executable, "-c", DELAY], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=90, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert "REFUSED: invalid quotaflow settings:" in done.stdout, out
    assert "deployment 'gpt4o': tpm" in done.stdout
    assert "PUBLISHED" not in out
    assert redis_client.dbsize() == 0  # not even the configured Redis saw it


def test_edge_commands_that_make_no_calls_need_no_api_keys(
    tmp_path: Path, redis_server, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # The workers' deployments, as an operator's laptop or the metrics service has
    # them: without the keys.
    env = cli_env(
        COLUMNS="200",
        QUOTAFLOW_REDIS_URL=redis_server.url,
        QUOTAFLOW_DEPLOYMENTS=json.dumps([NO_KEY, {**NO_KEY_AZURE, "name": "azure"}]),
    )
    write_batch(tmp_path / "batch.jsonl", 2)
    submitted = quotaflow("submit", "batch.jsonl", "--job-id", "j1", cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    assert "job j1: 2 queued" in submitted.stdout
    for args in (("status",), ("status", "j1"), ("budget",)):
        done = quotaflow(*args, cwd=tmp_path, env=env, timeout=30)
        assert done.returncode == 0, (args, done.stderr)
        assert "api_key" not in done.stderr
    port = free_port()
    metrics = subprocess.Popen(
        [str(QUOTAFLOW), "metrics", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        text = ""
        deadline = time.monotonic() + 30
        while "quotaflow_" not in text:
            assert metrics.poll() is None, metrics.communicate()
            assert time.monotonic() < deadline
            with contextlib.suppress(OSError):
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            time.sleep(0.2)
        assert 'deployment="azure"' in text
    finally:
        metrics.terminate()
        metrics.wait(timeout=30)

    # Where calls are made, the key is asked for: a worker refuses to start...
    worker = [sys.executable, "-m", "celery", "-A", "pipeline", "worker", "--pool", "solo"]
    refused = subprocess.run(
        worker, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode != 0
    assert "deployments: 'gpt4o' (kind 'openai') has no api_key" in refused.stderr
    # ... and so does `run` with local workers, before any work.
    run = quotaflow("run", "batch.jsonl", "-o", "out.jsonl", cwd=tmp_path, env=env, timeout=30)
    assert run.returncode == 2 and "has no api_key" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()
