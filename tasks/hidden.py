"""What a finished quotaflow task shows outside the worker: not its response.

Celery puts a repr of a task's return value (here: the model's response, which can
carry as much personal data as the prompt) in the `task-succeeded` event, which
Flower shows, and in the worker's "succeeded" log line. For quotaflow's tasks both
say the response is hidden, unless `show_task_arguments` is set. The caller still
gets the response (`.get()`, the job's results): only these copies are hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery.worker.request import Request

from tasks import runtime

#: What task events and the worker log show in place of the response.
HIDDEN_RESULT = "<response hidden: set show_task_arguments to show it>"


def _hidden() -> bool:
    settings = runtime.configured()
    return settings is None or not settings.show_task_arguments


class QuietRequest(Request):  # type: ignore[misc]
    """The worker's view of one quotaflow task: its success event carries no response."""

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 (Celery's name)
        if type == "task-succeeded" and "result" in fields and _hidden():
            fields["result"] = HIDDEN_RESULT
        super().send_event(type, **fields)


class _HideResultsFromLog(logging.Filter):
    """Celery's "Task ... succeeded in ...s: <result>" line, without the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, Mapping)
            and "return_value" in args
            and str(args.get("name", "")).startswith("quotaflow.")
            and _hidden()
        ):
            record.args = {**args, "return_value": HIDDEN_RESULT}
        return True


def hide_results_from_log() -> None:
    """Install the filter on Celery's task-trace logger (once per process)."""
    logger = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, _HideResultsFromLog) for f in logger.filters):
        logger.addFilter(_HideResultsFromLog())
