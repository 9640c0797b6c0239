"""Waiting in tests for something another process does, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any],
    timeout: float = 60,
    what: str = "the condition",
    logs: Callable[[], str] | None = None,
) -> None:
    """Poll `check` until it is true; past `timeout` seconds fail, naming `what` (and
    the end of `logs()`, a worker's log, when given)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs() if logs else ''}")
        time.sleep(0.1)
