"""The simulator over real HTTP with the real openai SDK: routes, stats, admin, load."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from support.sim_client import MSG, StartSim, chat, client, request

from simulator import RUNTIME_FIELDS, Simulator, SimulatorConfig

# -- the SDK parses what we send ----------------------------------------------------------


def test_openai_sdk_parses_chat(sim: Simulator) -> None:
    with client(sim) as c:
        out = c.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=20, n=2)
    assert out.object == "chat.completion" and out.model == "gpt-4o"
    assert [ch.index for ch in out.choices] == [0, 1]
    for choice in out.choices:
        assert choice.message.role == "assistant" and choice.message.content
        assert choice.finish_reason in ("stop", "length")
    assert out.usage is not None
    assert out.usage.prompt_tokens == 3
    assert 2 * 6 <= out.usage.completion_tokens <= 2 * 20  # 30-100% of the limit per choice
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_openai_sdk_parses_embeddings(sim: Simulator) -> None:
    with client(sim) as c:
        out = c.embeddings.create(model="text-embedding-3-small", input=["abcde", "xy"])
        ids = c.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert out.model == "text-embedding-3-small"
    assert [d.index for d in out.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == 8 for d in out.data)
    assert out.usage.prompt_tokens == out.usage.total_tokens == 2 + 1
    assert ids.usage.prompt_tokens == 4


def test_embeddings_base64_encoding(sim: Simulator) -> None:
    body = {"model": "e", "input": "abc", "encoding_format": "base64"}
    status, _, data = request(sim, "POST", "/v1/embeddings", body)
    assert status == 200
    assert isinstance(data["data"][0]["embedding"], str)  # 8 float32 = 32 bytes


def test_azure_sdk_chat_and_embeddings_use_deployment(start_sim: StartSim) -> None:
    sim = start_sim(api_key="az-key")
    with openai.AzureOpenAI(
        azure_endpoint=sim.url, api_version="2024-10-21", api_key="az-key", max_retries=0
    ) as az:
        out = az.chat.completions.create(model="my-deployment", messages=MSG, max_tokens=5)
        emb = az.embeddings.create(model="emb-deployment", input="hello")
    assert out.model == "my-deployment" and out.choices[0].message.content
    assert emb.model == "emb-deployment" and len(emb.data[0].embedding) == 8


# -- stats, reset, admin ------------------------------------------------------------------


def test_stats_and_reset(start_sim: StartSim) -> None:
    sim = start_sim(tpm=100_000, rpm=1000)
    assert chat(sim, max_tokens=7)[0] == 200  # 3 + 7
    assert chat(sim, "[[status:400]]")[0] == 400
    stats = request(sim, "GET", "/stats")[2]
    assert stats["requests_received"] == 2 and stats["admitted"] == 1
    assert stats["by_status"] == {"200": 1, "400": 1}
    assert stats["tokens_charged"] == 10 and stats["prompt_tokens"] == 3
    assert 3 <= stats["completion_tokens"] <= 7
    assert len(stats["admissions"]) == 1 and stats["admissions"][0][1] == 10
    assert stats["first_admitted_at"] <= stats["last_admitted_at"] <= time.time()

    assert request(sim, "POST", "/stats/reset")[0] == 200
    stats = sim.stats()
    assert stats["requests_received"] == stats["admitted"] == stats["tokens_charged"] == 0
    assert stats["admissions"] == [] and stats["first_admitted_at"] is None
    _, headers, _ = request(sim, "POST", "/v1/embeddings", {"model": "e", "input": "abcd"})
    assert headers["x-ratelimit-remaining-tokens"] == str(100_000 - 1)  # refilled


def test_admin_config(sim: Simulator) -> None:
    status, _, view = request(
        sim, "POST", "/admin/config", {"tpm": 5000, "rpm": 50, "fail_models": ["x"]}
    )
    assert status == 200 and view["tpm"] == 5000 and view["fail_models"] == ["x"]
    assert sim.config.rpm == 50
    _, headers, _ = request(sim, "POST", "/v1/embeddings", {"model": "e", "input": "abcd"})
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert request(sim, "POST", "/admin/config", {"bogus": 1})[0] == 400
    assert request(sim, "POST", "/admin/config", {"tpm": "many"})[0] == 400
    assert request(sim, "POST", "/admin/config", {"policy": "gcp"})[0] == 400
    assert request(sim, "POST", "/admin/config", b"[1]")[0] == 400
    with pytest.raises(ValueError):
        sim.configure(port=1)  # not a runtime field


def test_neighbour_consumes_shared_quota(start_sim: StartSim) -> None:
    # Azure counters do not refill within the minute, so the neighbour's use stays visible.
    began = time.monotonic()
    sim = start_sim(policy="azure", tpm=60_000, rpm=1000, neighbour_tpm=30_000, phase_seconds=0.0)
    time.sleep(0.5)
    _, headers, _ = request(sim, "POST", "/v1/embeddings", {"model": "e", "input": "abcd"})
    taken = sim.stats()["neighbour_tokens"]
    assert 100 <= taken <= 500 * (time.monotonic() - began)
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 60_000 - 1 - 100
    assert sim.stats()["tokens_charged"] == 1  # the neighbour is not counted as ours


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        Simulator(SimulatorConfig(policy="gcp"))
    with pytest.raises(ValueError):
        Simulator(SimulatorConfig(fail_5xx_rate=0.6, drop_rate=0.6))
    assert RUNTIME_FIELDS.issubset(SimulatorConfig.__dataclass_fields__)


def test_100_concurrent_requests_all_answered(start_sim: StartSim) -> None:
    sim = start_sim(tpm=10_000_000, rpm=100_000, latency_ms=50.0, latency_jitter_ms=50.0)
    results: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(100)

    with client(sim, timeout=30) as c:

        def call() -> None:
            barrier.wait()
            out = c.chat.completions.create(model="m", messages=MSG, max_tokens=10)
            with lock:
                results.append(len(out.choices))

        threads = [threading.Thread(target=call) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert results == [1] * 100
    assert sim.stats()["by_status"] == {"200": 100}
