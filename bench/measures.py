"""What a run measures (`RunResult`), the benchmark's shared state (`Context`), and
how the provider's counts and the finish times become numbers."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleets import SimulatorProcess
from bench.workload import Quota, Scale, Workload
from settings import LimiterKind

#: The token bucket's burst against the Azure-style policy, in real seconds: the
#: provider's window (the row the window limiter is compared with).
AZURE_BUCKET_BURST = 10.0
#: The window limiter's guard band, in seconds, not compressed: it absorbs the time
#: between a call's slot and its arrival at the provider, which is this host's
#: scheduling and HTTP delay (tens of ms with a saturated CPU), not a quota time.
#: quotaflow's default (0.25 s) is meant for real providers over the network.
WINDOW_GUARD_SECONDS = 0.04
#: A run is called off after this many lower bounds.
CAP_FACTOR = 3.0
STRATEGIES = ("quotaflow", "naive", "ratelimit", "article", "litellm", "pacer")
LABELS = {
    "quotaflow": "quotaflow (gate)",
    "naive": "naive retry (backoff + jitter)",
    "ratelimit": "Celery rate_limit (per worker)",
    "article": "article (fixed window, get+add)",
    "litellm": "LiteLLM Router (usage-based-routing-v2)",
    "pacer": "single-process pacer (cookbook)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- results -------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One strategy, one policy, one worker count."""

    strategy: str
    policy: str
    #: Worker processes; None for the pacer (one process, no workers).
    workers: int | None
    label: str
    requests: int
    done: int = 0
    failed: int = 0
    finished: bool = True
    #: Calls the provider received, refused with 429, and tokens it charged.
    received: int = 0
    refused_429: int = 0
    tokens_charged: int = 0
    utilization: float = 0.0
    #: Seconds from the first publish to the last result; None when called off.
    makespan: float | None = None
    #: Seconds the run lasted (the cap when called off).
    elapsed: float = 0.0
    lower_bound: float = 0.0
    #: The lower bound less what the provider admits at once from a standing start.
    lower_bound_burst: float = 0.0
    p50: float | None = None
    p95: float | None = None
    #: Broker messages per request (1 + deferrals + retries); None without a broker.
    messages: float | None = None
    wasted: int = 0
    cpu_busy: float | None = None
    #: quotaflow: burst_seconds in real seconds, and the gate's TPM over the quota.
    burst_real: float | None = None
    tpm_share: float = 1.0
    #: quotaflow: the gate's limiter ("bucket" or "window").
    limiter: str = "bucket"
    #: Azure policy: seconds since the provider's periods began, at the reset.
    phase: float = 0.0
    #: The provider's 429s by the dimension that refused.
    refused_by: dict[str, int] = field(default_factory=dict)
    #: Seconds from the start of submission to the first publish (the clock starts there).
    first_publish: float = 0.0
    #: Seconds from the first publish to the last (0 for the pacer, which has no broker).
    publish_seconds: float = 0.0
    note: str = ""
    #: (seconds from the first publish, tokens) of each admission, for plots.
    admissions: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def share_429(self) -> float:
        return self.refused_429 / self.received if self.received else 0.0

    @property
    def span(self) -> float:
        return self.makespan if self.makespan is not None else self.elapsed


@dataclass(frozen=True)
class AzureVariant:
    """One quotaflow deployment for the Azure-style policy."""

    name: str
    #: "window" (quotaflow's default for Azure) or "bucket".
    limiter: LimiterKind
    #: Bucket: burst_seconds in real (unscaled) seconds.
    burst_real: float = AZURE_BUCKET_BURST


