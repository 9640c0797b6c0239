"""A total deadline for a blocking call.

The openai SDK's `timeout` is httpx's, per read: a provider that sends a byte now
and then keeps a call open for as long as it likes. A task that outlives
`task_time_limit` on the threads or gevent pool (which cannot interrupt it) can
outlive the visibility timeout too, and be redelivered and paid for twice. So the
call runs on a helper thread and the task waits for it at most `seconds`; a call
past its deadline is reported as a timeout and abandoned, not aborted: its thread
ends when the HTTP call does (at the SDK's per-read timeout, or never while the
provider keeps sending), and a worker on another pool than prefork waits for it
at exit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")

#: Helper threads are reused; the cap is far above any pool's concurrency, so a
#: call never queues behind abandoned ones.
_MAX_THREADS = 4096

_executor: tuple[int, ThreadPoolExecutor] | None = None
_lock = threading.Lock()


class DeadlineExceeded(Exception):
    """The call did not finish within its deadline."""


def _pool() -> ThreadPoolExecutor:
    global _executor
    pid = os.getpid()
    kept = _executor
    if kept is not None and kept[0] == pid:
        return kept[1]
    with _lock:  # one per process: a forked pool child does not inherit the threads
        if _executor is None or _executor[0] != pid:
            _executor = (pid, ThreadPoolExecutor(_MAX_THREADS, "quotaflow-call"))
        return _executor[1]


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """`fn()`, or DeadlineExceeded once `seconds` have passed without its answer."""
    future: Future[T] = _pool().submit(fn)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        future.cancel()
        raise DeadlineExceeded(f"no answer within {seconds:g}s") from None
