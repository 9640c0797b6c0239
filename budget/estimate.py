"""What a request costs against a provider's rate limit, known before it is sent.

Providers charge an estimate made on arrival: prompt tokens (partly from characters) plus
the output limit times the number of choices. This mirrors it (DESIGN.md, "Accounting").
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tiktoken

from budget.encodings import register_offline_encodings
from budget.errors import ContextTooLong, InvalidRequest

log = logging.getLogger(__name__)
# Before tiktoken loads anything: it seeds tiktoken's cache, so tiktoken works offline
# for every caller in the process (and its children), not only for this module. Once per
# process, a hash check of two files when they are already in place.
register_offline_encodings()

O200K = "o200k_base"
CL100K = "cl100k_base"
#: Encoding used, with a warning, for models this module does not know.
FALLBACK_ENCODING = O200K
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
# Checked second, as "gpt-4" also prefixes the o200k families; Azure spells "gpt-35".
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3-", "text-embedding-ada-002")

# Chat framing as OpenAI documents it (cookbook, gpt-3.5-turbo-0613 and later):
# <|start|>{role/name}\n{content}<|end|>\n per message, and <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Images: 85 tokens at low detail; otherwise a flat 765 (a 1024x1024 image at high
# detail), conservative for typical images, though very large ones can cost more.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_OTHER = 765
# Providers estimate prompts partly from characters; ~4 characters per token.
CHARS_PER_TOKEN = 4

_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Estimate:
    """The tokens a provider counts against its rate limit for one request."""

    #: Prompt tokens as charged: max(tiktoken count with chat framing, characters / 4).
    prompt_tokens: int
    #: Output tokens reserved: the output limit times the number of choices (0 for embeddings).
    output_tokens: int

    @property
    def total(self) -> int:
        """Tokens to reserve: prompt plus output."""
        return self.prompt_tokens + self.output_tokens


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model``; unknown models get o200k_base and a warning."""
    return tiktoken.get_encoding(_encoding_name(model))  # cached by tiktoken


def estimate_request(
    body: Mapping[str, Any],
    *,
    endpoint: str,
    model: str | None = None,
    context_window: int,
) -> Estimate:
    """Estimate a chat/completions (``endpoint="chat"``) or embeddings request body.

    ``model`` defaults to ``body["model"]``. Raises :class:`InvalidRequest` for a body the
    provider would reject and :class:`ContextTooLong` when it cannot fit ``context_window``.
    """
    if endpoint not in ("chat", "embeddings"):
        raise InvalidRequest(f"unknown endpoint {endpoint!r}: expected 'chat' or 'embeddings'")
    if not isinstance(body, Mapping):
        raise InvalidRequest(_wrong_type("request body", body, "an object"))
    model = body.get("model") if model is None else model
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(_wrong_type("model", model or None, "a non-empty string"))
    encoding = encoding_for_model(model)
    if endpoint == "chat":
        return _estimate_chat(body, encoding, context_window)
    return _estimate_embeddings(body, encoding, context_window)


def _base_model(model: str) -> str:
    """'openai/ft:gpt-4o-mini:org::id' -> 'gpt-4o-mini'."""
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    return name.split(":", 1)[0]


def _encoding_name(model: str) -> str:
    base = _base_model(model)
    if base.startswith(_O200K_PREFIXES):
        return O200K
    if base.startswith(_CL100K_PREFIXES):
        return CL100K
    with _warned_lock:
        first = model not in _warned
        _warned.add(model)
    if first:
        log.warning("no tiktoken encoding known for model %r; using %s", model, FALLBACK_ENCODING)
    return FALLBACK_ENCODING


class _Tally:
    """Running token and character counts of a prompt."""

    __slots__ = ("encoding", "tokens", "chars")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.tokens = 0
        self.chars = 0

    def text(self, text: str, *, chars: bool = True) -> None:
        # encode_ordinary: special-token text in user content is just text, never an error.
        self.tokens += len(self.encoding.encode_ordinary(text))
        if chars:
            self.chars += len(text)

    def json(self, value: Any, where: str) -> None:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{where} must be JSON-serialisable: {exc}") from exc
        self.text(text)

    def charge(self) -> int:
        return max(self.tokens, math.ceil(self.chars / CHARS_PER_TOKEN))


def _estimate_chat(body: Mapping[str, Any], enc: tiktoken.Encoding, window: int) -> Estimate:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest(_wrong_type("messages", messages, "a list of messages"))
    if not messages:
        raise InvalidRequest("messages must not be empty")
    tally = _Tally(enc)
    for i, message in enumerate(messages):
        _tally_message(tally, message, f"messages[{i}]")
    # Tool and function definitions and a JSON schema are rendered into the prompt.
    for field in ("tools", "functions"):
        if (value := body.get(field)) is not None:
            if not isinstance(value, list):
                raise InvalidRequest(_wrong_type(field, value, "a list"))
            tally.json(value, field)
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("json_schema") is not None:
        tally.json(fmt["json_schema"], "response_format.json_schema")
    tally.tokens += REPLY_PRIMING

    newer, legacy = _positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens")
    limit = legacy if newer is None else newer
    choices = max(_positive_int(body, "n") or 1, _positive_int(body, "best_of") or 1)
    # The context check uses the real token count: the character floor is a rate-limit
    # charge, not what the model sees.
    if limit is None:
        if tally.tokens > window:
            raise ContextTooLong(prompt_tokens=tally.tokens, output_tokens=0, context_window=window)
        limit = window - tally.tokens  # no limit given: the provider may charge the whole rest
    elif tally.tokens + limit > window:
        raise ContextTooLong(prompt_tokens=tally.tokens, output_tokens=limit, context_window=window)
    return Estimate(prompt_tokens=tally.charge(), output_tokens=limit * choices)


