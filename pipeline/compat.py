"""Two adjustments to kombu's Redis transport: a guard and a cost.

The guard, around one kombu failure that would otherwise kill a worker.

When the Redis broker connection drops, Celery closes the connection and kombu tries
to push the worker's unacknowledged messages back onto their queues. With the server
gone that cannot work, and kombu's Redis transport raises AttributeError (its
connection info is already released) out of the consumer: the worker's main process
exits with "Unrecoverable error". The messages are safe regardless: they stay in
Redis's unacked index and come back through the visibility timeout. So the failed
restore is logged and the worker reconnects instead of dying.

The cost: the channel builds a new redis-py client for every publish, ack and event
it sends (`conn_or_acquire`), all on one connection pool, and redis-py 8's
constructor (its response-callback table) took about a tenth of a worker's CPU.
A channel now keeps one client per pool (a client is only a handle on the pool and
safe to share between threads); a new pool (after a reconnect) gets a new one.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def guard_restore_unacked() -> None:
    qos = kombu_redis.QoS
    original = qos.restore_unacked
    if getattr(original, "_quotaflow_guarded", False):
        return

    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return original(self, client)
        except (AttributeError, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning(
                "broker gone while restoring %d unacked message(s) (%s); they stay in "
                "Redis and return after the visibility timeout",
                len(self._delivered),
                exc,
            )
            self._delivered.clear()
            return None

    restore_unacked._quotaflow_guarded = True  # type: ignore[attr-defined]
    qos.restore_unacked = restore_unacked  # type: ignore[method-assign]


def reuse_sync_clients() -> None:
    channel = kombu_redis.Channel
    original = channel._create_client
    if getattr(original, "_quotaflow_reused", False):
        return

    @functools.wraps(original)
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own, registered with its poller: as it was
            return original(self, asynchronous)
        pool = self.pool
        kept = self.__dict__.get("_quotaflow_client")
        if kept is None or kept[0] is not pool:
            kept = self.__dict__["_quotaflow_client"] = (pool, original(self, False))
        return kept[1]

    _create_client._quotaflow_reused = True  # type: ignore[attr-defined]
    channel._create_client = _create_client  # type: ignore[method-assign]
