"""The commands that need nothing running: the provider simulator and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.options import current_settings


def simulate(ctx: typer.Context) -> None:
    """Run the rate-limited provider simulator (flags: quotaflow simulate --help).

    Listens where the default deployment calls: simulator_host:simulator_port (127.0.0.1:8765).
    """
    import simulator

    settings = current_settings()
    code = simulator.main(
        list(ctx.args),
        prog="quotaflow simulate",
        host=settings.simulator_host,
        port=settings.simulator_port,
    )
    raise typer.Exit(code)


def demo(
    requests: Annotated[int, typer.Option(min=10, max=5000, help="requests in the batch")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the generated batch")] = 7,
    provider: Annotated[
        str, typer.Option(help="simulated provider: openai (bucket) or azure (10 s/1 s periods)")
    ] = "openai",
) -> None:
    """A batch far over a simulated provider's quota: it runs at the quota, no 429s.

    Private Redis, the simulator, two local workers; about a minute and a half.
    """
    from pipeline.demo import PROVIDERS, run_demo

    if provider not in PROVIDERS:
        raise typer.BadParameter(f"expected one of {', '.join(PROVIDERS)}", param_hint="--provider")
    if run_demo(current_settings(), requests=requests, seed=seed, provider=provider) == 130:
        raise typer.Exit(130)
