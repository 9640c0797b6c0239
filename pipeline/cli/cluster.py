"""The commands that watch and drive a running cluster: status, replay, budget, metrics."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

import typer
from rich.markup import escape

from budget import QuotaflowError
from pipeline.broker import queue_depth
from pipeline.cli.options import JobArg, cluster, cmd
from pipeline.console import console
from pipeline.embedded import sigterm_as_interrupt
from pipeline.jobs import Jobs
from pipeline.liveness import known_queues, unserved, waiting
from pipeline.views import (
    budget_notes,
    budget_view,
    cancel_line,
    failure_reasons,
    follow,
    job_table,
    jobs_table,
    queue_line,
    recover_line,
    stops_lines,
)


def status(
    job: Annotated[str | None, typer.Argument(help="job id; none lists the jobs")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until finished")] = False,
) -> None:
    """A job's progress, or the list of jobs."""
    rt = cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    stops = stops_lines(rt)
    if job is None:
        console.print(jobs_table(jobs))
        if stops is not None:
            console.print(stops, soft_wrap=True)
        return
    current = jobs.status(job)
    if watch and not current.finished:
        with contextlib.suppress(KeyboardInterrupt):
            current = follow(rt, jobs, job)
    console.print(
        job_table(current, title=f"job {escape(job)}", deployments=rt.settings.deployments)
    )
    reasons = failure_reasons(jobs, job)
    if reasons is not None:
        console.print(reasons, soft_wrap=True)
    if stops is not None:
        console.print(stops, soft_wrap=True)
    depth = queue_depth(rt.redis, rt.settings)
    # Queues other deployment lists publish to (a submitter's), and who serves them.
    queues = known_queues(rt.redis, rt.settings)
    ready = {**depth.ready, **waiting(rt.redis, [q for q in queues if q not in depth.ready])}
    idle = unserved(rt.redis, rt.settings, queues)
    console.print(
        queue_line(ready, depth.deferred, complete=depth.complete, unserved=idle), soft_wrap=True
    )


def replay(job: JobArg) -> None:
    """Resubmit a job's dead letters (once their cause is fixed)."""
    rt = cluster()
    replayed, skipped = Jobs(rt.settings, rt.jobs).replay(job)
    if not replayed and not skipped:
        console.print(f"job {escape(job)}: nothing to replay (it has no failed requests)")
        return
    console.print(
        f"job {escape(job)}: {replayed} requests resubmitted"
        + (f", {skipped} not replayable (invalid input lines)" if skipped else "")
    )


def cancel(job: JobArg) -> None:
    """Stop a job's waiting requests; what is done is kept, calls in flight finish.

    Cancelled requests are dead-lettered `cancelled`: `quotaflow replay` sends them again.
    """
    rt = cluster()
    report = Jobs(rt.settings, rt.jobs).cancel(job)
    console.print(cancel_line(report, replay=cmd("replay", job), results=cmd("results", job)),
                  soft_wrap=True)  # fmt: skip


def recover(job: JobArg) -> None:
    """Send again the requests whose message the broker lost (e.g. in a Redis crash).

    A request counts as lost once it has been silent for recover_after_seconds.
    """
    rt = cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    n = jobs.recover(job)
    console.print(recover_line(jobs, job, sent=n, again=cmd("recover", job)), soft_wrap=True)


def budget(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh every second")] = False,
) -> None:
    """The token budget of each deployment: free, booked ahead, cooldowns, recent 429s."""
    rt = cluster()
    if not watch:
        console.print(budget_view(rt))
        return
    from rich.live import Live

    # The footnotes once, above: the live part then fits a 24-line terminal (Live cuts
    # what does not fit).
    console.print(budget_notes())
    with (
        sigterm_as_interrupt(),
        contextlib.suppress(KeyboardInterrupt),
        Live(budget_view(rt, notes=False), console=console, refresh_per_second=2) as live,
    ):
        while True:
            time.sleep(1)
            live.update(budget_view(rt, notes=False))


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise QuotaflowError(f"--port must be between 1 and 65535, got {port}")


def metrics(
    port: Annotated[int, typer.Option(help="port to listen on")] = 9108,
    host: Annotated[
        str, typer.Option(help="interface; loopback unless you mean it")
    ] = "127.0.0.1",  # fmt: skip
) -> None:
    """Serve Prometheus metrics read from Redis at scrape time."""
    from pipeline.metrics_server import serve

    _check_port(port)
    rt = cluster()
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
