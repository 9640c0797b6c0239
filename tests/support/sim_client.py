"""Talking to a test simulator: the openai SDK, raw HTTP and a one-line chat."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletionMessageParam

from simulator import Simulator

#: No latency: the simulator tests measure behaviour, not time.
FAST = {"latency_ms": 0.0, "latency_jitter_ms": 0.0}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


MSG = user("hello world!")  # 12 characters: 3 prompt tokens

StartSim = Callable[..., Simulator]


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
