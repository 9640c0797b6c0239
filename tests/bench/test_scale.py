"""`python -m bench.scale` runs end to end and reports every key with sane values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = [
    "requests",
    "cpu_ms_per_request",
    "worker_cpu_ms_per_request",
    "msgs_per_request",
    "redis_peak_bytes_per_request",
    "redis_bytes_per_request_after",
    "submit_per_s",
    "requests_per_s",
]


@pytest.mark.integration
def test_bench_scale_reports_its_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--requests", "30", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert list(result) == KEYS
    assert result["requests"] == 30
    assert 0 < result["worker_cpu_ms_per_request"] <= result["cpu_ms_per_request"] < 1000
    assert result["msgs_per_request"] >= 1.0
    # At N = 30 "after" is within Redis's own allocation noise (it can be negative).
    assert result["redis_peak_bytes_per_request"] > 0
    assert result["redis_peak_bytes_per_request"] >= result["redis_bytes_per_request_after"]
    assert result["submit_per_s"] > 0
    assert result["requests_per_s"] > 0
