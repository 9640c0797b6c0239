"""A real `celery flower` process for tests, behind basic auth."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline.local import worker_env
from pipeline.redis_server import free_port
from settings import Settings
from support.processes import stop_session

AUTH = "Basic " + base64.b64encode(b"user:pass").decode()


def get(url: str, *, auth: bool = True) -> tuple[int, str]:
    """Flower's answer to a GET: status and body (empty for an error status)."""
    request = urllib.request.Request(url, headers={"Authorization": AUTH} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ""


def poll(url: str, ok: Callable[[str], bool], timeout: float = 30) -> str:
    """The first 200 body that `ok` accepts; Flower may still be starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, text = get(url)
            if status == 200 and ok(text):
                return text
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: no satisfying answer in {timeout}s")
        time.sleep(0.3)


class Flower:
    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / "flower.log"
        # As docker-compose passes it: off the command line.
        env = worker_env(settings, {"FLOWER_BASIC_AUTH": "user:pass"})
        args = [
            sys.executable, "-m", "celery", "-A", "pipeline", "flower",
            f"--port={self.port}", "--address=127.0.0.1",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def get(self, path: str) -> tuple[int, str]:
        return get(self.base + path)

    def poll(self, path: str, ok: Callable[[str], bool], timeout: float = 30) -> str:
        return poll(self.base + path, ok, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_session(self.proc)
        self._log.close()
