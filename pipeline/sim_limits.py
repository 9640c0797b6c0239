"""The simulated provider's rules: what a request costs, whether it is admitted, and
what the answers look like. Pure functions and values; the threads, the lock and the
HTTP live in ``simulator``.

Charging follows the providers: at arrival, ``ceil(prompt characters / 4)`` plus the
output limit (``max_completion_tokens`` or ``max_tokens`` or a default) times ``n``;
embeddings cost their inputs' estimate. Two admission policies, both driven by an
explicit clock (``now``, monotonic seconds) so they can be tested without sleeping:

- ``TokenBucketLimiter`` (OpenAI): per dimension a bucket holding a full minute of
  quota, refilled continuously; a request is admitted iff every bucket holds its charge.
- ``WindowLimiter`` (Azure OpenAI, pay-as-you-go): tokens counted over fixed periods of
  ``check_seconds`` (10 s: TPM/6 each), requests over fixed periods of
  ``request_check_seconds`` (1 s: RPM/60 each), plus the minute counters; every period
  starts at a phase the client does not know.
- ``ProvisionedLimiter`` (Azure OpenAI provisioned throughput, PTU): utilization-based.
  A request is admitted while utilization is below 100%; its estimate is added at
  arrival and corrected to its actual usage when it completes; utilization drains
  continuously at the provisioned rate.

Neither is thread-safe: the simulator calls them under its one lock.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import random
import re
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

POLICIES = ("openai", "azure", "ptu")


@dataclass(frozen=True)
class Snapshot:
    """What the ``x-ratelimit-*`` headers report."""

    #: Tokens per minute.
    limit_tokens: int
    #: Requests per minute.
    limit_requests: int
    #: Tokens that could be admitted now.
    remaining_tokens: int
    #: Requests that could be admitted now.
    remaining_requests: int
    #: Seconds until the token limit is back to its initial state.
    reset_tokens: float
    #: Seconds until the request limit is back to its initial state.
    reset_requests: float


@dataclass(frozen=True)
class Verdict:
    """The answer to one admission request."""

    #: True when the request was admitted and charged.
    admitted: bool
    #: Seconds until the request could be admitted (0 when admitted).
    retry_after: float
    #: The dimension that refused ("tokens" or "requests"); None when admitted.
    dimension: str | None
    #: True when the charge exceeds what the limit can ever hold.
    too_large: bool
    #: The limits after the decision.
    snapshot: Snapshot


class Limiter(Protocol):
    """An admission policy over tokens and requests."""

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        """Charge both dimensions if both fit, else charge nothing."""
        ...

    def take(self, tokens: int, now: float) -> int:
        """Charge up to ``tokens`` tokens (no requests); return how many fitted."""
        ...

    def snapshot(self, now: float) -> Snapshot:
        """The current state, for headers."""
        ...

    def correct(self, tokens: int, now: float) -> None:
        """When a call completes: add ``tokens`` (actual - charged; may be negative) to
        what it is counted for. Only utilization-based limits do."""
        ...


# -- admission policies -----------------------------------------------------------------


class _Bucket:
    """A continuously refilled bucket of ``capacity`` units, ``rate`` units/second."""

    def __init__(self, per_minute: float, now: float, *, bucket_seconds: float = 60.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = self.rate * bucket_seconds
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, units: float) -> float:
        return max(0.0, (units - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


class TokenBucketLimiter:
    """OpenAI-style: a minute of quota as burst (or `bucket_seconds` of it), refilled
    continuously."""

    def __init__(self, *, tpm: int, rpm: int, now: float, bucket_seconds: float = 60.0) -> None:
        self._tokens = _Bucket(tpm, now, bucket_seconds=bucket_seconds)
        self._requests = _Bucket(rpm, now, bucket_seconds=bucket_seconds)

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        tb, rb = self._tokens, self._requests
        tb.refill(now)
        rb.refill(now)
        if tokens > tb.capacity or requests > rb.capacity:
            # Waiting never helps; report a full refill so a naive client backs off.
            dim = "tokens" if tokens > tb.capacity else "requests"
            wait = max(tb.until_full(), rb.until_full(), 1.0)
            return Verdict(False, wait, dim, True, self._snap())
        t_wait, r_wait = tb.wait_for(tokens), rb.wait_for(requests)
        if t_wait > 0 or r_wait > 0:
            dim = "tokens" if t_wait >= r_wait else "requests"
            return Verdict(False, max(t_wait, r_wait), dim, False, self._snap())
        tb.level -= tokens
        rb.level -= requests
        return Verdict(True, 0.0, None, False, self._snap())

    def take(self, tokens: int, now: float) -> int:
        self._tokens.refill(now)
        taken = min(tokens, math.floor(self._tokens.level))
        if taken <= 0:
            return 0
        self._tokens.level -= taken
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._tokens.refill(now)
        self._requests.refill(now)
        return self._snap()

    def correct(self, tokens: int, now: float) -> None:
        """Charges made at arrival stand."""

    def _snap(self) -> Snapshot:
        tb, rb = self._tokens, self._requests
        return Snapshot(
            limit_tokens=int(tb.capacity),
            limit_requests=int(rb.capacity),
            remaining_tokens=max(0, math.floor(tb.level)),
            remaining_requests=max(0, math.floor(rb.level)),
            reset_tokens=tb.until_full(),
            reset_requests=rb.until_full(),
        )


class WindowLimiter:
    """Azure-style: fixed token periods, fixed request periods and minute counters.

    Every period starts ``phase`` seconds before a multiple of its length from
    ``now`` at construction (0 = aligned to construction). A token period may hold
    ``check_seconds / 60`` of the minute's tokens, a request period
    ``request_check_seconds / 60`` of its requests (at least one), which is why a
    client that bursts a whole minute's quota at once is refused on Azure.
    """

    def __init__(
        self,
        *,
        tpm: int,
        rpm: int,
        check_seconds: float,
        now: float,
        request_check_seconds: float = 1.0,
        phase: float = 0.0,
    ) -> None:
        self._tpm, self._rpm = tpm, rpm
        self._check, self._request_check = check_seconds, request_check_seconds
        self._window_tpm = tpm * check_seconds / 60.0
        self._window_rpm = max(1.0, rpm * request_check_seconds / 60.0)
        self._origin = now - phase
        self._minute = self._window = self._request_window = -1
        self._minute_tokens = self._minute_requests = 0
        self._window_tokens = self._window_requests = 0

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        self._roll(now)
        if tokens > self._window_tpm or requests > self._window_rpm:
            dim = "tokens" if tokens > self._window_tpm else "requests"
            return Verdict(False, self._minute_left(now), dim, True, self._snap(now))
        minute_t = self._minute_tokens + tokens > self._tpm
        minute_r = self._minute_requests + requests > self._rpm
        if minute_t or minute_r:
            dim = "tokens" if minute_t else "requests"
            return Verdict(False, self._minute_left(now), dim, False, self._snap(now))
        if self._window_tokens + tokens > self._window_tpm:
            return Verdict(False, self._left(now, self._check), "tokens", False, self._snap(now))
        if self._window_requests + requests > self._window_rpm:
            wait = self._left(now, self._request_check)
            return Verdict(False, wait, "requests", False, self._snap(now))
        self._charge(tokens, requests)
        return Verdict(True, 0.0, None, False, self._snap(now))

    def take(self, tokens: int, now: float) -> int:
        self._roll(now)
        room = min(self._tpm - self._minute_tokens, self._window_tpm - self._window_tokens)
        taken = min(tokens, math.floor(room))
        if taken <= 0:
            return 0
        self._charge(taken, 0)
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._roll(now)
        return self._snap(now)

    def correct(self, tokens: int, now: float) -> None:
        """Charges made at arrival stand."""

    def _charge(self, tokens: int, requests: int) -> None:
        self._minute_tokens += tokens
        self._window_tokens += tokens
        self._minute_requests += requests
        self._window_requests += requests

    def _roll(self, now: float) -> None:
        elapsed = max(0.0, now - self._origin)
        minute, window = int(elapsed // 60.0), int(elapsed // self._check)
        request_window = int(elapsed // self._request_check)
        if minute != self._minute:
            self._minute, self._minute_tokens, self._minute_requests = minute, 0, 0
        if window != self._window:
            self._window, self._window_tokens = window, 0
        if request_window != self._request_window:
            self._request_window, self._window_requests = request_window, 0

    def _minute_left(self, now: float) -> float:
        return self._origin + (self._minute + 1) * 60.0 - now

    def _left(self, now: float, period: float) -> float:
        elapsed = now - self._origin
        return (math.floor(elapsed / period) + 1) * period - elapsed

    def _snap(self, now: float) -> Snapshot:
        left = self._minute_left(now)
        # Azure reports the minute counters; the shorter periods are invisible to clients.
        return Snapshot(
            limit_tokens=self._tpm,
            limit_requests=self._rpm,
            remaining_tokens=max(0, self._tpm - self._minute_tokens),
            remaining_requests=max(0, self._rpm - self._minute_requests),
            reset_tokens=left if self._minute_tokens else 0.0,
            reset_requests=left if self._minute_requests else 0.0,
        )


class ProvisionedLimiter:
    """Azure provisioned throughput (PTU): utilization-based, no request limit.

    Utilization is a level of tokens draining at ``tpm / 60`` per second; 100% is
    ``bucket_seconds`` of that. A request is admitted while utilization is below 100%
    (it may then go over); its charge (the estimate) is added at arrival and corrected
    by ``correct`` to its actual usage when it completes.
    """

    def __init__(self, *, tpm: int, now: float, bucket_seconds: float = 60.0) -> None:
        self._rate = tpm / 60.0
        self._capacity = self._rate * bucket_seconds
        self._tpm = tpm
        self._level = 0.0
        self._stamp = now

    def _drain(self, now: float) -> None:
        if now > self._stamp:
            self._level = max(0.0, self._level - (now - self._stamp) * self._rate)
            self._stamp = now

    def admit(self, tokens: int, requests: int, now: float) -> Verdict:
        self._drain(now)
        if tokens > self._capacity:
            return Verdict(False, self._capacity / self._rate, "tokens", True, self._snap())
        if self._level >= self._capacity:
            wait = (self._level - self._capacity) / self._rate + 0.001
            return Verdict(False, wait, "tokens", False, self._snap())
        self._level += tokens
        return Verdict(True, 0.0, None, False, self._snap())

    def take(self, tokens: int, now: float) -> int:
        self._drain(now)
        taken = min(tokens, math.floor(self._capacity - self._level))
        if taken <= 0:
            return 0
        self._level += taken
        return taken

    def snapshot(self, now: float) -> Snapshot:
        self._drain(now)
        return self._snap()

    def correct(self, tokens: int, now: float) -> None:
        self._drain(now)
        self._level = max(0.0, self._level + tokens)

    def _snap(self) -> Snapshot:
        left = max(0.0, self._capacity - self._level)
        return Snapshot(
            limit_tokens=self._tpm,
            limit_requests=0,
            remaining_tokens=math.floor(left),
            remaining_requests=0,
            reset_tokens=self._level / self._rate,
            reset_requests=0.0,
        )

    @property
    def utilization(self) -> float:
        return self._level / self._capacity


def make_limiter(
    policy: str,
    *,
    tpm: int,
    rpm: int,
    check_seconds: float,
    now: float,
    bucket_seconds: float = 60.0,
    request_check_seconds: float = 1.0,
    phase: float = 0.0,
) -> Limiter:
    """Build the limiter for ``policy`` ("openai", "azure" or "ptu") with full quota at
    ``now``; Azure's periods start ``phase`` seconds before ``now``."""
    if policy == "openai":
        return TokenBucketLimiter(tpm=tpm, rpm=rpm, now=now, bucket_seconds=bucket_seconds)
    if policy == "azure":
        return WindowLimiter(
            tpm=tpm, rpm=rpm, check_seconds=check_seconds, now=now,
            request_check_seconds=request_check_seconds, phase=phase,
        )  # fmt: skip
    if policy == "ptu":
        return ProvisionedLimiter(tpm=tpm, now=now, bucket_seconds=bucket_seconds)
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


