"""Real Celery workers in separate processes, started and stopped by tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        pool: str = "prefork",
        concurrency: int = 4,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"qf-{name}-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
        env.update(settings_env(settings))
        env.update(extra_env or {})
        env["PYTHONUNBUFFERED"] = "1"
        queues = f"{settings.queue},{settings.retry_queue}"
        args = [
            sys.executable, "-m", "celery", "-A", "pipeline", "worker",
            "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.kill()
        self._log.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)


def start_workers(settings: Settings, count: int, **options: object) -> list[Worker]:
    workers = [Worker(settings, name=f"w{i}-{os.getpid()}", **options) for i in range(count)]  # type: ignore[arg-type]
    for w in workers:
        w.wait_ready()
    return workers
