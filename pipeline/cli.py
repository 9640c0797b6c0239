"""`quotaflow`: run batches locally, drive a cluster, watch the budget, serve metrics.

Settings are read once, here, from QUOTAFLOW_* variables, `.env` and `quotaflow.toml`
(or `--config FILE`). Every error a user can cause ends in one red line and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from budget import QuotaflowError
from pipeline.app import app as celery_app
from pipeline.app import configure
from pipeline.batchfile import BatchFileError, BatchLine, read_batch
from pipeline.embedded import embedded_redis, sigterm_as_interrupt
from pipeline.jobs import Jobs, SubmitReport, new_job_id
from pipeline.local import LocalWorkers, WorkerError
from pipeline.metrics_server import queue_depth
from settings import Settings, SettingsError, load_settings, redact_url
from tasks import runtime
from tasks.jobs import JobStatus
from tasks.metrics import parse_field
from tasks.runtime import Runtime

NO_CLUSTER = (
    "QUOTAFLOW_REDIS_URL is not set: this command talks to a running quotaflow cluster; "
    "set it (e.g. export QUOTAFLOW_REDIS_URL=redis://127.0.0.1:6379/0) or put redis_url "
    "in quotaflow.toml"
)

POOLS = ("prefork", "threads", "gevent", "eventlet", "solo")

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

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


#: How often a followed job is checked for messages the broker lost.
RECOVER_EVERY_SECONDS = 15.0


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


# -- live progress ----------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:,.0f}"


def _budget_line(rt: Runtime, names: list[str]) -> Text:
    text = Text()
    for name in names:
        snap = rt.gate.snapshot(name)
        used = 1 - snap.tokens_available / snap.tokens_capacity if snap.tokens_capacity else 0
        text.append(f"budget {name}: ", style="bold")
        text.append(f"{used:4.0%} of the token burst in use", style="cyan")
        text.append(f" · {snap.booked_ahead_seconds:.1f}s booked ahead")
        if snap.cooldown_seconds > 0:
            text.append(f" · cooling down {snap.cooldown_seconds:.1f}s", style="yellow")
        text.append("\n")
    text.rstrip()
    return text


def follow(
    rt: Runtime,
    jobs: Jobs,
    job_id: str,
    *,
    local: LocalWorkers | None = None,
    deployments: list[str] | None = None,
    extra: Callable[[], RenderableType] | None = None,
    interval: float = 0.5,
) -> JobStatus:
    """Show live progress of a job until it finishes; returns its final status.

    Raises WorkerError if a local worker dies.
    """
    names = deployments or [d.name for d in rt.settings.deployments]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        expand=True,
    )
    task = progress.add_task(f"job {job_id}", total=None, failed=0)
    started = time.monotonic()

    def render(status: JobStatus) -> RenderableType:
        c = status.counts
        done, failed = c["done"], c["failed"]
        progress.update(task, total=max(status.total, 1), completed=done + failed, failed=failed)
        minutes = max(time.monotonic() - started, 1.0) / 60
        tokens = status.prompt_tokens + status.completion_tokens
        line = Text()
        line.append(f"running {c['running']} · deferred {c['deferred']} · ")
        line.append(f"retrying {c['retrying']} · queued {c['queued']}")
        line.append(f"   deferrals {status.deferrals} · retries {status.retries}")
        line.append(f"   {_num(tokens / minutes)} tokens/min used", style="green")
        parts: list[RenderableType] = [progress, line, _budget_line(rt, names)]
        if local is not None and local.workers:
            ready = local.ready_count()
            if ready < len(local.workers):
                parts.append(Text(f"workers starting: {ready}/{len(local.workers)} ready"))
        if extra is not None:
            parts.append(extra())
        return Group(*parts)

    from rich.live import Live

    status = jobs.status(job_id)
    # A message lost by the broker (a Redis crash mid-delivery) is sent again.
    next_recover = time.monotonic() + RECOVER_EVERY_SECONDS
    try:
        with Live(render(status), console=console, refresh_per_second=4) as live:
            while not status.finished:
                time.sleep(interval)
                if local is not None and local.workers:
                    local.check()
                if time.monotonic() >= next_recover:
                    jobs.recover(job_id)
                    next_recover = time.monotonic() + RECOVER_EVERY_SECONDS
                status = jobs.status(job_id)
                live.update(render(status))
    finally:
        if not console.is_terminal:
            console.line()  # Live ends its last frame with a newline only on a terminal
    return status


# -- output -----------------------------------------------------------------------------


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


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


def _print_rejected(report: SubmitReport, limit: int = 10) -> None:
    for err in report.rejected[:limit]:
        console.print(f"[yellow]rejected[/] {escape(str(err))}", soft_wrap=True)
    if len(report.rejected) > limit:
        console.print(f"[yellow]... and {len(report.rejected) - limit} more rejected lines[/]")


def _failures(jobs: Jobs, job_id: str, limit: int = 8) -> Table | None:
    dead = jobs.store.dead_letters(job_id)
    if not dead:
        return None
    table = Table(title="failed requests", title_justify="left", show_edge=False)
    table.add_column("custom_id")
    table.add_column("error")
    table.add_column("message", overflow="fold")
    for cid, raw in sorted(dead.items())[:limit]:
        err = json.loads(raw).get("error") or {}
        table.add_row(cid, str(err.get("code", "")), str(err.get("message", ""))[:200])
    if len(dead) > limit:
        table.caption = f"{len(dead) - limit} more in the output file"
    return table


def job_table(status: JobStatus, *, title: str, elapsed: float | None = None) -> Table:
    c = status.counts
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", f"[green]{c['done']} done[/] · [red]{c['failed']} failed[/] "
                  f"· {status.total} total")  # fmt: skip
    pending = status.total - c["done"] - c["failed"]
    if pending:
        table.add_row(
            "in flight",
            f"{pending} ({c['queued']} queued, {c['deferred']} deferred, "
            f"{c['running']} running, {c['retrying']} retrying)",
        )
    table.add_row(
        "tokens",
        f"{_num(status.prompt_tokens)} prompt + {_num(status.completion_tokens)} completion "
        f"(estimated at submit: {_num(status.tokens_estimated)})",
    )
    table.add_row("cost", f"${status.cost_usd:,.4f}")
    table.add_row("deferrals", f"{status.deferrals} (postponed by the budget, not sent)")
    table.add_row("retries", f"{status.retries} (transient provider failures)")
    if elapsed is not None:
        minutes = max(elapsed, 1e-9) / 60
        tokens = status.prompt_tokens + status.completion_tokens
        table.add_row(
            "elapsed",
            f"{elapsed:.1f}s · {c['done'] / minutes:,.0f} requests/min · "
            f"{tokens / minutes:,.0f} tokens/min",
        )
    return table


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


@cli.command()
def run(
    batch: BatchArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="results (Batch output format)")],
    workers: Annotated[int, typer.Option(min=0, help="local worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight per worker")] = 8,
    pool: Annotated[str, typer.Option(help="worker pool: prefork, threads, gevent")] = "prefork",
    deployment: DeploymentOpt = None,
    tenant: TenantOpt = None,
    job_id: JobIdOpt = None,
) -> None:
    """Run a batch on this machine (configured or private Redis, local workers).

    Live progress; results in the Batch output format. Ctrl-C stops cleanly and writes
    what is done.
    """
    settings = _settings()
    if deployment is not None:
        settings.deployment(deployment)
    _check_batch(batch)
    if not output.parent.is_dir():
        raise QuotaflowError(f"output directory does not exist: {output.parent}")
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
                f"job [bold]{job_id}[/]: {report.submitted} requests queued"
                + (f", {report.skipped} already in the job" if report.skipped else "")
                + (f", {len(report.rejected)} lines rejected" if report.rejected else "")
            )
            _print_rejected(report)
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
            console.print(job_table(status, title=f"job {job_id}", elapsed=elapsed))
            failures = _failures(jobs, job_id)
            if failures is not None:
                console.print(failures)
        console.print(f"wrote {_lines(written)} to [bold]{escape(str(output))}[/]")
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
            console.print(
                f"{n} requests did not finish; they are in [bold]{escape(str(remaining))}[/].\n"
                f"resume with: quotaflow run {escape(str(remaining))} -o "
                f"{escape(str(output.with_name(output.stem + '.rest.jsonl')))} "
                "(the two output files together are the whole batch)"
            )
        return
    console.print(
        "unfinished requests stay queued in Redis (workers elsewhere keep going).\n"
        f"resume with: quotaflow run {escape(str(batch))} -o {escape(str(output))} "
        f"--job-id {job_id}   (finished requests are skipped)"
    )


@cli.command()
def submit(
    batch: BatchArg,
    job_id: JobIdOpt = None,
    deployment: DeploymentOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Queue a batch on a running cluster; prints the job id and the rejected lines."""
    _check_batch(batch)
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    report = jobs.submit_file(batch, job_id=job_id, deployment=deployment, tenant=tenant)
    console.print(
        f"job [bold]{report.job_id}[/]: {report.submitted} queued, {report.skipped} skipped "
        f"(already in the job), {len(report.rejected)} rejected, "
        f"~{_num(report.tokens_estimated)} tokens"
    )
    _print_rejected(report, limit=50)
    console.print(f"follow it with: quotaflow status {report.job_id} --watch")


