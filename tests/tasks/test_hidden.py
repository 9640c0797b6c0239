"""Celery's success log line for a quotaflow task: the response is hidden unless
`show_task_arguments` (the task events are checked with a real worker and Flower in
tests/pipeline/test_security.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery.app.trace import LOG_SUCCESS

from settings import Settings
from tasks import runtime
from tasks.hidden import HIDDEN_RESULT, _HideResultsFromLog


def success_line(name: str) -> str:
    record = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, LOG_SUCCESS,
        ({"id": "t1", "name": name, "return_value": "{'reply': 'private'}", "runtime": 0.5,
          "args": "()", "kwargs": "{}"},),
        None,
    )  # fmt: skip
    assert _HideResultsFromLog().filter(record)
    return record.getMessage()


@pytest.fixture
def restore_settings() -> Iterator[None]:
    before = runtime.configured()
    yield
    if before is not None:
        runtime.configure(before)


@pytest.mark.parametrize("show", [False, True])
def test_the_success_line_hides_the_response_unless_asked(
    show: bool, restore_settings: None
) -> None:
    runtime.configure(Settings(show_task_arguments=show))
    line = success_line("quotaflow.complete")
    assert ("private" in line) is show and (HIDDEN_RESULT in line) is not show
    assert "private" in success_line("other.task")  # other apps' tasks are left alone
