"""The RESULTS.md section of `bench.strategies`: set-up, columns and one table per policy
and worker count. Everything is computed from the runs in the `Context`; nothing is
typed in."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from bench.measures import run_order
from bench.reading import fmt_or, guard_ms, reading
from bench.results import cpu_model, write_section
from bench.workload import describe

if TYPE_CHECKING:
    from bench.measures import Context, RunResult

BEGIN, END = "<!-- strategies:begin -->", "<!-- strategies:end -->"
TITLES = {"openai": "OpenAI-style bucket", "azure": "Azure-style windows"}


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _row(r: RunResult) -> str:
    if r.makespan is not None:
        mk, ratio, ratio_b = (
            f"{r.makespan:.1f}", f"{r.makespan / r.lower_bound:.2f}",
            f"{r.makespan / r.lower_bound_burst:.2f}",
        )  # fmt: skip
    else:
        mk, ratio, ratio_b = (
            f"> {r.elapsed:.0f} (called off)", f"> {r.elapsed / r.lower_bound:.1f}",
            f"> {r.elapsed / r.lower_bound_burst:.1f}",
        )  # fmt: skip
    done = f"{r.done}/{r.requests}" + (f" ({r.note})" if r.note else "")
    publish = "n/a" if r.strategy == "pacer" else f"{r.publish_seconds:.1f}"
    return (
        f"| {r.label} | {done} | {r.refused_429:,} | {r.share_429:.1%} | {r.utilization:.2f} "
        f"| {mk} | {ratio} | {ratio_b} | {fmt_or(r.p50, '.1f')} | {fmt_or(r.p95, '.1f')} "
        f"| {fmt_or(r.messages, '.2f', 'n/a')} | {r.wasted:,} | {publish} "
        f"| {fmt_or(r.cpu_busy, '.0%')} |"
    )


def _cpu_per_request(ctx: Context) -> str:
    """quotaflow's CPU cost per request in these runs (all processes, both cores)."""
    ms = [
        1000 * r.cpu_busy * (os.cpu_count() or 1) * r.span / r.requests
        for r in ctx.results
        if r.strategy == "quotaflow" and r.cpu_busy is not None and r.tpm_share >= 0.999
    ]
    if not ms:
        return "the host has 2 cores for everything."
    return (
        f"with quotaflow the host spent {min(ms):.0f}-{max(ms):.0f} ms of CPU per request "
        "(submitter, workers, Redis, simulator, and anything else on the host), so it "
        "cannot serve more than "
        f"about {1000 * (os.cpu_count() or 1) / max(ms):.0f}-"
        f"{1000 * (os.cpu_count() or 1) / min(ms):.0f} requests/s; the quota asks for "
        f"{len(ctx.workload.bodies) / ctx.lower_bound:.0f} requests/s."
    )


