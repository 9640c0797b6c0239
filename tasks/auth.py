"""A deployment whose API key the provider refuses is stopped for every worker.

A wrong key fails every call (401/403), and each failed call may be paid for or
counted. After AUTH_FAILURE_LIMIT authentication failures with the same key within
AUTH_FAILURE_WINDOW_SECONDS, the deployment is stopped for that key: its requests
are dead-lettered as `auth_failed` without a call, until the key changes (workers
with another key ignore the stop and clear it) or AUTH_STOP_SECONDS pass.

State in Redis, one hash for all deployments (`quotaflow status` reads it without
any key): field = deployment name, value = JSON {key, reason, at}. `key` is a short
fingerprint of the API key (a sha256 prefix), never the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass

import redis

from budget.resp import decoded
from settings import DeploymentSettings

log = logging.getLogger(__name__)

#: Authentication failures with one key that stop its deployment...
AUTH_FAILURE_LIMIT = 3
#: ... when they come within this many seconds.
AUTH_FAILURE_WINDOW_SECONDS = 600
#: What a stop tells to do, on a cluster (`quotaflow run` says it its own way).
AUTH_REMEDY = (
    "fix its api_key and restart the workers, then `quotaflow replay JOB` the requests "
    "dead-lettered as auth_failed"
)
#: A stop lasts this long unless the key changes (then a few calls test the key again).
AUTH_STOP_SECONDS = 3600
#: How long a worker process trusts what it read of the stops before reading again.
CHECK_EVERY_SECONDS = 0.25
#: Statuses that say the key (or its permissions) is wrong, not the request.
AUTH_STATUSES = (401, 403)


@dataclass(frozen=True)
class Stop:
    """A deployment stopped for a key."""

    #: The deployment's name.
    deployment: str
    #: Fingerprint of the refused key.
    key: str
    #: What the provider said, and what to do.
    reason: str
    #: When it was stopped (Unix time).
    at: float


def stops_key(prefix: str) -> str:
    return f"{prefix}:auth:stopped"


def failures_key(prefix: str, deployment: str, fingerprint: str) -> str:
    return f"{prefix}:auth:failures:{deployment}:{fingerprint}"


def fingerprint(dep: DeploymentSettings) -> str:
    secret = dep.api_key.get_secret_value() if dep.api_key else ""
    return hashlib.sha256(f"{dep.base_url}|{secret}".encode()).hexdigest()[:12]


def read_stops(client: redis.Redis, prefix: str) -> list[Stop]:
    """Every deployment stopped now (for `status`; needs no key)."""
    now = time.time()
    found = []
    for name, raw in sorted(client.hgetall(stops_key(prefix)).items()):
        try:
            entry = json.loads(raw)
            stop = Stop(decoded(name), str(entry["key"]), str(entry["reason"]), float(entry["at"]))
        except (ValueError, KeyError, TypeError):
            continue
        if now - stop.at < AUTH_STOP_SECONDS:
            found.append(stop)
    return found


class AuthGuard:
    """One worker process's view of the stops, read at most every CHECK_EVERY_SECONDS."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._read_at = -CHECK_EVERY_SECONDS
        self._stops: dict[str, Stop] = {}

    def stopped(self, dep: DeploymentSettings) -> Stop | None:
        """The stop that applies to `dep` with its key, else None."""
        now = time.monotonic()
        if now - self._read_at >= CHECK_EVERY_SECONDS:
            self._stops = {s.deployment: s for s in read_stops(self.client, self.prefix)}
            self._read_at = now
        stop = self._stops.get(dep.name)
        if stop is None:
            return None
        if stop.key != fingerprint(dep):
            # This worker has another key: the stop was for the old one.
            self._clear(stop)
            return None
        return stop

    def failed(self, dep: DeploymentSettings, message: str) -> bool:
        """Count an authentication failure; True if it stopped the deployment."""
        fp = fingerprint(dep)
        key = failures_key(self.prefix, dep.name, fp)
        with self.client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, AUTH_FAILURE_WINDOW_SECONDS)
            count = int(pipe.execute()[0])
        if count < AUTH_FAILURE_LIMIT:
            return False
        reason = (
            f"deployment {dep.name!r} stopped after {AUTH_FAILURE_LIMIT} authentication "
            f"failures with its api_key (last: {message}); {AUTH_REMEDY}"
        )
        entry = {"key": fp, "reason": reason, "at": time.time()}
        self.client.hset(stops_key(self.prefix), dep.name, json.dumps(entry))
        self._read_at = -CHECK_EVERY_SECONDS
        if count == AUTH_FAILURE_LIMIT:
            log.error("%s", reason)
        return True

    def _clear(self, stop: Stop) -> None:
        raw = self.client.hget(stops_key(self.prefix), stop.deployment)
        if raw is not None and json.loads(raw).get("key") == stop.key:
            self.client.hdel(stops_key(self.prefix), stop.deployment)
        self._stops.pop(stop.deployment, None)


_guards: weakref.WeakKeyDictionary[redis.Redis, AuthGuard] = weakref.WeakKeyDictionary()


def guard_for(client: redis.Redis, prefix: str) -> AuthGuard:
    """The process's guard for this Redis client (runtimes are per process)."""
    guard = _guards.get(client)
    if guard is None or guard.prefix != prefix:
        guard = _guards[client] = AuthGuard(client, prefix)
    return guard
