"""The plots and the RESULTS.md section of `bench.strategies`.

Everything here is computed from the runs in the `Context`; nothing is typed in.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.results import cpu_model, write_section
from bench.workload import describe

if TYPE_CHECKING:
    from bench.strategies import Context, RunResult

BENCH = Path(__file__).resolve().parent
BEGIN, END = "<!-- strategies:begin -->", "<!-- strategies:end -->"
ORDER = ("quotaflow", "naive", "ratelimit", "article", "litellm", "pacer")
_STYLE = {
    "quotaflow": ("tab:green", "o"),
    "naive": ("tab:red", "s"),
    "ratelimit": ("tab:orange", "^"),
    "article": ("tab:purple", "D"),
    "litellm": ("tab:brown", "v"),
    "pacer": ("tab:blue", ""),
}
_LINESTYLES = ("-", "--", ":", "-.")
_TITLES = {"openai": "OpenAI-style bucket", "azure": "Azure-style windows"}
_SHORT = {
    "quotaflow": "quotaflow",
    "naive": "naive retry",
    "ratelimit": "Celery rate_limit",
    "article": "article",
    "litellm": "LiteLLM Router",
    "pacer": "pacer",
}


# -- plots ---------------------------------------------------------------------------------


def plot_strategies(ctx: Context) -> list[str]:
    """One PNG per policy (429 share and utilization against workers); returns names."""
    names = []
    workers = ctx.scale.workers
    for policy in ctx.scale.policies:
        series: dict[str, list[RunResult]] = {}
        for r in sorted(ctx.results, key=_order):
            if r.policy == policy:
                series.setdefault(r.label, []).append(r)
        if not series:
            continue
        fig, (ax429, axutil) = plt.subplots(1, 2, figsize=(12, 4.8))
        seen: dict[str, int] = {}
        for label, runs in series.items():
            strategy = runs[0].strategy
            color, marker = _STYLE[strategy]
            style = _LINESTYLES[seen.get(strategy, 0) % len(_LINESTYLES)]
            seen[strategy] = seen.get(strategy, 0) + 1
            if runs[0].workers is None:  # the pacer: one process, one run
                for ax, y in ((ax429, 100 * runs[0].share_429), (axutil, runs[0].utilization)):
                    ax.axhline(y, color=color, linestyle="--", label=f"{label} (1 process)")
                continue
            xs = [r.workers for r in runs]
            kw = {"color": color, "marker": marker, "linestyle": style, "label": label}
            ax429.plot(xs, [100 * r.share_429 for r in runs], **kw)
            axutil.plot(xs, [r.utilization for r in runs], **kw)
        ax429.set_title(f"{_TITLES[policy]}: provider 429s")
        ax429.set_ylabel("429s, % of provider calls")
        axutil.set_title(f"{_TITLES[policy]}: utilization")
        axutil.set_ylabel("tokens admitted ÷ provider capacity")
        axutil.axhline(0.95, color="gray", linewidth=0.8, linestyle=":")
        for ax in (ax429, axutil):
            ax.set_xlabel("worker processes (16 threads each)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(workers), [str(w) for w in workers])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
        ax429.set_ylim(bottom=0)
        axutil.set_ylim(0, max(1.05, axutil.get_ylim()[1]))
        handles, labels = axutil.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
        name = f"strategies_{policy}.png"
        fig.savefig(BENCH / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


# -- the RESULTS.md section ----------------------------------------------------------------


def _order(r: RunResult) -> tuple[int, bool, float, float, int]:
    bucket = r.limiter != "window"
    return ORDER.index(r.strategy), bucket, -r.tpm_share, -(r.burst_real or 0), r.workers or 0


def _f(value: float | None, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


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
        f"| {mk} | {ratio} | {ratio_b} | {_f(r.p50, '.1f')} | {_f(r.p95, '.1f')} "
        f"| {_f(r.messages, '.2f', 'n/a')} | {r.wasted:,} | {publish} "
        f"| {_f(r.cpu_busy, '.0%')} |"
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
        "a few tiny requests first (tiktoken, clients), as long-lived workers are. Workers "
        "and the pacer run at `nice 10`: the submitter, Redis and the simulator stand for "
        "other machines (the client's, the provider's) and should not queue behind them.",
        "- quotaflow: `celery -A pipeline worker`, `Jobs.submit_bodies`, quotaflow's default "
        "settings with the time-like ones divided by the compression (booking horizon, "
        "backoff base and cap, deferral jitter, longest deferral); `late_tolerance_seconds` "
        "(2 s) and the 1 s inline-wait threshold of `tasks/base.py` are absolute and left "
        "alone. OpenAI: two settings, `burst_seconds` = the provider's bucket (60 s) and "
        'quotaflow\'s default (if different). Azure: `limiter = "window"` (the default for '
        '`kind = "azure"`) with `window_seconds` 10 s and `request_window_seconds` 1 s '
        "(compressed) and a guard band of "
        f"{_guard_ms():g} ms, not compressed (it covers this host's delay between a call's "
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
                f"### {_TITLES[policy]}, {workers} worker processes",
                "",
                "| Strategy | done | 429s | 429 share | util | makespan s | ÷LB | ÷LB−burst "
                "| p50 s | p95 s | msgs/req | wasted | publish s | CPU |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
                *(_row(r) for r in sorted(rows, key=_order)),
                "",
            ]
    lines += [f"![{png}]({png})\n" for png in plots]
    lines += reading(ctx)
    return "\n".join(lines).rstrip() + "\n"


def reading(ctx: Context) -> list[str]:
    """The targets, checked from this run's numbers, then the mechanisms behind them."""
    out = ["### Reading", ""]
    openai = sorted(
        (r for r in ctx.results if r.strategy == "quotaflow" and r.policy == "openai"),
        key=lambda r: (-(r.burst_real or 0), r.workers or 0),
    )
    if openai:
        out += [
            "quotaflow, OpenAI-style policy, against the targets (0 429s, util ≥ 0.95, makespan "
            "≤ 1.08 x LB, ≤ 2.2 msgs/req; ÷LB−burst shown for the strict reading):",
            "",
            "| burst s | workers | 429s | util | ÷LB | ÷LB−burst | msgs/req | CPU | verdict |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in openai:
            checks = {
                "429s": r.refused_429 == 0,
                "util": r.utilization >= 0.95,
                "makespan": r.makespan is not None and r.makespan <= 1.08 * r.lower_bound,
                "msgs/req": r.messages is not None and r.messages <= 2.2,
            }
            missed = [k for k, ok in checks.items() if not ok]
            strict = r.span <= 1.08 * r.lower_bound_burst
            verdict = "all met" if not missed else "missed " + ", ".join(missed)
            verdict += (
                "; makespan also within 1.08 x (LB−burst)"
                if strict
                else ("; makespan not within 1.08 x (LB−burst)")
            )
            out.append(
                f"| {r.burst_real:g} | {r.workers} | {r.refused_429} | {r.utilization:.2f} "
                f"| {r.span / r.lower_bound:.2f} | {r.span / r.lower_bound_burst:.2f} "
                f"| {_f(r.messages, '.2f')} | {_f(r.cpu_busy, '.0%')} | {verdict} |"
            )
        out.append("")
    azure = sorted(
        (r for r in ctx.results if r.strategy == "quotaflow" and r.policy == "azure"), key=_order
    )
    if azure:
        out += [
            "quotaflow, Azure-style policy, by limiter, against the targets (0 429s, util ≥ "
            "0.90, aim 0.95):",
            "",
            "| limiter | workers | 429s (tokens/requests) | 429 share | util | ÷LB | msgs/req "
            "| verdict |",
            "|---|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in azure:
            name = (
                f"window (guard {_guard_ms():g} ms)"
                if r.limiter == "window"
                else f"bucket, burst {r.burst_real:g} s"
            )
            missed = [k for k, ok in (("429s", r.refused_429 == 0),
                                      ("util", r.utilization >= 0.90)) if not ok]  # fmt: skip
            verdict = "met" if not missed else "missed " + ", ".join(missed)
            if not missed and r.utilization >= 0.95:
                verdict += " (util ≥ 0.95 too)"
            by = f"{r.refused_by.get('tokens', 0)}/{r.refused_by.get('requests', 0)}"
            out.append(
                f"| {name} | {r.workers} | {r.refused_429} ({by}) | {r.share_429:.1%} "
                f"| {r.utilization:.2f} | {r.span / r.lower_bound:.2f} "
                f"| {_f(r.messages, '.2f')} | {verdict} |"
            )
        out.append("")
    out += _summary(ctx)
    out += _notes(ctx)
    return out


def _guard_ms() -> float:
    from bench.strategies import WINDOW_GUARD_SECONDS  # noqa: PLC0415

    return WINDOW_GUARD_SECONDS * 1000


def _summary(ctx: Context) -> list[str]:
    """Each strategy over all worker counts, per policy (quotaflow: one setting)."""
    out = [
        "Each strategy over all worker counts (quotaflow: burst 60 s on the bucket; the "
        "window limiter on the windows):",
        "",
        "| policy | strategy | 429s | worst 429 share | util | every request done | msgs/req |",
        "|---|---|--:|--:|--:|---|--:|",
    ]
    for policy in ctx.scale.policies:
        for strategy in ORDER:
            runs = [
                r for r in ctx.results
                if r.policy == policy and r.strategy == strategy
                and r.tpm_share >= 0.999
                and (r.strategy != "quotaflow" or _chosen(r))
            ]  # fmt: skip
            if not runs:
                continue
            msgs = [r.messages for r in runs if r.messages is not None]
            all_done = all(r.done == r.requests for r in runs)
            out.append(
                f"| {policy} | {_SHORT[strategy]} "
                f"| {sum(r.refused_429 for r in runs):,} | {max(r.share_429 for r in runs):.1%} "
                f"| {min(r.utilization for r in runs):.2f}-{max(r.utilization for r in runs):.2f} "
                f"| {'yes' if all_done else 'no'} "
                f"| {f'{min(msgs):.2f}-{max(msgs):.2f}' if msgs else 'n/a'} |"
            )
    return [*out, ""]


def _chosen(r: RunResult) -> bool:
    if r.policy == "azure":
        return r.limiter == "window"
    return r.burst_real == 60.0


def _notes(ctx: Context) -> list[str]:
    k = ctx.scale.scale
    return [
        "Why, mechanism by mechanism:",
        "",
        "- naive and rate_limit send whatever the workers pick up; each 429 is a paid round "
        "trip and another broker message, and more worker processes put more calls in "
        "flight to be refused; with `max_retries=5` some requests are given up. Celery's "
        "`rate_limit` is per worker process (so it is divided by the worker count here), "
        "counts tasks rather than tokens, and has no burst; the rate it actually let "
        "through, in the done column, fell far short of the rate set.",
        "- article: the window resets all at once, so a window's whole budget can be spent "
        "at the end of one window and again at the start of the next, and GET-then-INCRBY "
        "lets concurrent workers pass the same check. Against the bucket this mostly costs "
        "throughput; against 10 s windows its one-minute budget is six windows' allowance "
        "at once, so calls are refused in bulk, and the fixed 10 s requeue has no relation "
        "to when budget frees up.",
        "- pacer: one process with the whole picture paces well on the bucket, but it cannot "
        "be scaled out, its tiktoken estimate undercounts prompts that the provider charges "
        "by characters, and each 429 pauses everything for 15 (compressed) seconds.",
        "- quotaflow, bucket: the gate is the provider's own model (a token bucket with the "
        "same burst, estimated as the provider charges), so it never admits what the "
        "provider would refuse. What it loses is the time between a call's slot and its "
        "arrival at the provider (tens of ms with a busy CPU): for the first calls, and "
        "above all for the last, which ends the run. The gate keeps no margin: if the first "
        "calls reach the provider late while its bucket is full, the provider loses that "
        "refill (a full bucket holds no more) and the gate does not know, so an occasional "
        "429 remains possible; at this compression 25 ms of delay is "
        f"{int(0.025 * ctx.quota.token_rate):,} tokens, more than a median request (in real "
        f"time {int(0.025 * ctx.quota.token_rate / k):,}). A burst a little under the "
        "provider's leaves that margin, and costs the quota between the two bursts, "
        "which the gate never spends: a fixed amount per start from idle, so it weighs "
        "more the shorter the job (compare the quotaflow rows; the compression scales job "
        "and bucket alike, so the same share is lost on a real job of as many minutes of "
        "quota). A booking less than 1 s away is "
        "waited for in "
        "the worker thread (`INLINE_WAIT_SECONDS` in `tasks/base.py`), so at this "
        "compression most requests are never deferred and msgs/req stays near 1; at real "
        "time scales more of them would take their one deferral (at most 2 messages each).",
        "- quotaflow, Azure windows, bucket limiter: under a backlog the gate books at its "
        "full rate, and a token bucket at the full rate can put up to one request more than "
        "a window's allowance into a window, whatever its burst, because bucket and windows "
        "are not aligned; the burst only matters for the first window. " + _after_429(),
        "- quotaflow, Azure windows, window limiter: the gate keeps one period's allowance "
        "in every interval of a period's length at any phase, which is what the provider "
        "checks: it admits nothing a period would refuse if the calls arrived at their "
        "slots. Its windows are the provider's plus the guard band, so a call may reach the "
        "provider up to the guard after its slot; that costs guard ÷ (period + guard) of "
        f"the rate: {_guard_ms():g} ms of {ctx.scale.check_seconds * 1000:.0f} ms here "
        f"({_guard_ms() / (_guard_ms() + ctx.scale.check_seconds * 1000):.1%}), 0.25 s of "
        "10 s (2.4%) with the default at real time. A call later than the guard can land "
        "in the next period, which is where any 429 in its rows comes from: a host whose "
        "CPU is saturated (the CPU column) delays calls by more than the guard, which at "
        "this compression stands for "
        f"{_guard_ms() * k / 1000:g} s of real time. After such a 429 the rate factor "
        "(x0.85) lowers every later window's allowance, which costs utilization for the "
        "rest of the run. The rest of the gap to 1.00 is the start and end of the run (the "
        "first and last periods begun count whole) and periods that end with less left "
        "than any waiting request (small ones fill what they can). A request is deferred "
        "at most once for its slot, so msgs/req stays at or under 2.",
        "- LiteLLM Router: usage-based-routing-v2 counts tokens and requests per wall-clock "
        "minute in Redis and routes away from (or refuses) a deployment over its `tpm`/"
        "`rpm`; with one deployment that is a per-minute admission check. It counts a "
        "request's prompt tokens before the call and its actual usage after it, not the "
        "prompt + max_tokens the provider charges at arrival, and a minute counter cannot "
        "see a 10 s (or here 0.33 s) period: nothing spreads the minute's quota over the "
        "minute, so calls go out as fast as workers take them and the provider refuses "
        "what overfills its bucket or period; those are retried like naive. At this "
        "compression its minute is 30 provider minutes, so its check never binds; at real "
        "time it would let a minute's quota out at once, which an Azure period refuses all "
        "the same.",
        f"- Compression: latency, CPU costs, the 1 s inline-wait threshold and the 2 s "
        f"`late_tolerance_seconds` are absolute, so here they weigh {k:g}x more against the "
        "quota's time scale than in real use; Celery's and Redis's per-message costs do too.",
        "",
    ]


def _after_429() -> str:
    """What quotaflow's gate does after a provider 429, read from the code measured."""
    from budget import gate  # noqa: PLC0415

    down = getattr(gate, "_FACTOR_DECREASE", None)
    regain = getattr(gate, "_FACTOR_REGAIN_PER_SECOND", None)
    floor = getattr(gate, "_FACTOR_FLOOR", None)
    base = (
        "After a 429, `Gate.cooldown` (`budget/lua/cooldown.lua`) only moves a bucket later "
        "than it already is, and with bookings ahead it already is; the refused request "
        "keeps its charge (estimate accounting refunds nothing) and is booked again at the "
        "back."
    )
    if down is None or regain is None:
        return base
    return (
        f"{base} The gate also multiplies its rate by {down:g} once per overload (not "
        f"below {floor:g}) and wins back {regain:g} of the rate per second after it "
        "(`budget/gate.py`): fewer 429s, at the price of running below the quota for a "
        "while after them. A neighbour's share, learned from the provider's headers, is "
        "what stops the next ones."
    )


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)
