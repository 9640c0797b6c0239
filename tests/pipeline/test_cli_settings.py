"""The `quotaflow` command's answers to broken settings: one line each, naming the
source, in the CLI and in the worker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import NO_KEY, cli_env, quotaflow
from support.cluster import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# -- settings: every mistake gets one message ---------------------------------------------


@pytest.mark.parametrize(
    ("files", "env", "expected"),
    [
        ({}, {"QUOTAFLOW_DEPLOYMENTS": '[{"name": "x",'},
         "the environment variable QUOTAFLOW_DEPLOYMENTS is not valid JSON (Expecting"),
        ({}, {"QUOTAFLOW_DEPLOYMENTS": "not json"},
         "the environment variable QUOTAFLOW_DEPLOYMENTS is not valid JSON"),
        ({".env": 'QUOTAFLOW_DEPLOYMENTS=[{"name": "x",\n'}, {},
         "QUOTAFLOW_DEPLOYMENTS in .env is not valid JSON"),
        ({".env": "QUOTAFLOW_MAX_RETRIES=8\nthis is not a variable\n"}, {},
         ".env line 2: cannot parse 'this is not a variable'"),
        ({".env": b"\xff\xfe QUOTAFLOW"}, {}, ".env: not UTF-8 text"),
        ({".env": "QUOTAFLOW_MAX_RETRIES=lots\n"}, {},
         "max_retries: Input should be a valid integer, unable to parse string as an integer "
         "(got 'lots') from QUOTAFLOW_MAX_RETRIES in .env"),
        ({"quotaflow.toml": "redis_url = \n"}, {},
         "quotaflow.toml: not valid TOML: Invalid value (at line 1, column 13)"),
        ({"quotaflow.toml": "max_retry = 3\n"}, {},
         "max_retry: not a quotaflow setting (did you mean max_retries?)"),
        # An empty value is unset: the default deployment, then the missing Redis URL.
        ({}, {"QUOTAFLOW_DEPLOYMENTS": ""}, "QUOTAFLOW_REDIS_URL is not set"),
        # Other tools' variables in .env are not quotaflow's business.
        ({".env": "REDIS_PASSWORD=x\n"}, {}, "QUOTAFLOW_REDIS_URL is not set"),
    ],
    ids=[
        "truncated-json", "not-json", "dotenv-json", "dotenv-syntax", "dotenv-encoding",
        "dotenv-value", "toml-syntax", "toml-unknown-key", "empty-is-unset", "dotenv-others",
    ],
)  # fmt: skip
def test_broken_settings_are_one_line_naming_the_source(
    tmp_path: Path, files: dict[str, str | bytes], env: dict[str, str], expected: str
) -> None:
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    done = quotaflow("status", cwd=tmp_path, env=cli_env(**env), timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"QUOTAFLOW_DEPLOYMENTS": "not json"},
         "the environment variable QUOTAFLOW_DEPLOYMENTS is not valid JSON"),
        ({"QUOTAFLOW_DEPLOYMENTS": json.dumps([NO_KEY]),
          "QUOTAFLOW_REDIS_URL": "redis://127.0.0.1:1/0"},
         "deployments: 'gpt4o' (kind 'openai') has no api_key"),
    ],
    ids=["malformed-deployments", "no-api-key"],
)  # fmt: skip
def test_a_worker_with_broken_settings_exits_with_the_message(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    worker = [sys.executable, "-m", "celery", "-A", "pipeline", "worker", "--pool", "solo"]
    done = subprocess.run(
        worker, cwd=tmp_path, env=cli_env(**env), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert expected in done.stderr


def test_unknown_quotaflow_variables_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("QUOTAFLOW_MAX_RETRYS=3\nOTHER_TOOL=1\n")
    env = cli_env(QUOTAFLOW_DEPLOYMENT="[]", QUOTAFLOW_REDIS_URL="redis://127.0.0.1:1/0")
    done = quotaflow("status", cwd=tmp_path, env=env, timeout=30)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: QUOTAFLOW_DEPLOYMENT (environment) is not a quotaflow setting, ignored; "
        "did you mean QUOTAFLOW_DEPLOYMENTS?",
        "warning: QUOTAFLOW_MAX_RETRYS (.env) is not a quotaflow setting, ignored; "
        "did you mean QUOTAFLOW_MAX_RETRIES?",
    ]


def test_no_warning_for_the_quotaflow_variables_the_project_uses(tmp_path: Path) -> None:
    # Every QUOTAFLOW_* name in the repository: docs, compose file, tests, benchmarks.
    names = set()
    for path in ROOT.rglob("*"):
        if ".venv" in path.parts or ".git" in path.parts or not path.is_file():
            continue
        if path.suffix in (".py", ".md", ".yml", ".toml", ".sh") or path.name == "Makefile":
            text = path.read_text(errors="replace")
            names |= set(re.findall(r"\bQUOTAFLOW_[A-Z][A-Z0-9_]*[A-Z0-9]\b", text))
    assert {"QUOTAFLOW_REDIS_URL", "QUOTAFLOW_DEPLOYMENTS"} <= names
    names -= {"QUOTAFLOW_DEPLOYMENT", "QUOTAFLOW_MAX_RETRYS"}  # the test above's typos
    env = cli_env(**dict.fromkeys(names, "7"))
    env.pop("QUOTAFLOW_DEPLOYMENTS")
    env["QUOTAFLOW_REDIS_URL"] = "redis://127.0.0.1:1/0"
    done = quotaflow("status", cwd=tmp_path, env=env, timeout=30)
    assert "warning:" not in done.stderr, done.stderr


# -- help, jobs, recover ------------------------------------------------------------------
