"""``python -m simulator``: run the simulated provider until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from types import FrameType

from simulator.config import SimulatorConfig, checked
from simulator.limits import POLICIES
from simulator.server import Simulator

logger = logging.getLogger(__name__)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _parser(
    prog: str | None = None, host: str | None = None, port: int | None = None
) -> argparse.ArgumentParser:
    d = SimulatorConfig()
    p = argparse.ArgumentParser(
        prog=prog or "python -m simulator",
        description="OpenAI-compatible server that rate-limits like a real provider.",
    )
    add = p.add_argument
    add("--host", default=host or d.host, help="interface to bind (default %(default)s)")
    add(
        "--port",
        type=_port,
        default=d.port if port is None else port,
        help="port; 0 picks a free one (default %(default)s)",
    )
    add("--tpm", type=int, default=d.tpm, help="tokens per minute (default %(default)s)")
    add("--rpm", type=int, default=d.rpm, help="requests per minute (default %(default)s)")
    add("--policy", choices=POLICIES, default=d.policy, help="limit model (default %(default)s)")
    add("--check-seconds", type=float, default=d.check_seconds, help="azure token period")
    add("--request-check-seconds", type=float, default=d.request_check_seconds,
        help="azure request period")  # fmt: skip
    add(
        "--phase-seconds",
        type=float,
        default=d.phase_seconds,
        help="azure: seconds since the periods began at start/reset (default: random)",
    )
    add("--bucket-seconds", type=float, default=d.bucket_seconds, help="openai bucket size")
    add("--latency-ms", type=float, default=d.latency_ms, help="base latency")
    add("--latency-jitter-ms", type=float, default=d.latency_jitter_ms, help="extra 0..N ms")
    add("--output-token-ms", type=float, default=d.output_token_ms, help="ms per output token")
    add("--fail-5xx-rate", type=float, default=d.fail_5xx_rate, help="fraction answered 5xx")
    add("--timeout-rate", type=float, default=d.timeout_rate, help="fraction that hang")
    add("--timeout-hang-seconds", type=float, default=d.timeout_hang_seconds, help="hang length")
    add("--drop-rate", type=float, default=d.drop_rate, help="fraction of dropped connections")
    add("--neighbour-tpm", type=int, default=d.neighbour_tpm, help="other tenant's tokens/min")
    add("--api-key", default=d.api_key, help="require this key (default: no auth)")
    add("--context-window", type=int, default=d.context_window, help="max prompt + output")
    add("--default-max-tokens", type=int, default=d.default_max_tokens, help="charged if unset")
    add(
        "--fail-models",
        type=lambda s: frozenset(m for m in s.split(",") if m),
        default=d.fail_models,
        help="comma-separated model names answered 404",
    )
    add("--seed", type=int, default=d.seed, help="seed for faults, latency and lengths")
    add("--log-level", default="WARNING", help="logging level (default %(default)s)")
    return p


def main(
    argv: list[str] | None = None,
    *,
    prog: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Run the simulator until SIGINT or SIGTERM; print one line once listening.

    `prog`, `host` and `port` set the usage line and the defaults of --host and --port.
    """
    parser = _parser(prog, host, port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = checked(
            SimulatorConfig(
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(SimulatorConfig)}
            )
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Simulator(config) as sim:
            print(f"quotaflow simulator listening on {sim.url}", flush=True)
            while not stop.wait(1.0):
                pass
    except OSError as exc:
        logger.error("simulator could not serve: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
