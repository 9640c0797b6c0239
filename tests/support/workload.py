"""Shared workloads and checks for the integration and reliability tests."""

from __future__ import annotations

import random
from typing import Any

from budget import Reservation
from tasks.metrics import parse_field
from tasks.runtime import current

# A provider whose bucket holds 2 s of quota at 1,500 tokens/s: fast enough for a
# test, small enough that 200 requests ask for several times what it admits.
SIM = {"tpm": 90_000, "rpm": 3_000, "bucket_seconds": 2.0}
#: Settings for a test that waits out the derived visibility timeout: a shorter outage
#: wait and call timeout (the simulator answers in ~40 ms) bring it from 40 s to 26 s.
SHORT_RUN: dict[str, Any] = {
    "budget_outage_wait_seconds": 1.0,
    "deployment": {"timeout_seconds": 2.0},
}


def bodies(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["the", "budget", "admits", "each", "request", "once", "and", "defers", "the", "rest"]
    out = []
    for i in range(n):
        size = int(rng.paretovariate(1.5) * 20)
        text = " ".join(rng.choice(words) for _ in range(min(size, 300)))
        out.append({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"{i}: {text}"}],
            "max_tokens": rng.choice([16, 32, 64, 128]),
        })  # fmt: skip
    return out


def deliveries(c: Any) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for raw, value in current().metrics.read().items():
        name, labels = parse_field(raw)
        if name == "deliveries_total":
            out[(labels["queue"], labels["reason"])] = value
    return out


def check_complete(c: Any, job_id: str, n: int) -> None:
    lines = list(c.jobs.output_lines(job_id))
    ids = [line["custom_id"] for line in lines]
    assert len(ids) == n and len(set(ids)) == n
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert all(line["response"]["body"]["choices"] for line in lines)


def booked(c: Any) -> Reservation:
    """A reservation booked ahead on the cluster's deployment `sim` (its bucket emptied
    first), as a deferred message carries it."""
    gate = current().gate
    gate.reserve("sim", tokens=int(c.settings.deployments[0].token_capacity))
    decision = gate.reserve("sim", tokens=100)
    assert decision.reservation is not None
    return decision.reservation
