"""What the `quotaflow` commands share: settings read once, the cluster, option types."""

from __future__ import annotations

import importlib.util
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from budget import QuotaflowError
from pipeline.app import app as celery_app
from pipeline.app import connect
from settings import Settings, load_settings
from tasks.runtime import Runtime

NO_CLUSTER = (
    "QUOTAFLOW_REDIS_URL is not set: this command talks to a running quotaflow cluster; "
    "set it (e.g. export QUOTAFLOW_REDIS_URL=redis://127.0.0.1:6379/0) or put redis_url "
    "in quotaflow.toml"
)

POOLS = ("prefork", "threads", "gevent", "eventlet", "solo")
#: Pools that need a package quotaflow does not install.
_POOL_PACKAGES = {"gevent": "gevent", "eventlet": "eventlet"}

BatchArg = Annotated[Path, typer.Argument(help="requests in the OpenAI Batch input format")]
JobArg = Annotated[str, typer.Argument(help="job id")]
JobIdOpt = Annotated[
    str | None, typer.Option("--job-id", help="job id; resubmitting it skips known requests")
]
DeploymentOpt = Annotated[
    str | None, typer.Option("--deployment", "-d", help="send every request to this deployment")
]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="tag usage and cost")]


@dataclass
class State:
    """Set by the root callback and the commands, read by the error handler."""

    config: Path | None
    settings: Settings | None = None
    #: The Redis URL in use, for error messages (redacted when shown).
    redis_url: str | None = None


state = State(config=None)


def check_pool(pool: str) -> None:
    """QuotaflowError unless the workers can start with `pool`."""
    if pool not in POOLS:
        raise QuotaflowError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    package = _POOL_PACKAGES.get(pool)
    if package is not None and importlib.util.find_spec(package) is None:
        raise QuotaflowError(
            f"--pool {pool} needs the {package} package, which is not installed: "
            f"`pip install {package}`, or use --pool threads (as many calls in flight)"
        )


def current_settings() -> Settings:
    """The settings, read once: QUOTAFLOW_* variables, `.env`, `--config` or quotaflow.toml."""
    if state.settings is None:
        state.settings = load_settings(toml_file=state.config)
    return state.settings


def using(settings: Settings) -> Runtime:
    """Install `settings` for the Celery app and the tasks; check that Redis answers."""
    state.redis_url = settings.redis_url
    return connect(celery_app, settings)


def cluster() -> Runtime:
    """The running cluster the settings name; QuotaflowError if they name none."""
    settings = current_settings()
    if settings.redis_url is None:
        raise QuotaflowError(NO_CLUSTER)
    return using(settings)


def cmd(*args: str | Path) -> str:
    """A follow-up command a user can paste into a shell."""
    return shlex.join(["quotaflow", *(str(a) for a in args)])
