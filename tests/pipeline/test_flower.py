"""Flower against a real worker: behind basic auth, and it sees quotaflow's tasks."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.cluster import ROOT

from pipeline.redis_server import free_port
from settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUOTAFLOW = Path(sys.executable).with_name("quotaflow")
AUTH = "Basic " + base64.b64encode(b"user:pass").decode()


def get(url: str, *, auth: bool) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": AUTH} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, None


def poll(url: str, ok: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, data = get(url, auth=True)
            if status == 200 and ok(data):
                return data
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: no satisfying answer in {timeout}s")
        time.sleep(0.3)


def session_commands(sid: int) -> list[str]:
    """The command lines of every process in session `sid`."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                raw = (stat.parent / "cmdline").read_bytes()
                commands.append(raw.replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return commands


def test_flower_requires_auth_and_sees_the_worker_and_tasks(
    tmp_path: Path, simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim)
    (worker,) = c.start_workers(1, concurrency=2)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
    env.update(settings_env(c.settings))
    # As the README starts it: `FLOWER_BASIC_AUTH=user:pass make flower` (the venv is
    # installed: -o keeps make from reinstalling it). Flower reads its options from
    # FLOWER_* variables, the password included.
    env.update(FLOWER_BASIC_AUTH="user:pass", FLOWER_PORT=str(port), FLOWER_ADDRESS="127.0.0.1")
    args = ["make", "-s", "-o", ".venv/.installed", "flower"]
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        workers = poll(f"{base}/api/workers?refresh=1", lambda d: bool(d))
        # The password is on no command line that `ps` shows.
        commands = session_commands(flower.pid)
        assert any("flower" in cmd for cmd in commands), commands
        assert not any("user:pass" in cmd for cmd in commands), commands
        assert get(f"{base}/api/workers", auth=False)[0] == 401
        assert get(f"{base}/api/tasks", auth=False)[0] == 401
        assert get(f"{base}/", auth=False)[0] == 401

        (name,) = [w for w in workers if w.startswith(worker.name + "@")]
        registered = set(workers[name]["registered"])
        assert {"quotaflow.complete", "quotaflow.embed"} <= registered
        queues = {q["name"] for q in workers[name]["active_queues"]}
        assert queues == {"quotaflow", "quotaflow.retry", "quotaflow.sim"}

        body = {"model": "gpt-4o-mini", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hello flower"}]}  # fmt: skip
        line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions", "body": body}
        (tmp_path / "batch.jsonl").write_text(json.dumps(line) + "\n")
        submit = [str(QUOTAFLOW), "submit", "batch.jsonl", "--job-id", "flower"]
        done = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        tasks = poll(
            f"{base}/api/tasks",
            lambda d: any(t.get("state") == "SUCCESS" for t in (d or {}).values()),
        )
        assert {t["name"] for t in tasks.values()} == {"quotaflow.complete"}
        assert c.jobs.status("flower").counts["done"] == 1
        types = poll(f"{base}/api/task/types", lambda d: bool(d and d.get("task-types")))
        assert "quotaflow.complete" in types["task-types"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
            flower.wait()
        log.close()
