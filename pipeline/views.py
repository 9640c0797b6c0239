"""What the `quotaflow` commands show: live job progress, job and budget tables, counts.

The commands in `pipeline.cli` print through these; nothing here imports from the CLI.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.broker import queue_depth
from pipeline.console import console
from pipeline.jobs import CancelReport, Jobs, SubmitReport
from pipeline.local import LocalWorkers
from settings import DeploymentSettings
from tasks.auth import AUTH_REMEDY, read_stops
from tasks.jobstore import JobStatus
from tasks.metrics import parse_field
from tasks.runtime import Runtime

#: The live line counts the tokens used over this many seconds.
RATE_WINDOW_SECONDS = 60.0


# -- numbers ----------------------------------------------------------------------------


def num(x: float) -> str:
    return f"{x:,.0f}"


def lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


class RecentTokens:
    """Tokens used over the last minute, from samples of a running total.

    (Total / elapsed would show the provider's first burst as a rate far over the quota.)
    """

    def __init__(self, start: float, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque([(start, 0)])

    def add(self, now: float, total: int) -> tuple[int, float]:
        """Record the running total at `now`; returns (tokens used, over how many seconds)."""
        # The base is the newest sample at least `window` old (else the start).
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        since, base = self.samples[0]
        self.samples.append((now, total))
        return total - base, now - since


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
    task = progress.add_task(f"job {escape(job_id)}", total=None, failed=0)
    recent = RecentTokens(time.monotonic())
    quota = sum(rt.settings.deployment(name).tpm for name in names)

    def render(status: JobStatus) -> RenderableType:
        c = status.counts
        done, failed = c["done"], c["failed"]
        progress.update(task, total=max(status.total, 1), completed=done + failed, failed=failed)
        tokens, seconds = recent.add(
            time.monotonic(), status.prompt_tokens + status.completion_tokens
        )
        line = Text()
        line.append(f"running {c['running']} · deferred {c['deferred']} · ")
        line.append(f"retrying {c['retrying']} · queued {c['queued']}")
        line.append(f"   deferrals {status.deferrals} · retries {status.retries}")
        line.append(f"   {num(tokens)} tokens in the last {seconds:.0f}s", style="green")
        line.append(f" (quota {num(quota)}/min)")
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


def job_table(
    status: JobStatus,
    *,
    title: str,
    elapsed: float | None = None,
    deployments: Sequence[DeploymentSettings] = (),
    charged: int = 0,
    free_at_start: float | None = None,
) -> Table:
    """A job's counts; with `elapsed`, the `deployments` it ran on and the tokens
    `charged` in that time (requests sent, prompt + max_tokens), its pace against their
    quota. `free_at_start` is what their gates had free when it began (default: full)."""
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
    usage = f"{num(status.prompt_tokens)} prompt + {num(status.completion_tokens)} completion"
    if status.tokens_estimated:
        # Requests sent with `.delay()` are estimated by the worker, not at submit.
        usage += f" used (estimated at submit: {num(status.tokens_estimated)})"
    table.add_row("tokens", usage)
    table.add_row("cost", _cost(status, deployments))
    table.add_row("deferrals", f"{status.deferrals} (postponed by the budget, not sent)")
    table.add_row("retries", f"{status.retries} (transient provider failures)")
    if elapsed is not None:
        minutes = max(elapsed, 1e-9) / 60
        table.add_row("elapsed", f"{elapsed:.1f}s · {c['done'] / minutes:,.0f} requests/min")
        if deployments and charged:
            table.add_row("pace", _pace(charged, minutes, deployments, free_at_start))
    return table


def _cost(status: JobStatus, deployments: Sequence[DeploymentSettings]) -> str:
    cost = f"${status.cost_usd:,.4f}"
    unpriced = deployments and all(
        not d.price_input_per_1m and not d.price_output_per_1m for d in deployments
    )
    if unpriced and not status.cost_usd:
        cost += (
            " (no prices set: give the deployment price_input_per_1m and "
            "price_output_per_1m, USD per million tokens)"
        )
    return cost


def _pace(
    charged: int,
    minutes: float,
    deployments: Sequence[DeploymentSettings],
    free_at_start: float | None,
) -> str:
    """Tokens charged against the quota: the burst it starts with, then its rate.

    (Charged / elapsed alone reads as if the gate beat the quota: the first burst is
    spent at once.) Charged is the estimate, prompt + max_tokens, as providers count.
    A run that starts on a budget an earlier one drained has less than the full burst
    to spend at once.
    """
    full = int(sum(d.token_capacity for d in deployments))
    burst = full if free_at_start is None else min(full, max(0, int(free_at_start)))
    what = (
        "the burst the quota allows"
        if burst == full
        else f"what the budget had free at the start, of a {num(full)} burst"
    )
    quota = sum(d.tpm for d in deployments)
    head = f"~{num(charged)} tokens charged (prompt + max_tokens, as the provider counts)"
    rest = charged - burst
    if rest <= 0:
        return f"{head}, all within the {num(burst)} the budget let go at once"
    return (
        f"{head}: the first {num(burst)} at once ({what}), the other "
        f"{num(rest)} at {num(rest / minutes)}/min over the whole run (quota {num(quota)}/min)"
    )


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
        table.add_row(
            escape(cid), escape(str(err.get("code", ""))), escape(str(err.get("message", ""))[:200])
        )
    if len(dead) > limit:
        table.caption = f"{len(dead) - limit} more in the output file"
    return table


def failure_reasons(jobs: Jobs, job_id: str) -> Text | None:
    """The job's failures counted per reason (`auth_failed 40 · invalid_request 1`)."""
    counts: dict[str, int] = {}
    for raw in jobs.store.dead_letters(job_id).values():
        code = str((json.loads(raw).get("error") or {}).get("code") or "error")
        counts[code] = counts.get(code, 0) + 1
    if not counts:
        return None
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Text("failed by reason: " + " · ".join(f"{code} {n}" for code, n in ranked))


def stops_lines(rt: Runtime, remedy: str | None = None) -> Text | None:
    """The deployments stopped for a refused API key, and why (tasks.auth); `remedy`
    replaces the cluster's (restart the workers, replay) where another step fits."""
    stops = read_stops(rt.redis, rt.settings.key_prefix)
    if not stops:
        return None
    text = Text()
    for stop in stops:
        text.append(f"stopped {stop.deployment}: ", style="bold red")
        reason = stop.reason if remedy is None else stop.reason.replace(AUTH_REMEDY, remedy)
        text.append(f"{reason}\n")
    text.rstrip()
    return text


def _table(title: str, headers: list[str], rows: list[list[str]], caption: str = "") -> Table:
    """A table whose columns never cut a header or a value: only the first column, a
    name, folds onto more lines when the terminal is narrow. No blank edge lines: the
    budget view must fit a 24-line terminal under `--watch`."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
    )
    for i, header in enumerate(headers):
        if i == 0:
            table.add_column(header, overflow="fold")
            continue
        widest = max([len(w) for w in header.split()] + [len(row[i]) for row in rows])
        table.add_column(header, justify="right", min_width=widest)
    for row in rows:
        table.add_row(*row)
    if caption:
        table.caption = caption
        table.caption_justify = "left"
    return table


def jobs_table(jobs: Jobs, limit: int = 30) -> Table | str:
    ids = jobs.store.job_ids(last=limit)
    if not ids:
        return "no jobs yet: quotaflow submit BATCH.jsonl"
    rows = []
    for job_id in ids:
        s = jobs.store.status(job_id)
        c = s.counts
        created = time.strftime("%m-%d %H:%M", time.localtime(s.created_at))
        pending = s.total - c["done"] - c["failed"]
        rows.append([escape(job_id), created, str(s.total), str(c["done"]), str(c["failed"]),
                     str(pending), f"${s.cost_usd:,.4f}"])  # fmt: skip
    total = max(len(ids), jobs.store.job_count())
    caption = f"the {limit} most recent of {total}" if total > limit else ""
    headers = ["job", "created", "total", "done", "failed", "pending", "cost"]
    return _table(f"jobs ({total})", headers, rows, caption)


def recover_line(jobs: Jobs, job_id: str, *, sent: int, again: str) -> Text:
    """What `quotaflow recover` did and, when it sent nothing, what it waits for."""
    head = f"job {job_id}: {sent} lost requests sent again"
    status = jobs.status(job_id)
    if sent:
        return Text(head)
    if status.finished:
        return Text(f"job {job_id} is finished: nothing to recover")
    limit = jobs.settings.recover_after_seconds
    quiet = jobs.store.quiet(job_id).values()
    recent = [q for q in quiet if q < limit]
    silent = len(quiet) - len(recent)
    parts = [head]
    if silent:
        parts.append(
            f"{silent} silent for over {limit:g}s are in a queue or held by a worker: waiting, "
            "not lost"
        )
    if recent:
        parts.append(
            f"{len(recent)} moved less than {limit:g}s ago (recover_after_seconds); a request "
            f"is taken for lost after {limit:g}s of silence with its message in no queue and "
            f"held by no worker. The first could qualify in {limit - max(recent):.0f}s: "
            f"run `{again}` then (`run` and `status --watch` do this on their own)"
        )
    if not quiet:
        parts.append("no unfinished request of this job can be sent again by quotaflow")
    return Text("; ".join(parts))


def cancel_line(report: CancelReport, *, replay: str, results: str) -> Text:
    """What `quotaflow cancel` did, and what it kept."""
    parts = [
        f"job {report.job_id}: {report.cancelled} waiting requests cancelled (nothing was "
        f"sent for them; dead-lettered as `cancelled`: `{replay}` sends them again)",
        f"{report.done} done kept (`{results}`)",
    ]
    if report.running:
        parts.append(f"{report.running} running now finish and are kept")
    if report.not_kept:
        parts.append(
            f"{report.not_kept} waiting requests were published without a kept copy and "
            "could not be cancelled: they run"
        )
    return Text("; ".join(parts))


def print_rejected(report: SubmitReport, limit: int = 10) -> None:
    for err in report.rejected[:limit]:
        console.print(f"[yellow]rejected[/] {escape(str(err))}", soft_wrap=True)
    if len(report.rejected) > limit:
        console.print(f"[yellow]... and {len(report.rejected) - limit} more rejected lines[/]")


# -- budget and queues ------------------------------------------------------------------


#: What the budget view's columns mean (under `--watch`, printed once above the view).
BUDGET_NOTES = {
    "rate": "rate: the share of the token quota the gate allows now (lowered after a "
    "provider 429 and won back with time; minus the neighbours' learned share)",
    "others": "others: learned from the provider's headers, what clients that do not ask "
    "the gate use of the key; gate: what the gate admits now",
    "since": "* the previous clock minute and this one so far (counts are kept per "
    "minute); granted, booked, wait, never: the gate's answers",
}


def budget_notes() -> Text:
    return Text("\n".join(BUDGET_NOTES.values()), style="dim")


def budget_view(rt: Runtime, *, notes: bool = True) -> Group:
    """Per deployment: the gate's state now, and what happened since the previous clock
    minute began; `notes=False` leaves out the footnotes (`budget_notes`)."""
    recent: dict[str, dict[str, float]] = {}
    # The counters are kept per clock minute: the last two cover 60-120 s.
    since = time.strftime("%H:%M", time.localtime((time.time() // 60 - 1) * 60))
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
    # Two tables, so that every header fits in 80 columns.
    now: list[list[str]] = []
    rates: list[list[str]] = []
    last: list[list[str]] = []
    for dep in rt.settings.deployments:
        snap = rt.gate.snapshot(dep.name)
        per = recent.get(dep.name, {})
        now.append([
            escape(dep.name),
            f"{num(snap.tokens_available)} / {num(snap.tokens_capacity)}",
            f"{num(snap.requests_available)} / {num(snap.requests_capacity)}",
            f"{snap.booked_ahead_seconds:.1f}s",
            f"{snap.cooldown_seconds:.1f}s",
            f"{snap.rate_factor:.0%}",
        ])  # fmt: skip
        rates.append([
            escape(dep.name),
            num(dep.tpm), num(snap.neighbour_tpm), num(snap.effective_tpm),
            num(dep.rpm), num(snap.neighbour_rpm), num(snap.effective_rpm),
        ])  # fmt: skip
        last.append([
            escape(dep.name),
            num(per.get("deferrals", 0)),
            num(per.get("429", 0)),
            *(num(per.get(f"res:{o}", 0)) for o in ("granted", "booked", "wait", "never")),
        ])  # fmt: skip
    now_table = _table(
        "budget now",
        ["deployment", "tokens free / burst", "requests free / burst", "booked ahead",
         "cooldown", "rate"],
        now,
        BUDGET_NOTES["rate"] if notes else "",
    )  # fmt: skip
    rates_table = _table(
        "per minute",
        ["deployment", "tpm quota", "others", "gate", "rpm quota", "others", "gate"],
        rates,
        BUDGET_NOTES["others"] if notes else "",
    )
    last_table = _table(
        f"since {since}:00*",
        ["deployment", "deferrals", "429s", "granted", "booked", "wait", "never"],
        last,
        BUDGET_NOTES["since"] if notes else "",
    )
    depth = queue_depth(rt.redis, rt.settings)
    return Group(
        now_table,
        rates_table,
        last_table,
        Text(queue_line(depth.ready, depth.deferred, complete=depth.complete)),
    )


def queue_line(
    ready: dict[str, int],
    deferred: dict[str, int],
    *,
    complete: bool = True,
    unserved: set[str] | frozenset[str] = frozenset(),
) -> str:
    # Incomplete: the workers hold more than one reading counts (pipeline.broker), and
    # no full pass has ended yet: the deferred counted so far are a lower bound.
    at_least = "" if complete else ">="
    parts = [
        f"{q}: {ready[q]} waiting, {at_least}{deferred.get(q, 0)} deferred"
        + (" (no worker)" if q in unserved else "")
        for q in ready
    ]
    return "queues: " + " · ".join(parts)
