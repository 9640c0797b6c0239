"""Calls to the model through the official openai SDK, and the one place its errors
are classified into transient and permanent.

The SDK's own retries are off (`max_retries=0`): quotaflow owns retries, so that
every attempt passes the gate and 429s cool the deployment down for all workers.

A request body is data. The SDK's `create()` also takes call options (`extra_headers`,
`extra_query`, `extra_body`, `timeout`): a body naming one is refused (`check_body`),
or a batch line could set the headers, query or api-version of a call made with the
deployment's key. Other keys the SDK does not name are sent in the JSON body as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from budget import InvalidRequest
from settings import DeploymentSettings
from tasks.errors import PermanentProviderError, ProviderError, TransientProviderError

ENDPOINTS = ("chat", "embeddings")
#: Statuses worth retrying besides 429 and 5xx.
_TRANSIENT_STATUSES = {408, 409}
#: 429s that waiting cannot cure: the account, not the rate, is the problem.
_PERMANENT_429_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "access_terminated"}
)
#: Longest provider error text kept (in dead letters, logs, task events): enough for
#: any reason a provider gives, not for an echo of a whole prompt or reply.
MAX_ERROR_TEXT = 1000
#: Longest error code kept: codes are identifiers; a longer one is not.
MAX_ERROR_CODE = 64


@dataclass(frozen=True)
class ProviderReply:
    """A successful response."""

    #: The response body as JSON-ready data.
    body: dict[str, Any]
    #: Response headers, lower-cased.
    headers: dict[str, str]
    #: HTTP status code.
    status: int
    #: The provider's request id, when it sends one.
    request_id: str | None
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; `ProviderReply(**d)` rebuilds it."""
        return dataclasses.asdict(self)