def _tally_message(tally: _Tally, message: Any, where: str) -> None:
    if not isinstance(message, Mapping):
        raise InvalidRequest(_wrong_type(where, message, "an object"))
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(_wrong_type(f"{where}.role", role, "a string"))
    tally.tokens += TOKENS_PER_MESSAGE + _role_tokens(tally.encoding, role)
    if message.get("content") is None and role != "assistant":  # tool calls may have none
        raise InvalidRequest(f"{where}.content is missing")
    # Like OpenAI's reference counter, every other field's value is part of the prompt.
    for key, value in message.items():
        if key == "role" or value is None:
            continue
        if key == "content":
            _tally_content(tally, value, f"{where}.content")
        elif key == "name":
            if not isinstance(value, str):
                raise InvalidRequest(_wrong_type(f"{where}.name", value, "a string"))
            tally.text(value)
            tally.tokens += TOKENS_PER_NAME
        elif isinstance(value, str):
            tally.text(value)
        else:  # tool_calls, function_call, ...
            tally.json(value, f"{where}.{key}")


@functools.lru_cache(maxsize=64)
def _role_tokens(encoding: tiktoken.Encoding, role: str) -> int:
    # A handful of roles, in every message: counted once.
    return len(encoding.encode_ordinary(role))


def _tally_content(tally: _Tally, content: Any, where: str) -> None:
    if isinstance(content, str):
        tally.text(content)
        return
    if not isinstance(content, list):
        raise InvalidRequest(_wrong_type(where, content, "a string or a list of content parts"))
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise InvalidRequest(_wrong_type(at, part, "a content part object"))
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(_wrong_type(f"{at}.{kind}", text, "a string"))
            tally.text(text)
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
                raise InvalidRequest(f"{at}.image_url must be an object with a string url")
            low = image.get("detail") == "low"
            tally.tokens += IMAGE_TOKENS_LOW if low else IMAGE_TOKENS_OTHER
        else:
            # Audio and files cannot be priced from the body; refusing beats under-charging.
            raise InvalidRequest(
                f"{at}.type must be 'text', 'refusal' or 'image_url' (the parts quotaflow "
                f"can estimate), got {_show(kind)}"
            )


def _estimate_embeddings(body: Mapping[str, Any], enc: tiktoken.Encoding, window: int) -> Estimate:
    total = 0
    for item in _embedding_inputs(body.get("input")):
        if isinstance(item, str):
            tokens = len(enc.encode_ordinary(item))
            charge = max(tokens, math.ceil(len(item) / CHARS_PER_TOKEN))
        else:  # token ids are counted as given
            tokens = charge = len(item)
        if tokens > window:  # each input is embedded on its own, so each must fit
            raise ContextTooLong(prompt_tokens=tokens, output_tokens=0, context_window=window)
        total += charge
    return Estimate(prompt_tokens=total, output_tokens=0)


def _embedding_inputs(raw: Any) -> list[Any]:
    """``input`` as a list of inputs, each a non-empty string or list of token ids."""
    single = isinstance(raw, str) or (isinstance(raw, list) and bool(raw) and _is_token_id(raw[0]))
    items = [raw] if single else raw
    if not isinstance(items, list):
        kinds = "a string, a list of strings, a list of token ids or a list of token-id lists"
        raise InvalidRequest(_wrong_type("input", raw, kinds))
    if not items:
        raise InvalidRequest("input must not be empty")
    for i, item in enumerate(items):
        where = "input" if single else f"input[{i}]"
        if isinstance(item, list):
            bad = next((j for j, token in enumerate(item) if not _is_token_id(token)), None)
            if bad is not None:
                raise InvalidRequest(
                    f"{where}[{bad}] must be a token id (a non-negative integer), "
                    f"got {_show(item[bad])}"
                )
        elif not isinstance(item, str):
            raise InvalidRequest(_wrong_type(where, item, "a string or a list of token ids"))
        if not item:
            raise InvalidRequest(f"{where} must not be empty")
    return items


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{field} must be a positive integer, got {_show(value)}")
    return value


def _wrong_type(field: str, value: Any, expected: str) -> str:
    if value is None:
        return f"{field} is missing"
    return f"{field} must be {expected}, got {type(value).__name__}"


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return (
        text if isinstance(value, int | float | str) and len(text) <= 40 else type(value).__name__
    )
