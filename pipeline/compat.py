"""A guard around one kombu failure that would otherwise kill a worker.

When the Redis broker connection drops, Celery closes the connection and kombu tries
to push the worker's unacknowledged messages back onto their queues. With the server
gone that cannot work, and kombu's Redis transport raises AttributeError (its
connection info is already released) out of the consumer: the worker's main process
exits with "Unrecoverable error". The messages are safe regardless: they stay in
Redis's unacked index and come back through the visibility timeout. So the failed
restore is logged and the worker reconnects instead of dying.
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
