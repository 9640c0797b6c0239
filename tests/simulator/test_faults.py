"""Triggers in message text and configured fault rates."""

from __future__ import annotations

import time

import openai
import pytest
from support.sim_client import MSG, StartSim, chat, client, user

from simulator import Simulator

# -- triggers and faults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "charged"),
    [
        (400, openai.BadRequestError, False),
        (401, openai.AuthenticationError, False),
        (403, openai.PermissionDeniedError, False),
        (404, openai.NotFoundError, False),
        (429, openai.RateLimitError, False),
        (500, openai.InternalServerError, True),
        (503, openai.InternalServerError, True),
    ],
)
def test_status_trigger(sim: Simulator, code: int, error: type[Exception], charged: bool) -> None:
    messages = user(f"please fail [[status:{code}]]")
    with client(sim) as c, pytest.raises(error) as info:
        c.chat.completions.create(model="m", messages=messages, max_tokens=1)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == code
    if code == 404:
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"
    if code == 429:
        assert info.value.response.headers["retry-after"] == "1"
    stats = sim.stats()
    assert stats["by_status"] == {str(code): 1}
    assert stats["admitted"] == int(charged)


def test_latency_trigger(sim: Simulator) -> None:
    began = time.monotonic()
    assert chat(sim, "slow [[latency:0.3]]", max_tokens=1)[0] == 200
    assert time.monotonic() - began >= 0.3


def test_drop_trigger_is_a_connection_error(sim: Simulator) -> None:
    with client(sim) as c, pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="m", messages=user("[[drop]]"), max_tokens=1)
    stats = sim.stats()
    assert stats["faults"]["drop"] == 1 and stats["admitted"] == 1  # charged, then dropped


def test_timeout_trigger_hangs_past_the_client_timeout(start_sim: StartSim) -> None:
    sim = start_sim(timeout_hang_seconds=1.0)
    with client(sim, timeout=0.3) as c, pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=user("[[timeout]]"), max_tokens=1)
    assert chat(sim, "[[timeout]]", max_tokens=1)[0] == 504  # a patient client gets the 504
    stats = sim.stats()
    assert stats["faults"]["timeout"] == 2 and stats["by_status"] == {"504": 2}


def test_fail_models_can_be_fixed(sim: Simulator) -> None:
    sim.configure(fail_models=["gpt-broken"])
    with client(sim) as c:
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="gpt-broken", messages=MSG, max_tokens=1)
        sim.configure(fail_models=[])
        assert c.chat.completions.create(model="gpt-broken", messages=MSG, max_tokens=1).choices


def test_5xx_rate_one_always_fails(start_sim: StartSim) -> None:
    sim = start_sim(tpm=1_000_000, rpm=100_000, fail_5xx_rate=1.0)
    statuses = [chat(sim, max_tokens=1)[0] for _ in range(20)]
    assert set(statuses) <= {500, 503} and len(set(statuses)) == 2
    stats = sim.stats()
    assert stats["faults"]["5xx"] == stats["admitted"] == 20
    assert stats["tokens_charged"] == 20 * 4  # faults come after admission: quota was used


def test_drop_rate_one_gives_connection_errors(start_sim: StartSim) -> None:
    sim = start_sim(drop_rate=1.0)
    with client(sim) as c, pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="m", messages=MSG, max_tokens=1)


def test_seeded_faults_repeat(start_sim: StartSim) -> None:
    def outcomes() -> list[int]:
        sim = start_sim(tpm=1_000_000, rpm=100_000, fail_5xx_rate=0.3, seed=42)
        return [chat(sim, max_tokens=5)[0] for _ in range(30)]

    first = outcomes()
    assert first == outcomes()
    assert 200 in first and {500, 503} & set(first)
