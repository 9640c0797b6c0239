"""`quotaflow demo`: a batch that asks for far more than the quota, and no 429s.

Everything runs on this machine: a private Redis, the simulated provider in this
process (OpenAI-style token bucket, or with `--provider azure` Azure-style periods:
tokens per 10 s, requests per 1 s, the minute, at a random phase), two local workers.
The quota is chosen from the generated batch so that the run takes about a minute and
a half at full quota.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from budget.estimate import estimate_request
from pipeline.embedded import sigterm_as_interrupt
from pipeline.jobs import Jobs
from pipeline.local import local_cluster
from pipeline.views import console, follow, job_table
from settings import DeploymentSettings, Settings
from simulator import Simulator, SimulatorConfig

MODEL = "gpt-4o-mini"
#: The provider's bucket holds this many seconds of quota (OpenAI's holds 60; less
#: makes a provider that runs dry within seconds, which is what the demo is about).
PROVIDER_BUCKET_SECONDS = 10.0
#: The gate spends at most this much at once. Less than the provider's bucket: a call
#: reaches the provider a little after its slot (a late start within the tolerance below,
#: a busy machine), and the difference must cover that delay at the quota's rate.
GATE_BURST_SECONDS = 5.0
#: A booked call that starts later than this books again instead of using its slot.
LATE_TOLERANCE_SECONDS = 1.0
#: Seconds the batch should take at full quota, after the provider's initial burst.
TARGET_SECONDS = 80.0
RPM = 900
#: Simulated providers: how each limits, and the gate's limiter for it.
PROVIDERS = ("openai", "azure")
#: Azure counts tokens over 10 s periods (TPM/6 each) and requests over 1 s periods.
AZURE_PERIOD_SECONDS = 10.0
AZURE_API_VERSION = "2024-10-21"

_TASKS = (
    "Classify this support ticket as billing, bug, account or other. Ticket:",
    "Summarise the following document in three sentences:",
    "Extract the invoice number, date, total and currency from this invoice:",
    "Translate the following text into French:",
    "Answer the question using only the context below. Context:",
    "List the action items in this meeting transcript:",
)
_TEXT = (
    "the customer reported that invoice payment failed after the account update and "
    "support replied with a refund request while the team reviewed logs from the "
    "service during peak traffic because several users could not sign in to the "
    "dashboard so engineering opened an incident and shipped a fix for the billing "
    "module the quarterly report shows revenue growth in three regions with costs "
    "under budget and a new contract signed for the next year please confirm the "
    "shipping address order number and delivery date before friday"
)
_WORDS = _TEXT.split()
#: Output limits and how often each is asked for: most answers are short, a few long.
_MAX_TOKENS = ((32, 10), (64, 25), (128, 30), (256, 20), (512, 10), (1024, 5))


def make_batch(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` chat requests with a heavy-tailed (log-normal) spread of prompt sizes."""
    rng = random.Random(seed)
    limits, weights = zip(*_MAX_TOKENS, strict=True)
    bodies = []
    for i in range(n):
        # Median ~200 prompt tokens; one in a hundred above ~2,000.
        tokens = min(4000, max(15, int(rng.lognormvariate(math.log(200), 1.0))))
        words: list[str] = []
        chars = 0
        while chars < tokens * 4:
            word = rng.choice(_WORDS)
            words.append(word)
            chars += len(word) + 1
        bodies.append(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You are a careful assistant."},
                    {"role": "user", "content": f"{rng.choice(_TASKS)} #{i}\n{' '.join(words)}"},
                ],
                "max_tokens": rng.choices(limits, weights)[0],
            }
        )
    return bodies


@dataclass(frozen=True)
class Plan:
    """The demo's quota, chosen from the batch's demand."""

    #: Tokens the gate estimates the batch will be charged.
    demand_tokens: int
    requests: int
    tpm: int
    rpm: int

    provider: str = "openai"

    @property
    def burst_seconds(self) -> float:
        """Seconds of quota the provider admits at once from a standing start."""
        return AZURE_PERIOD_SECONDS if self.provider == "azure" else PROVIDER_BUCKET_SECONDS

    @property
    def provider_burst(self) -> float:
        return self.tpm * self.burst_seconds / 60


