"""The per-request call: `reserve.lua` (or `window.lua`) laid out once per deployment,
and its answer read as a `Decision`.

Every worker makes this call once per request, so it is prepared when the gate is
built: the keys and every argument that does not change between calls are packed
once; a call formats only the costs and the reservation id into one `bytes`.
"""

from __future__ import annotations

from budget.decisions import Decision, Outcome, Reservation
from budget.errors import NeverAdmissible
from budget.limits import Limits
from budget.store import Packer, ScriptStore

_US = 1_000_000
_DIMENSIONS = {1: "tokens", 2: "requests"}


def _literal(packed: bytes) -> bytes:
    # Fixed runs go into a %-format: a key prefix may hold a "%".
    return packed.replace(b"%", b"%%")


class ReserveCall:
    """One deployment's reservation, ready to send."""

    def __init__(
        self,
        store: ScriptStore,
        lim: Limits,
        *,
        horizon_us: int,
        admission_log: bool,
        log_max: int,
        booking_grace_ms: int,
        rate_regain_per_second: float,
    ) -> None:
        self.store = store
        self.lim = lim
        self.deployment = lim.settings.name
        self.token_capacity = lim.settings.token_capacity
        self.request_capacity = lim.settings.request_capacity
        keys, w = lim.keys, lim.windows
        log = "1" if admission_log else "0"
        # ARGV: tokens, requests, <middle>, reservation id, <tail>; KEYS[5] is the
        # booking marker of the reservation id.
        middle: tuple[str | int | float, ...]
        if w is not None:
            self.script = "window"
            head = (keys.window, keys.cooldown, keys.rate, keys.log)
            middle = (
                w.token_allowance, w.request_allowance, w.token_window_us,
                w.request_window_us, horizon_us, log, log_max, w.memory_us,
            )  # fmt: skip
        else:
            self.script = "reserve"
            head = (keys.tokens, keys.requests, keys.log, keys.rate)
            middle = (
                lim.token_interval_us, lim.request_interval_us, lim.token_tolerance_us,
                lim.request_tolerance_us, horizon_us, log, log_max,
            )  # fmt: skip
        # Both scripts end alike: the booking marker and the AIMD regain.
        tail = (booking_grace_ms, rate_regain_per_second)
        packer = store.packer(self.script, count=5 + 3 + len(middle) + len(tail), numkeys=5)
        self._format = b"".join((
            _literal(packer.head + Packer.run(*head)),
            b"$%d\r\n", _literal(keys.booking_prefix.encode()), b"%b\r\n",
            b"$%d\r\n%b\r\n$%d\r\n%b\r\n",
            _literal(Packer.run(*middle)),
            b"$%d\r\n%b\r\n",
            _literal(Packer.run(*tail)),
        ))  # fmt: skip
        self._booking_len = len(keys.booking_prefix.encode())

    def command(self, tokens: int, requests: int, rid: bytes) -> bytes:
        t, r = b"%d" % tokens, b"%d" % requests
        n = len(rid)
        return self._format % (self._booking_len + n, rid, len(t), t, len(r), r, n, rid)

    def __call__(self, tokens: int, requests: int, rid: str) -> Decision:
        code, now_us, start_us, wait_us, binding = self.store.run_packed(
            self.script, self.command(tokens, requests, rid.encode())
        )
        now = now_us / _US
        if code == 0:
            return Decision(
                Outcome.GRANTED, now=now, dimension=_DIMENSIONS.get(binding),
                reservation=Reservation(rid, self.deployment, tokens, requests, start_us / _US),
            )  # fmt: skip
        if code == 1:
            return Decision(
                Outcome.BOOKED, now=now, dimension=_DIMENSIONS.get(binding),
                reservation=Reservation(rid, self.deployment, tokens, requests, start_us / _US),
            )  # fmt: skip
        dimension = _DIMENSIONS.get(binding)
        if code == 2:
            return Decision(Outcome.WAIT, now=now, wait=wait_us / _US, dimension=dimension)
        # Never (3): only reachable when settings changed under a running worker.
        cost, cap = (tokens, self.token_capacity)
        if dimension == "requests":
            cost, cap = (requests, self.request_capacity)
        err = NeverAdmissible(
            deployment=self.deployment, dimension=dimension or "tokens", requested=cost,
            capacity=cap, hint=self.lim.settings.capacity_hint,
        )  # fmt: skip
        return Decision(Outcome.NEVER, now=now, dimension=dimension, error=err)
