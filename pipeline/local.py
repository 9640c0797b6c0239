"""Celery workers on this machine, as subprocesses: `quotaflow run`, `demo` and the tests.

    with local_cluster(settings, workers=2, concurrency=8, pool="prefork") as (rt, local):
        local.wait_ready()
        ...

Each worker is `celery -A pipeline worker -Q <queue>,<retry_queue>` with the settings
passed as QUOTAFLOW_* variables, in its own session, logging to a file. A worker is
stopped the one right way: SIGTERM to its main process, which finishes the calls in
flight and hands the rest back; SIGKILL to its process group only after a grace period
(or on purpose, in crash tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from budget import QuotaflowError
from pipeline import saved_budget
from pipeline.app import app as celery_app
from pipeline.app import connect
from pipeline.console import console
from pipeline.embedded import embedded_redis
from pipeline.processes import die_with_parent
from settings import Settings, settings_env
from tasks.runtime import Runtime

_READY = b" ready."
#: Seconds a stopped worker has to finish its calls in flight before it is killed.
STOP_GRACE_SECONDS = 30.0


class WorkerError(QuotaflowError):
    """A local worker did not start or died."""


def worker_env(settings: Settings | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `settings` as the only QUOTAFLOW_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")}
    env.update(settings_env(settings) if settings is not None else {})
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _queues(settings: Settings | None, queues: str | None) -> str:
    if queues is not None:
        return queues
    if settings is None:
        raise WorkerError("a worker without quotaflow settings needs its queues named")
    return f"{settings.queue},{settings.retry_queue}"


class LocalWorker:
    """One `celery worker` process (and its pool children), started at once.

    It runs quotaflow's app on the settings' queues unless `app` and `queues` name
    another Celery app (the benchmarks' alternatives), which `settings=None` leaves
    to `extra_env` alone. `nice` lowers its priority, pool children included.
    """

    def __init__(
        self,
        settings: Settings | None,
        *,
        hostname: str,
        log_path: Path,
        cwd: Path,
        concurrency: int = 8,
        pool: str = "prefork",
        loglevel: str = "INFO",
        extra_env: Mapping[str, str] | None = None,
        app: str = "pipeline",
        queues: str | None = None,
        nice: int = 0,
    ) -> None:
        self.hostname = hostname
        self.log_path = log_path
        args = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "-Q", _queues(settings, queues), "-c", str(concurrency), "-P", pool, "-n", hostname,
            "--without-gossip", "--without-mingle", "-l", loglevel,
        ]  # fmt: skip
        if nice:
            args = ["nice", "-n", str(nice), *args]  # nice execs: the pid stays the worker's
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=worker_env(settings, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches quotaflow only, which stops workers in order.
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - looked up before the fork
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        try:
            return _READY in self.log_path.read_bytes()
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().strip().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> LocalWorker:
        """Block until the worker logs " ready."; raise WorkerError if it exits first."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive():
                raise WorkerError(f"worker {self.hostname} exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"worker {self.hostname} not ready after {timeout:g}s:\n{self.log()}"
                )
            time.sleep(0.1)
        return self

    def children(self) -> list[int]:
        """The pids of the pool's processes (prefork)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def terminate(self) -> None:
        """Warm shutdown: the worker finishes the calls in flight, returns the rest."""
        # To the main process only: pool children reset SIGTERM to its default, so a
        # signal to the whole group would cut calls off mid-flight (paid, then redone).
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the worker's process group, if its main process is still running."""
        # Once the main process is gone its pool children die too (celery sets their
        # parent-death signal), and its pid may be reused: then nothing is sent.
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Warm shutdown, then SIGKILL after `grace` seconds. Idempotent."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        self.kill()
        self.close()

    def close(self) -> None:
        self._log.close()


def stop_workers(workers: list[LocalWorker], grace: float = STOP_GRACE_SECONDS) -> None:
    """Warm shutdown of every worker at once, sharing `grace` seconds, then SIGKILL
    to those still running (each in turn would take a second or more)."""
    try:
        for w in workers:
            w.terminate()
        deadline = time.monotonic() + grace
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for w in workers:
            w.kill()
            w.close()


class LocalWorkers:
    """Start, watch and stop `count` local workers for `settings`.

    Each worker runs in a private directory, logging there, unless `cwd` (a directory
    its app must be imported from) or `logdir` (where its log is kept after it stops)
    say otherwise. `app`, `queues`, `extra_env` and `nice` are as for `LocalWorker`.
    """

    def __init__(
        self,
        settings: Settings | None,
        *,
        count: int = 2,
        concurrency: int = 8,
        pool: str = "prefork",
        loglevel: str = "INFO",
        name: str = "quotaflow-local",
        app: str = "pipeline",
        queues: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        nice: int = 0,
        cwd: Path | None = None,
        logdir: Path | None = None,
    ) -> None:
        if settings is not None and settings.redis_url is None:
            raise WorkerError("local workers need a Redis URL (configured or embedded)")
        self.settings = settings
        self.count = count
        self.name = name
        self.cwd = cwd
        self.logdir = logdir
        # What every worker shares; start() adds each one's name, log and cwd.
        self._worker = functools.partial(
            LocalWorker, settings, concurrency=concurrency, pool=pool, loglevel=loglevel,
            extra_env=extra_env, app=app, queues=_queues(settings, queues), nice=nice,
        )  # fmt: skip
        self.workers: list[LocalWorker] = []
        self.dir: Path | None = None

    def start(self) -> LocalWorkers:
        self.dir = Path(tempfile.mkdtemp(prefix="quotaflow-workers-"))
        tag = uuid.uuid4().hex[:6]
        try:
            for i in range(self.count):
                # By default the cwd is the private directory: every setting comes from
                # the environment, never from a stray .env or quotaflow.toml.
                worker = self._worker(
                    hostname=f"{self.name}-{i + 1}-{tag}@%h",
                    log_path=(self.logdir or self.dir) / f"{self.name}-{i + 1}.log",
                    cwd=self.cwd or self.dir,
                )
                self.workers.append(worker)
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def wait_ready(self, timeout: float = 60.0, *, ping: Callable[[], int] | None = None) -> None:
        """Block until every worker is ready; raise WorkerError if one dies.

        Ready is the " ready." line a worker logs at INFO. Workers that log above INFO
        never write it: for them pass `ping`, which counts the workers that answer a
        control ping (`len(app.control.ping(timeout=0.5))`).
        """
        deadline = time.monotonic() + timeout
        while not (ping() >= self.count if ping else all(w.ready() for w in self.workers)):
            self.check()
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"local workers not ready after {timeout:g}s:\n{self.workers[0].log_tail()}"
                )
            time.sleep(0.1)

    def ready_count(self) -> int:
        return sum(w.ready() and w.alive() for w in self.workers)

    def check(self) -> None:
        """Raise WorkerError, with the end of its log, if a worker has exited."""
        for w in self.workers:
            if not w.alive():
                raise WorkerError(
                    f"a local worker exited with code {w.proc.returncode}:\n{w.log_tail()}"
                )

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Warm shutdown, then SIGKILL to each worker's process group after `grace` s.

        All workers are asked at once and share the grace period. A second Ctrl-C while
        waiting kills at once. Idempotent.
        """
        try:
            stop_workers(self.workers, grace)
        finally:
            self.workers = []
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> LocalWorkers:
        return self if self.workers else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_cluster(
    settings: Settings, *, workers: int, concurrency: int, pool: str, keep_budget: bool = False
) -> Iterator[tuple[Runtime, LocalWorkers]]:
    """The configured Redis (or a private one) and `workers` local worker processes.

    On leaving, workers stop first (warm shutdown), then the private Redis. With
    `keep_budget`, a private Redis starts with the budget state the last one left
    (pipeline.saved_budget) and saves its own before it stops.
    """
    with contextlib.ExitStack() as stack:
        private = settings.redis_url is None
        if private:
            with console.status("starting a private Redis"):
                url = stack.enter_context(embedded_redis())
            settings = settings.model_copy(update={"redis_url": url})
        rt = connect(celery_app, settings)
        if private and keep_budget:
            saved_budget.restore(rt.redis, settings)
            # Runs after the workers have stopped (callbacks run last in, first out).
            stack.callback(saved_budget.save, rt.redis, settings)
        local = LocalWorkers(settings, count=workers, concurrency=concurrency, pool=pool)
        stack.callback(local.stop)
        if workers:
            local.start()
        yield rt, local
