"""quotaflow's configuration, read once at the edge and passed down as plain objects."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
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

from settings.deployment import (
    KINDS_NEEDING_API_KEY,
    RUN_MARGIN_SECONDS,
    DeploymentSettings,
    SettingsError,
    _default_deployments,
)
from settings.sources import (
    ENV_FILE,
    ENV_PREFIX,
    TOML_FILE,
    KnownFieldsOnly,
    ParseError,
    SourceError,
    Sources,
)

#: Clock skew between worker machines the visibility timeout absorbs. kombu scores an
#: unacknowledged message on the delivering worker's clock and restores it by the
#: restoring worker's: a worker this far ahead restores others' messages this early.
#: Workers warn at start above 0.1 s; keep them on NTP.
SKEW_MARGIN_SECONDS = 10.0


class Settings(BaseSettings):
    """Everything quotaflow reads from the environment, `.env` or `quotaflow.toml`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        # QUOTAFLOW_DEPLOYMENTS= (e.g. an unset compose variable) means unset, not "".
        env_ignore_empty=True,
        toml_file=TOML_FILE,
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
    #: Largest backoff, seconds. A provider's retry-after is honoured up to this.
    backoff_cap_seconds: PositiveFloat = 60.0
    #: Longest a provider 429 stops a deployment for every worker, whatever its
    #: retry-after says (a proxy may send hours).
    max_cooldown_seconds: PositiveFloat = 60.0
    #: After a provider 429 lowers a deployment's rate, the share of its configured
    #: rate that comes back per second (0.02: from x0.85 to the full rate in 7.5 s).
    rate_regain_per_second: PositiveFloat = 0.02
    #: Neighbour learning (clients on the same key that do not ask the gate): the gate
    #: holds `neighbour_reserve` of the provider's bucket left, as its
    #: x-ratelimit-remaining-* headers report it, by leaving free the share others
    #: take (budget/lua/observe.lua). The controller's time constant, the shortest
    #: time between its updates, and the reserve as a share of the provider's limit.
    neighbour_learning: bool = True
    neighbour_smoothing_seconds: PositiveFloat = 6.0
    neighbour_sample_seconds: PositiveFloat = 0.5
    neighbour_reserve: float = Field(default=0.05, ge=0, lt=1)
    #: A request is booked into a future slot only this far ahead; further, it waits.
    booking_horizon_seconds: float = Field(default=300.0, ge=0, le=3600)
    #: A booked task that starts later than this re-books (its slot is gone).
    late_tolerance_seconds: PositiveFloat = 2.0
    #: Random extra delay added to unbooked deferrals so they do not return in a herd.
    defer_jitter_seconds: float = Field(default=2.0, ge=0)
    #: Longest a deferral may wait; the gate's hint is capped to this.
    max_defer_seconds: PositiveFloat = 300.0
    #: How often each worker reads the gates of the deployments whose queues it
    #: consumes, to pause a queue while its deployment is booked ahead
    #: (pipeline/backlog.py). Quota left unused between two reads is at most this long.
    intake_poll_seconds: PositiveFloat = 0.25
    #: How long a task holds its message waiting for an unreachable Redis (the gate
    #: fails closed) before giving up on this delivery.
    budget_outage_wait_seconds: PositiveFloat = 300.0
    #: An unfinished request silent this long is checked for a lost message (one in
    #: no queue and held by no worker) and sent again if so.
    recover_after_seconds: PositiveFloat = 60.0
    #: A finished job's data (results, dead letters, counts) and a request's Celery
    #: result expire this long after the job (or the request) finishes.
    retention_seconds: PositiveInt = 7 * 24 * 3600
    #: Requests sent with `.delay()` without a job id are grouped in one job per this
    #: many seconds (UTC), `adhoc-YYYYMMDD-HHMMSS`: each such job finishes and expires.
    adhoc_job_seconds: PositiveInt = 3600
    #: Redis visibility timeout: an unacked message is redelivered after this long.
    #: Unset: derived from the other settings (see `visibility_timeout`), so a killed
    #: worker's running and deferred requests come back as soon as is safe.
    visibility_timeout_seconds: PositiveInt | None = None
    #: Most ETA (deferred) tasks one worker holds in memory.
    eta_task_limit: PositiveInt = 2000
    #: Record every admission in Redis (for audits and the conformance tests).
    admission_log: bool = False
    #: Show task arguments (prompts) and results (responses) in Flower, task events, the
    #: worker log and `celery inspect`; by default they show custom_id, job, tenant,
    #: deployment and model only.
    show_task_arguments: bool = False
    #: Distinct tenant labels the metrics keep; later tenants are counted as `other`.
    metrics_max_tenants: PositiveInt = 100
    #: Where `quotaflow simulate` listens, and where the default deployment calls
    #: (docker-compose: the `simulator` service).
    simulator_host: str = "127.0.0.1"
    simulator_port: int = Field(default=8765, ge=0, le=65535)
    #: Where `quotaflow run` keeps the private Redis's budget state between runs, so a
    #: run right after another does not burst into the provider's drained bucket.
    #: Unset: $XDG_STATE_HOME/quotaflow, else ~/.local/state/quotaflow.
    state_dir: Path | None = None
    #: The deployments requests can go to; the first is the default. Unset: one
    #: deployment on the local simulator (simulator_host, simulator_port).
    deployments: list[DeploymentSettings] = Field(default_factory=_default_deployments)

    @model_validator(mode="before")
    @classmethod
    def _default_deployment(cls, data: Any) -> Any:
        # The default deployment follows the simulator's address, so that
        # `quotaflow simulate` and `quotaflow run` agree whatever port is chosen.
        if isinstance(data, dict) and "deployments" not in data:
            host = data.get("simulator_host") or "127.0.0.1"
            port = data.get("simulator_port") or 8765
            data = {**data, "deployments": _default_deployments(host, port)}
        return data

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
        vt = self.visibility_timeout_seconds
        needed = self.longest_hold_seconds
        if vt is not None and vt < needed:
            raise ValueError(
                f"visibility_timeout_seconds ({vt}) must be at least {math.ceil(needed)}: "
                f"the longest countdown ({self.longest_countdown_seconds:g}s) + the longest a "
                f"task may run ({self.task_time_limit_seconds:g}s: budget_outage_wait_seconds "
                f"+ the largest deployment timeout_seconds + {RUN_MARGIN_SECONDS:g}s) + a "
                f"margin ({self.visibility_margin_seconds:g}s: clock skew and a wait for a "
                "free pool slot), or held and running tasks are redelivered and paid for "
                "twice; leave it unset to derive it"
            )
        return self

    def require_api_keys(self) -> None:
        """Raise SettingsError unless every deployment that needs a key has one.

        Called where calls are made (workers, `run`, `demo`): commands that only read
        or submit work (status, budget, metrics, submit, `.delay()`) need no keys.
        """
        for dep in self.deployments:
            key = dep.api_key.get_secret_value() if dep.api_key else ""
            if dep.kind in KINDS_NEEDING_API_KEY and not key.strip():
                raise SettingsError(
                    f"deployments: {dep.name!r} (kind {dep.kind!r}) has no api_key, so every "
                    "call would be refused; set its api_key where workers run (commands "
                    "that make no calls, such as submit, status, budget and metrics, need none)"
                )

    @property
    def task_time_limit_seconds(self) -> float:
        """The longest one delivery of a task may run (Celery's `task_time_limit`).

        A task holds its message while Redis is unreachable (up to the outage wait),
        then calls the provider (up to the deployment's timeout); the margin covers an
        in-place wait for a near booking and the Redis round trips.
        """
        timeout = max(d.timeout_seconds for d in self.deployments)
        return self.budget_outage_wait_seconds + timeout + RUN_MARGIN_SECONDS

    @property
    def visibility_timeout(self) -> int:
        """The Redis visibility timeout in force: the explicit setting, else derived.

        Derived as `longest_hold_seconds`: a delivered message is acknowledged before
        it is redelivered even when it is held for the longest countdown, then waits
        for a pool slot and runs for the longest time, on a worker whose clock is a
        little off. With the defaults this is 800 s: a killed worker's messages
        return within ~14 minutes.
        """
        if self.visibility_timeout_seconds is not None:
            return self.visibility_timeout_seconds
        return math.ceil(self.longest_hold_seconds)

    @property
    def longest_hold_seconds(self) -> float:
        """The longest a worker may hold a delivered message before it acknowledges it."""
        return (
            self.longest_countdown_seconds
            + self.task_time_limit_seconds
            + self.visibility_margin_seconds
        )

    @property
    def visibility_margin_seconds(self) -> float:
        """What the visibility timeout keeps beyond countdown + run: clock skew between
        workers (kombu times it on each worker's own clock) and the wait of a due ETA
        task for a free pool slot (about one call: the largest timeout_seconds)."""
        return SKEW_MARGIN_SECONDS + max(d.timeout_seconds for d in self.deployments)

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
            KnownFieldsOnly(dotenv_settings),
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


