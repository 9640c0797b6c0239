"""The Redis side of the gate: the Lua scripts, registered once per client.

This module offers atomic operations; `gate.py` decides what to do with them.
Connection failures become `BudgetUnavailable` here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from budget.errors import BudgetStoreError, BudgetUnavailable

_SCRIPTS = (
    "reserve",
    "settle",
    "cooldown",
    "observe",
    "snapshot",
    "redeem",
    "window",
    "window_push",
)
#: Error replies that mean "not now" (a restart, a failover, a long script): they
#: pass, so the gate fails closed and waits. Any other error is a fault to report.
_PASSING = (
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
)


def _load(name: str) -> str:
    return resources.files("budget").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class ScriptStore:
    """Runs the gate's scripts with EVALSHA (one round trip each)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {name: client.register_script(_load(name)) for name in _SCRIPTS}

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self._scripts[name](keys=list(keys), args=list(args))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(
                f"budget store unreachable ({exc}); nothing is admitted until Redis answers"
            ) from exc
        except redis.ResponseError as exc:
            # redis-py strips the error code (OOM, READONLY...) from the text: put it back.
            text = f"{getattr(exc, 'status_code', None) or type(exc).__name__}: {exc}"
            if isinstance(exc, _PASSING) or str(exc).startswith("BUSY"):
                raise BudgetUnavailable(f"budget store cannot answer now ({text})") from exc
            raise BudgetStoreError(f"budget store error in {name}.lua ({text})") from exc

    def time(self) -> float:
        """The Redis server's clock, in seconds."""
        try:
            sec, usec = self.client.time()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(f"budget store unreachable ({exc})") from exc
        return sec + usec / 1e6

    def zrange(self, key: str) -> list[tuple[bytes, float]]:
        """A sorted set's members with their scores, lowest first."""
        try:
            pairs: Any = self.client.zrange(key, 0, -1, withscores=True)
            return [(m if isinstance(m, bytes) else str(m).encode(), float(s)) for m, s in pairs]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(f"budget store unreachable ({exc})") from exc

    def zrem(self, key: str, member: str) -> None:
        try:
            self.client.zrem(key, member)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(f"budget store unreachable ({exc})") from exc

    def lrange(self, key: str) -> list[bytes]:
        try:
            return [
                v if isinstance(v, bytes) else v.encode() for v in self.client.lrange(key, 0, -1)
            ]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(f"budget store unreachable ({exc})") from exc
