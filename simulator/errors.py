"""Provider-style error answers: the exception raised while checking a request and
the OpenAI-shaped body it carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
