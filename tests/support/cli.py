"""Running the real `quotaflow` command in tests, as users run it, on batch files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

QUOTAFLOW = Path(sys.executable).with_name("quotaflow")


def cli_env(**values: str) -> dict[str, str]:
    """The environment without any QUOTAFLOW_* of the caller's, plus `values`.

    Each gets a budget state directory of its own (`run` keeps the private Redis's
    budget there between runs): a test never meets another's drained buckets.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
    env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
    env["QUOTAFLOW_STATE_DIR"] = tempfile.mkdtemp(prefix="qf-state-")
    env.update(values)
    return env


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


def quotaflow(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUOTAFLOW), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


#: An openai deployment without api_key: every call would be a 401.
NO_KEY = {"name": "gpt4o", "kind": "openai", "model": "gpt-4o-mini", "tpm": 1000, "rpm": 10}
NO_KEY_AZURE = {
    **NO_KEY, "kind": "azure", "base_url": "https://x", "api_version": "2024-10-21",
    "request_window_seconds": 10,  # 10 RPM: Azure counts such small deployments per 10 s
}  # fmt: skip
