"""A private Redis for `quotaflow run` and `quotaflow demo` when none is configured.

    with embedded_redis() as url:
        ...  # broker, result backend and budget store for this process and its workers

It listens on a free loopback port with a random password (kombu and Celery's result
backend cannot share a unix socket URL), keeps nothing on disk (`save ""`, no AOF), and
lives in a private temporary directory that is removed with it: on leaving the block,
at interpreter exit, on Ctrl-C and on SIGTERM; on Linux it also dies with its parent.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from pipeline.redis_server import RedisServer


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does.

    So `finally` blocks and interrupt handlers run when a supervisor stops quotaflow.
    Does nothing outside the main thread (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private Redis, yield its URL, and remove it (and its files) on exit."""
    with sigterm_as_interrupt():
        server = RedisServer(password=secrets.token_hex(16))
        try:
            server.start()
            yield server.url
        finally:
            server.stop(grace=5)
            server.cleanup()
