"""What quotaflow reads of kombu's Redis transport layout, in one place.

A queue is one list per priority step (step 0 is the bare name); delivered,
unacknowledged messages (running, or held with an ETA) live in the `unacked` hash
as JSON `[message, exchange, routing_key]`.
"""

from __future__ import annotations

from typing import Any

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