def plan(bodies: list[dict[str, Any]], provider: str = "openai") -> Plan:
    demand = sum(estimate_request(b, endpoint="chat", context_window=128_000).total for b in bodies)
    first = AZURE_PERIOD_SECONDS if provider == "azure" else PROVIDER_BUCKET_SECONDS
    # (demand - what the provider admits at once) / rate = TARGET_SECONDS.
    tpm = demand * 60 / (TARGET_SECONDS + first)
    return Plan(demand, len(bodies), tpm=int(round(tpm, -3)), rpm=RPM, provider=provider)


def demo_settings(base: Settings, p: Plan, sim: Simulator, api_key: str) -> Settings:
    where: dict[str, Any] = {"kind": "compatible", "base_url": sim.url + "/v1"}
    if p.provider == "azure":
        # kind azure: the Azure client and path, and the window limiter by default.
        where = {"kind": "azure", "base_url": sim.url, "api_version": AZURE_API_VERSION}
    dep = DeploymentSettings(
        name="demo",
        model=MODEL,
        api_key=api_key,  # type: ignore[arg-type]
        tpm=p.tpm,
        rpm=p.rpm,
        burst_seconds=GATE_BURST_SECONDS,
        accounting="estimate",
        timeout_seconds=10.0,
        price_input_per_1m=0.15,
        price_output_per_1m=0.60,
        **where,
    )
    values = base.model_dump()
    # Always a private Redis: the demo never touches a configured one.
    values.update(
        redis_url=None,
        deployments=[dep],
        admission_log=False,
        late_tolerance_seconds=LATE_TOLERANCE_SECONDS,
    )
    return Settings.model_validate(values)


def _intro(p: Plan) -> Panel:
    minute = p.tpm
    text = Text()
    text.append("provider  ", style="bold")
    if p.provider == "azure":
        text.append(
            f"simulated, Azure-style: {p.tpm:,} tokens/min counted per "
            f"{AZURE_PERIOD_SECONDS:g}s period, {p.rpm:,} requests/min per 1s period, at a "
            "phase the client does not know; latency 50-250 ms\n"
        )
        text.append("gate      ", style="bold")
        text.append("the same quota, window limiter (one period's allowance in every "
                    "period-long interval), shared in Redis by 2 workers\n")  # fmt: skip
    else:
        text.append(
            f"simulated, OpenAI-style bucket: {p.tpm:,} tokens/min, {p.rpm:,} requests/min, "
            f"holding {PROVIDER_BUCKET_SECONDS:g}s of quota; latency 50-250 ms\n"
        )
        text.append("gate      ", style="bold")
        text.append(
            f"the same quota, burst {GATE_BURST_SECONDS:g}s, shared in Redis by 2 workers\n"
        )
    text.append("batch     ", style="bold")
    text.append(
        f"{p.requests} chat requests, {p.demand_tokens:,} tokens estimated: "
        f"{p.demand_tokens / p.provider_burst:.0f}x the provider's "
        f"{'first period' if p.provider == 'azure' else 'bucket'}, "
        f"{p.demand_tokens / minute:.1f} minutes of quota, all submitted at once"
    )
    return Panel(text, title="quotaflow demo", title_align="left", expand=False)


