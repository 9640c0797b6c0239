"""A mistake in one deployment is named by the deployment, with the field it meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from settings import SettingsError, load_settings

SIM = {"kind": "compatible", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"}


def error_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deployments: object) -> str:
    monkeypatch.chdir(tmp_path)  # no .env or quotaflow.toml of the caller's
    monkeypatch.setenv("QUOTAFLOW_DEPLOYMENTS", json.dumps(deployments))
    with pytest.raises(SettingsError) as caught:
        load_settings(warn=lambda _: None)
    return str(caught.value)


def test_edge_a_misspelt_deployment_field_gets_did_you_mean_and_the_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = error_for(
        monkeypatch, tmp_path, [{"name": "gpt4o", **SIM, "tmp": 30_000, "rpm": 600}]
    )
    assert "deployment 'gpt4o': tmp: not a deployment field (did you mean tpm?)" in message
    # The "tpm: required" it causes would say the same thing again.
    assert "tpm: required" not in message
    assert "deployments.0" not in message


def test_edge_each_deployment_error_names_its_deployment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = error_for(
        monkeypatch, tmp_path,
        [{"name": "a", **SIM, "tpm": 1000, "rpm": 10},
         {"name": "b", **SIM, "tpm": -1, "rpm": 10},
         {**SIM, "tpm": 1000, "rpm": 10, "colour": "red"}],
    )  # fmt: skip
    assert "deployment 'b': tpm: Input should be greater than 0 (got -1)" in message
    assert "deployment #3: name: required" in message
    assert "deployment #3: colour: not a deployment field (the fields are name, kind" in message
    assert "from the environment variable QUOTAFLOW_DEPLOYMENTS" in message
    assert "deployments.1" not in message and "deployments.2" not in message
