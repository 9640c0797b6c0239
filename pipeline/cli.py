"""`quotaflow`: run batches locally, drive a cluster, watch the budget, serve metrics.

Settings are read once, here, from QUOTAFLOW_* variables, `.env` and `quotaflow.toml`
(or `--config FILE`). Every error a user can cause ends in one red line and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from budget import QuotaflowError
from pipeline.app import app as celery_app
from pipeline.app import configure
from pipeline.batchfile import BatchFileError, BatchLine, read_batch
from pipeline.embedded import embedded_redis, sigterm_as_interrupt
from pipeline.jobs import Jobs, check_job_id, new_job_id
from pipeline.local import LocalWorkers, WorkerError
from pipeline.metrics_server import queue_depth
from pipeline.views import (
    budget_view,
    console,
    failures_table,
    follow,
    job_table,
    jobs_table,
    lines,
    num,
    print_rejected,
    queue_line,
    recover_line,
)
from settings import Settings, SettingsError, load_settings, redact_url
from tasks import runtime
from tasks.runtime import Runtime

NO_CLUSTER = (
    "QUOTAFLOW_REDIS_URL is not set: this command talks to a running quotaflow cluster; "
    "set it (e.g. export QUOTAFLOW_REDIS_URL=redis://127.0.0.1:6379/0) or put redis_url "
    "in quotaflow.toml"
)

POOLS = ("prefork", "threads", "gevent", "eventlet", "solo")

#: Console errors and warnings go to; `:-1:` in a message stays `:-1:`.
errors = Console(stderr=True, highlight=False, emoji=False)

cli = typer.Typer(
    name="quotaflow",
    help="LLM batches through Celery at the provider's quota, never faster.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals can hold API keys
)


# -- settings and connections -----------------------------------------------------------


@dataclass
class _State:
    config: Path | None
    settings: Settings | None = None
    #: The Redis URL in use, for error messages (redacted when shown).
    redis_url: str | None = None


_state = _State(config=None)


def _settings() -> Settings:
    if _state.settings is None:
        _state.settings = load_settings(toml_file=_state.config)
    return _state.settings


def _connect(settings: Settings) -> Runtime:
    """Install `settings` for the Celery app and the tasks; check that Redis answers."""
    _state.redis_url = settings.redis_url
    configure(celery_app, settings)
    rt = runtime.current()
    rt.redis.ping()
    return rt


def _cluster() -> Runtime:
    settings = _settings()
    if settings.redis_url is None:
        raise QuotaflowError(NO_CLUSTER)
    return _connect(settings)


@contextlib.contextmanager
def local_cluster(
    settings: Settings, *, workers: int, concurrency: int, pool: str
) -> Iterator[tuple[Runtime, LocalWorkers]]:
    """The configured Redis (or a private one) and `workers` local worker processes.

    On leaving, workers stop first (warm shutdown), then the private Redis.
    """
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            with console.status("starting a private Redis"):
                url = stack.enter_context(embedded_redis())
            settings = settings.model_copy(update={"redis_url": url})
        rt = _connect(settings)
        local = LocalWorkers(settings, count=workers, concurrency=concurrency, pool=pool)
        stack.callback(local.stop)
        if workers:
            local.start()
        yield rt, local


# -- output -----------------------------------------------------------------------------


def _write_output(jobs: Jobs, job_id: str, path: Path) -> tuple[int, set[str]]:
    """Write the job's finished requests (results, then failures) atomically."""
    tmp = path.with_name(f".{path.name}.partial")
    seen: set[str] = set()
    with tmp.open("w", encoding="utf-8") as out:
        for line in jobs.output_lines(job_id):
            seen.add(line["custom_id"])
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return len(seen), seen


def _write_remaining(batch: Path, done: set[str], path: Path) -> int:
    """The input lines with no output line yet, as a new batch file."""
    n = 0
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", encoding="utf-8") as out:
        for item in read_batch(batch):
            if isinstance(item, BatchLine) and item.custom_id not in done:
                line = {"custom_id": item.custom_id, "method": "POST", "url": item.url,
                        "body": item.body}  # fmt: skip
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
                n += 1
    os.replace(tmp, path)
    return n


