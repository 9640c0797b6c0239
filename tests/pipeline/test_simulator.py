"""The provider simulator: real HTTP, the real openai SDK, small latencies."""

from __future__ import annotations

import http.client
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from pipeline.sim_limits import (
    ProvisionedLimiter,
    TokenBucketLimiter,
    WindowLimiter,
    format_duration,
)
from pipeline.simulator import RUNTIME_FIELDS, Simulator, SimulatorConfig, main

REPO = Path(__file__).resolve().parents[2]
FAST = {"latency_ms": 0.0, "latency_jitter_ms": 0.0}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


MSG = user("hello world!")  # 12 characters: 3 prompt tokens

StartSim = Callable[..., Simulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators with ``SimulatorConfig`` overrides (fast by default); stop them after."""
    started: list[Simulator] = []

    def start(**overrides: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(**(FAST | {"seed": 7} | overrides))).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(start_sim: StartSim) -> Simulator:
    return start_sim(tpm=1_000_000, rpm=100_000)


def client(sim: Simulator, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0, **kwargs)


def request(
    sim: Simulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One raw HTTP request; returns status, lower-cased headers and the decoded JSON body."""
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def chat(sim: Simulator, content: str = "hello world!", **body: Any) -> tuple[int, Any]:
    messages = [{"role": "user", "content": content}]
    status, _, data = request(
        sim, "POST", "/v1/chat/completions", {"model": "m", "messages": messages} | body
    )
    return status, data


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


# -- headers and limits -------------------------------------------------------------------


def test_rate_limit_headers_present_and_remaining_decreases(start_sim: StartSim) -> None:
    sim = start_sim(tpm=10_000, rpm=100)
    with client(sim) as c:
        first = c.chat.completions.with_raw_response.create(model="m", messages=MSG, max_tokens=97)
        second = c.chat.completions.with_raw_response.create(model="m", messages=MSG, max_tokens=97)
    h1, h2 = first.headers, second.headers
    assert h1["x-ratelimit-limit-tokens"] == "10000"
    assert h1["x-ratelimit-limit-requests"] == "100"
    assert int(h1["x-ratelimit-remaining-tokens"]) in range(9900, 9902)  # 100 charged
    assert int(h2["x-ratelimit-remaining-tokens"]) < int(h1["x-ratelimit-remaining-tokens"])
    assert int(h2["x-ratelimit-remaining-requests"]) < int(h1["x-ratelimit-remaining-requests"])
    for name in ("x-ratelimit-reset-tokens", "x-ratelimit-reset-requests"):
        assert h2[name].endswith(("ms", "s"))


def test_429_when_bucket_exhausted(start_sim: StartSim) -> None:
    sim = start_sim(tpm=1000, rpm=1000)
    with client(sim) as c:
        c.chat.completions.create(model="m", messages=MSG, max_tokens=797)  # charges 800
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model="m", messages=MSG, max_tokens=397)  # needs 400
    headers = info.value.response.headers
    wait_ms = int(headers["retry-after-ms"])
    # ~200 tokens short at 1000/60 tokens per second: about 12 s.
    assert 11_000 <= wait_ms <= 12_100
    assert int(headers["retry-after"]) == math.ceil(wait_ms / 1000)
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "rate_limit_exceeded"
    stats = sim.stats()
    assert stats["refused_429"] == 1 and stats["tokens_charged"] == 800  # a 429 charges nothing


def test_429_on_requests_per_minute(start_sim: StartSim) -> None:
    sim = start_sim(tpm=1_000_000, rpm=2)
    assert chat(sim, max_tokens=1)[0] == chat(sim, max_tokens=1)[0] == 200
    status, body = chat(sim, max_tokens=1)
    assert status == 429 and body["error"]["type"] == "requests"


def test_token_bucket_refills_continuously() -> None:
    bucket = TokenBucketLimiter(tpm=600, rpm=60, now=0.0)
    assert bucket.admit(600, 1, now=0.0).admitted
    refused = bucket.admit(100, 1, now=0.0)
    assert not refused.admitted and refused.dimension == "tokens"
    assert refused.retry_after == pytest.approx(10.0)  # 100 tokens at 10/s
    assert not bucket.admit(100, 1, now=9.9).admitted
    assert bucket.admit(100, 1, now=10.0).admitted
    too_big = bucket.admit(601, 1, now=100.0)
    assert not too_big.admitted and too_big.too_large


