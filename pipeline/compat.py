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

Both live in subclasses of kombu's Redis QoS, Channel and Transport, which only
quotaflow's own connections use (`QuotaflowConnection`, the Celery app's
`amqp.Connection`): another Celery app in the same process keeps kombu's transport
as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QuotaflowQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's Redis QoS, with the failed restore on a lost broker guarded."""

    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)
        except (AttributeError, redis.ConnectionError, redis.TimeoutError) as exc:
            delivered: Any = self._delivered
            log.warning(
                "broker gone while restoring %d unacked message(s) (%s); they stay in "
                "Redis and return after the visibility timeout",
                len(delivered),
                exc,
            )
            delivered.clear()
            return None


class QuotaflowChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, keeping one synchronous client per connection pool."""

    QoS = QuotaflowQoS

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own, registered with its poller: as it was
            return super()._create_client(asynchronous)
        pool = self.pool
        kept = self.__dict__.get("_quotaflow_client")
        if kept is None or kept[0] is not pool:
            # A client is built as kombu builds it (its credential provider included),
            # once per pool: a new pool after a reconnect gets a new one.
            kept = self.__dict__["_quotaflow_client"] = (pool, super()._create_client(False))
        return kept[1]


class QuotaflowTransport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = QuotaflowChannel


class QuotaflowConnection(Connection):  # type: ignore[misc]
    """A kombu connection that uses `QuotaflowTransport` where kombu would use its
    Redis transport (redis:// and rediss://); any other transport as kombu chooses."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()
        return QuotaflowTransport if cls is kombu_redis.Transport else cls
