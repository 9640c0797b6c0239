"""The benchmark workload and the scaled-down quota it runs against.

Every strategy gets exactly the same bodies (same seed). Sizes are drawn once, with no
knowledge of any strategy; the quota is then derived from the workload and the time
scale (`Scale`, `quota_for`), so nothing is shaped around a particular strategy.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

#: Common English words; ~4-5 characters per token, like ordinary prose.
_PROSE = (
    "the of and to in is was that for on with as by at from this be are have it an or "
    "which not but were all their has been one there more other its when can would will "
    "into also time two first some these may new after over than only such between most "
    "through year state where many during customer ticket invoice refund order account "
    "shipping delivery product issue request support billing contract service report "
    "summary quarterly revenue policy update review feedback question answer document "
    "section clause payment address warranty return schedule meeting project release"
)
_WORDS = tuple(_PROSE.split(" "))
#: Output limits people set, and how often (a long tail of large ones).
_MAX_TOKENS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_MAX_TOKENS_WEIGHTS = (8, 14, 20, 22, 16, 11, 6, 3)
#: Prompt size in characters: lognormal around ~800 chars (~200 tokens), clipped.
_PROMPT_MEDIAN_CHARS = 800
_PROMPT_SIGMA = 1.1
_PROMPT_MIN_CHARS = 40
_PROMPT_MAX_CHARS = 24_000
MODEL = "gpt-4o-mini"
#: The Azure-style provider counts tokens over periods of this many real seconds...
AZURE_CHECK_REAL_SECONDS = 10.0
#: ...and requests over periods of this many.
AZURE_REQUEST_CHECK_REAL_SECONDS = 1.0


@dataclass(frozen=True)
class Workload:
    """The request bodies and what the provider will charge for them."""

    bodies: list[dict[str, Any]]
    #: Tokens the simulator charges per body (prompt characters / 4 + max_tokens).
    charges: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.charges)

    @property
    def mean_tokens(self) -> float:
        return self.total_tokens / len(self.charges)

    def percentile(self, q: float) -> int:
        ordered = sorted(self.charges)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def provider_charge(body: dict[str, Any]) -> int:
    """What the simulator charges: ceil(message characters / 4) + max_tokens."""
    chars = sum(len(m["content"]) for m in body["messages"])
    return math.ceil(chars / 4) + int(body["max_tokens"])


def make_workload(n: int, *, seed: int = 20251112) -> Workload:
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        chars = int(rng.lognormvariate(math.log(_PROMPT_MEDIAN_CHARS), _PROMPT_SIGMA))
        chars = min(_PROMPT_MAX_CHARS, max(_PROMPT_MIN_CHARS, chars))
        prefix = f"request {i}: "
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prefix + _text(rng, chars - len(prefix))}],
            "max_tokens": rng.choices(_MAX_TOKENS, _MAX_TOKENS_WEIGHTS)[0],
        }
        bodies.append(body)
    return Workload(bodies=bodies, charges=[provider_charge(b) for b in bodies])


def describe(workload: Workload) -> str:
    prompts = sorted(math.ceil(sum(len(m["content"]) for m in b["messages"]) / 4)
                     for b in workload.bodies)  # fmt: skip
    n = len(prompts)

    def pct(values: list[int], q: float) -> int:
        return values[max(0, math.ceil(q * n) - 1)]

    return (
        f"{n} chat requests; prompt tokens p50 {pct(prompts, 0.5)}, p95 {pct(prompts, 0.95)}, "
        f"max {prompts[-1]}; max_tokens drawn from {', '.join(map(str, _MAX_TOKENS))} "
        f"(weights {', '.join(map(str, _MAX_TOKENS_WEIGHTS))}); charge per request p50 "
        f"{workload.percentile(0.5)}, p95 {workload.percentile(0.95)}, max "
        f"{max(workload.charges)}, mean {workload.mean_tokens:.0f}; total "
        f"{workload.total_tokens:,} tokens"
    )


@dataclass(frozen=True)
class Scale:
    """How a real quota is shrunk into a run of a few seconds.

    One provider minute lasts `60 / scale` seconds: the OpenAI-style bucket holds that
    much quota, the Azure-style windows last `10 / scale` s, and every strategy divides
    its real time constants (backoffs, requeues, pauses, windows, horizons) by `scale`.
    Latency and per-request CPU costs are not scaled: they are what they are.
    The quota is set so that the workload's charged tokens take `lower_bound` seconds at
    the quota's rate: the demand is `lower_bound / minute` minutes of quota, all at once.
    """

    requests: int
    lower_bound: float
    scale: float
    workers: tuple[int, ...]
    concurrency: int
    policies: tuple[str, ...]
    strategies: tuple[str, ...]
    latency_ms: float = 100.0
    latency_jitter_ms: float = 100.0

    @property
    def minute(self) -> float:
        return 60.0 / self.scale

    @property
    def check_seconds(self) -> float:
        return AZURE_CHECK_REAL_SECONDS / self.scale

    @property
    def request_check_seconds(self) -> float:
        return AZURE_REQUEST_CHECK_REAL_SECONDS / self.scale


@dataclass(frozen=True)
class Quota:
    tpm: int
    rpm: int

    @property
    def token_rate(self) -> float:
        return self.tpm / 60.0

    @property
    def request_rate(self) -> float:
        return self.rpm / 60.0


def quota_for(workload: Workload, scale: Scale) -> Quota:
    """TPM that serves the workload in `scale.lower_bound` seconds; RPM at Azure's ratio.

    Azure gives 6 RPM per 1,000 TPM, so tokens bind for any mean above 167 tokens.
    """
    tpm = math.ceil(workload.total_tokens / scale.lower_bound * 60)
    return Quota(tpm=tpm, rpm=math.ceil(tpm * 6 / 1000))
