"""What quotaflow reads of kombu's Redis transport layout, in one place.

A queue is one list per priority step (step 0 is the bare name); delivered,
unacknowledged messages (running, or held with an ETA) live in the `unacked` hash
as JSON `[message, exchange, routing_key]`. And the names of quotaflow's queues: the
main one, the retry one, and one per deployment that new requests wait in.

Queue depth (`queue_depth`, read by status, watch and every metrics scrape) costs the
same whatever the backlog: LLEN per list, HLEN of the unacked hash, and one slice of
at most HELD_PER_READING unacked messages, classified without decoding their bodies.
A reading continues the previous one's scan; per queue, the held and deferred counts
are those of the last full pass (exact when the hash fits in one reading).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import redis

from budget.resp import decoded

if TYPE_CHECKING:
    from settings import Settings

#: The hash of delivered, unacknowledged messages.
UNACKED_KEY = "unacked"
#: kombu's separator and steps for the per-priority lists of a queue.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold a queue's waiting messages."""
    return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]


def message_id(message: dict[str, Any]) -> str:
    """The task id of a Celery message (protocol 2 keeps it in the headers)."""
    return str((message.get("headers") or {}).get("id", ""))


#: The header `"id": "..."`: kombu keeps the body base64-encoded and every other
#: header's text JSON-escaped, so nothing else in a message reads like it.
_ID = re.compile(rb'"id": "([^"\\]*)"')


def raw_message_id(raw: bytes) -> str:
    """`message_id` of a message as the broker keeps it (JSON), without decoding its
    body; a message in another layout is decoded in full."""
    found = _ID.search(raw)
    if found is not None:
        return found.group(1).decode()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return ""
    # An unacked entry is [message, exchange, routing_key].
    return message_id(parsed[0] if isinstance(parsed, list) else parsed)


def deployment_queue(settings: Settings, deployment: str) -> str:
    """The queue that holds a deployment's new requests until a worker can book them:
    `<queue>.<deployment>` (never the retry queue's name)."""
    name = f"{settings.queue}.{deployment}"
    return f"{name}.requests" if name == settings.retry_queue else name


def deployment_queues(settings: Settings) -> dict[str, str]:
    """Deployment name -> its queue, for every configured deployment."""
    return {d.name: deployment_queue(settings, d.name) for d in settings.deployments}


def all_queues(settings: Settings) -> list[str]:
    """Every queue quotaflow's messages wait in: main, retry, one per deployment."""
    return [settings.queue, settings.retry_queue, *deployment_queues(settings).values()]


#: Messages of a list one look-up command reads (`find_ids.lua`).
FIND_SLICE = 200