def render(ctx: Context, runtime_s: float, plots: Sequence[str]) -> str:
    s, q, w = ctx.scale, ctx.quota, ctx.workload
    lb = ctx.lower_bound
    qf = [r for r in ctx.results if r.strategy == "quotaflow"]
    first = sum(r.first_publish for r in qf) / len(qf) if qf else 0.0
    background = (
        f" Before the first run {ctx.background_cpu:.0%} of the CPU was busy with other work "
        "on the host (shared machine)."
        if ctx.background_cpu is not None and ctx.background_cpu >= 0.05
        else ""
    )
    lines = [
        "## Strategies: quotaflow against the usual alternatives",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"redis-server {ctx.redis_version}, Celery {_version('celery')}, openai "
        f"{_version('openai')}; quotaflow at commit {ctx.code_version}; Redis, the simulator, "
        f"every worker and the harness on this one host. {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC. The whole `python -m bench.strategies` took {runtime_s / 60:.1f} min."
        f"{background}",
        "",
        "Rerun: `make bench` (the gate micro-benchmark, then this) or `.venv/bin/python -m "
        "bench.strategies` (`--quick`: a one-minute smoke run that leaves this file alone; "
        "`--requests`, `--lower-bound`, `--workers`, `--policies`, `--strategies` to vary it). "
        "Worker logs and per-run data (admissions, finish times) go to /tmp/qf-bench-<pid>.",
        "",
        "### Set-up",
        "",
        f"- Workload (`bench/workload.py`, fixed seed): {describe(w)}. All submitted at once; "
        "every strategy gets the same bodies.",
        f"- {len(w.bodies)} requests, not a few thousand: {_cpu_per_request(ctx)} Runs of "
        "a few thousand requests at a rate this host can serve, times "
        f"{len(ctx.results)} runs, would take far longer than the ~8 minutes allowed. "
        "`--requests 3000 --lower-bound 49 --scale 4` runs the same comparison (same rate, "
        "same demand over quota, 7.5x less compression) in roughly an hour.",
        f"- Time is compressed {s.scale:g}x: one provider minute lasts {s.minute:g} s "
        f"(latency is not compressed: {s.latency_ms:g}-{s.latency_ms + s.latency_jitter_ms:g} "
        f"ms stands for {s.latency_ms * s.scale / 1000:g}-"
        f"{(s.latency_ms + s.latency_jitter_ms) * s.scale / 1000:g} s). Quota: TPM {q.tpm:,}, "
        f"i.e. {q.tpm / s.scale:,.0f} tokens per compressed minute; RPM {q.rpm:,} (Azure's 6 "
        f"per 1,000 TPM, so tokens bind). The workload is {lb / s.minute:.1f} minutes of quota "
        f"(demand {lb / s.minute:.1f}x the quota). Lower bound LB = max(tokens / TPM, "
        f"requests / RPM) = {lb:.2f} s.",
        f"- Provider: `python -m simulator` in its own process, no faults. OpenAI "
        f"policy: a bucket holding {s.minute:g} s of quota (`bucket_seconds`), refilled "
        f"continuously. Azure policy: token periods of {s.check_seconds:.3f} s (10 s "
        "compressed, `check_seconds`) each admitting 1/6 of a minute's tokens, request "
        f"periods of {s.request_check_seconds:.3f} s (1 s compressed) each admitting 1/60 of "
        "a minute's requests, all starting at a phase drawn at random at every reset (the "
        "client cannot know it); its 60 s minute counter never binds in runs this short. "
        "Each run starts from a reset (full limits).",
        f"- Workers: {', '.join(map(str, s.workers))} worker processes, each `celery worker "
        f"-P threads -c {s.concurrency}` (prefork would mean up to "
        f"{max(s.workers) * s.concurrency} processes on 2 cores). Each fleet is warmed up with "
        "a few tiny requests to every deployment first (tiktoken, clients), as long-lived "
        "workers are. Workers "
        "and the pacer run at `nice 10`: the submitter, Redis and the simulator stand for "
        "other machines (the client's, the provider's) and should not queue behind them.",
        "- quotaflow: `celery -A pipeline worker`, `Jobs.submit_bodies`, quotaflow's default "
        "settings with the time-like ones divided by the compression (booking horizon, "
        "backoff base and cap, deferral jitter, longest deferral, intake poll), and the rate "
        "regained per second after a 429 multiplied by it; `late_tolerance_seconds` "
        "(2 s) and the 1 s inline-wait threshold of `tasks/base.py` are absolute and left "
        "alone. OpenAI: two settings, `burst_seconds` = the provider's bucket (60 s) and "
        'quotaflow\'s default (if different). Azure: `limiter = "window"` (the default for '
        '`kind = "azure"`) with `window_seconds` 10 s and `request_window_seconds` 1 s '
        "(compressed) and a guard band of "
        f"{guard_ms():g} ms, not compressed (it covers this host's delay between a call's "
        "slot and its arrival, not a quota time); and, for comparison, `limiter = "
        '"bucket"` with `burst_seconds` = the provider\'s period (10 s). `submit_bodies` '
        "estimates "
        f"a whole chunk before publishing any (here {first:.2f} s on average); every clock "
        "starts at the first publish, for every strategy.",
        "- naive: no gate; on 429 `retry(countdown=uniform(0, min(600, 2**retries)) s)`, "
        "`max_retries=5`: Celery's `retry_backoff`/`retry_jitter` defaults and documented "
        "example (computed by hand: `retry_backoff` rounds its factor up to 1 s, which cannot "
        "be compressed). rate_limit: the same task with `rate_limit` = (TPM / mean tokens per "
        "request) / worker processes, on each worker. article: fixed one-minute window in "
        "Redis, GET then INCRBY (two calls), budget = TPM, estimate = prompt characters / 4 + "
        "max_tokens (kinder than the article's `length / 4 + 256`), requeue after 10 s when "
        "refused and 20 s after a 429, no limit. pacer: one asyncio process like the "
        "cookbook's: capacity of one minute refilled by elapsed time, tiktoken (cl100k) "
        "estimate + max_tokens, 15 s pause after a 429, 5 attempts, limits = the full quota; "
        "no workers, so its one run per policy appears in every table of that policy. "
        "LiteLLM: its `Router` as documented for several instances: one per worker process, "
        "the deployment's `tpm`/`rpm` = the quota, `routing_strategy=\"usage-based-routing-"
        'v2"`, its counters in the shared Redis (`redis_host`/`redis_port`), `num_retries=0`, '
        "`cooldown_time` 5 s compressed; a refusal (its own or the provider's 429) is retried "
        "like naive. Its counters are per wall-clock minute and cannot be compressed.",
        "",
        "### Columns",
        "",
        "- 429s: calls the simulator refused (its own count), and their share of all calls.",
        "- util: tokens the provider admitted ÷ what it could have admitted from the reset to "
        "its last admission (OpenAI: bucket + TPM x time; Azure: window allowance x windows "
        "begun); 1.00 = never idle while work waited.",
        f"- makespan: first publish to last result, called off at {ctx.cap:.1f} s "
        "(3 x LB). ÷LB is the issue's ratio. ÷LB−burst divides by LB less the quota the "
        "provider admits at once from a standing start (its bucket; one Azure window): the "
        "floor no strategy can beat, so ÷LB < 1 is possible and ÷LB−burst is the strict one. "
        "Requests given up shorten the makespan of the rest.",
        "- p50 / p95: seconds from submit to result, completed requests; the whole batch is "
        "handed over at the first publish, so these are also the times by which half and "
        "95% of it was done.",
        "- publish s: how long the submitter took to publish the batch (quotaflow: "
        "`Jobs.submit_bodies`, which also records each request on the job), competing for "
        "the same 2 cores as the workers.",
        "- msgs/req: broker messages per request = 1 + deferrals + retries (quotaflow: "
        "`Jobs.status`; the alternatives count their `retry` calls); n/a: no broker. "
        "wasted: provider calls that produced no result (429s, duplicates).",
        "- CPU: share of both cores busy during the run, all processes on the host.",
        "",
    ]
    for policy in s.policies:
        for workers in s.workers:
            rows = [r for r in ctx.results if r.policy == policy and r.workers in (workers, None)]
            if not rows:
                continue
            lines += [
                f"### {TITLES[policy]}, {workers} worker processes",
                "",
                "| Strategy | done | 429s | 429 share | util | makespan s | ÷LB | ÷LB−burst "
                "| p50 s | p95 s | msgs/req | wasted | publish s | CPU |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
                *(_row(r) for r in sorted(rows, key=run_order)),
                "",
            ]
    lines += [f"![{png}]({png})\n" for png in plots]
    lines += reading(ctx)
    return "\n".join(lines).rstrip() + "\n"


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)
