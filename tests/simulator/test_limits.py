"""Limit policies: the bucket, Azure's windows and PTU, directly and over HTTP."""

from __future__ import annotations

import math
import time

import openai
import pytest
from support.sim_client import MSG, StartSim, chat, client, request

from simulator.limits import (
    ProvisionedLimiter,
    TokenBucketLimiter,
    WindowLimiter,
    format_duration,
)

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