class BrokerLookup:
    """Which task ids are in the broker, read a bounded slice per command.

    Nothing is read in one transaction: a look-up can take a while on a long backlog
    and the gate shares this Redis. Lists are read from the head (index 0, where kombu
    pushes) towards the tail (where workers pop): a push shifts what is left to read
    (read twice, harmless), a pop takes from the end (nothing shifts), so a message
    that stays in its list is never skipped. Then the unacked hash, where a popped
    message goes. A message caught between the two (popped, not yet in the hash)
    is missed: a caller looks more than once, some time apart.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        text = resources.files("pipeline").joinpath("lua", "find_ids.lua").read_text("utf-8")
        self._find = client.register_script(text)

    def present(self, task_ids: Iterable[str], lists: Iterable[str]) -> set[str]:
        """Of `task_ids`, those waiting in one of `lists` or held by a worker (unacked).

        Only ids leave Redis for the lists; stops as soon as every id is found."""
        wanted = set(task_ids)
        found: set[str] = set()
        for name in lists:
            start = 0
            while wanted:
                length, *hits = self._find(
                    keys=[name], args=[start, start + FIND_SLICE - 1, *wanted]
                )
                seen = {decoded(h) for h in hits}
                found |= seen
                wanted -= seen
                start += FIND_SLICE
                if start >= int(length):
                    break
        cursor = None
        while wanted and cursor != 0:
            cursor, entries = self.client.hscan(UNACKED_KEY, cursor or 0, count=_SCAN_STEP)
            seen = {raw_message_id(raw) for raw in cast(dict[bytes, bytes], entries).values()}
            found |= seen & wanted
            wanted -= seen
        return found


#: Most unacked messages one reading of the queue depth classifies.
HELD_PER_READING = 2_000
_SCAN_STEP = 500
#: kombu writes the routing key last: `..., "exchange", "routing_key"]`.
_ROUTING_KEY = re.compile(rb', "((?:[^"\\]|\\.)*)"\]$')
_ETA = b'"eta": "'


def held_message(raw: bytes) -> tuple[str, bool] | None:
    """(routing key, has an ETA) of an unacked entry; None if it is not one.

    Read from the raw JSON: decoding it would decode the message body too, for two
    fields. An entry in another layout is decoded in full.
    """
    found = _ROUTING_KEY.search(raw)
    if found is not None and b"\\" not in found.group(1):
        return found.group(1).decode(), _ETA in raw
    try:
        message, _exchange, routing_key = json.loads(raw)
        return str(routing_key), bool((message.get("headers") or {}).get("eta"))
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class QueueDepth:
    """What waits in the broker, per queue."""

    #: Messages waiting in the queue's lists (what Flower and LLEN show).
    ready: dict[str, int] = field(default_factory=dict)
    #: Deferred tasks: delivered with an ETA, held by a worker until their countdown ends.
    deferred: dict[str, int] = field(default_factory=dict)
    #: Every delivered, unacknowledged message: deferred, running or prefetched.
    unacked: dict[str, int] = field(default_factory=dict)
    #: False while the unacked hash is larger than one reading and no pass has ended
    #: yet: `deferred` and `unacked` then count only the part read so far.
    complete: bool = True
    #: Unacked messages of every queue (HLEN), exact at the time of the reading.
    held_total: int = 0


class HeldScan:
    """The unacked hash, counted per queue a slice at a time across readings."""

    def __init__(self, queues: list[str]) -> None:
        self.queues = queues
        self.cursor = 0
        self._unacked = dict.fromkeys(queues, 0)
        self._deferred = dict.fromkeys(queues, 0)
        self.last: tuple[dict[str, int], dict[str, int]] | None = None

    def read(self, client: redis.Redis) -> tuple[dict[str, int], dict[str, int], bool]:
        """(unacked, deferred, complete) after at most HELD_PER_READING more entries."""
        seen = 0
        while seen < HELD_PER_READING:
            self.cursor, found = client.hscan(UNACKED_KEY, self.cursor, count=_SCAN_STEP)
            entries = cast(dict[bytes, bytes], found)
            seen += len(entries)
            for raw in entries.values():
                held = held_message(raw)
                if held is not None and held[0] in self._unacked:
                    self._unacked[held[0]] += 1
                    self._deferred[held[0]] += held[1]
            if self.cursor == 0:  # a full pass: it becomes the answer
                self.last = (self._unacked, self._deferred)
                self._unacked = dict.fromkeys(self.queues, 0)
                self._deferred = dict.fromkeys(self.queues, 0)
                break
        if self.last is None:
            return dict(self._unacked), dict(self._deferred), False
        return dict(self.last[0]), dict(self.last[1]), True


#: One scan per client, so that status --watch and a metrics server continue theirs.
_scans: weakref.WeakKeyDictionary[redis.Redis, HeldScan] = weakref.WeakKeyDictionary()


def queue_depth(client: redis.Redis, settings: Settings) -> QueueDepth:
    """Every queue's waiting, held and deferred messages, at a bounded cost (above)."""
    queues = all_queues(settings)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for name in queue_lists(queue):
            pipe.llen(name)
    pipe.hlen(UNACKED_KEY)
    *sizes, held_total = pipe.execute()
    per = len(queue_lists(""))
    ready = {q: sum(sizes[i * per : (i + 1) * per]) for i, q in enumerate(queues)}
    scan = _scans.get(client)
    if scan is None or scan.queues != queues:
        scan = _scans[client] = HeldScan(queues)
    unacked, deferred, complete = scan.read(client)
    return QueueDepth(ready, deferred, unacked, complete=complete, held_total=int(held_total))
