"""quotaflow's configuration, read once at the edge and passed down as plain objects."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ProviderKind = Literal["openai", "azure", "compatible"]
AccountingMode = Literal["estimate", "actual"]
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
    #: Provider API key; never logged, never put in a message.
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
    #: `estimate` keeps the charge made at admission (how openai/azure count);
    #: `actual` corrects it by real usage at settle (gateways, self-hosted servers).
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
    #: window with room; a booked call starting later than this books again.
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
    def _check_kind(self) -> DeploymentSettings:
        if self.kind == "azure" and not self.api_version:
            raise ValueError("kind 'azure' needs api_version (e.g. '2024-10-21')")
        if self.kind in ("azure", "compatible") and not self.base_url:
            raise ValueError(f"kind {self.kind!r} needs base_url")
        return self

    @property
    def accounting_mode(self) -> AccountingMode:
        if self.accounting is not None:
            return self.accounting
        return "actual" if self.kind == "compatible" else "estimate"

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


def _default_deployments() -> list[DeploymentSettings]:
    return [
        DeploymentSettings(
            name="default",
            kind="compatible",
            model="gpt-4o-mini",
            base_url="http://127.0.0.1:8765/v1",
            api_key=SecretStr("sk-local-simulator"),
            tpm=30_000,
            rpm=600,
            accounting="estimate",
            price_input_per_1m=0.15,
            price_output_per_1m=0.60,
        )
    ]


class Settings(BaseSettings):
    """Everything quotaflow reads from the environment, `.env` or `quotaflow.toml`."""

    model_config = SettingsConfigDict(
        env_prefix="QUOTAFLOW_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        toml_file="quotaflow.toml",
        extra="forbid",
        frozen=True,
    )

    #: Broker, result backend and budget store. Unset: an embedded private Redis.
    redis_url: str | None = None
    #: Prefix of every Redis key quotaflow writes.
    key_prefix: str = Field(default="quotaflow", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    #: Queue for new work and throttled deferrals.
    queue: str = Field(default="quotaflow", min_length=1)
    #: Queue for transient provider failures.
    retry_queue: str = Field(default="quotaflow.retry", min_length=1)
    #: Transient failures (429, 5xx, timeouts) allowed per request before dead-lettering.
    max_retries: int = Field(default=8, ge=0, le=100)
    #: First backoff step after a transient failure, seconds.
    backoff_base_seconds: PositiveFloat = 1.0
    #: Largest backoff, seconds.
    backoff_cap_seconds: PositiveFloat = 60.0
    #: A request is booked into a future slot only this far ahead; further, it waits.
    booking_horizon_seconds: float = Field(default=300.0, ge=0, le=3600)
    #: A booked task that starts later than this re-books (its slot is gone).
    late_tolerance_seconds: PositiveFloat = 2.0
    #: Random extra delay added to unbooked deferrals so they do not return in a herd.
    defer_jitter_seconds: float = Field(default=2.0, ge=0)
    #: Longest a deferral may wait; the gate's hint is capped to this.
    max_defer_seconds: PositiveFloat = 300.0
    #: How long a task holds its message waiting for an unreachable Redis (the gate
    #: fails closed) before giving up on this delivery.
    budget_outage_wait_seconds: PositiveFloat = 300.0
    #: An unfinished request silent this long is checked for a lost message (one in
    #: no queue and held by no worker) and sent again if so.
    recover_after_seconds: PositiveFloat = 60.0
    #: Redis visibility timeout: an unacked message is redelivered after this long.
    visibility_timeout_seconds: PositiveInt = 3600
    #: Most ETA (deferred) tasks one worker holds in memory.
    eta_task_limit: PositiveInt = 2000
    #: Record every admission in Redis (for audits and the conformance tests).
    admission_log: bool = False
    #: Where the simulator listens when quotaflow starts one itself.
    simulator_host: str = "127.0.0.1"
    simulator_port: int = Field(default=8765, ge=0, le=65535)
    #: The deployments requests can go to; the first is the default.
    deployments: list[DeploymentSettings] = Field(default_factory=_default_deployments)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss:// (TLS)")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if not self.deployments:
            raise ValueError("deployments: at least one deployment is needed")
        names = [d.name for d in self.deployments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"deployments: names must be unique, repeated: {', '.join(dupes)}")
        if self.queue == self.retry_queue:
            raise ValueError("queue and retry_queue must differ")
        longest = self.longest_countdown_seconds
        if longest * 2 > self.visibility_timeout_seconds:
            raise ValueError(
                f"visibility_timeout_seconds ({self.visibility_timeout_seconds}) must be at "
                f"least twice the longest countdown ({longest:g}s), or deferred tasks are "
                "redelivered and run twice"
            )
        return self

    @property
    def longest_countdown_seconds(self) -> float:
        """The longest a deferred or retried task can be held before it runs."""
        burst = max(d.admission_span_seconds for d in self.deployments)
        return max(
            # A booking starts at most horizon + one burst (or window) ahead.
            self.booking_horizon_seconds + burst + self.late_tolerance_seconds,
            self.backoff_cap_seconds,
            self.max_defer_seconds,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    def deployment(self, name: str | None = None) -> DeploymentSettings:
        """The named deployment, or the first one when `name` is None."""
        if name is None:
            return self.deployments[0]
        for dep in self.deployments:
            if dep.name == name:
                return dep
        known = ", ".join(d.name for d in self.deployments)
        raise SettingsError(f"unknown deployment {name!r}; configured: {known}")


def load_settings(*, toml_file: Path | None = None, **overrides: object) -> Settings:
    """Build Settings, turning validation errors into one readable SettingsError."""
    try:
        if toml_file is not None:
            if not toml_file.is_file():
                raise SettingsError(f"settings file not found: {toml_file}")
            cls = type(
                "FileSettings",
                (Settings,),
                {"model_config": {**Settings.model_config, "toml_file": toml_file}},
            )
            return cls(**overrides)  # type: ignore[arg-type]
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid quotaflow settings:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        lines.append(f"  {where}: {err['msg']} (got {_short(err.get('input'))})")
    lines.append("set them with QUOTAFLOW_* environment variables, .env or quotaflow.toml")
    return "\n".join(lines)


def _short(value: object) -> str:
    text = repr(_redact(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _redact(value: object) -> object:
    """Hide secrets that a validation error would otherwise echo back."""
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {
            k: "**********"
            if "key" in str(k).lower() or "password" in str(k).lower()
            else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`."""
    return re.sub(r"(://[^:/@]*:)[^@/]+@", r"\1***@", url)


def settings_env(settings: Settings) -> dict[str, str]:
    """The QUOTAFLOW_* environment that rebuilds `settings` in another process.

    Secrets are included (the child needs them): hand this only to processes you start.
    """
    data = settings.model_dump(mode="json", exclude_none=True)
    data["deployments"] = [
        {
            **dep.model_dump(mode="json", exclude_none=True),
            **({"api_key": dep.api_key.get_secret_value()} if dep.api_key else {}),
        }
        for dep in settings.deployments
    ]
    env = {}
    for name, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value)
        env[f"QUOTAFLOW_{name.upper()}"] = text
    return env
