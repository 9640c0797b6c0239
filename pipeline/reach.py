"""Whether anything listens at a deployment's address, told before a run starts.

A provider that does not answer (the commonest case: `quotaflow simulate` not started)
fails every call as a transient error, retried with backoff for minutes before the
requests are dead-lettered; the run shows only "retrying". One TCP connect per
deployment says so at once. Only literal and loopback addresses are probed: a name
lookup has no timeout of its own, and a remote provider may block a bare connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from settings import DeploymentSettings

_CONNECT_TIMEOUT_SECONDS = 1.0


def _probed_address(base_url: str) -> tuple[str, int] | None:
    parts = urlsplit(base_url)
    host = parts.hostname
    if not host:
        return None
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: not looked up here
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return host, port


def silent_deployments(deployments: Iterable[DeploymentSettings]) -> list[str]:
    """One warning per deployment whose address refuses a connection."""
    out = []
    for dep in deployments:
        address = _probed_address(dep.base_url or "")
        if address is None:
            continue
        try:
            with socket.create_connection(address, timeout=_CONNECT_TIMEOUT_SECONDS):
                pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            out.append(
                f"nothing answers at {dep.base_url} (deployment {dep.name!r}: {why.lower()}): "
                "start the server first (`quotaflow simulate` for the simulator); until it "
                "answers, its requests are retried with backoff, then fail"
            )
    return out
