"""The `quotaflow` console script: the commands, in the order `--help` lists them, and
the one place errors become messages.

Settings are read once, from QUOTAFLOW_* variables, `.env` and `quotaflow.toml` (or
`--config FILE`). Every error a user can cause ends in one red line and exit code 2.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError
from rich.markup import escape
from rich.text import Text

from budget import QuotaflowError
from pipeline.cli import batch, cluster, simulated
from pipeline.cli.options import state
from pipeline.console import console, errors
from pipeline.local import WorkerError
from settings import SettingsError, redact_url

cli = typer.Typer(
    name="quotaflow",
    help="LLM batches through Celery at the provider's quota, never faster.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals can hold API keys
)


def _version(value: bool) -> None:
    if value:
        console.print(f"quotaflow {metadata.version('quotaflow')}")
        raise typer.Exit()


@cli.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="settings file (default: ./quotaflow.toml if any)"),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", callback=_version, is_eager=True
        ),
    ] = False,  # fmt: skip
) -> None:
    state.config = config


cli.command()(batch.run)
cli.command()(batch.submit)
cli.command()(cluster.status)
cli.command()(batch.results)
cli.command()(cluster.replay)
cli.command()(cluster.recover)
cli.command()(cluster.cancel)
cli.command()(cluster.budget)
# Its flags are the simulator's own (argparse): typer passes them through untouched.
cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(simulated.simulate)
cli.command()(cluster.metrics)
cli.command()(simulated.demo)


# -- errors -----------------------------------------------------------------------------


def _one_line(message: str) -> str:
    out = ""
    for part in (p.strip() for p in message.strip().splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


def _describe(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, else None."""
    if isinstance(exc, SettingsError):
        return _one_line(str(exc))
    if isinstance(exc, redis.RedisError | OperationalError):
        url = redact_url(state.redis_url or "")
        why = _one_line(str(exc)).rstrip(".")
        return (
            f"Redis at {url} failed: {why}; check that it is running and that "
            "QUOTAFLOW_REDIS_URL (host, port, password) is right"
        )
    if isinstance(exc, QuotaflowError):
        return _one_line(str(exc))
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return None


def fail(message: str, detail: str = "") -> NoReturn:
    errors.print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True)
    if detail:
        errors.print(Text(detail, style="dim"))
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> Any:
    """The `quotaflow` console script."""
    try:
        return cli(args=argv, prog_name="quotaflow")
    except WorkerError as exc:
        # The one line, then the end of the worker's log, which says what went wrong.
        first, _, log_tail = str(exc).partition("\n")
        fail(first, log_tail)
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        fail(message)
