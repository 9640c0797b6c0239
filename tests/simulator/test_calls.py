"""What a request costs, and the requests the simulator refuses to parse or serve."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from support.sim_client import MSG, StartSim, chat, client, request

from simulator import Simulator

# -- charging -----------------------------------------------------------------------------


def test_charge_formula(sim: Simulator) -> None:
    parts = [
        {"type": "text", "text": "x" * 10},
        {"type": "image_url", "image_url": {"url": "http://img"}},
    ]
    messages = [{"role": "system", "content": "y" * 7}, {"role": "user", "content": parts}]
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/chat/completions", {"messages": messages, "max_tokens": 10, "n": 3}, 5 + 30),
        (
            "/v1/chat/completions",
            {"messages": messages, "max_tokens": 99, "max_completion_tokens": 4},
            5 + 4,
        ),
        ("/v1/chat/completions", {"messages": messages}, 5 + 4096),  # default_max_tokens
        ("/v1/embeddings", {"input": ["abcde", "xy"]}, 2 + 1),
        ("/v1/embeddings", {"input": [[1, 2, 3], [4]]}, 4),
    ]
    for path, body, charge in cases:
        before = sim.stats()["tokens_charged"]
        status, _, data = request(sim, "POST", path, {"model": "m"} | body)
        assert status == 200, data
        assert sim.stats()["tokens_charged"] - before == charge, body
        assert data["usage"]["prompt_tokens"] == (5 if "messages" in body else charge)


# -- auth, validation, routing ------------------------------------------------------------


def test_api_key_required_when_set(start_sim: StartSim) -> None:
    sim = start_sim(api_key="secret")
    with client(sim) as wrong, pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model="m", messages=MSG, max_tokens=1)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="secret", max_retries=0) as right:
        assert right.chat.completions.create(model="m", messages=MSG, max_tokens=1).choices
    body = {"messages": MSG, "max_tokens": 1}
    path = "/openai/deployments/d/chat/completions?api-version=2024-10-21"
    assert request(sim, "POST", path, body, {"api-key": "secret"})[0] == 200
    assert request(sim, "POST", path, body, {"api-key": "nope"})[0] == 401
    assert sim.stats()["tokens_charged"] == 2 * (3 + 1)


def test_validation_errors(sim: Simulator) -> None:
    status, _, data = request(sim, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and set(data["error"]) == {"message", "type", "param", "code"}
    status, _, data = request(sim, "POST", "/v1/chat/completions", {"messages": MSG})
    assert status == 400 and data["error"]["param"] == "model"
    status, _, data = request(sim, "POST", "/v1/chat/completions", {"model": "m"})
    assert status == 400 and data["error"]["param"] == "messages"
    status, _, data = request(sim, "POST", "/v1/embeddings", {"model": "m"})
    assert status == 400 and data["error"]["param"] == "input"
    status, data = chat(sim, "x" * 400, max_tokens=127_950)  # 100 + 127950 > 128000
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert chat(sim, "x" * 400, max_tokens=127_900)[0] == 200
    status, _, data = request(sim, "GET", "/v1/models")
    assert status == 404 and "error" in data
    assert request(sim, "GET", "/health")[:3:2] == (200, {"ok": True})
