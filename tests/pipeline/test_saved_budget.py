"""Back-to-back `quotaflow run`s without a configured Redis: the second starts where
the first left the budget, not with a full bucket while the provider's is drained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import cli_env, quotaflow, read_jsonl
from support.cluster import sim_deployment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_edge_back_to_back_runs_meet_no_429s(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # 100 tokens/s, a 30 s provider bucket and a 28 s gate burst (the 2 s gap of the
    # defaults). The batch (~4,300 tokens) is larger than the burst, so a run ends with
    # both buckets drained; the seconds between two runs refill far less than the first
    # calls of the next run (2 workers x 8 in flight, ~215 tokens each) cost.
    sim = simulator(tpm=6_000, rpm=3_000, bucket_seconds=30.0)
    ids = [f"r{i}" for i in range(20)]
    with (tmp_path / "batch.jsonl").open("w") as fh:
        for cid in ids:
            body = {"model": "gpt-4o-mini", "max_tokens": 200,
                    "messages": [{"role": "user", "content": f"story {cid}"}]}  # fmt: skip
            line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(json.dumps(line) + "\n")
    env = cli_env(QUOTAFLOW_DEPLOYMENTS=json.dumps([sim_deployment(sim, burst_seconds=28.0)]))
    env["QUOTAFLOW_STATE_DIR"] = str(tmp_path / "state")
    for n in (1, 2):
        out = f"out{n}.jsonl"
        done = quotaflow("run", "batch.jsonl", "-o", out, cwd=tmp_path, env=env, timeout=150)
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(line["custom_id"] for line in read_jsonl(tmp_path / out)) == sorted(ids)
    stats = sim.stats()
    assert stats["admitted"] == 2 * len(ids)
    assert stats["refused_429"] == 0, stats
