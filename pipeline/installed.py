"""The settings this process runs with, held here rather than on `app.conf`.

`celery inspect conf`, `celery report` and Flower's worker pages print every key of
`app.conf`; Celery masks only the keys it recognises (`broker_url`, `*PASSWORD*`, ...),
and the Settings object carries the Redis URL with its password.
"""

from __future__ import annotations

from settings import Settings

#: The installed settings; None until the app is configured.
settings: Settings | None = None
#: Why the settings could not be built, for the worker to refuse with.
error: str | None = None


def install(new: Settings) -> None:
    global settings, error
    settings, error = new, None


def failed(message: str) -> None:
    global error
    error = message
