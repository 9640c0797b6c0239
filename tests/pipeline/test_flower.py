"""Flower against a real worker: behind basic auth, and it sees quotaflow's tasks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import QUOTAFLOW
from support.cluster import ROOT
from support.flower import get, poll
from support.processes import stop_session

from pipeline.local import worker_env
from pipeline.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def poll_json(url: str, ok: Callable[[Any], bool]) -> Any:
    return json.loads(poll(url, lambda text: ok(json.loads(text or "null"))))


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


def listening(port: int) -> set[str]:
    """The addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            if len(address) == 8:  # IPv4, little-endian
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add("::" if int(address, 16) == 0 else f"ipv6:{address}")
    return found


def test_flower_requires_auth_and_sees_the_worker_and_tasks(
    tmp_path: Path, simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim)
    (worker,) = c.start_workers(1, concurrency=2)
    port = free_port()
    # As the README starts it: `FLOWER_BASIC_AUTH=user:pass make flower` (the venv is
    # installed: -o keeps make from reinstalling it). Flower reads its options from
    # FLOWER_* variables, the password included.
    flower_env = {"FLOWER_BASIC_AUTH": "user:pass", "FLOWER_PORT": str(port)}
    env = worker_env(c.settings, flower_env)
    args = ["make", "-s", "-o", ".venv/.runtime", "-o", ".venv/.installed", "flower"]
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        workers = poll_json(f"{base}/api/workers?refresh=1", lambda d: bool(d))
        # Loopback only (Flower's own default is every interface, IPv4 and IPv6).
        assert listening(port) == {"127.0.0.1"}
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
        tasks = poll_json(
            f"{base}/api/tasks",
            lambda d: any(t.get("state") == "SUCCESS" for t in (d or {}).values()),
        )
        assert {t["name"] for t in tasks.values()} == {"quotaflow.complete"}
        assert c.jobs.status("flower").counts["done"] == 1
        types = poll_json(f"{base}/api/task/types", lambda d: bool(d and d.get("task-types")))
        assert "quotaflow.complete" in types["task-types"]
    finally:
        stop_session(flower)
        log.close()
