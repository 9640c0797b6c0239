"""Backpressure that reaches the broker: a saturated deployment's requests wait in
its queue, one message each, instead of cycling through the workers as deferrals.

New requests go to their deployment's queue (`<queue>.<deployment>`, see
pipeline.publish.route_task). A worker that consumes the main queue consumes every
deployment's queue too (`celery -A pipeline worker -Q quotaflow,quotaflow.retry` is
enough). `Backlog`, a step of the worker's consumer, reads each deployment's gate
every `intake_poll_seconds` and stops taking from its queue while the deployment is booked
more than `pause_seconds` ahead, taking from it again once it is not. The paused
requests wait in Redis in order (FIFO), count as queued, and cost nothing; a
request that is taken can start at once or nearly so, and runs from its first
delivery. A paused deployment never holds up another's queue.

Between two polls a worker takes at most the requests that fill the gap up to
`pause_seconds` (its credit): a free consumer would otherwise take one message per
free pool slot at once, booking them far ahead (each deferred once more) or past
the horizon. The seconds of quota one taken message books are learned from the gate
(booked-ahead growth over messages this worker took): with several workers each
learns a share, so together they take what the deployment can start.

Pausing is a change to this worker's task consumer only (the queues it serves stay
as they were): on a broker reconnect the consumer starts again on every queue and the
next poll pauses what is still booked ahead. A queue the operator stopped with
`celery control cancel_consumer` is left alone until `add_consumer` brings it back.

The gates are read on a thread of their own (a slow Redis would otherwise stall the
consumer's event loop: its ETA timers, acks and broker reads); what they say is
applied on the consumer's loop (`call_soon`), as Celery's `cancel_consumer` control
command does. A lane whose gate cannot be read, for whatever reason, is left as it
is and the other lanes go on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps

from budget import Gate
from pipeline import installed
from pipeline.broker import deployment_queues

log = logging.getLogger(__name__)

#: Seconds a gate read may take before this poll gives up (the consumer's loop waits).
READ_TIMEOUT_SECONDS = 0.5
#: Seconds between two warnings that the gates cannot be read.
WARN_EVERY_SECONDS = 30.0
#: While a queue is paused, the Redis transport's blocking pop returns at least this
#: often (see `Backlog._pickup`), and at most as often as the gates are read.
PICKUP_FLOOR_SECONDS = 0.05


@dataclass
class _Lane:
    """One deployment's queue, as this worker's consumer takes from it."""

    queue: str
    #: Messages this worker may still take before the next poll.
    credit: float = math.inf
    #: Messages taken since the last poll.
    taken: int = 0
    #: Seconds of quota one taken message books (learned; None until seen).
    cost: float | None = None
    #: Booked-ahead seconds and monotonic time at the last poll.
    ahead: float = 0.0
    at: float = 0.0


class Backlog(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: pause a deployment's queue while its gate is booked ahead."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.gate: Gate | None = None
        self.client: redis.Redis | None = None
        self.tref: Any = None
        #: Deployment -> its lane, for the deployments this worker consumes for.
        self.lanes: dict[str, _Lane] = {}
        self.by_queue: dict[str, _Lane] = {}
        self.pause_seconds = 0.0
        self.poll_seconds = 0.0
        #: Whether the broker's Redis takes fractional BRPOP timeouts (6.0 and later).
        self._fractional: bool | None = None
        #: Deployment -> when its unreadable gate was last logged (monotonic).
        self._warned: dict[str, float] = {}
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        settings = installed.settings
        if settings is None or settings.redis_url is None:
            return
        queues = c.app.amqp.queues
        if settings.queue in queues.consume_from:
            # Serving the main queue means serving the deployments' queues too.
            for name in deployment_queues(settings).values():
                if name not in queues.consume_from:
                    queues.select_add(queues[name])
        self.lanes = {
            dep: _Lane(q)
            for dep, q in deployment_queues(settings).items()
            if q in queues.consume_from
        }
        self.by_queue = {lane.queue: lane for lane in self.lanes.values()}
        self.client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=READ_TIMEOUT_SECONDS,
            socket_connect_timeout=READ_TIMEOUT_SECONDS,
        )
        self.gate = Gate(
            self.client,
            settings.deployments,
            key_prefix=settings.key_prefix,
            rate_regain_per_second=settings.rate_regain_per_second,
        )
        # Below this, a request taken now starts at once or waits in place (a
        # booking within inline_seconds is not deferred), and what one poll's
        # credit overshoots still fits within the booking horizon.
        self.pause_seconds = min(self.gate.inline_seconds / 2, settings.booking_horizon_seconds / 4)
        self.poll_seconds = settings.intake_poll_seconds

    def start(self, c: Any) -> None:
        if not self.lanes:
            return
        # Count what the consumer takes from each lane (on its loop, as it takes it).
        for name in list(c.strategies):
            if name.startswith("quotaflow."):
                c.strategies[name] = self._counting(c, c.strategies[name])
        self._stopping = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, args=(c, self._stopping), name="quotaflow-backlog",
            daemon=True,
        )  # fmt: skip
        self._reader.start()

    def stop(self, c: Any) -> None:
        self._stopping.set()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2 * READ_TIMEOUT_SECONDS * max(1, len(self.lanes)))

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.client is not None:
            self.client.close()

    def _counting(self, c: Any, strategy: Any) -> Any:
        def counted(message: Any, *args: Any, **kwargs: Any) -> Any:
            lane = self.by_queue.get((message.delivery_info or {}).get("routing_key", ""))
            if lane is not None:
                lane.taken += 1
                lane.credit -= 1
                if lane.credit <= 0 and c.task_consumer is not None:
                    c.task_consumer.cancel_by_queue(lane.queue)
            return strategy(message, *args, **kwargs)

        return counted

    def _read_loop(self, c: Any, stopping: threading.Event) -> None:
        """On the reader thread: read every lane's gate each poll, hand the readings to
        the consumer's loop."""
        while not stopping.wait(self.poll_seconds):
            try:
                reads = self.read()
            except Exception:  # a dead reader would leave paused lanes paused for good
                log.exception("intake: could not read the gates; trying again")
                continue
            if not stopping.is_set():
                c.call_soon(self._apply_safely, c, reads)

    def _apply_safely(self, c: Any, reads: dict[str, tuple[float, float] | None]) -> None:
        # A callback on the consumer's loop: an exception here would stop the worker.
        try:
            self.apply(c, reads)
        except Exception:
            log.exception("intake: could not apply the gates' readings; trying again")

    def read(self) -> dict[str, tuple[float, float] | None]:
        """Each lane's (booked ahead, cooldown left), None where its gate is unreadable."""
        reads = {dep: self.booked_ahead(dep) for dep in self.lanes}
        if self._fractional is None:
            try:
                assert self.client is not None
                major = int(str(self.client.info("server")["redis_version"]).split(".")[0])
                self._fractional = major >= 6
            except (redis.RedisError, KeyError, ValueError):
                pass  # asked again at the next poll
        return reads

    def poll(self, c: Any) -> None:
        """Read the gates and apply what they say, at once (tests and tools)."""
        self.apply(c, self.read())

    def apply(self, c: Any, reads: dict[str, tuple[float, float] | None]) -> None:
        """On the consumer's loop: pause or resume each lane by its gate's reading."""
        consumer = c.task_consumer
        if consumer is None or self.gate is None:
            return
        selected = c.app.amqp.queues.consume_from
        for dep, lane in self.lanes.items():
            if lane.queue not in selected:
                continue  # the operator cancelled it (cancel_consumer): theirs to resume
            read = reads.get(dep)
            if read is None:
                continue  # unreadable: leave the queue as it is
            booked, cooling = read
            ahead = max(booked, cooling)
            # A cooldown moves the buckets by its length: not what messages book.
            self._learn(lane, ahead, usable=cooling <= 0)
            room = self.pause_seconds + self.poll_seconds - ahead
            if lane.cost is None:
                # Nothing learned yet: with room now the burst takes what it can; once
                # the deployment is booked ahead, one message per poll until the cost
                # of one is known (taking more would book past the horizon).
                lane.credit = math.inf if ahead <= 0 else 1.0
            else:
                lane.credit = max(0.0, room / lane.cost)
                if ahead <= 0:
                    # Nothing booked ahead: take at least one, however much one costs
                    # (a request of more than `room` seconds of quota would otherwise
                    # never be taken).
                    lane.credit = max(1.0, lane.credit)
            consuming = consumer.consuming_from(lane.queue)
            if consuming and (ahead > self.pause_seconds or lane.credit < 1):
                consumer.cancel_by_queue(lane.queue)
            elif not consuming and ahead <= self.pause_seconds and lane.credit >= 1:
                consumer.add_queue(c.app.amqp.queues[lane.queue])
                consumer.consume()
        self._pickup(consumer)

    def _pickup(self, consumer: Any) -> None:
        """While a queue is paused, keep the broker's blocking pop short (see `pickup`)."""
        if self._fractional is None:
            return  # not known yet: the reader asks at the next poll
        paused = any(not consumer.consuming_from(lane.queue) for lane in self.lanes.values())
        short = max(self.poll_seconds, PICKUP_FLOOR_SECONDS)
        pickup(consumer, short if paused and self._fractional else None)

    @staticmethod
    def _learn(lane: _Lane, ahead: float, *, usable: bool) -> None:
        now = time.monotonic()
        if usable and lane.taken and lane.ahead > 0 and ahead > 0:
            booked = ahead - lane.ahead + (now - lane.at)
            if booked > 0:
                sample = booked / lane.taken
                lane.cost = sample if lane.cost is None else 0.7 * lane.cost + 0.3 * sample
        elif usable and lane.taken and ahead <= 0 and lane.cost is not None:
            # The gate ran dry although this worker took messages: one books less than
            # learned (smaller requests, or the rate came back after a cut). Without
            # this, a cost learned too high would starve the deployment for good:
            # nothing is booked ahead to learn a smaller one from.
            lane.cost /= 2
        lane.taken, lane.ahead, lane.at = 0, ahead, now

    def booked_ahead(self, deployment: str) -> tuple[float, float] | None:
        """Seconds `deployment` is booked ahead and seconds left of its cooldown, or
        None when its gate cannot be read (whatever the reason: one lane's fault must
        not stop the others)."""
        assert self.gate is not None
        try:
            snap = self.gate.snapshot(deployment)
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned.get(deployment, -math.inf) > WARN_EVERY_SECONDS:
                self._warned[deployment] = now
                log.warning("backlog: cannot read the gate of %s: %r", deployment, exc)
            return None
        return snap.booked_ahead_seconds, snap.cooldown_seconds


def pickup(consumer: Any, seconds: float | None) -> None:
    """Have the Redis transport's blocking pop return within `seconds` (None: its own
    timeout, 1 s by default).

    The transport sends each BRPOP for the queues consumed when it is sent: a queue
    resumed while one waits is read only after it returns, and all workers' pops,
    started by one burst, return together. Left at 1 s, the gate would stand idle that
    long on a resume. A broker that delivers on its own (AMQP) has no such wait.
    """
    channel = consumer.channel
    default = getattr(channel.connection, "brpop_timeout", None)
    if default is not None and hasattr(channel, "brpop_timeout"):
        channel.brpop_timeout = default if seconds is None else seconds
