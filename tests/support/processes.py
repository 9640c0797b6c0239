"""Stopping what a test started in a session of its own (`start_new_session=True`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_session(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM every process of `proc`'s session, SIGKILL them after `grace` seconds."""
    # The whole group: `make flower` and `quotaflow metrics` run their server in a child.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
