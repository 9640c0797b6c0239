"""What quotaflow reads of kombu's Redis transport layout, in one place.

A queue is one list per priority step (step 0 is the bare name); delivered,
unacknowledged messages (running, or held with an ETA) live in the `unacked` hash
as JSON `[message, exchange, routing_key]`. And the names of quotaflow's queues: the
main one, the retry one, and one per deployment that new requests wait in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
