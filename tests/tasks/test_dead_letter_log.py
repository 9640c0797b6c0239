"""An ordinary dead letter, as the worker's log shows it: one warning line."""

from __future__ import annotations

import time

import pytest

from tasks import complete
from tasks.errors import PermanentFailure

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_dead_letter_is_one_warning_line_and_get_raises(simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim)
    (worker,) = c.start_workers(1, concurrency=2)
    body = {"model": "gpt-4o-mini", "max_tokens": 8,
            "messages": [{"role": "user", "content": "[[status:400]] refused"}]}  # fmt: skip
    result = complete.delay(body, job_id="dl", custom_id="bad")
    with pytest.raises(PermanentFailure, match="invalid_request|400"):
        result.get(timeout=60)
    # Celery logs how the task ended just after storing its result.
    deadline = time.monotonic() + 10
    while f"[{result.id}] raised" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = worker.log()
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert len(warnings) == 1, log
    assert "request bad of job dl dead-lettered" in warnings[0]
    assert f"[{result.id}] raised expected" in log  # INFO, no traceback
    assert "Traceback" not in log
    assert c.jobs.status("dl").counts["failed"] == 1
