"""`quotaflow metrics`: Prometheus text read from Redis at scrape time, during and after a job."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli import QUOTAFLOW, cli_env
from support.processes import stop_session

from pipeline.redis_server import free_port
from settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextlib.contextmanager
def serving(env: dict[str, str], port: int, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(QUOTAFLOW), "metrics", "--port", str(port)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop_session(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def scrape(port: int, timeout: float = 20) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def write_batch(path: Path, n: int) -> None:
    """`n` requests, and one the provider answers 404 (a dead letter)."""
    with path.open("w") as fh:
        for i in range(n + 1):
            text = f"item {i}: " + "text " * (3 + i % 20)
            if i == n:
                text += " [[status:404]]"
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": text}],
            }
            line = {"custom_id": f"r{i}", "url": "/v1/chat/completions", "body": body}
            fh.write(json.dumps(line) + "\n")


def test_scrape_during_and_after_a_job(tmp_path: Path, simulator, cluster) -> None:  # type: ignore[no-untyped-def]
    # 200 tokens/s, 1 s burst, ~1,300 tokens of demand: most requests wait as ETA tasks.
    sim = simulator(tpm=12_000, rpm=3_000, bucket_seconds=2.0)
    c = cluster(sim)
    # 16 calls in flight book several seconds ahead: those wait as ETA tasks.
    c.start_workers(1, pool="threads", concurrency=16)
    port = free_port()
    env = cli_env(**settings_env(c.settings))
    with serving(env, port, tmp_path):
        assert value(scrape(port), "quotaflow_up") == 1
        write_batch(tmp_path / "batch.jsonl", 30)
        submit = [str(QUOTAFLOW), "submit", "batch.jsonl", "--job-id", "m", "--tenant", "team-a"]
        done = subprocess.run(submit, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "job m: 31 queued" in done.stdout

        most_deferred = 0.0
        deadline = time.monotonic() + 60
        while not c.jobs.status("m").finished:
            assert time.monotonic() < deadline, (
                f"{c.jobs.status('m')}\n{c.workers[0].log()[-3000:]}"
            )
            live = scrape(port)
            most_deferred = max(
                most_deferred, value(live, "quotaflow_queue_deferred", queue="quotaflow")
            )
            time.sleep(0.3)
        # Deferred tasks wait in worker memory, unacked: counted here, unlike in Flower.
        assert most_deferred > 0

        final = scrape(port)

    dep = {"deployment": "sim"}
    tagged = {"deployment": "sim", "tenant": "team-a"}
    assert value(final, "quotaflow_up") == 1
    assert value(final, "quotaflow_reservations_total", outcome="granted", **dep) > 0
    deferred = value(final, "quotaflow_reservations_total", outcome="booked", **dep) + value(
        final, "quotaflow_reservations_total", outcome="wait", **dep
    )
    assert deferred > 0
    assert value(final, "quotaflow_deferrals_total", **dep) > 0
    assert value(final, "quotaflow_deferral_seconds_total", **dep) > 0
    assert value(final, "quotaflow_provider_responses_total", status="200", **dep) == 30
    assert value(final, "quotaflow_provider_responses_total", status="429", **dep) == 0
    assert value(final, "quotaflow_tokens_estimated_total", **tagged) > 0
    assert value(final, "quotaflow_tokens_prompt_total", **tagged) > 0
    assert value(final, "quotaflow_tokens_completion_total", **tagged) > 0
    assert value(final, "quotaflow_cost_usd_total", **tagged) > 0
    assert value(final, "quotaflow_dead_letters_total", code="model_not_found", **dep) == 1
    assert value(final, "quotaflow_requests_done_total", **tagged) == 30
    for queue in ("quotaflow", "quotaflow.retry", "quotaflow.sim"):
        assert (("quotaflow_queue_length", frozenset({("queue", queue)}))) in final
        assert value(final, "quotaflow_queue_deferred", queue=queue) == 0
    assert value(final, "quotaflow_budget_tokens_capacity", **dep) == 200
    assert value(final, "quotaflow_budget_requests_capacity", **dep) == 50
