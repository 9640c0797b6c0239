"""The Redis side of the gate: the Lua scripts, registered once per client.

This module offers atomic operations; `gate.py` decides what to do with them.
Connection failures become `BudgetUnavailable` here, once.

The per-request call (`reserve.lua`/`window.lua`) is sent packed: its command is laid
out once per deployment (`Packer`), only the few changing arguments are encoded per
call, and it goes straight to a pooled connection (`run_packed`). redis-py's generic
path encodes every argument and wraps every call in retry and telemetry closures,
which cost more than the round trip itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError

from budget.errors import BudgetError, BudgetStoreError, BudgetUnavailable
from budget.resp import bulk

_SCRIPTS = (
    "reserve",
    "settle",
    "cooldown",
    "observe",
    "snapshot",
    "redeem",
    "window",
    "window_push",
    "window_sync",
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
#: Their codes, and BUSY (no class of its own). Redis 6 wraps an error raised inside a
#: script in its own ERR ("Error running script ... @user_script: 1: -READONLY ..."),
#: which redis-py reads as a plain ResponseError: the code is found in the text.
_PASSING_CODES = frozenset({"READONLY", "LOADING", "TRYAGAIN", "BUSY", "CLUSTERDOWN", "MASTERDOWN"})
_SCRIPT_ERROR_CODE = re.compile(r"@user_script: ?\d+: -([A-Z]+) ")


def passes(exc: redis.ResponseError) -> bool:
    """Whether an error reply means "not now", also when raised inside a script."""
    if isinstance(exc, _PASSING) or str(exc).startswith("BUSY"):
        return True
    inner = _SCRIPT_ERROR_CODE.search(str(exc))
    return inner is not None and inner.group(1) in _PASSING_CODES


def _arg(value: str | int | float) -> bytes:
    return (value if isinstance(value, str) else repr(value)).encode()


class Packer:
    """An EVALSHA laid out once: `head` up to the first changing argument, then
    fixed runs between the changing ones (each already packed)."""

    def __init__(self, sha: str, *, count: int, numkeys: int) -> None:
        #: `count` is every argument after EVALSHA, sha and numkeys.
        self.head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (count + 3) + bulk(sha.encode())
        self.head += bulk(b"%d" % numkeys)

    @staticmethod
    def run(*values: str | int | float) -> bytes:
        """Fixed arguments, packed once."""
        return b"".join(bulk(_arg(v)) for v in values)


def _read(name: str) -> str:
    return resources.files("budget").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _load(name: str) -> str:
    # Lua has no includes: what several scripts share comes first in each.
    return _read("common") + "\n" + _read(name)


class ScriptStore:
    """Runs the gate's scripts with EVALSHA (one round trip each)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {name: client.register_script(_load(name)) for name in _SCRIPTS}
        self._pool = client.connection_pool

    def packer(self, name: str, *, count: int, numkeys: int) -> Packer:
        return Packer(self._scripts[name].sha, count=count, numkeys=numkeys)

    def run_packed(self, name: str, command: bytes) -> Any:
        """Run a command laid out by `packer(name)` in one round trip.

        Same answers and errors as `run`. Connecting is retried under the client's
        own retry policy; the command itself is sent once (see `_send`).
        """
        try:
            conn = self._pool.get_connection()  # connects, if it must, with retries
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._convert(name, exc) from exc
        try:
            try:
                return self._send(conn, command)
            except NoScriptError:
                # Redis restarted or its scripts were flushed: load it, send once more
                # (the script did not run, so nothing is charged twice).
                self.client.script_load(self._scripts[name].script)
                return self._send(conn, command)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise self._convert(name, exc) from exc
        except BaseException:
            conn.disconnect()  # interrupted mid-reply: the connection is out of step
            raise
        finally:
            self._pool.release(conn)

    @classmethod
    def _send(cls, conn: Any, command: bytes) -> Any:
        # A reserve is not idempotent: once the command may have reached Redis, a
        # lost reply (a timeout, a dropped connection) is not sent again, which would
        # charge the bucket twice. The gate fails closed and the task waits instead.
        # Only connecting is retried: until then nothing was sent.
        if not conn.is_connected:
            conn.connect()  # under the client's retry policy
        return cls._once(conn, command)

    @staticmethod
    def _once(conn: Any, command: bytes) -> Any:
        conn.send_packed_command((command,))  # it iterates: bytes alone would be ints
        return conn.read_response()

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self._scripts[name](keys=list(keys), args=list(args))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise self._convert(name, exc) from exc

    @staticmethod
    def _convert(name: str, exc: redis.RedisError) -> BudgetError:
        if not isinstance(exc, redis.ResponseError):
            return BudgetUnavailable(
                f"budget store unreachable ({exc}); nothing is admitted until Redis answers"
            )
        # redis-py strips the error code (OOM, READONLY...) from the text: put it back.
        text = f"{getattr(exc, 'status_code', None) or type(exc).__name__}: {exc}"
        if passes(exc):
            return BudgetUnavailable(f"budget store cannot answer now ({text})")
        return BudgetStoreError(f"budget store error in {name}.lua ({text})")

    def time(self) -> float:
        """The Redis server's clock, in seconds."""
        try:
            sec, usec = self.client.time()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BudgetUnavailable(f"budget store unreachable ({exc})") from exc
        return sec + usec / 1e6

    def zrange(self, key: str, *, after: int | None = None) -> list[tuple[bytes, float]]:
        """A sorted set's members (scored above `after`), with their scores, lowest first."""
        low = "-inf" if after is None else f"({after}"
        try:
            pairs: Any = self.client.zrangebyscore(key, low, "+inf", withscores=True)
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
