"""A deployment's limits as the gate's scripts take them, prepared once per deployment."""

from __future__ import annotations

import math
from dataclasses import dataclass

from budget.errors import NeverAdmissible
from budget.keys import DeploymentKeys, deployment_keys
from budget.window import Windows
from settings import DeploymentSettings

_US = 1_000_000


@dataclass(frozen=True)
class Limits:
    """Intervals and tolerances in Redis microseconds, and the keys, of one deployment."""

    settings: DeploymentSettings
    keys: DeploymentKeys
    #: Microseconds per token and per request at the configured rate.
    token_interval_us: float
    request_interval_us: float
    #: The bursts, as time: capacity x interval.
    token_tolerance_us: float
    request_tolerance_us: float
    #: The window limiter's windows; None for a bucket.
    windows: Windows | None = None

    @classmethod
    def of(cls, dep: DeploymentSettings, key_prefix: str) -> Limits:
        token_interval = 60 * _US / dep.tpm
        request_interval = 60 * _US / dep.rpm
        return cls(
            settings=dep,
            keys=deployment_keys(key_prefix, dep.name),
            token_interval_us=token_interval,
            request_interval_us=request_interval,
            token_tolerance_us=dep.token_capacity * token_interval,
            request_tolerance_us=dep.request_capacity * request_interval,
            windows=Windows.of(dep),
        )


def check_admissible(dep: DeploymentSettings, *, tokens: int, requests: int = 1) -> None:
    """Raise NeverAdmissible when a cost exceeds the deployment's burst (or a window's
    allowance) in any dimension."""
    for dimension, cost, capacity in (
        ("tokens", tokens, dep.token_capacity),
        ("requests", requests, dep.request_capacity),
    ):
        if cost > capacity:
            raise NeverAdmissible(
                deployment=dep.name, dimension=dimension, requested=cost, capacity=capacity,
                hint=dep.capacity_hint,
            )  # fmt: skip


def number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
