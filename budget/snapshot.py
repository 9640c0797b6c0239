"""Reading a deployment's budget for status displays: `snapshot.lua`'s raw answer
(and the window set, for a window limiter) as a `BudgetSnapshot`."""

from __future__ import annotations

from budget.decisions import BudgetSnapshot
from budget.limits import Limits
from budget.store import ScriptStore
from budget.window import window_state

_US = 1_000_000


def read_snapshot(store: ScriptStore, lim: Limits, rate_regain_per_second: float) -> BudgetSnapshot:
    now_us, tok_us, req_us, cool_us, aimd_ppm, ft_ppm, fr_ppm, nt, nr = store.run(
        "snapshot",
        [lim.keys.tokens, lim.keys.requests, lim.keys.cooldown, lim.keys.rate],
        [rate_regain_per_second],
    )
    token_factor = min(aimd_ppm, ft_ppm) / 1e6
    request_factor = min(aimd_ppm, fr_ppm) / 1e6
    dep = lim.settings

    def available(tat: int, tolerance: float, interval: float, capacity: float) -> float:
        return max(0.0, min(capacity, (tolerance - max(0, tat - now_us)) / interval))

    if lim.windows is not None:
        longest = max(lim.windows.token_window_us, lim.windows.request_window_us)
        state = window_state(
            lim.windows, store.zrange(lim.keys.window, after=now_us - longest), now_us=now_us,
            cooldown_us=cool_us, token_factor=token_factor, request_factor=request_factor,
        )  # fmt: skip
        return BudgetSnapshot(
            deployment=dep.name,
            now=now_us / _US,
            tokens_available=state.tokens_available,
            tokens_capacity=dep.token_capacity,
            requests_available=state.requests_available,
            requests_capacity=dep.request_capacity,
            booked_ahead_seconds=state.booked_ahead_seconds,
            cooldown_seconds=max(0.0, (cool_us - now_us) / _US),
            rate_factor=token_factor,
            request_rate_factor=request_factor,
            neighbour_tpm=nt / 1000 * 60,
            neighbour_rpm=nr / 1000 * 60,
            effective_tpm=dep.tpm * token_factor,
            effective_rpm=dep.rpm * request_factor,
        )
    ahead = max(tok_us - lim.token_tolerance_us, req_us - lim.request_tolerance_us) - now_us
    return BudgetSnapshot(
        deployment=dep.name,
        now=now_us / _US,
        tokens_available=available(
            tok_us, lim.token_tolerance_us, lim.token_interval_us, dep.token_capacity
        ),
        tokens_capacity=dep.token_capacity,
        requests_available=available(
            req_us, lim.request_tolerance_us, lim.request_interval_us, dep.request_capacity
        ),
        requests_capacity=dep.request_capacity,
        booked_ahead_seconds=max(0.0, ahead / _US),
        cooldown_seconds=max(0.0, (cool_us - now_us) / _US),
        rate_factor=token_factor,
        request_rate_factor=request_factor,
        neighbour_tpm=nt / 1000 * 60,
        neighbour_rpm=nr / 1000 * 60,
        effective_tpm=dep.tpm * token_factor,
        effective_rpm=dep.rpm * request_factor,
    )