def test_azure_minute_counter_and_sub_minute_windows() -> None:
    win = WindowLimiter(tpm=600, rpm=600, check_seconds=10, now=0.0)  # 100 tokens per window
    assert win.admit(100, 1, now=0.0).admitted
    refused = win.admit(1, 1, now=3.0)
    assert not refused.admitted and refused.retry_after == pytest.approx(7.0)
    for second in range(10, 60, 10):
        assert win.admit(100, 1, now=float(second)).admitted
    # Every window has room, but the minute is spent: wait for the minute to end.
    spent = win.admit(100, 1, now=60.0 - 5.0)
    assert not spent.admitted and spent.retry_after == pytest.approx(5.0)
    assert win.admit(100, 1, now=60.0).admitted


def test_azure_policy_refuses_within_window_then_admits(start_sim: StartSim) -> None:
    sim = start_sim(policy="azure", tpm=3000, rpm=1000, check_seconds=2.0, phase_seconds=0.0)
    sim.reset()  # align the windows to now: 100 tokens per 2 s
    assert chat(sim, max_tokens=37)[0] == 200  # 40 tokens
    assert chat(sim, max_tokens=37)[0] == 200
    status, headers, _ = request(
        sim, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "max_tokens": 37}
    )
    assert status == 429
    wait = int(headers["retry-after-ms"]) / 1000
    assert 0 < wait <= 2.0
    time.sleep(wait + 0.05)
    assert chat(sim, max_tokens=37)[0] == 200


def test_azure_request_periods_and_phase() -> None:
    # 600 RPM: 10 requests per 1 s period; periods began 0.4 s before construction.
    win = WindowLimiter(tpm=600_000, rpm=600, check_seconds=10, now=100.0, phase=0.4)
    assert all(win.admit(1, 1, now=100.0).admitted for _ in range(10))
    refused = win.admit(1, 1, now=100.1)
    assert not refused.admitted and refused.dimension == "requests"
    assert refused.retry_after == pytest.approx(0.5)  # the period ends at 100.6
    assert win.admit(1, 1, now=100.6).admitted
    # 100,000 tokens per 10 s period, which began at 99.6.
    assert win.admit(99_989, 1, now=101.0).admitted
    full = win.admit(100, 1, now=102.0)
    assert not full.admitted and full.dimension == "tokens"
    assert full.retry_after == pytest.approx(7.6)
    assert win.admit(100, 1, now=109.6).admitted


def test_ptu_admits_below_full_utilization_and_counts_actual_usage() -> None:
    ptu = ProvisionedLimiter(tpm=6000, now=0.0, bucket_seconds=10)  # 100/s; 100% = 1,000
    assert ptu.admit(900, 1, now=0.0).admitted
    assert ptu.admit(900, 1, now=0.0).admitted  # under 100% on arrival: admitted, now 180%
    over = ptu.admit(10, 1, now=0.0)
    assert not over.admitted and over.retry_after == pytest.approx(8.0, abs=0.01)
    ptu.correct(-700, now=0.0)  # the call used 200 of its 900
    assert ptu.utilization == pytest.approx(1.1)
    assert ptu.admit(10, 1, now=1.1).admitted
    assert ptu.admit(1001, 1, now=100.0).too_large


def test_ptu_policy_over_http(start_sim: StartSim) -> None:
    sim = start_sim(policy="ptu", tpm=600, rpm=1, bucket_seconds=10)  # 100% = 100 tokens
    assert chat(sim, max_tokens=97)[0] == 200  # charged 100 at arrival, < 100 used
    status, headers, _ = request(
        sim, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "max_tokens": 5}
    )
    assert status in (200, 429)  # below 100% once the first call's actual usage is known
    refused = request(
        sim, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "max_tokens": 97}
    )
    while refused[0] == 200:
        refused = request(
            sim, "POST", "/v1/chat/completions", {"model": "m", "messages": MSG, "max_tokens": 97}
        )
    assert refused[0] == 429 and int(refused[1]["retry-after-ms"]) > 0


def test_format_duration() -> None:
    assert format_duration(0.12) == "120ms"
    assert format_duration(1.0) == "1s"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360.0) == "6m0s"
    assert format_duration(0.0) == "0ms"


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


# -- CLI and load -------------------------------------------------------------------------


def test_cli_has_a_flag_for_every_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in SimulatorConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.simulator", "--port", "0", "--latency-ms", "0"],
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