# -- commands ---------------------------------------------------------------------------


@cli.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="settings file (default: ./quotaflow.toml if any)"),
    ] = None,
) -> None:
    _state.config = config


BatchArg = Annotated[Path, typer.Argument(help="requests in the OpenAI Batch input format")]
JobIdOpt = Annotated[
    str | None, typer.Option("--job-id", help="job id; resubmitting it skips known requests")
]
DeploymentOpt = Annotated[
    str | None, typer.Option("--deployment", "-d", help="send every request to this deployment")
]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="tag usage and cost")]


def _check_batch(batch: Path) -> None:
    if not batch.is_file():
        raise BatchFileError(f"batch file not found: {batch}")


def _check_output(output: Path) -> None:
    """Fail before any work if the results cannot be written where asked."""
    if output.is_dir():
        raise QuotaflowError(f"--output {output} is a directory; give a file name in it")
    parent = output.parent
    if not parent.is_dir():
        raise QuotaflowError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        output.exists() and not os.access(output, os.W_OK)
    ):
        raise QuotaflowError(f"cannot write {output}: permission denied")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise QuotaflowError(f"--port must be between 1 and 65535, got {port}")


def _cmd(*args: str | Path) -> str:
    """A follow-up command a user can paste into a shell."""
    return shlex.join(["quotaflow", *(str(a) for a in args)])


@cli.command()
def run(
    batch: BatchArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="results (Batch output format)")],
    workers: Annotated[int, typer.Option(min=0, help="local worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight per worker")] = 8,
    pool: Annotated[str, typer.Option(help=f"worker pool: {', '.join(POOLS)}")] = "prefork",
    deployment: DeploymentOpt = None,
    tenant: TenantOpt = None,
    job_id: JobIdOpt = None,
) -> None:
    """Run a batch on this machine (configured or private Redis, local workers).

    Live progress; results in the Batch output format. Ctrl-C stops and writes what is done.
    """
    settings = _settings()
    if deployment is not None:
        settings.deployment(deployment)
    if job_id is not None:
        check_job_id(job_id)
    _check_batch(batch)
    _check_output(output)
    if pool not in POOLS:
        raise QuotaflowError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if workers == 0 and settings.redis_url is None:
        raise QuotaflowError("--workers 0 needs a running cluster: set QUOTAFLOW_REDIS_URL")
    job_id = job_id or new_job_id()
    embedded = settings.redis_url is None
    started = time.monotonic()
    stopped_by: BaseException | None = None
    with (
        sigterm_as_interrupt(),
        local_cluster(settings, workers=workers, concurrency=concurrency, pool=pool) as (rt, local),
    ):
        jobs = Jobs(rt.settings, rt.jobs)
        try:
            with console.status(f"submitting {batch}"):
                report = jobs.submit_file(
                    batch, job_id=job_id, deployment=deployment, tenant=tenant
                )
            console.print(
                f"job [bold]{escape(job_id)}[/]: {report.submitted} requests queued"
                + (f", {report.skipped} already in the job" if report.skipped else "")
                + (f", {len(report.rejected)} lines rejected" if report.rejected else "")
            )
            print_rejected(report)
            follow(rt, jobs, job_id, local=local, deployments=_names(settings, deployment))
        except (KeyboardInterrupt, WorkerError) as exc:
            # Whatever stops the run, what is done is written out below.
            stopped_by = exc
            if isinstance(exc, KeyboardInterrupt):
                console.print(
                    "[yellow]interrupted[/]: stopping the workers; calls in flight finish "
                    "(Ctrl-C again to force)"
                )
            try:
                local.stop()
            except KeyboardInterrupt:
                local.stop(grace=0)
        local.stop()
        written, done = _write_output(jobs, job_id, output)
        if rt.jobs.exists(job_id):
            status = jobs.status(job_id)
            elapsed = time.monotonic() - started
            console.print(job_table(status, title=f"job {escape(job_id)}", elapsed=elapsed))
            failures = failures_table(jobs, job_id)
            if failures is not None:
                console.print(failures)
        console.print(f"wrote {lines(written)} to [bold]{escape(str(output))}[/]")
        if stopped_by is not None:
            _resume_hint(batch, output, done, job_id=job_id, embedded=embedded)
    if isinstance(stopped_by, WorkerError):
        raise stopped_by
    if stopped_by is not None:
        raise typer.Exit(130)


