"""A wrong API key: a few refused calls stop the deployment for every worker; its
requests are dead-lettered as `auth_failed` without a call, and `status` says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_env, quotaflow, read_jsonl, write_batch
from support.cluster import sim_deployment
from support.workload import bodies

from settings import settings_env
from tasks.auth import AUTH_FAILURE_LIMIT, read_stops

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WRONG_KEY = "sk-wrong-key-5e0c1a7d"


def test_edge_a_wrong_key_stops_the_deployment_instead_of_failing_each_call(
    tmp_path: Path, simulator, cluster, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # Calls take 200 ms, as a provider's do: the stop reaches the other pool
    # processes while few calls are in flight.
    sim = simulator(tpm=600_000, rpm=30_000, latency_ms=200.0, latency_jitter_ms=0.0)
    wrong = cluster(sim, deployment={"api_key": WRONG_KEY})
    (worker,) = wrong.start_workers(1, concurrency=4)
    report = wrong.jobs.submit_bodies(bodies(40, seed=3))
    status = wrong.wait(report.job_id)
    assert status.counts["failed"] == 40 and status.counts["done"] == 0
    dead = [json.loads(v) for v in wrong.jobs.store.dead_letters(report.job_id).values()]
    assert {d["error"]["code"] for d in dead} == {"auth_failed"}
    refused = sim.stats()["by_status"].get("401", 0)
    # The stop, plus at most a few calls per pool process already past the check.
    assert AUTH_FAILURE_LIMIT <= refused <= AUTH_FAILURE_LIMIT + 4 * 2, sim.stats()
    (stop,) = read_stops(redis_client, "quotaflow")
    assert stop.deployment == "sim"
    assert f"stopped after {AUTH_FAILURE_LIMIT} authentication failures" in stop.reason
    assert "(401)" in stop.reason and "fix its api_key" in stop.reason
    assert WRONG_KEY not in stop.reason
    assert f"stopped after {AUTH_FAILURE_LIMIT} authentication failures" in worker.log()

    env = cli_env(COLUMNS="200", **settings_env(wrong.settings))
    shown = quotaflow("status", report.job_id, cwd=tmp_path, env=env, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "failed by reason: auth_failed 40" in shown.stdout
    assert "stopped sim: deployment 'sim' stopped after" in shown.stdout
    worker.stop()

    # The key fixed: workers with it ignore the stop and clear it; a replay succeeds.
    right = cluster(sim)
    right.start_workers(1, concurrency=4)
    replayed, _ = right.jobs.replay(report.job_id)
    assert replayed == 40
    assert right.wait(report.job_id).counts["done"] == 40
    assert read_stops(redis_client, "quotaflow") == []
    assert sim.stats()["by_status"].get("401", 0) == refused


def test_edge_run_with_a_wrong_key_exits_non_zero_and_says_why(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000, latency_ms=200.0, latency_jitter_ms=0.0)
    ids = write_batch(tmp_path / "batch.jsonl", 20)
    dep = sim_deployment(sim, api_key=WRONG_KEY)
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=json.dumps([dep]))
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "--workers", "1", "--concurrency", "2")
    done = quotaflow(*args, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "20 requests failed" in done.stderr
    assert "failed by reason: auth_failed 20" in done.stdout
    assert "stopped sim: deployment 'sim' stopped after" in done.stdout
    # Not the cluster's "restart the workers, then `quotaflow replay JOB`": `run` has
    # neither, and its job may be on a private Redis that `replay` cannot reach.
    assert "replay JOB" not in done.stdout and "restart the workers" not in done.stdout
    assert (
        "fix its api_key, then run the same command again (quotaflow run batch.jsonl -o "
        "out.jsonl): the failed requests are sent again"
    ) in " ".join(done.stdout.split()), done.stdout
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    assert {line["error"]["code"] for line in lines} == {"auth_failed"}
    assert sim.stats()["by_status"].get("401", 0) < len(ids)
