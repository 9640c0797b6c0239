"""What a failed request reports: the dead letter keeps the provider's reason and code,
bounded; the metrics label the code from a fixed set (a provider's or a proxy's JSON
could otherwise make any number of series). Real worker, Redis and simulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks import complete, provider
from tasks.metrics import Metrics, parse_field
from tasks.runtime import current

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def chat(text: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
    }


def test_edge_provider_error_codes_are_bounded_in_dead_letters_logs_and_metrics(  # type: ignore[no-untyped-def]
    simulator, cluster
) -> None:
    sim = simulator()
    c = cluster(sim)
    (worker,) = c.start_workers(1)
    job = "codes"
    c.jobs.store.create(job)
    long_code = "z" * 300  # the message stays inside the burst
    for cid, code in (("odd", "made_up_by_a_proxy"), ("long", long_code), ("known", "")):
        text = f"[[status:400]] [[code:{code}]]" if code else "[[status:404]]"
        complete.apply_async((chat(text),), {"custom_id": cid, "job_id": job})
    assert c.wait(job, timeout=60).counts["failed"] == 3
    entries = {cid: json.loads(raw) for cid, raw in c.jobs.store.dead_letters(job).items()}
    assert entries["odd"]["error"]["code"] == "made_up_by_a_proxy"  # the user sees it
    kept = entries["long"]["error"]["code"]
    assert kept.startswith("zzz") and len(kept) <= provider.MAX_ERROR_CODE
    assert "z" * 100 not in worker.log()
    fields = map(parse_field, current().metrics.read())
    codes = {labels["code"] for name, labels in fields if name == "dead_letters_total"}
    assert codes == {"other", "model_not_found"}


def test_edge_quotaflows_own_failure_codes_keep_their_metric_label(redis_client: Any) -> None:
    # The codes quotaflow itself gives a dead letter (tasks.delivery, tasks.base,
    # tasks.provider's classification) are its own series, never `other`: an alert
    # on dead_letters_total{code="auth_failed"} must see a refused key.
    codes = [
        "auth_failed", "retries_exhausted", "internal_error", "timeout", "invalid_request",
        "never_admissible", "context_length_exceeded", "unknown_deployment",
        "authentication_error", "permission_denied",
    ]  # fmt: skip
    metrics = Metrics(redis_client)
    metrics.add([("dead_letters_total", {"deployment": "d", "code": code}, 1) for code in codes])
    fields = map(parse_field, metrics.read())
    assert {labels["code"] for name, labels in fields if name == "dead_letters_total"} == set(codes)
