"""Running the real `quotaflow` command in tests, as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

QUOTAFLOW = Path(sys.executable).with_name("quotaflow")


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


#: An openai deployment without api_key: every call would be a 401.
NO_KEY = {"name": "gpt4o", "kind": "openai", "model": "gpt-4o-mini", "tpm": 1000, "rpm": 10}
NO_KEY_AZURE = {
    **NO_KEY, "kind": "azure", "base_url": "https://x", "api_version": "2024-10-21",
    "request_window_seconds": 10,  # 10 RPM: Azure counts such small deployments per 10 s
}  # fmt: skip
