"""A submit's task messages, built from one that Celery makes per queue and batch.

Celery's per-message path (`send_task`, `as_task_v2`, kombu's message and the
task-sent event, each built, encoded and wrapped on its own) costs about a
millisecond of CPU per request, most of a large submit. Here Celery and kombu make
one message and its event per queue, exactly as they would send them, and the Redis
transport's writes are recorded instead of sent; every request then fills in what
differs (task id, body, argument reprs, delivery tag; the event's clock and time).
A batch goes out in one round trip: per queue, one LPUSH of its messages (the order
that one LPUSH each would give), then their task-sent events, PUBLISHed by a script.

What a worker, Flower and recovery see is what Celery's path gives
(tests/pipeline/test_messages.py compares the two). Not sent: the
`before_task_publish`/`after_task_publish` signals; quotaflow's own hook skips these
messages anyway (the job store kept them before they were published). Where a
template cannot be made (another broker, a global key prefix, expiring queues), the
caller uses Celery's path.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from kombu.utils.json import JSONEncoder
from kombu.utils.json import dumps as kombu_dumps

from budget.resp import command, execute_packed
from pipeline.publish import message_reprs, route_task
from tasks.metrics import check_tenant

#: Stand-ins for what differs per message, replaced in the recorded JSON.
_SLOTS = ("id", "body", "argsrepr", "kwargsrepr", "tag", "clock", "timestamp")
_SENTINEL = {name: f"@quotaflow-{name}@" for name in _SLOTS}
_SLOT = re.compile(r'"@quotaflow-(\w+)@"')
#: PUBLISH every event of a batch in one command: ARGV[1] a channel, then the events.
_PUBLISH_ALL = "for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end return #ARGV - 1"


#: kombu's json serializer is `json.dumps(obj, cls=JSONEncoder)`: one encoder with the
#: same (default) options, instead of one built per call.
_ENCODE = JSONEncoder().encode


class NoTemplate(Exception):
    """This broker's messages cannot be built from a template: use Celery's path."""


def _format(recorded: str) -> str:
    """The recorded JSON as a str.format template whose fields are the slots."""
    escaped = recorded.replace("{", "{{").replace("}", "}}")
    return _SLOT.sub(lambda m: "{" + m.group(1) + "}", escaped)


def _delivery_tag() -> str:
    """A uuid4 as kombu writes delivery tags, without building a UUID object."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{8 | int(h[16], 16) & 3:x}{h[17:20]}-{h[20:]}"


def _b64(data: str) -> str:
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class Template:
    """One queue's message and task-sent event, with slots for what differs."""

    #: The Redis list the messages go to (the queue at priority 0).
    key: str
    message: str
    #: What follows the args and kwargs in the body: Celery's `embed` (no callbacks).
    embed: Any
    #: Pub/sub channels of the task-sent event (none when events are off).
    topics: tuple[str, ...]
    event_body: str
    event: str

    def render(
        self, task_id: str, args: Any, kwargs: Any, reprs: tuple[str, str], clock: int
    ) -> tuple[str, str | None]:
        """(message, event) as the Redis transport would write them."""
        body = _ENCODE((args, kwargs, self.embed))  # then utf-8, then base64, as kombu
        ident = f'"{task_id}"'
        argsrepr, kwargsrepr = json.dumps(reprs[0]), json.dumps(reprs[1])
        message = self.message.format(
            id=ident, body=f'"{_b64(body)}"', argsrepr=argsrepr, kwargsrepr=kwargsrepr,
            tag=f'"{_delivery_tag()}"',
        )  # fmt: skip
        if not self.topics:
            return message, None
        event_body = self.event_body.format(
            id=ident, argsrepr=argsrepr, kwargsrepr=kwargsrepr, clock=clock,
            timestamp=repr(time.time()),
        )  # fmt: skip
        event = self.event.format(body=f'"{_b64(event_body)}"', tag=f'"{_delivery_tag()}"')
        return message, event


