"""The simulated provider's settings: one frozen value, checked when built or changed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from simulator.limits import POLICIES


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated provider limits, delays and fails requests."""

    #: Interface to bind; loopback unless told otherwise.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (read it back from ``Simulator.url``).
    port: int = 0
    #: Tokens per minute.
    tpm: int = 30_000
    #: Requests per minute.
    rpm: int = 600
    #: "openai" (buckets holding a minute of quota), "azure" (minute counters plus
    #: token and request periods) or "ptu" (Azure provisioned throughput: utilization).
    policy: str = "openai"
    #: Azure policy: length of the token periods (TPM x check_seconds / 60 each).
    check_seconds: float = 10.0
    #: Azure policy: length of the request periods (RPM x request_check_seconds / 60 each).
    request_check_seconds: float = 1.0
    #: Azure policy: seconds between the start of the minute (and of every period) and
    #: the moment the limits are built or reset; None draws it at random each time.
    phase_seconds: float | None = None
    #: OpenAI policy: seconds of quota the buckets hold (60 = a full minute, as
    #: OpenAI does; less makes a provider that runs out sooner, for short tests).
    #: PTU policy: seconds of the provisioned rate that make 100% utilization.
    bucket_seconds: float = 60.0
    #: Base latency of an admitted request.
    latency_ms: float = 150.0
    #: Extra latency drawn uniformly from 0..latency_jitter_ms.
    latency_jitter_ms: float = 100.0
    #: Extra latency per completion token (generation time).
    output_token_ms: float = 0.0
    #: Fraction of admitted requests answered 500 or 503.
    fail_5xx_rate: float = 0.0
    #: Fraction of admitted requests that hang, then get a 504 the client gave up on.
    timeout_rate: float = 0.0
    #: How long a timed-out request hangs before its 504.
    timeout_hang_seconds: float = 30.0
    #: Fraction of admitted requests whose connection is closed with no response.
    drop_rate: float = 0.0
    #: Another tenant's tokens per minute, charged against the same limits.
    neighbour_tpm: int = 0
    #: When set, required as "Authorization: Bearer <key>" or "api-key: <key>".
    api_key: str | None = None
    #: Largest prompt + output limit a chat request may ask for.
    context_window: int = 128_000
    #: Output limit charged when a chat request sets neither max_tokens nor max_completion_tokens.
    default_max_tokens: int = 4096
    #: Model (or Azure deployment) names answered 404 model_not_found.
    fail_models: frozenset[str] = frozenset()
    #: Seed for fault, latency and completion-length draws; None for a random one.
    seed: int | None = None


#: Fields that ``Simulator.configure`` and ``POST /admin/config`` may change.
RUNTIME_FIELDS = frozenset(
    {
        "tpm", "rpm", "policy", "check_seconds", "request_check_seconds", "phase_seconds",
        "bucket_seconds", "latency_ms",
        "latency_jitter_ms",
        "output_token_ms", "fail_5xx_rate", "timeout_rate", "timeout_hang_seconds",
        "drop_rate", "neighbour_tpm", "fail_models", "api_key",
    }
)  # fmt: skip
LIMIT_FIELDS = (
    "tpm", "rpm", "policy", "check_seconds", "request_check_seconds", "phase_seconds",
    "bucket_seconds",
)  # fmt: skip
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(SimulatorConfig)}


def coerce(name: str, value: Any) -> Any:
    """Check a JSON-ish value against the field's type; ints may stand for floats."""
    kind = _FIELD_TYPES[name]
    if kind == "frozenset[str]":
        if isinstance(value, list | tuple | set | frozenset) and all(
            isinstance(v, str) for v in value
        ):
            return frozenset(value)
        raise ValueError(f"{name} must be a list of strings")
    base, _, none = kind.partition(" | ")
    if value is None and none:
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[base]
    if not ok:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value) if base == "float" else value


def checked(config: SimulatorConfig) -> SimulatorConfig:
    """Return ``config`` if its values make sense, else raise ValueError."""
    c = config
    problems = [
        (c.policy not in POLICIES, f"policy must be one of {POLICIES}"),
        (c.tpm < 1 or c.rpm < 1, "tpm and rpm must be >= 1"),
        (not 0 < c.check_seconds <= 60, "check_seconds must be in (0, 60]"),
        (not 0 < c.request_check_seconds <= 60, "request_check_seconds must be in (0, 60]"),
        (
            c.phase_seconds is not None and not 0 <= c.phase_seconds < 60,
            "phase_seconds must be in [0, 60)",
        ),
        (not 0 < c.bucket_seconds <= 60, "bucket_seconds must be in (0, 60]"),
        (min(c.latency_ms, c.latency_jitter_ms, c.output_token_ms) < 0, "latencies must be >= 0"),
        (c.timeout_hang_seconds < 0 or c.neighbour_tpm < 0, "negative hang or neighbour_tpm"),
        (not 0 <= c.port <= 65535, "port must be in 0..65535"),
        (c.context_window < 1 or c.default_max_tokens < 1, "token limits must be >= 1"),
    ]
    rates = (c.fail_5xx_rate, c.timeout_rate, c.drop_rate)
    problems.append((min(rates) < 0 or sum(rates) > 1, "fault rates must be >= 0, sum <= 1"))
    for bad, message in problems:
        if bad:
            raise ValueError(message)
    return config