@dataclass
class Context:
    scale: Scale
    workload: Workload
    quota: Quota
    redis_url: str
    sim: SimulatorProcess
    logdir: Path
    redis_version: str = ""
    #: The quotaflow code measured: git commit, and whether it had uncommitted changes.
    code_version: str = ""
    #: Share of the CPU busy before the benchmark started (other work on the host).
    background_cpu: float | None = None
    results: list[RunResult] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        """max(charged tokens / TPM, requests / RPM), in seconds."""
        n, t = len(self.workload.bodies), self.workload.total_tokens
        return max(t / self.quota.token_rate, n / self.quota.request_rate)

    @property
    def cap(self) -> float:
        return CAP_FACTOR * self.lower_bound

    def provider_burst(self, policy: str) -> float:
        """Seconds of quota the provider admits at once from a standing start."""
        return self.scale.minute if policy == "openai" else self.scale.check_seconds

    def capacity(self, policy: str, seconds: float, phase: float = 0.0) -> float:
        """Most tokens the provider can admit in the first `seconds` after a reset
        (Azure: whole periods begun, the first `phase` seconds old at the reset)."""
        r = self.quota.token_rate
        if policy == "openai":
            return r * (self.scale.minute + seconds)
        window = self.scale.check_seconds
        into = phase % window
        return r * window * (math.floor((seconds + into) / window) + 1)

    def azure_variants(self) -> list[AzureVariant]:
        return [
            AzureVariant("bench-azure-window", "window"),
            AzureVariant(f"bench-azure-b{AZURE_BUCKET_BURST:g}", "bucket"),
        ]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def measure(
    ctx: Context,
    res: RunResult,
    t0: float,
    published: list[float],
    finished: dict[str, float],
    failed: dict[str, float],
    stats: dict[str, Any],
) -> None:
    """Fill `res` from the finish times and the simulator's own counts."""
    res.lower_bound = ctx.lower_bound
    res.lower_bound_burst = ctx.lower_bound - ctx.provider_burst(res.policy)
    res.done, res.failed = len(finished), len(failed)
    res.finished = res.done + res.failed >= res.requests
    ends = [*finished.values(), *failed.values()]
    last = max(ends) - t0 if ends else ctx.cap
    res.makespan = last if res.finished else None
    res.elapsed = min(ctx.cap, last) if res.finished else ctx.cap
    # The batch is handed over at t0; a request's latency runs from there to its result.
    latencies = [end - t0 for end in finished.values()]
    res.p50, res.p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    res.publish_seconds = max(published, default=t0) - t0
    res.received = int(stats["requests_received"])
    res.refused_429 = int(stats["refused_429"])
    res.refused_by = {str(k): int(v) for k, v in (stats.get("refused_by") or {}).items()}
    res.tokens_charged = int(stats["tokens_charged"])
    res.admissions = [(float(t) - t0, int(c)) for t, c in stats["admissions"]]
    res.phase = float(stats.get("phase_seconds") or 0.0)
    if res.admissions:
        span = max(0.0, max(t for t, _ in res.admissions))
        res.utilization = res.tokens_charged / ctx.capacity(res.policy, span, res.phase)
    res.wasted = res.received - res.done


def wait_until(poll: Callable[[], int], n: int, deadline: float) -> None:
    while time.time() < deadline and poll() < n:
        time.sleep(0.05)


def record(ctx: Context, res: RunResult) -> None:
    ctx.results.append(res)
    mk = f"{res.makespan:.1f}s" if res.makespan is not None else f"off at {res.elapsed:.0f}s"
    log(
        f"  {res.policy:6} W={res.workers or '-':>2} {res.label:52} done={res.done}/{res.requests}"
        f" 429={res.refused_429} ({res.share_429:.0%}) util={res.utilization:.2f} {mk}"
        f" ÷LB={res.span / res.lower_bound:.2f} msgs={res.messages or 0:.2f}"
        f" cpu={res.cpu_busy or 0:.0%} {res.note}"
    )
    name = f"{res.policy}-{res.workers or 0}-{res.strategy}-{res.limiter}-{res.burst_real or 0:g}"
    (ctx.logdir / f"{name}-{res.tpm_share:.2f}.json").write_text(json.dumps(res.__dict__))
    # In-flight calls of a finished or called-off run end before the next reset.
    time.sleep(0.3)


def run_order(r: RunResult) -> tuple[int, bool, float, float, int]:
    """Sort key of runs in tables and plots: strategy, limiter, gate share, burst, workers."""
    bucket = r.limiter != "window"
    return STRATEGIES.index(r.strategy), bucket, -r.tpm_share, -(r.burst_real or 0), r.workers or 0