class Batch:
    """Builds and sends one batch of a task's messages on one broker channel."""

    def __init__(
        self,
        app: Celery,
        task: Task,
        channel: Any,
        *,
        options: Mapping[str, Any],
        templates: dict[str, Template] | None = None,
    ):
        if getattr(channel, "global_keyprefix", "") or getattr(channel, "_expires", None):
            raise NoTemplate("the broker prefixes keys or expires queues")
        if not hasattr(channel, "_q_for_pri") or not hasattr(channel, "_put_fanout"):
            raise NoTemplate("not the Redis transport")
        self.app = app
        self.task = task
        self.channel = channel
        #: apply_async options every message of the batch shares.
        self.options = options
        #: Per queue; a caller that sends many batches with the same app, task and
        #: options passes one dict to all of them (a template costs ~10 ms to make).
        self.templates: dict[str, Template] = {} if templates is None else templates
        self._tenants: set[str | None] = set()

    def _template(self, queue: str, args: Any, kwargs: Any) -> Template:
        recorded: list[tuple[str, list[str], dict[str, Any]]] = []
        ch = self.channel

        def put(queue: str, message: dict[str, Any], **_: Any) -> None:
            key = ch._q_for_pri(queue, ch._get_message_priority(message, reverse=False))
            recorded.append(("queue", [key], message))

        def put_fanout(exchange: str, message: dict[str, Any], routing_key: str, **_: Any) -> None:
            recorded.append(("event", list(ch._get_publish_topics(exchange, routing_key)), message))

        # Celery's own path, down to the transport's writes, which are recorded.
        ch._put, ch._put_fanout = put, put_fanout
        try:
            self.task.apply_async(
                args=args, kwargs=kwargs, task_id=_SENTINEL["id"],
                producer=self.app.amqp.Producer(ch), **self.options,
            )  # fmt: skip
        finally:
            del ch._put, ch._put_fanout  # the class's own again
        queues = [r for r in recorded if r[0] == "queue"]
        events = [r for r in recorded if r[0] == "event"]
        if len(queues) != 1 or len(events) > 1:
            raise NoTemplate(f"unexpected publish: {[(kind, to) for kind, to, _ in recorded]}")
        (_, (key,), message) = queues[0]
        if key != queue:
            raise NoTemplate(f"routed to {key!r}, not {queue!r}")
        _, _, embed = json.loads(base64.b64decode(message["body"]))
        message = {**message, "body": _SENTINEL["body"]}
        message["headers"] = {
            **message["headers"], "argsrepr": _SENTINEL["argsrepr"],
            "kwargsrepr": _SENTINEL["kwargsrepr"],
        }  # fmt: skip
        message["properties"] = {**message["properties"], "delivery_tag": _SENTINEL["tag"]}
        topics: tuple[str, ...] = ()
        event_body = event = ""
        if events:
            _, to, sent = events[0]
            fields = json.loads(base64.b64decode(sent["body"]))
            fields.update(
                clock=_SENTINEL["clock"], timestamp=_SENTINEL["timestamp"],
                args=_SENTINEL["argsrepr"], kwargs=_SENTINEL["kwargsrepr"],
            )  # fmt: skip
            event_body = _format(kombu_dumps(fields))
            sent = {**sent, "body": _SENTINEL["body"]}
            sent["properties"] = {**sent["properties"], "delivery_tag": _SENTINEL["tag"]}
            topics, event = tuple(to), _format(kombu_dumps(sent))
        return Template(key, _format(kombu_dumps(message)), embed, topics, event_body, event)

    def send(self, messages: Iterable[tuple[str, Any, Any]]) -> int:
        """Publish (task id, args, kwargs) in one round trip; returns how many."""
        by_key: dict[str, list[bytes]] = {}
        events: dict[tuple[str, ...], list[bytes]] = {}
        for task_id, args, kwargs in messages:
            route = route_task(self.task.name, args, kwargs, {})
            if route is None:
                raise NoTemplate("not routed by quotaflow")
            queue = route["queue"]
            template = self.templates.get(queue)
            if template is None:
                template = self.templates[queue] = self._template(queue, args, kwargs)
            tenant = kwargs.get("tenant")
            if tenant not in self._tenants:  # as QuotaflowAMQP refuses a bad one
                check_tenant(tenant)
                self._tenants.add(tenant)
            clock = self.app.clock.forward() if template.topics else 0
            message, event = template.render(
                task_id, args, kwargs, message_reprs(self.app.amqp, args, kwargs), clock
            )
            by_key.setdefault(template.key, []).append(message.encode())
            if event is not None:
                events.setdefault(template.topics, []).append(event.encode())
        commands = [command(b"LPUSH", key.encode(), *values) for key, values in by_key.items()]
        commands += [
            command(b"EVAL", _PUBLISH_ALL.encode(), b"0", topic.encode(), *sent)
            for topics, sent in events.items()
            for topic in topics
        ]
        self._execute(commands)
        return sum(map(len, by_key.values()))

    def _execute(self, commands: list[bytes]) -> None:
        """Send the commands in one round trip on a connection of the broker's pool
        (never twice: an LPUSH sent again would queue its messages again)."""
        with self.channel.conn_or_acquire() as client:
            execute_packed(client, commands, retry=False)