@cli.command()
def status(
    job: Annotated[str | None, typer.Argument(help="job id; none lists the jobs")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until finished")] = False,
) -> None:
    """A job's progress, or the list of jobs."""
    rt = _cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    if job is None:
        console.print(_jobs_table(jobs))
        return
    current = jobs.status(job)
    if watch and not current.finished:
        with contextlib.suppress(KeyboardInterrupt):
            current = follow(rt, jobs, job)
    console.print(job_table(current, title=f"job {job}"))
    depth = queue_depth(rt.redis, rt.settings)
    console.print(_queue_line(depth.ready, depth.deferred), soft_wrap=True)


def _jobs_table(jobs: Jobs, limit: int = 30) -> Table | str:
    ids = jobs.store.job_ids()
    if not ids:
        return "no jobs yet: quotaflow submit BATCH.jsonl"
    table = Table(title=f"jobs ({len(ids)})", title_justify="left")
    for col in ("job", "created", "total", "done", "failed", "pending", "cost"):
        table.add_column(col, justify="right" if col not in ("job", "created") else "left")
    for job_id in ids[-limit:]:
        s = jobs.store.status(job_id)
        c = s.counts
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
        pending = s.total - c["done"] - c["failed"]
        table.add_row(job_id, created, str(s.total), str(c["done"]), str(c["failed"]),
                      str(pending), f"${s.cost_usd:,.4f}")  # fmt: skip
    if len(ids) > limit:
        table.caption = f"the {limit} most recent of {len(ids)}"
    return table


def _queue_line(ready: dict[str, int], deferred: dict[str, int]) -> str:
    parts = [f"{q}: {ready[q]} waiting, {deferred.get(q, 0)} deferred" for q in ready]
    return "queues: " + " · ".join(parts)


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
        console.print(f"wrote {_lines(n)} to {escape(str(output))}")
    if not current.finished:
        pending = current.total - current.counts["done"] - current.counts["failed"]
        errors.print(f"[yellow]job {job} is not finished: {pending} requests still pending[/]")


@cli.command()
def replay(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Resubmit a job's dead letters (once their cause is fixed)."""
    rt = _cluster()
    replayed, skipped = Jobs(rt.settings, rt.jobs).replay(job)
    console.print(f"job {job}: {replayed} requests resubmitted, {skipped} not replayable "
                  "(invalid input lines)")  # fmt: skip


@cli.command()
def recover(job: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Send again the requests whose message the broker lost (e.g. in a Redis crash)."""
    rt = _cluster()
    n = Jobs(rt.settings, rt.jobs).recover(job)
    console.print(f"job {job}: {n} lost requests sent again")


def budget_view(rt: Runtime) -> Group:
    """Per deployment: the gate's state now, and what happened in the last minute."""
    recent: dict[str, dict[str, float]] = {}
    for raw, value in rt.metrics.last_minute().items():
        name, labels = parse_field(raw)
        per = recent.setdefault(labels.get("deployment", ""), {})
        if name == "deferrals_total":
            per["deferrals"] = per.get("deferrals", 0) + value
        elif name == "provider_responses_total" and labels.get("status") == "429":
            per["429"] = per.get("429", 0) + value
        elif name == "reservations_total":
            key = "res:" + labels.get("outcome", "")
            per[key] = per.get(key, 0) + value
    table = Table(title="budget", title_justify="left")
    table.add_column("deployment")
    table.add_column("tokens free / burst", justify="right")
    table.add_column("requests free / burst", justify="right")
    table.add_column("booked ahead", justify="right")
    table.add_column("cooldown", justify="right")
    table.add_column("deferrals*", justify="right")
    table.add_column("429s*", justify="right")
    table.add_column("granted/booked/wait/never*", justify="right")
    table.add_column("rate", justify="right")
    for dep in rt.settings.deployments:
        snap = rt.gate.snapshot(dep.name)
        per = recent.get(dep.name, {})
        outcomes = "/".join(
            _num(per.get(f"res:{o}", 0)) for o in ("granted", "booked", "wait", "never")
        )
        table.add_row(
            dep.name,
            f"{_num(snap.tokens_available)} / {_num(snap.tokens_capacity)}",
            f"{_num(snap.requests_available)} / {_num(snap.requests_capacity)}",
            f"{snap.booked_ahead_seconds:.1f}s",
            f"{snap.cooldown_seconds:.1f}s",
            _num(per.get("deferrals", 0)),
            _num(per.get("429", 0)),
            outcomes,
            f"{snap.rate_factor:.0%}",
        )
    table.caption = (
        "* in this clock minute and the one before. rate: the share of the quota the gate "
        "allows now (lowered after a provider 429, won back by successes)"
    )
    table.caption_justify = "left"
    depth = queue_depth(rt.redis, rt.settings)
    return Group(table, Text(_queue_line(depth.ready, depth.deferred)))


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
    """Run the rate-limited provider simulator (flags: quotaflow simulate --help)."""
    from pipeline import simulator

    raise typer.Exit(simulator.main(list(ctx.args)))


@cli.command()
def metrics(
    port: Annotated[int, typer.Option(help="port to listen on")] = 9108,
    host: Annotated[
        str, typer.Option(help="interface; loopback unless you mean it")
    ] = "127.0.0.1",  # fmt: skip
) -> None:
    """Serve Prometheus metrics read from Redis at scrape time."""
    from pipeline.metrics_server import serve

    rt = _cluster()
    server = serve(rt, host=host, port=port)
    console.print(f"serving Prometheus metrics at http://{host}:{port}/metrics (Ctrl-C stops)")
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
) -> None:
    """A batch far over a simulated provider's quota: it runs at the quota, no 429s.

    Private Redis, the simulator, two local workers; about a minute and a half.
    """
    from pipeline.demo import run_demo

    if run_demo(_settings(), requests=requests, seed=seed) == 130:
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
