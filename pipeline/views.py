"""What the `quotaflow` commands show: live job progress, job and budget tables, counts.

The commands in `pipeline.cli` print through these; nothing here imports from the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.jobs import Jobs, SubmitReport
from pipeline.local import LocalWorkers
from pipeline.metrics_server import queue_depth
from tasks.jobs import JobStatus
from tasks.metrics import parse_field
from tasks.runtime import Runtime

console = Console(highlight=False)


# -- numbers ----------------------------------------------------------------------------


def num(x: float) -> str:
    return f"{x:,.0f}"


def lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


# -- live progress ----------------------------------------------------------------------


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
        line.append(f"   {num(tokens / minutes)} tokens/min used", style="green")
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
    # Messages the broker lost are sent again by the workers (pipeline.recovery).
    try:
        with Live(render(status), console=console, refresh_per_second=4) as live:
            while not status.finished:
                time.sleep(interval)
                if local is not None and local.workers:
                    local.check()
                status = jobs.status(job_id)
                live.update(render(status))
    finally:
        if not console.is_terminal:
            console.line()  # Live ends its last frame with a newline only on a terminal
    return status


# -- jobs -------------------------------------------------------------------------------


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
        f"{num(status.prompt_tokens)} prompt + {num(status.completion_tokens)} completion "
        f"(estimated at submit: {num(status.tokens_estimated)})",
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


def failures_table(jobs: Jobs, job_id: str, limit: int = 8) -> Table | None:
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


def jobs_table(jobs: Jobs, limit: int = 30) -> Table | str:
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


def print_rejected(report: SubmitReport, limit: int = 10) -> None:
    for err in report.rejected[:limit]:
        console.print(f"[yellow]rejected[/] {escape(str(err))}", soft_wrap=True)
    if len(report.rejected) > limit:
        console.print(f"[yellow]... and {len(report.rejected) - limit} more rejected lines[/]")


# -- budget and queues ------------------------------------------------------------------


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
            num(per.get(f"res:{o}", 0)) for o in ("granted", "booked", "wait", "never")
        )
        table.add_row(
            dep.name,
            f"{num(snap.tokens_available)} / {num(snap.tokens_capacity)}",
            f"{num(snap.requests_available)} / {num(snap.requests_capacity)}",
            f"{snap.booked_ahead_seconds:.1f}s",
            f"{snap.cooldown_seconds:.1f}s",
            num(per.get("deferrals", 0)),
            num(per.get("429", 0)),
            outcomes,
            f"{snap.rate_factor:.0%}",
        )
    table.caption = (
        "* in this clock minute and the one before. rate: the share of the quota the gate "
        "allows now (lowered after a provider 429, won back by successes)"
    )
    table.caption_justify = "left"
    depth = queue_depth(rt.redis, rt.settings)
    return Group(table, Text(queue_line(depth.ready, depth.deferred)))


def queue_line(ready: dict[str, int], deferred: dict[str, int]) -> str:
    parts = [f"{q}: {ready[q]} waiting, {deferred.get(q, 0)} deferred" for q in ready]
    return "queues: " + " · ".join(parts)
