"""A real `celery flower` process for tests, behind basic auth."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline.redis_server import free_port
from settings import Settings, settings_env

AUTH = "Basic " + base64.b64encode(b"user:pass").decode()


class Flower:
    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / "flower.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
        env.update(settings_env(settings))
        env["FLOWER_BASIC_AUTH"] = "user:pass"  # as docker-compose passes it: off the command line
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
        request = urllib.request.Request(self.base + path, headers={"Authorization": AUTH})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, ""

    def poll(self, path: str, ok: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, text = self.get(path)
                if status == 200 and ok(text):
                    return text
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: no satisfying answer in {timeout}s")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
