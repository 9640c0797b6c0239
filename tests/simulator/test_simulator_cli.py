"""`python -m simulator`: a flag per setting; serves until SIGTERM."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulator import SimulatorConfig, main

REPO = Path(__file__).resolve().parents[2]


# -- CLI and load -------------------------------------------------------------------------


def test_cli_has_a_flag_for_every_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in SimulatorConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--latency-ms", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "quotaflow simulator listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        conn = http.client.HTTPConnection("127.0.0.1", int(line[len(prefix) :]), timeout=10)
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"ok": True}
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