def _names(settings: Settings, deployment: str | None) -> list[str]:
    return [deployment] if deployment else [d.name for d in settings.deployments]


def _resume_hint(batch: Path, output: Path, done: set[str], *, job_id: str, embedded: bool) -> None:
    if embedded:
        # The private Redis goes away with this process: carry the rest in a file.
        remaining = output.with_name(output.stem + ".remaining.jsonl")
        n = _write_remaining(batch, done, remaining)
        if n:
            rest = output.with_name(output.stem + ".rest.jsonl")
            console.print(
                f"{n} requests did not finish; they are in [bold]{escape(str(remaining))}[/].\n"
                f"resume with: {escape(_cmd('run', remaining, '-o', rest))} "
                "(the two output files together are the whole batch)"
            )
        return
    console.print(
        "unfinished requests stay queued in Redis (workers elsewhere keep going).\n"
        f"resume with: {escape(_cmd('run', batch, '-o', output, '--job-id', job_id))}   "
        "(finished requests are skipped)"
    )


@cli.command()
def submit(
    batch: BatchArg,
    job_id: JobIdOpt = None,
    deployment: DeploymentOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Queue a batch on a running cluster; prints the job id and the rejected lines."""
    if job_id is not None:
        check_job_id(job_id)
    _check_batch(batch)
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    report = jobs.submit_file(batch, job_id=job_id, deployment=deployment, tenant=tenant)
    console.print(
        f"job [bold]{escape(report.job_id)}[/]: {report.submitted} queued, "
        f"{report.skipped} skipped (already in the job), {len(report.rejected)} rejected, "
        f"~{num(report.tokens_estimated)} tokens"
    )
    print_rejected(report, limit=50)
    console.print(f"follow it with: {escape(_cmd('status', report.job_id, '--watch'))}")


@cli.command()
def status(
    job: Annotated[str | None, typer.Argument(help="job id; none lists the jobs")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until finished")] = False,
) -> None:
    """A job's progress, or the list of jobs."""
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    if job is None:
        console.print(jobs_table(jobs))
        return
    current = jobs.status(job)
    if watch and not current.finished:
        with contextlib.suppress(KeyboardInterrupt):
            current = follow(rt, jobs, job)
    console.print(job_table(current, title=f"job {escape(job)}"))
    depth = queue_depth(rt.redis, rt.settings)
    console.print(queue_line(depth.ready, depth.deferred), soft_wrap=True)


@cli.command()
def results(
    job: Annotated[str, typer.Argument(help="job id")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default: stdout)")
    ] = None,  # fmt: skip
) -> None:
    """Export a job's results in the Batch output format."""
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    current = jobs.status(job)
    if output is None:
        jobs.export(job, sys.stdout)
    else:
        n, _ = _write_output(jobs, job, output)
        console.print(f"wrote {lines(n)} to {escape(str(output))}")
    if not current.finished:
        pending = current.total - current.counts["done"] - current.counts["failed"]
        errors.print(
            f"[yellow]job {escape(job)} is not finished: {pending} requests still pending[/]"
        )