_warned: set[str] = set()


def _to_stderr(message: str) -> None:
    # Not a log record: settings are loaded before any logging is configured.
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_settings(
    *,
    toml_file: Path | None = None,
    warn: Callable[[str], None] | None = None,
    **overrides: object,
) -> Settings:
    """Build Settings from QUOTAFLOW_* variables, `.env` and `quotaflow.toml` (or `toml_file`).

    Whatever is wrong, and wherever, ends in one SettingsError that names the source.
    QUOTAFLOW_* names that match no setting are passed to `warn` (default: stderr), once.
    """
    if toml_file is not None and not toml_file.is_file():
        raise SettingsError(f"settings file not found: {toml_file}")
    try:
        sources = Sources(
            environ=os.environ,
            env_file=Path(ENV_FILE),
            toml_file=toml_file if toml_file is not None else Path(TOML_FILE),
        )
    except SourceError as exc:
        raise SettingsError(str(exc)) from exc
    for message in sources.unknown(Settings.model_fields):
        # Once per process: the Celery app and the CLI both load the settings.
        if message not in _warned:
            _warned.add(message)
            (warn or _to_stderr)(message)
    try:
        if toml_file is not None:
            cls = type(
                "FileSettings",
                (Settings,),
                {"model_config": {**Settings.model_config, "toml_file": toml_file}},
            )
            return cls(**overrides)  # type: ignore[arg-type, no-any-return]
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        names = deployment_names(overrides.get("deployments", sources.raw("deployments")))
        raise SettingsError(
            describe_validation_error(exc, origin=sources.origin, deployments=names)
        ) from exc
    except ParseError as exc:
        raise SettingsError(sources.describe(exc)) from exc


