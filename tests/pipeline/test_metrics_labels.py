"""Tenant labels: any string round-trips or is refused at submit, their number is
bounded, and no field in the metrics hash can break a scrape."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support.cli import QUOTAFLOW, cli_env

from budget import InvalidRequest
from pipeline import app
from pipeline.app import configure
from pipeline.metrics_server import serve
from pipeline.redis_server import free_port
from settings import Settings, settings_env
from tasks import complete, runtime
from tasks.metrics import MAX_TENANT_LENGTH, OTHER_TENANT, counter_field

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ODD_TENANTS = [
    "team|a",
    "x|deployment=forged",
    "a=b",
    "line\nbreak",
    'quote"back\\slash',
    "ünïcødé 租户 🚀",
    "t" * MAX_TENANT_LENGTH,
]


@contextmanager
def metrics_endpoint() -> Iterator[str]:
    port = free_port()
    server = serve(runtime.current(), port=port)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def done_by_tenant(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["tenant"]: v
        for (name, labels), v in samples.items()
        if name == "quotaflow_requests_done_total"
    }


def test_edge_any_tenant_round_trips_through_metrics_and_their_number_is_bounded(
    simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim, metrics_max_tenants=len(ODD_TENANTS))
    c.start_workers(1, pool="threads", concurrency=4)
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    first = [complete.delay(body, tenant=t) for t in ODD_TENANTS]
    for r in first:
        r.get(timeout=60)
    # Every label is taken: later tenants are counted together.
    later = [complete.delay(body, tenant=f"late-{i}") for i in range(3)]
    for r in later:
        r.get(timeout=60)

    with metrics_endpoint() as url:
        done = done_by_tenant(scrape(url))
    assert done == {**dict.fromkeys(ODD_TENANTS, 1.0), OTHER_TENANT: 3.0}


def test_edge_metrics_scrape_survives_malformed_fields(
    redis_server, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    configure(app, Settings(redis_url=redis_server.url))
    good = counter_field("requests_done_total", {"deployment": "sim", "tenant": "ok"})
    redis_client.hset(
        "quotaflow:metrics",
        mapping={
            good: 2,
            "requests_done_total|deployment=sim|tenant=team|a": 1,  # the old encoding
            "requests_done_total": 1,
            "[" * 5000 + "]" * 5000: 1,
            '["requests_done_total", {"bad label": "x"}]': 1,
            '["requests_done_total", {"tenant": 7}]': 1,
            '["bad name!", {}]': 1,
            '["queue_length", {"queue": "forged"}]': 1,
            json.dumps(["requests_done_total", {"tenant": "nan"}]): "not a number",
            b"\xff\xfe": 1,
        },
    )
    # The same series spelt twice (spacing) is added up, not served twice.
    redis_client.hset(
        "quotaflow:metrics", '["requests_done_total", {"deployment": "sim", "tenant": "ok"}]', 1
    )
    with metrics_endpoint() as url:
        samples = scrape(url)
    assert samples[("quotaflow_up", frozenset())] == 1
    assert done_by_tenant(samples) == {"ok": 3.0}
    assert ("quotaflow_queue_length", frozenset({("queue", "forged")})) not in samples
    assert ("quotaflow_queue_length", frozenset({("queue", "quotaflow")})) in samples


def test_edge_over_long_tenant_is_refused_at_submit(
    tmp_path: Path, redis_server, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(redis_url=redis_server.url)
    configure(app, settings)
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    for tenant in ("t" * (MAX_TENANT_LENGTH + 1), "x" * 10_000):
        with pytest.raises(InvalidRequest, match=f"at most {MAX_TENANT_LENGTH}"):
            complete.delay(body, tenant=tenant)

    line = {"custom_id": "a", "url": "/v1/chat/completions", "body": body}
    (tmp_path / "batch.jsonl").write_text(json.dumps(line) + "\n")
    env = cli_env(**settings_env(settings))
    submit = [str(QUOTAFLOW), "submit", "batch.jsonl", "--job-id", "long", "--tenant", "x" * 10_000]
    done = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert (
        f"tenant is 10000 characters long; at most {MAX_TENANT_LENGTH} are allowed" in done.stderr
    )
    assert redis_client.llen("quotaflow") == redis_client.llen("quotaflow.default") == 0
    assert not redis_client.keys("*job*long*")
