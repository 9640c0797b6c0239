"""A submitter whose deployment list names a deployment no live worker serves is
told so at submit, and `status` lists that queue as having no worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_env, quotaflow, write_batch
from support.cluster import sim_deployment

from settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_edge_a_request_no_worker_serves_is_named_at_submit_and_in_status(
    tmp_path: Path, simulator, cluster
) -> None:  # type: ignore[no-untyped-def]
    sim = simulator(tpm=600_000, rpm=30_000)
    c = cluster(sim)  # the workers serve deployment "sim" only
    c.start_workers(1, concurrency=2)
    # The submitter's list has one more deployment, and no keys.
    submitter = [
        {k: v for k, v in sim_deployment(sim).items() if k != "api_key"},
        {k: v for k, v in sim_deployment(sim, name="other").items() if k != "api_key"},
    ]
    env = cli_env(COLUMNS="300", **settings_env(c.settings))
    env["QUOTAFLOW_DEPLOYMENTS"] = json.dumps(submitter)
    write_batch(tmp_path / "batch.jsonl", 2)

    served = quotaflow("submit", "batch.jsonl", "--job-id", "served", cwd=tmp_path, env=env)
    assert served.returncode == 0, served.stderr
    assert "no live worker" not in served.stderr
    assert c.wait("served").counts["done"] == 2

    lost = quotaflow("submit", "batch.jsonl", "--job-id", "lost", "--deployment", "other",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert lost.returncode == 0, lost.stderr
    warning = " ".join(lost.stderr.split())
    assert "warning: no live worker consumes 2 in quotaflow.other (deployment 'other')" in warning
    assert "QUOTAFLOW_DEPLOYMENTS" in warning

    # The workers' own status (without "other" in its list) shows the queue too.
    shown = quotaflow("status", "lost", cwd=tmp_path, env=cli_env(COLUMNS="300",
                      **settings_env(c.settings)))  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    line = " ".join(shown.stdout.split())
    assert "quotaflow.other: 2 waiting, 0 deferred (no worker)" in line
    assert "quotaflow.sim: 0 waiting, 0 deferred ·" in line + " ·"
    assert "quotaflow.sim: 0 waiting, 0 deferred (no worker)" not in line