def run_demo(
    base: Settings, *, requests: int = 300, seed: int = 7, provider: str = "openai"
) -> int:
    """Run the demo; returns the exit code (130 when interrupted)."""
    bodies = make_batch(requests, seed)
    p = plan(bodies, provider)
    api_key = "sk-demo-" + secrets.token_hex(12)
    console.print(_intro(p))
    sim = Simulator(
        SimulatorConfig(
            tpm=p.tpm,
            rpm=p.rpm,
            policy=provider,
            bucket_seconds=PROVIDER_BUCKET_SECONDS,
            check_seconds=AZURE_PERIOD_SECONDS,
            latency_ms=50.0,
            latency_jitter_ms=200.0,
            api_key=api_key,
            seed=seed,
        )
    )
    with sigterm_as_interrupt():
        sim.start()
        try:
            settings = demo_settings(base, p, sim, api_key)
            with local_cluster(settings, workers=2, concurrency=8, pool="prefork") as (rt, local):
                t0 = time.monotonic()
                with console.status("starting 2 workers (prefork, 8 processes each)"):
                    local.wait_ready()
                console.print(f"workers ready in {time.monotonic() - t0:.1f}s; submitting")
                jobs = Jobs(rt.settings, rt.jobs)
                sim.reset()  # a full bucket at the moment the work arrives
                started = time.monotonic()
                report = jobs.submit_bodies(bodies, job_id="demo", tenant="demo")

                def provider_line() -> Text:
                    s = sim.stats()
                    line = Text("provider: ", style="bold")
                    line.append(f"{s['admitted']} admitted · {s['tokens_charged']:,} tokens · ")
                    line.append(
                        f"{s['refused_429']} refused (429)",
                        style="red" if s["refused_429"] else "green",
                    )
                    return line

                try:
                    status = follow(rt, jobs, report.job_id, local=local, extra=provider_line)
                except KeyboardInterrupt:
                    console.print("[yellow]interrupted[/]: stopping the workers")
                    local.stop(grace=5)
                    console.print(job_table(jobs.status(report.job_id), title="demo (stopped)"))
                    return 130
                elapsed = time.monotonic() - started
                console.print(_summary(p, status, sim.stats(), elapsed))
        finally:
            sim.stop()
    return 0


def _summary(p: Plan, status: Any, stats: dict[str, Any], elapsed: float) -> Table:
    c = status.counts
    charged = int(stats["tokens_charged"])
    burst = p.provider_burst
    burst_requests = p.rpm * p.burst_seconds / 60
    bound_tokens = max(0.0, charged - burst) / p.tpm * 60
    bound_requests = max(0.0, c["done"] - burst_requests) / p.rpm * 60
    sustained = max(0.0, charged - burst) / elapsed * 60
    ceiling = burst + p.tpm * elapsed / 60
    refused = stats["refused_429"]
    t = Table(title="quotaflow demo: summary", title_justify="left", show_header=False, box=None)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    t.add_row("requests", f"[green]{c['done']} done[/] · [red]{c['failed']} failed[/]")
    t.add_row("provider 429s", f"[{'red' if refused else 'green'}]{refused}[/]")
    t.add_row("tokens charged", f"{charged:,} by the provider (the gate reserved "
              f"{status.tokens_estimated:,})")  # fmt: skip
    first = "first period admits" if p.provider == "azure" else "bucket starts full with"
    t.add_row("quota", f"{p.tpm:,} tokens/min; the provider's {first} "
              f"{burst:,.0f} tokens ({p.burst_seconds:g}s)")  # fmt: skip
    t.add_row("achieved", f"{sustained:,.0f} tokens/min beyond that first burst = "
              f"[bold]{sustained / p.tpm:.0%}[/] of the quota")  # fmt: skip
    t.add_row("utilization", f"{charged / ceiling:.0%} of the most the provider could admit "
              f"in {elapsed:.1f}s ({ceiling:,.0f} tokens: first burst + quota x time)")  # fmt: skip
    t.add_row("elapsed", f"{elapsed:.1f}s from submit to the last result")
    which = "tokens" if bound_tokens >= bound_requests else "requests"
    t.add_row(
        "lower bound",
        f"{max(bound_tokens, bound_requests):.1f}s, set by {which}: "
        f"({charged:,} - {burst:,.0f}) tokens / {p.tpm:,} per min = {bound_tokens:.1f}s; "
        f"({c['done']} - {burst_requests:.0f}) requests / {p.rpm:,} per min = "
        f"{bound_requests:.1f}s",
    )
    if p.provider == "azure":
        t.add_row("", "[dim]the bound counts no call latency; the gate's windows are the "
                  "provider's plus a guard band, against timing jitter[/]")  # fmt: skip
    else:
        t.add_row("", "[dim]the bound counts no call latency and the provider's whole bucket; "
                  f"the gate keeps {PROVIDER_BUCKET_SECONDS - GATE_BURST_SECONDS:g}s of it in "
                  "reserve against timing jitter[/]")  # fmt: skip
    t.add_row("deferrals", f"{status.deferrals} (postponed by the gate, not refused by the "
              "provider)")  # fmt: skip
    t.add_row("retries", f"{status.retries} (transient provider failures)")
    return t
