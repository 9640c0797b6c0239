"""Every Redis key the gate touches, built in one place.

A deployment's keys share the hash tag `{prefix:deployment}` so that one Lua script
can touch all of them on a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeploymentKeys:
    #: TAT of the token bucket.
    tokens: str
    #: TAT of the request bucket.
    requests: str
    #: When the current provider cooldown ends (Redis microseconds).
    cooldown: str
    #: Rate state (hash): the AIMD cut after a 429, the learned neighbour rates and
    #: the units this gate let start (see observe.lua).
    rate: str
    #: Admission log (when enabled): "start_us tokens requests reservation_id".
    log: str
    #: Window limiter: the starts still inside a window or booked, a sorted set of
    #: "tokens requests id" scored by start (see window.lua).
    window: str
    #: Prefix of the per-reservation settled markers.
    settled_prefix: str
    #: Prefix of the per-reservation booking markers (single-use).
    booking_prefix: str

    def settled(self, reservation_id: str) -> str:
        return f"{self.settled_prefix}{reservation_id}"

    def booking(self, reservation_id: str) -> str:
        return f"{self.booking_prefix}{reservation_id}"


def deployment_keys(prefix: str, deployment: str) -> DeploymentKeys:
    tag = f"{prefix}:{{{deployment}}}"
    return DeploymentKeys(
        tokens=f"{tag}:tat:tokens",
        requests=f"{tag}:tat:requests",
        cooldown=f"{tag}:cooldown",
        rate=f"{tag}:rate",
        log=f"{tag}:admissions",
        window=f"{tag}:window",
        settled_prefix=f"{tag}:settled:",
        booking_prefix=f"{tag}:booking:",
    )