@cli.command()
def replay(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Resubmit a job's dead letters (once their cause is fixed)."""
    rt = _cluster()
    replayed, skipped = Jobs(rt.settings, rt.jobs).replay(job)
    console.print(f"job {escape(job)}: {replayed} requests resubmitted, {skipped} not "
                  "replayable (invalid input lines)")  # fmt: skip


@cli.command()
def recover(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Send again the requests whose message the broker lost (e.g. in a Redis crash).

    A request counts as lost once it has been silent for recover_after_seconds.
    """
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    n = jobs.recover(job)
    console.print(recover_line(jobs, job, sent=n, again=_cmd("recover", job)), soft_wrap=True)


@cli.command()
def budget(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh every second")] = False,
) -> None:
    """The token budget of each deployment: free, booked ahead, cooldowns, recent 429s."""
    rt = _cluster()
    if not watch:
        console.print(budget_view(rt))
        return
    from rich.live import Live

    with (
        sigterm_as_interrupt(),
        contextlib.suppress(KeyboardInterrupt),
        Live(budget_view(rt), console=console, refresh_per_second=2) as live,
    ):
        while True:
            time.sleep(1)
            live.update(budget_view(rt))


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def simulate(ctx: typer.Context) -> None:
    """Run the rate-limited provider simulator (flags: quotaflow simulate --help).

    Listens where the default deployment calls: simulator_host:simulator_port (127.0.0.1:8765).
    """
    import simulator

    settings = _settings()
    code = simulator.main(
        list(ctx.args),
        prog="quotaflow simulate",
        host=settings.simulator_host,
        port=settings.simulator_port,
    )
    raise typer.Exit(code)


@cli.command()
def metrics(
    port: Annotated[int, typer.Option(help="port to listen on")] = 9108,
    host: Annotated[
        str, typer.Option(help="interface; loopback unless you mean it")
    ] = "127.0.0.1",  # fmt: skip
) -> None:
    """Serve Prometheus metrics read from Redis at scrape time."""
    from pipeline.metrics_server import serve

    _check_port(port)
    rt = _cluster()
    server = serve(rt, host=host, port=port)
    console.print(
        f"serving Prometheus metrics at {escape(f'http://{host}:{port}/metrics')} (Ctrl-C stops)"
    )
    try:
        with sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        server.shutdown()


@cli.command()
def demo(
    requests: Annotated[int, typer.Option(min=10, max=5000, help="requests in the batch")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the generated batch")] = 7,
    provider: Annotated[
        str, typer.Option(help="simulated provider: openai (bucket) or azure (10 s/1 s periods)")
    ] = "openai",
) -> None:
    """A batch far over a simulated provider's quota: it runs at the quota, no 429s.

    Private Redis, the simulator, two local workers; about a minute and a half.
    """
    from pipeline.demo import PROVIDERS, run_demo

    if provider not in PROVIDERS:
        raise typer.BadParameter(f"expected one of {', '.join(PROVIDERS)}", param_hint="--provider")
    if run_demo(_settings(), requests=requests, seed=seed, provider=provider) == 130:
        raise typer.Exit(130)


# -- errors -----------------------------------------------------------------------------


def _one_line(message: str) -> str:
    out = ""
    for part in (p.strip() for p in message.strip().splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


def _describe(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, else None."""
    if isinstance(exc, SettingsError):
        return _one_line(str(exc))
    if isinstance(exc, redis.RedisError | OperationalError):
        url = redact_url(_state.redis_url or "")
        why = _one_line(str(exc)).rstrip(".")
        return (
            f"Redis at {url} failed: {why}; check that it is running and that "
            "QUOTAFLOW_REDIS_URL (host, port, password) is right"
        )
    if isinstance(exc, QuotaflowError):
        return _one_line(str(exc))
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return None


def fail(message: str, detail: str = "") -> NoReturn:
    errors.print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True)
    if detail:
        errors.print(Text(detail, style="dim"))
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> Any:
    """The `quotaflow` console script."""
    try:
        return cli(args=argv, prog_name="quotaflow")
    except WorkerError as exc:
        # The one line, then the end of the worker's log, which says what went wrong.
        first, _, log_tail = str(exc).partition("\n")
        fail(first, log_tail)
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        fail(message)
