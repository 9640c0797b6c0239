"""Settings at their point of use: invalid ones stop `.delay()` before anything is sent;
the keys are asked for only where calls are made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: A deployment that can never admit a token: the settings are invalid.
BROKEN = [{"name": "gpt4o", "kind": "compatible", "model": "gpt-4o-mini",
           "base_url": "http://127.0.0.1:9/v1", "tpm": 0, "rpm": 10}]  # fmt: skip

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
    assert "deployments.0.tpm" in done.stdout
    assert "PUBLISHED" not in out
    assert redis_client.dbsize() == 0  # not even the configured Redis saw it
