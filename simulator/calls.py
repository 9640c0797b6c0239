"""What a request asks for and what it costs.

Charging follows the providers: at arrival, ``ceil(prompt characters / 4)`` plus the
output limit (``max_completion_tokens`` or ``max_tokens`` or a default) times ``n``;
embeddings cost their inputs' estimate. Message text may carry ``Triggers`` for tests.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simulator.errors import ApiError


@dataclass(frozen=True)
class Triggers:
    """Per-request instructions found in the message text."""

    status: int | None = None
    latency: float | None = None
    fault: str | None = None  # "drop" or "timeout"
    retry_after: float | None = None
    code: str | None = None

    _PATTERN = re.compile(
        r"\[\[(status|latency|retry_after):\s*([0-9.]+)\s*\]\]|\[\[(drop|timeout)\]\]"
        r"|\[\[code:\s*([a-z_]+)\s*\]\]"
    )

    @classmethod
    def scan(cls, text: str) -> Triggers:
        found: dict[str, Any] = {}
        for m in cls._PATTERN.finditer(text):
            if m.group(1) == "status":
                code = int(float(m.group(2)))
                if 400 <= code <= 599:
                    found["status"] = code
            elif m.group(1) in ("latency", "retry_after"):
                found[m.group(1)] = float(m.group(2))
            elif m.group(4):
                found["code"] = m.group(4)
            else:
                found["fault"] = m.group(3)
        return cls(**found)


@dataclass(frozen=True)
class Call:
    """A validated chat or embeddings request and what it costs."""

    kind: str  # "chat" or "embeddings"
    model: str
    text: str  # all message or input text, scanned for triggers
    prompt_tokens: int
    output_limit: int = 0  # per choice, as charged
    n: int = 1
    best_of: int = 1  # completions generated per choice asked (charged like n)
    explicit_limit: bool = False
    inputs: tuple[str | tuple[int, ...], ...] = ()
    as_base64: bool = False

    @property
    def charge(self) -> int:
        return self.prompt_tokens + self.output_limit * max(self.n, self.best_of)


def _char_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _positive_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ApiError(400, f"Invalid '{key}': expected an integer >= 1.", param=key)
    return value


def _message_texts(content: Any) -> list[str]:
    if content is None or isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list):
        return [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
    raise ApiError(400, "Invalid message content.", param="messages")


def parse_call(kind: str, deployment: str | None, body: bytes, default_max: int) -> Call:
    """Validate a request body the way the provider does; raise ApiError(400) if not."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = deployment or data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if kind == "chat":
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' is a required property", param="messages")
        if data.get("stream"):
            raise ApiError(400, "Streaming is not supported by the simulator.", param="stream")
        texts: list[str] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(400, "Each message needs a 'role'.", param="messages")
            texts.extend(_message_texts(message.get("content")))
        limit = _positive_int(data, "max_completion_tokens") or _positive_int(data, "max_tokens")
        return Call(
            kind="chat",
            model=model,
            text="\n".join(texts),
            prompt_tokens=math.ceil(sum(len(t) for t in texts) / 4),
            output_limit=limit or default_max,
            n=_positive_int(data, "n") or 1,
            best_of=_positive_int(data, "best_of") or 1,
            explicit_limit=limit is not None,
        )
    raw = data.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_int(x) for x in raw)):
        raw = [raw]  # one text, or one array of token ids
    inputs: list[str | tuple[int, ...]] = []
    for item in raw if isinstance(raw, list) and raw else [None]:
        if isinstance(item, str) and item:
            inputs.append(item)
        elif isinstance(item, list) and item and all(_is_int(x) for x in item):
            inputs.append(tuple(item))
        else:
            raise ApiError(400, "'input' must be a non-empty string or array.", param="input")
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    return Call(
        kind="embeddings",
        model=model,
        text="\n".join(i for i in inputs if isinstance(i, str)),
        prompt_tokens=sum(_char_tokens(i) if isinstance(i, str) else len(i) for i in inputs),
        inputs=tuple(inputs),
        as_base64=encoding == "base64",
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def authorize(api_key: str | None, headers: Mapping[str, str]) -> None:
    """Raise a 401 unless ``api_key`` is None or given as a Bearer token or ``api-key``.

    ``headers`` has lower-case names.
    """
    if api_key is None:
        return
    auth = headers.get("authorization") or ""
    given = auth[7:] if auth[:7].lower() == "bearer " else headers.get("api-key") or ""
    if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def check_context(call: Call, context_window: int) -> None:
    """Raise a 400 context_length_exceeded if the chat call cannot fit the model."""
    if call.kind != "chat":
        return
    asked = call.prompt_tokens + (call.output_limit if call.explicit_limit else 0)
    if asked > context_window or call.prompt_tokens >= context_window:
        raise ApiError(
            400,
            f"This model's maximum context length is {context_window} tokens. However, you "
            f"requested {asked} tokens ({call.prompt_tokens} in the messages, "
            f"{asked - call.prompt_tokens} in the completion).",
            param="messages",
            code="context_length_exceeded",
        )
