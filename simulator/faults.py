"""Random draws for an admitted call: its fault and its completion lengths.

Each takes the simulator's seeded ``random.Random`` (under its lock) so that a seed
repeats the same faults, in the same order of draws.
"""

from __future__ import annotations

import math
import random

from simulator.calls import Call, Triggers
from simulator.config import SimulatorConfig


def draw_fault(
    rng: random.Random, config: SimulatorConfig, triggers: Triggers
) -> tuple[str | None, int]:
    """Pick the fault ("5xx", "timeout", "drop" or None) and the status (0 for a drop)."""
    fault = triggers.fault or ("5xx" if triggers.status is not None else None)
    if fault is None:
        draw = rng.random()
        for name, rate in (
            ("5xx", config.fail_5xx_rate),
            ("timeout", config.timeout_rate),
            ("drop", config.drop_rate),
        ):
            if draw < rate:
                fault = name
                break
            draw -= rate
    if fault == "5xx":
        return fault, triggers.status or rng.choice((500, 503))
    return fault, {"timeout": 504, "drop": 0}.get(fault or "", 200)


def draw_lengths(rng: random.Random, call: Call, config: SimulatorConfig) -> tuple[int, list[int]]:
    """The output limit and, per choice, a completion length in 30-100% of it."""
    if call.kind != "chat":
        return 0, []
    limit = call.output_limit
    if not call.explicit_limit:  # the provider never generates past the context
        limit = min(limit, config.context_window - call.prompt_tokens)
    low = max(1, math.ceil(0.3 * limit))
    return limit, [rng.randint(low, limit) for _ in range(call.n)]
