"""Redis commands packed as RESP by hand, and sent in one round trip on a pooled
connection: for the gate's per-request call and for the job store's and the submit's
batches, where redis-py's generic path costs more than the round trip itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One Redis command as RESP, packed at once (redis-py packs argument by argument:
    for commands of hundreds of arguments, most of their client cost)."""
    return b"*%d\r\n" % len(args) + b"".join(map(bulk, args))


def execute_packed(client: redis.Redis, commands: Sequence[bytes], *, retry: bool) -> list[Any]:
    """Send packed commands in one round trip on a connection of `client`'s pool and
    return their replies in order; an error reply raises (inside MULTI/EXEC too).

    With `retry` (idempotent commands only), a connection that fails is dropped and
    the whole batch goes again under the client's retry policy, as redis-py would.
    """

    def once() -> list[Any]:
        conn.send_packed_command(commands)
        replies = [conn.read_response() for _ in commands]
        for reply in replies:
            if isinstance(reply, list):
                for item in reply:
                    if isinstance(item, Exception):
                        raise item
        return replies

    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        try:
            return once()
        except (redis.ConnectionError, redis.TimeoutError):
            if not retry:
                raise
            conn.disconnect()
            return conn.retry.call_with_retry(once, lambda _: conn.disconnect())  # type: ignore[no-any-return]
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse it out of step
        raise
    finally:
        pool.release(conn)


def decoded(value: Any) -> str:
    """A Redis reply's bytes (or an already decoded str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
