"""One model deployment and the quota its provider gives it."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)

ProviderKind = Literal["openai", "azure", "compatible"]
AccountingMode = Literal["estimate", "actual"]
#: Time a task run may take beyond the outage wait and the provider timeout.
RUN_MARGIN_SECONDS = 10.0
#: Kinds whose provider refuses every call without a key. A `compatible` server may
#: need none (vLLM, Ollama): without api_key it is sent a placeholder.
KINDS_NEEDING_API_KEY = ("openai", "azure")
#: The key the default deployment sends; `quotaflow simulate --api-key sk-local` accepts it.
SIMULATOR_API_KEY = "sk-local"
#: "bucket": GCRA token bucket (OpenAI); "window": fixed-length windows at any phase (Azure).
LimiterKind = Literal["bucket", "window"]


class SettingsError(ValueError):
    """Settings that cannot work; the message names each field and what is wrong."""


class DeploymentSettings(BaseModel):
    """One model deployment and the quota the provider gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Name used to route requests and to key the budget in Redis.
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    #: Which client to build: OpenAI, AzureOpenAI, or OpenAI against another base URL.
    kind: ProviderKind = "openai"
    #: Model name sent to the provider (and used to pick the tokenizer).
    model: str = Field(min_length=1)
    #: Base URL of the API; for azure, the resource endpoint.
    base_url: str | None = None
    #: Azure OpenAI API version (required for kind=azure).
    api_version: str | None = None
    #: Provider API key (required for openai and azure); never logged, never put in a
    #: message.
    api_key: SecretStr | None = None
    #: Tokens per minute granted by the provider.
    tpm: PositiveInt
    #: Requests per minute granted by the provider.
    rpm: PositiveInt
    #: Seconds of quota that may be spent at once. Keep it a little below the
    #: provider's window (OpenAI's bucket holds 60 s): the gap absorbs calls that
    #: reach the provider a moment after their slot (up to late_tolerance_seconds).
    #: Azure checks over 1-10 s intervals and needs a few seconds at most.
    burst_seconds: float = Field(default=58.0, gt=0, le=60)
    #: `estimate` (the default) keeps the charge made at admission, as openai and azure
    #: count; `actual` corrects it by real usage at settle, for servers that count real
    #: usage. Only `estimate` can never under-reserve.
    accounting: AccountingMode | None = None
    #: Context window in tokens: bounds prompts and the charge of unbounded outputs.
    context_window: PositiveInt = 128_000
    #: USD per 1M input tokens, for cost reports.
    price_input_per_1m: float = Field(default=0.0, ge=0)
    #: USD per 1M output tokens, for cost reports.
    price_output_per_1m: float = Field(default=0.0, ge=0)
    #: Seconds before an API call is abandoned as a transient failure.
    timeout_seconds: PositiveFloat = 60.0
    #: How the gate admits: "bucket" (a token bucket refilled continuously, how OpenAI
    #: limits) or "window" (at most one window's allowance in every interval of a
    #: window's length, at any phase: how Azure OpenAI limits). Default: "window" for
    #: kind azure, "bucket" otherwise.
    limiter: LimiterKind = "bucket"
    #: Window limiter: tokens are counted over this many seconds (Azure: 10); each
    #: window may hold tpm x window_seconds / 60 tokens.
    window_seconds: float = Field(default=10.0, gt=0, le=60)
    #: Window limiter: requests are counted over this many seconds (Azure: 1); each
    #: window may hold rpm x request_window_seconds / 60 requests.
    request_window_seconds: float = Field(default=1.0, gt=0, le=60)
    #: Window limiter: the gate's windows are this much longer than the provider's, so
    #: a call that reaches the provider up to this late after its slot still lands in a
    #: window with room; a booked call starting later than half this books again
    #: (the other half is for its way to the provider).
    window_guard_seconds: float = Field(default=0.25, ge=0, le=10)

    @model_validator(mode="before")
    @classmethod
    def _default_limiter(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("limiter") is None:
            return {**data, "limiter": "window" if data.get("kind") == "azure" else "bucket"}
        return data

    @model_validator(mode="after")
    def _check_window(self) -> DeploymentSettings:
        if self.limiter != "window":
            return self
        if self.request_capacity < 1:
            least = 60 / self.rpm
            raise ValueError(
                f"limiter 'window': rpm x request_window_seconds / 60 = "
                f"{self.request_capacity:g} admits no whole request per window; raise "
                f"request_window_seconds to at least {least:g} (or rpm to at least "
                f"{math.ceil(60 / self.request_window_seconds)})"
            )
        if self.token_capacity < 1:
            raise ValueError(
                f"limiter 'window': tpm x window_seconds / 60 = {self.token_capacity:g} "
                f"admits no token per window; raise window_seconds to at least "
                f"{60 / self.tpm:g} (or tpm)"
            )
        longest = max(self.window_seconds, self.request_window_seconds)
        if longest + self.window_guard_seconds > 60:
            raise ValueError(
                f"limiter 'window': the longest window ({longest:g}s) plus "
                f"window_guard_seconds ({self.window_guard_seconds:g}s) must not exceed 60s"
            )
        return self

    @model_validator(mode="after")
    def _check_capacity(self) -> DeploymentSettings:
        # The burst is also the largest single request: below one request (or one
        # token) the deployment could never admit anything.
        if self.request_capacity < 1:
            need = 60.0 / self.rpm
            raise ValueError(
                f"rpm {self.rpm} x burst_seconds {self.burst_seconds:g} / 60 admits "
                f"{self.request_capacity:.2g} requests at once, less than one: raise "
                f"burst_seconds to at least {need:.3g} "
                f"(or rpm to {math.ceil(60 / self.burst_seconds)})"
            )
        if self.token_capacity < 1:
            raise ValueError(
                f"tpm {self.tpm} x burst_seconds {self.burst_seconds:g} / 60 admits less than "
                f"one token at once: raise burst_seconds to at least {60.0 / self.tpm:.3g}"
            )
        return self

    @model_validator(mode="after")
    def _check_kind(self) -> DeploymentSettings:
        if self.kind == "azure" and not self.api_version:
            raise ValueError("kind 'azure' needs api_version (e.g. '2024-10-21')")
        if self.kind in ("azure", "compatible") and not self.base_url:
            raise ValueError(f"kind {self.kind!r} needs base_url")
        return self

    @property
    def accounting_mode(self) -> AccountingMode:
        return self.accounting or "estimate"

    @property
    def token_capacity(self) -> float:
        """Tokens that may be admitted at once: the bucket's burst, or a window's allowance."""
        if self.limiter == "window":
            return self.tpm * self.window_seconds / 60.0
        return self.tpm * self.burst_seconds / 60.0

    @property
    def request_capacity(self) -> float:
        """Requests that may be admitted at once (burst, or a request window's allowance)."""
        if self.limiter == "window":
            return self.rpm * self.request_window_seconds / 60.0
        return self.rpm * self.burst_seconds / 60.0

    @property
    def admission_span_seconds(self) -> float:
        """Longest a request can wait for room once it is first in line: the bucket's
        burst, or the gate's longest window (the provider's plus the guard)."""
        if self.limiter == "window":
            longest = max(self.window_seconds, self.request_window_seconds)
            return longest + self.window_guard_seconds
        return self.burst_seconds

    @property
    def capacity_hint(self) -> str:
        """Where the most a request may cost comes from, and what to change."""
        if self.limiter == "window":
            return (
                "tpm x window_seconds/60, rpm x request_window_seconds/60; lower max_tokens "
                "or the prompt, or raise window_seconds"
            )
        return "tpm/rpm x burst_seconds/60; lower max_tokens or the prompt, or raise burst_seconds"


def _default_deployments(
    host: object = "127.0.0.1", port: object = 8765
) -> list[DeploymentSettings]:
    """The local simulator that `quotaflow simulate` starts (same address, key and quota)."""
    return [
        DeploymentSettings(
            name="default",
            kind="compatible",
            model="gpt-4o-mini",
            base_url=f"http://{host}:{port}/v1",
            api_key=SecretStr(SIMULATOR_API_KEY),
            tpm=30_000,
            rpm=600,
            accounting="estimate",
            price_input_per_1m=0.15,
            price_output_per_1m=0.60,
        )
    ]