_clients: dict[tuple[int, str], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def client_for(dep: DeploymentSettings) -> openai.OpenAI:
    """One client per deployment per process (a forked child must not share sockets)."""
    key = (os.getpid(), dep.name)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _build_client(dep)
            _clients[key] = client
        return client


def _build_client(dep: DeploymentSettings) -> openai.OpenAI:
    api_key = dep.api_key.get_secret_value() if dep.api_key else None
    if api_key is None and dep.kind == "compatible":
        api_key = "none"  # a self-hosted server may need no key; the SDK insists on one
    try:
        if dep.kind == "azure":
            return openai.AzureOpenAI(
                azure_endpoint=dep.base_url or "",
                api_version=dep.api_version,
                api_key=api_key,
                max_retries=0,
                timeout=dep.timeout_seconds,
            )
        return openai.OpenAI(
            api_key=api_key, base_url=dep.base_url, max_retries=0, timeout=dep.timeout_seconds
        )
    except openai.OpenAIError as exc:
        raise PermanentProviderError(
            f"deployment {dep.name!r} has no API key: set api_key in its settings"
        ) from exc


#: SDK arguments that shape the HTTP call (headers, query, timeout), not its body. The
#: SDK's signature names more (`_control_arguments`); these are refused whatever it says.
_CONTROL_ALWAYS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


def _create_methods() -> dict[str, tuple[Any, Any]]:
    from openai.resources.chat.completions import Completions
    from openai.resources.embeddings import Embeddings
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    from openai.types.embedding_create_params import EmbeddingCreateParams

    return {
        "chat": (Completions.create, CompletionCreateParamsNonStreaming),
        "embeddings": (Embeddings.create, EmbeddingCreateParams),
    }


@functools.cache
def request_fields(endpoint: str) -> frozenset[str]:
    """The endpoint's request-body fields that the SDK takes as named arguments: its
    `create()` parameters that are also keys of the SDK's request-body type."""
    method, body_type = _create_methods()[endpoint]
    typed = body_type.__required_keys__ | body_type.__optional_keys__
    return frozenset(inspect.signature(method).parameters) & typed - _CONTROL_ALWAYS


@functools.cache
def _control_arguments() -> frozenset[str]:
    """`create()` parameters of any endpoint that are not request-body fields."""
    control = set(_CONTROL_ALWAYS)
    for endpoint, (method, _) in _create_methods().items():
        control |= set(inspect.signature(method).parameters) - request_fields(endpoint) - {"self"}
    return frozenset(control)


def control_keys(body: Mapping[str, Any]) -> list[str]:
    """The body's keys that the SDK would take as call options rather than send as data."""
    control = _control_arguments()
    return sorted(k for k in body if k in control or str(k).startswith("extra_"))


def check_body(body: Mapping[str, Any]) -> None:
    """Refuse a body the SDK would not send as it is: call options among its keys
    (a body is data; it never sets the HTTP headers, query or timeout of the call
    made with the deployment's key), or stream=true."""
    keys = control_keys(body)
    if keys:
        names = ", ".join(repr(k) for k in keys)
        one = len(keys) == 1
        raise InvalidRequest(
            f"body key{'' if one else 's'} {names} {'is' if one else 'are'} not "
            f"{'a request field' if one else 'request fields'} but "
            f"{'an option' if one else 'options'} of the SDK call (its HTTP headers, query, "
            "timeout), made with the deployment's key: remove "
            f"{'it' if one else 'them'} from the body (headers and query parameters come "
            "from the deployment's settings)"
        )
    if body.get("stream"):
        raise InvalidRequest("stream=true is not supported for batch work; remove it")


def _split(body: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    """Request fields the SDK knows become its arguments; other keys (fields the SDK
    does not know yet, a compatible server's own) travel as data in extra_body."""
    known = request_fields(endpoint)
    args = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        args["extra_body"] = extra
    return args


def call(dep: DeploymentSettings, endpoint: str, body: Mapping[str, Any]) -> ProviderReply:
    """Send one request; raise TransientProviderError or PermanentProviderError."""
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"unknown endpoint {endpoint!r}; use one of {ENDPOINTS}")
    # Checked at submit and publish too; here for a message that skipped those.
    check_body(body)
    client = client_for(dep)
    request = dict(body)
    # Always the deployment's model: its budget is the one charged (for azure, the
    # deployment name routes the call). `route` refused bodies asking for another.
    request["model"] = dep.model
    try:
        if endpoint == "chat":
            raw = client.chat.completions.with_raw_response.create(**_split(request, endpoint))
        else:
            raw = client.embeddings.with_raw_response.create(**_split(request, endpoint))
        data = _body(raw)
    except openai.APIError as exc:
        raise classify(exc, dep) from None
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("total_tokens") or prompt)
    completion = int(usage.get("completion_tokens") or max(0, total - prompt))
    headers = {k.lower(): v for k, v in raw.headers.items()}
    return ProviderReply(
        body=data,
        headers=headers,
        status=raw.status_code,
        request_id=headers.get("x-request-id"),
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def _body(raw: Any) -> dict[str, Any]:
    """The reply as the provider sent it. A JSON object is taken as it is: building
    the SDK's model to dump it again cost more CPU than the rest of the reading."""
    if "json" in raw.headers.get("content-type", ""):
        data = raw.http_response.json()
        if isinstance(data, dict):
            return data
    parsed = raw.parse()
    return dict(parsed.model_dump(mode="json", exclude_unset=True))


def classify(exc: openai.APIError, dep: DeploymentSettings) -> ProviderError:
    """Turn an SDK error into quotaflow's, with the API key scrubbed from the text."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    code = kind = None
    if isinstance(body, Mapping):
        error = body.get("error")
        inner: Mapping[str, Any] = error if isinstance(error, Mapping) else body
        code = inner.get("code") or body.get("code")
        kind = inner.get("type")
    message = clip(scrub(str(getattr(exc, "message", None) or exc), dep))
    err: ProviderError
    if isinstance(exc, openai.APITimeoutError):
        err = TransientProviderError(f"timed out after {dep.timeout_seconds:g}s")
        err.code = "timeout"
    elif isinstance(exc, openai.APIConnectionError):
        where = dep.base_url or "the OpenAI API"
        err = TransientProviderError(f"connection to {where} failed: {message}")
        err.code = "connection_error"
    elif status == 429 and {code, kind} & _PERMANENT_429_CODES:
        err = PermanentProviderError(f"provider refused: {message} (429, waiting cannot help)")
        err.code = clip(str(code or kind), MAX_ERROR_CODE)
    elif status == 429:
        err = TransientProviderError(f"rate limited by the provider (429): {message}")
        err.code = "rate_limited"
        response = getattr(exc, "response", None)
        headers = response.headers if response is not None else {}
        err.retry_after = retry_after(headers)
    elif status is not None and (status >= 500 or status in _TRANSIENT_STATUSES):
        err = TransientProviderError(f"provider error {status}: {message}")
        err.code = "server_error"
    else:
        err = PermanentProviderError(f"provider rejected the request ({status}): {message}")
        err.code = clip(str(code or _status_code_name(status)), MAX_ERROR_CODE)
    err.status = status
    return err


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asks us to wait (`retry-after-ms` wins over `retry-after`)."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = lower.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def scrub(text: str, dep: DeploymentSettings) -> str:
    """Remove the API key (and anything shaped like one) from a message."""
    if dep.api_key:
        secret = dep.api_key.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-]{6,}", "sk-***", text)


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text) - limit} more characters)"
    return text[: max(0, limit - len(note))] + note


def _status_code_name(status: int | None) -> str:
    return {
        400: "invalid_request",
        401: "authentication_error",
        403: "permission_denied",
        404: "not_found",
        422: "unprocessable_entity",
    }.get(status or 0, f"http_{status}")
