"""Which queues live workers consume, so that a request no worker serves is named.

A submitter and the workers each route by their own deployment list: a request for a
deployment the workers do not have waits in `<queue>.<deployment>`, which no worker
reads. Each worker therefore marks every queue it consumes as live in Redis
(`<prefix>:live:<queue>`, expiring LIVE_TTL_SECONDS after its last heartbeat) and
adds it to the set of known queues (`<prefix>:queues`), as submitters do for the
queues they publish to. `submit` warns about waiting requests in a queue with no
live worker; `status` lists every known queue and marks those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from celery import bootsteps

from pipeline import installed
from pipeline.broker import all_queues, deployment_queues, queue_lists
from settings import Settings
from tasks.jobstate import queues_key

log = logging.getLogger(__name__)

#: Seconds between two heartbeats of a worker.
HEARTBEAT_SECONDS = 10.0
#: A queue no worker has marked for this long has no live worker.
LIVE_TTL_SECONDS = 35


def live_key(prefix: str, queue: str) -> str:
    return f"{prefix}:live:{queue}"


def beat(client: redis.Redis, prefix: str, queues: Iterable[str]) -> None:
    """Mark `queues` as consumed by a live worker (one round trip)."""
    names = list(queues)
    if not names:
        return
    pipe = client.pipeline(transaction=False)
    for queue in names:
        pipe.set(live_key(prefix, queue), 1, ex=LIVE_TTL_SECONDS)
    pipe.sadd(queues_key(prefix), *names)
    pipe.execute()


def announce(client: redis.Redis, settings: Settings) -> None:
    """Record the queues this submitter publishes to, for `status` to list."""
    client.sadd(queues_key(settings.key_prefix), *all_queues(settings))


def known_queues(client: redis.Redis, settings: Settings) -> list[str]:
    """The settings' queues, then every other queue a worker or submitter announced."""
    ours = all_queues(settings)
    others = sorted(
        q.decode() if isinstance(q, bytes) else str(q)
        for q in client.smembers(queues_key(settings.key_prefix))
    )
    return ours + [q for q in others if q not in ours]


def unserved(client: redis.Redis, settings: Settings, queues: Iterable[str]) -> set[str]:
    """The queues among `queues` that no live worker consumes."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        pipe.exists(live_key(settings.key_prefix, queue))
    return {q for q, live in zip(names, pipe.execute(), strict=True) if not live}


def waiting(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Queue -> messages waiting in it (taken by no worker yet)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for name in queue_lists(queue):
            pipe.llen(name)
    sizes = pipe.execute()
    per = len(queue_lists(""))
    return {q: sum(sizes[i * per : (i + 1) * per]) for i, q in enumerate(names)}


def waiting_unserved(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Queue -> requests waiting in it, for the known queues no live worker consumes."""
    idle = unserved(client, settings, known_queues(client, settings))
    return {q: n for q, n in waiting(client, sorted(idle)).items() if n}


def unserved_warning(settings: Settings, waiting: dict[str, int]) -> str:
    """What to tell a submitter about requests that no live worker will take."""
    names = {q: d for d, q in deployment_queues(settings).items()}
    parts = []
    for queue, n in sorted(waiting.items()):
        dep = names.get(queue)
        what = f" (deployment {dep!r})" if dep else ""
        parts.append(f"{n} in {queue}{what}")
    return (
        "no live worker consumes " + ", ".join(parts) + ": they wait until a worker with "
        "these deployments in its QUOTAFLOW_DEPLOYMENTS starts (submitters and workers need "
        "the same deployment list; only the workers need the api keys)"
    )


class Liveness(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: mark the queues this worker consumes as live, every heartbeat."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.client: redis.Redis | None = None
        self.prefix = ""
        self.tref: Any = None
        settings = installed.settings
        if settings is None or settings.redis_url is None:
            return
        self.prefix = settings.key_prefix
        self.client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )

    def start(self, c: Any) -> None:
        if self.client is None:
            return
        self.beat(c)
        self.tref = c.timer.call_repeatedly(HEARTBEAT_SECONDS, self.beat, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.client is not None:
            self.client.close()

    def beat(self, c: Any) -> None:
        assert self.client is not None
        try:
            beat(self.client, self.prefix, c.app.amqp.queues.consume_from)
        except redis.RedisError as exc:
            log.warning("could not mark this worker's queues as live: %s", exc)
