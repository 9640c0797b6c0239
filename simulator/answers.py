"""The bodies the simulated provider answers with: completions, embeddings and the 429
for a refused call."""

from __future__ import annotations

import base64
import math
import random
import struct
import time
import uuid
import zlib
from typing import Any

from simulator.calls import Call
from simulator.errors import ApiError
from simulator.limits import Verdict


def _filler(tokens: int) -> str:
    # About four characters per token, like the charge estimate; cheap to build.
    return ("lorem " * (tokens * 2 // 3 + 1))[: tokens * 4].rstrip()


def _embedding(item: str | tuple[int, ...]) -> list[float]:
    rng = random.Random(zlib.crc32(repr(item).encode()))
    vector = [rng.uniform(-1.0, 1.0) for _ in range(8)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def refusal(call: Call, verdict: Verdict) -> ApiError:
    """The 429 for a refused ``call``, with ``retry-after`` and ``retry-after-ms``."""
    wait, snap = verdict.retry_after, verdict.snapshot
    tokens = verdict.dimension == "tokens"
    unit = "tokens per min (TPM)" if tokens else "requests per min (RPM)"
    limit = snap.limit_tokens if tokens else snap.limit_requests
    asked = call.charge if tokens else 1
    if verdict.too_large:
        message = (
            f"Request too large for {call.model} on {unit}: Limit {limit}, Requested {asked}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
    else:
        message = (
            f"Rate limit reached for {call.model} on {unit}: Limit {limit}, Requested {asked}. "
            f"Please try again in {wait:.3f}s."
        )
    headers = {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
    type_ = verdict.dimension or "tokens"
    return ApiError(429, message, type_, code="rate_limit_exceeded", headers=headers)


def chat_body(call: Call, lengths: list[int], limit: int) -> dict[str, Any]:
    """A chat.completion with one choice per entry of ``lengths`` (completion tokens)."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": _filler(n), "refusal": None},
            "logprobs": None,
            "finish_reason": "length" if n >= limit else "stop",
        }
        for i, n in enumerate(lengths)
    ]
    completion = sum(lengths)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": call.prompt_tokens + completion,
        },
    }


def embeddings_body(call: Call) -> dict[str, Any]:
    """An embeddings list; vectors are stable per input."""
    data = []
    for i, item in enumerate(call.inputs):
        vector = _embedding(item)
        packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": i, "embedding": packed if call.as_base64 else vector}
        )
    usage = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    return {"object": "list", "data": data, "model": call.model, "usage": usage}