def format_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers: "120ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(snap: Snapshot) -> dict[str, str]:
    """The six ``x-ratelimit-*`` headers for ``snap``."""
    return {
        "x-ratelimit-limit-requests": str(snap.limit_requests),
        "x-ratelimit-limit-tokens": str(snap.limit_tokens),
        "x-ratelimit-remaining-requests": str(snap.remaining_requests),
        "x-ratelimit-remaining-tokens": str(snap.remaining_tokens),
        "x-ratelimit-reset-requests": format_duration(snap.reset_requests),
        "x-ratelimit-reset-tokens": format_duration(snap.reset_tokens),
    }


# -- requests: validation, charge, answers ---------------------------------------------


class ApiError(Exception):
    """A provider-style error answer, raised while checking a request."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, param=param, code=code)
        self.headers = dict(headers or {})


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_error(
    status: int, model: str, *, code: str | None = None, retry_after: float | None = None
) -> ApiError:
    """The error a ``[[status:NNN]]`` trigger (or a fault) answers with; ``[[code:X]]``
    and ``[[retry_after:S]]`` triggers replace its error code and retry-after."""
    known: dict[int, tuple[str, str, str | None]] = {
        400: ("Invalid request (triggered).", "invalid_request_error", None),
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to access this resource.", "permission_error", None),
        404: (
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        429: ("Rate limit reached (triggered).", "requests", "rate_limit_exceeded"),
        500: ("The server had an error while processing your request.", "server_error", None),
        503: ("The engine is currently overloaded, please try again later.", "server_error", None),
        504: ("Gateway timeout.", "server_error", None),
    }
    default = ("Triggered error.", "server_error" if status >= 500 else "invalid_request_error")
    message, type_, known_code = known.get(status, (*default, None))
    headers = None
    if status == 429:
        wait = 1.0 if retry_after is None else retry_after
        headers = {"retry-after": f"{wait:g}", "retry-after-ms": f"{wait * 1000:.0f}"}
    if code is not None:
        type_ = code
    return ApiError(status, message, type_, code=code or known_code, headers=headers)


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


def _filler(tokens: int) -> str:
    # About four characters per token, like the charge estimate; cheap to build.
    return ("lorem " * (tokens * 2 // 3 + 1))[: tokens * 4].rstrip()


def _embedding(item: str | tuple[int, ...]) -> list[float]:
    rng = random.Random(zlib.crc32(repr(item).encode()))
    vector = [rng.uniform(-1.0, 1.0) for _ in range(8)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


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
