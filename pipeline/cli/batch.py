"""The commands that take a batch file or write one: `run`, `submit`, `results`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from budget import QuotaflowError
from pipeline.batchfile import check_batch_path
from pipeline.cli.options import (
    POOLS,
    BatchArg,
    DeploymentOpt,
    JobArg,
    JobIdOpt,
    TenantOpt,
    check_pool,
    cluster,
    cmd,
    current_settings,
    state,
)
from pipeline.cli.resume import (
    earlier_output,
    lines_to_send,
    resume_command,
    run_job_id,
    write_output,
)
from pipeline.console import console, errors
from pipeline.embedded import sigterm_as_interrupt
from pipeline.jobs import Jobs, check_job_id, new_job_id
from pipeline.liveness import announce, unserved_warning, waiting_unserved
from pipeline.local import WorkerError, local_cluster
from pipeline.reach import silent_deployments
from pipeline.views import (
    failure_reasons,
    failures_table,
    follow,
    job_table,
    lines,
    num,
    print_rejected,
    stops_lines,
)
from settings import Settings


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


def _check_batch(batch: Path) -> None:
    check_batch_path(batch)


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


def run(
    batch: BatchArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="results (Batch output format)")],
    workers: Annotated[int, typer.Option(min=0, help="local worker processes")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight per worker")] = 8,
    pool: Annotated[str, typer.Option(help=f"worker pool: {', '.join(POOLS)}")] = "prefork",
    deployment: DeploymentOpt = None,
    tenant: TenantOpt = None,
    job_id: JobIdOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace --output and send every request again")
    ] = False,
) -> None:
    """Run a batch on this machine (configured or private Redis, local workers).

    Live progress; results in the Batch output format. Ctrl-C stops and writes what is done.

    Run again, it resumes: the results already in --output are kept and not sent again.
    """
    settings = current_settings()
    if deployment is not None:
        settings.deployment(deployment)
    if job_id is not None:
        check_job_id(job_id)
    _check_batch(batch)
    _check_output(output)
    check_pool(pool)
    if workers == 0 and settings.redis_url is None:
        raise QuotaflowError("--workers 0 needs a running cluster: set QUOTAFLOW_REDIS_URL")
    if workers:
        settings.require_api_keys()  # the local workers make calls
        used = [settings.deployment(n) for n in _names(settings, deployment)]
        for warning in silent_deployments(used):
            errors.print(f"[yellow]warning: {escape(warning)}[/]", soft_wrap=True)
    earlier = earlier_output(batch, output, force=force)
    named_job = job_id
    if job_id is None:
        job_id = new_job_id() if force else run_job_id(batch, deployment=deployment, tenant=tenant)
    embedded = settings.redis_url is None
    started = time.monotonic()
    stopped_by: BaseException | None = None
    sent_estimate = 0  # tokens this run submitted, prompt + max_tokens
    free_at_start: float | None = None
    state.redis_url = settings.redis_url
    with (
        sigterm_as_interrupt(),
        local_cluster(
            settings, workers=workers, concurrency=concurrency, pool=pool, keep_budget=True
        ) as (rt, local),
    ):
        state.redis_url = rt.settings.redis_url  # the private one's, if started
        jobs = Jobs(rt.settings, rt.jobs)
        try:
            if earlier.results or earlier.failed:
                console.print(
                    f"resuming: {len(earlier.results)} results in {escape(str(output))} are "
                    "kept and not sent again"
                    + (f"; {earlier.failed} failed requests are sent again" if earlier.failed
                       else "")
                )  # fmt: skip
            existed = rt.jobs.exists(job_id)
            # The pace is told from what the gates had free: a run after another starts
            # on the budget that one left, not on a full burst.
            free_at_start = sum(
                rt.gate.snapshot(n).tokens_available for n in _names(settings, deployment)
            )
            with console.status(f"submitting {batch}"):
                report = jobs.submit(
                    lines_to_send(batch, earlier), job_id=job_id, deployment=deployment,
                    tenant=tenant, meta={"source": str(batch)},
                )  # fmt: skip
            # A resumed job on a configured Redis: its failures are tried again too.
            replayed = jobs.replay(job_id)[0] if existed and earlier.failed else 0
            # Replayed requests were estimated by an earlier submit: no pace for them.
            sent_estimate = 0 if replayed else report.tokens_estimated
            console.print(
                f"job [bold]{escape(job_id)}[/]: {report.submitted + replayed} requests queued"
                + (f", {report.skipped} already in the job" if report.skipped else "")
                + (f", {len(report.rejected)} lines rejected" if report.rejected else "")
            )
            print_rejected(report)
            now = jobs.status(job_id)
            pending = now.total - now.counts["done"] - now.counts["failed"]
            # Nothing queued and nothing left of an earlier run: a finished batch run
            # again has nothing to wait for (a job that never came to be never finishes).
            if report.submitted + replayed or pending > 0:
                follow(rt, jobs, job_id, local=local, deployments=_names(settings, deployment))
            else:
                console.print(
                    f"nothing left to send: every line of {escape(str(batch))} has its "
                    f"line in {escape(str(output))}"
                )
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
        found = rt.jobs.exists(job_id)
        done = write_output(output, earlier, jobs.output_lines(job_id) if found else ())
        failed = 0
        if found:
            status = jobs.status(job_id)
            failed = status.counts["failed"]
            elapsed = time.monotonic() - started
            deps = [settings.deployment(n) for n in _names(settings, deployment)]
            # A pace only for a run whose every request was sent and done: cancelled or
            # interrupted requests were never charged, and a run's estimate is of what it
            # submitted (not of what earlier runs of the job did).
            finished = stopped_by is None and status.counts["done"] == status.total
            charged = sent_estimate if finished else 0
            console.print(
                job_table(
                    status,
                    title=f"job {escape(job_id)}",
                    elapsed=elapsed,
                    deployments=deps,
                    charged=charged,
                    free_at_start=free_at_start,
                )  # fmt: skip
            )
            failures = failures_table(jobs, job_id)
            if failures is not None:
                console.print(failures)
            # `run` has no workers to restart and its job may be on a private Redis:
            # with the key fixed, the same command sends the failed requests again.
            again = resume_command(batch, output, named_job)
            remedy = (
                f"fix its api_key, then run the same command again ({again}): the failed "
                "requests are sent again"
            )
            for note in (failure_reasons(jobs, job_id), stops_lines(rt, remedy)):
                if note is not None:
                    console.print(note, soft_wrap=True)
        console.print(f"wrote {lines(len(done))} to [bold]{escape(str(output))}[/]")
        if stopped_by is not None:
            # On a cluster the unfinished requests stay queued in this job: the resume
            # must join it. A --force run's job id is not the one derived again.
            resume_job = job_id if force and named_job is None and not embedded else named_job
            command = resume_command(
                batch, output, resume_job, deployment=deployment, tenant=tenant
            )
            _resume_hint(command, output, embedded=embedded)
    if isinstance(stopped_by, WorkerError):
        raise stopped_by
    if stopped_by is not None:
        raise typer.Exit(130)
    if failed:
        # Finished, but not every request has a result: scripts must not take it for done.
        errors.print(
            f"[red]{failed} requests failed: their error lines are in {escape(str(output))}[/]"
        )
        raise typer.Exit(1)


def _names(settings: Settings, deployment: str | None) -> list[str]:
    return [deployment] if deployment else [d.name for d in settings.deployments]


def _resume_hint(command: str, output: Path, *, embedded: bool) -> None:
    again = escape(command)
    if embedded:
        console.print(
            f"resume with the same command: {again}   (the results in "
            f"{escape(str(output))} are kept and not sent again)"
        )
        return
    console.print(
        "unfinished requests stay queued in Redis (workers elsewhere keep going).\n"
        f"resume with the same command: {again}   (finished requests are skipped)"
    )


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
    rt = cluster()
    jobs = Jobs(rt.settings, rt.jobs)
    announce(rt.redis, rt.settings)
    report = jobs.submit_file(batch, job_id=job_id, deployment=deployment, tenant=tenant)
    console.print(
        f"job [bold]{escape(report.job_id)}[/]: {report.submitted} queued, "
        f"{report.skipped} skipped (already in the job), {len(report.rejected)} rejected, "
        f"~{num(report.tokens_estimated)} tokens"
    )
    print_rejected(report, limit=50)
    idle = waiting_unserved(rt.redis, rt.settings)
    if idle:
        errors.print(f"[yellow]warning: {escape(unserved_warning(rt.settings, idle))}[/]")
    console.print(f"follow it with: {escape(cmd('status', report.job_id, '--watch'))}")


def results(
    job: JobArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default: stdout)")
    ] = None,  # fmt: skip
) -> None:
    """Export a job's results in the Batch output format."""
    rt = cluster()
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