def deployment_names(raw: object) -> list[str | None]:
    """The name of each deployment in a raw `deployments` value, where it has one."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    if not isinstance(raw, list):
        return []
    names: list[str | None] = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
        names.append(name if isinstance(name, str) and name else None)
    return names


def _deployment_error(err: Any, names: Sequence[str | None]) -> str | None:
    """One deployment's error, named by the deployment (not `deployments.0`), or None
    when `err` is not about one deployment."""
    loc = err["loc"]
    if len(loc) < 2 or loc[0] != "deployments" or not isinstance(loc[1], int):
        return None
    i = loc[1]
    name = names[i] if i < len(names) else None
    who = f"deployment {name!r}" if name else f"deployment #{i + 1}"
    field = ".".join(str(p) for p in loc[2:])
    msg = err["msg"].removeprefix("Value error, ")
    if not field:  # a check across the deployment's fields
        return f"{who}: {msg}"
    if err["type"] == "extra_forbidden" and len(loc) == 3:
        known = list(DeploymentSettings.model_fields)
        close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"the fields are {', '.join(known)}"
        return f"{who}: {field}: not a deployment field ({hint})"
    if err["type"] == "missing":
        return f"{who}: {field}: required"
    return f"{who}: {field}: {msg} (got {_short(err.get('input'))})"


def describe_validation_error(
    exc: ValidationError,
    *,
    origin: Callable[[str], str] | None = None,
    deployments: Sequence[str | None] = (),
) -> str:
    lines = ["invalid quotaflow settings:"]
    fields = list(Settings.model_fields)
    errors = exc.errors()
    # A misspelt field (`tmp`) already says "did you mean tpm?": its "tpm: required"
    # would say it twice.
    suggested = {
        (err["loc"][1], close)
        for err in errors
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 3
        and err["loc"][0] == "deployments"
        for close in difflib.get_close_matches(
            str(err["loc"][2]), list(DeploymentSettings.model_fields), n=1, cutoff=0.6
        )
    }  # fmt: skip
    for err in errors:
        where = ".".join(str(p) for p in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else ""
        if not where:  # a check across fields: its message says it all
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            close = difflib.get_close_matches(top, fields, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"  {where}: not a quotaflow setting{hint}")
            continue
        if err["type"] == "missing" and tuple(err["loc"][1:]) in suggested:
            continue
        line = _deployment_error(err, deployments) or (
            f"  {where}: {err['msg']} (got {_short(err.get('input'))})"
        )
        line = line if line.startswith("  ") else f"  {line}"
        if origin is not None and top and origin(top):
            line += f" {origin(top)}"
        lines.append(line)
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
