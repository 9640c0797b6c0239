"""The "Reading" part of the RESULTS.md section: each target checked from the run's
numbers, then the mechanisms behind them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.measures import STRATEGIES, WINDOW_GUARD_SECONDS, run_order

if TYPE_CHECKING:
    from bench.measures import Context, RunResult

_SHORT = {
    "quotaflow": "quotaflow",
    "naive": "naive retry",
    "ratelimit": "Celery rate_limit",
    "article": "article",
    "litellm": "LiteLLM Router",
    "pacer": "pacer",
}


def fmt_or(value: float | None, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


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
                f"| {fmt_or(r.messages, '.2f')} | {fmt_or(r.cpu_busy, '.0%')} | {verdict} |"
            )
        out.append("")
    azure = sorted(
        (r for r in ctx.results if r.strategy == "quotaflow" and r.policy == "azure"), key=run_order
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
                f"window (guard {guard_ms():g} ms)"
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
                f"| {fmt_or(r.messages, '.2f')} | {verdict} |"
            )
        out.append("")
    out += _summary(ctx)
    out += _notes(ctx)
    return out


def guard_ms() -> float:
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
        for strategy in STRATEGIES:
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
        f"the rate: {guard_ms():g} ms of {ctx.scale.check_seconds * 1000:.0f} ms here "
        f"({guard_ms() / (guard_ms() + ctx.scale.check_seconds * 1000):.1%}), 0.25 s of "
        "10 s (2.4%) with the default at real time. A call later than the guard can land "
        "in the next period, which is where any 429 in its rows comes from: a host whose "
        "CPU is saturated (the CPU column) delays calls by more than the guard, which at "
        "this compression stands for "
        f"{guard_ms() * k / 1000:g} s of real time. After such a 429 the rate factor "
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
