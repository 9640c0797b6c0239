"""The private Redis's budget state, kept between `quotaflow run`s on this machine.

A run without a configured Redis starts a new private one, whose gate would believe
every deployment's bucket full while the provider's is still drained by the previous
run: the next run's first burst meets 429s. So `run` saves each deployment's gate
state (the buckets' theoretical arrival times, the window starts, the cooldown and
the rate state) when it ends and restores it when the next one starts. The values
are times on the Redis server's clock, which for a private Redis is this machine's
wall clock, so they mean the same in the next server.

The file is JSON under `state_dir` (default: $XDG_STATE_HOME/quotaflow, else
~/.local/state/quotaflow), one entry per deployment, keyed by what identifies the
provider's bucket (kind, base_url, model, name). A missing or unreadable file means
a full bucket, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis

from budget.keys import deployment_keys
from budget.resp import decoded
from settings import DeploymentSettings, Settings

log = logging.getLogger(__name__)

STATE_FILE = "budget.json"
#: The gate's keys that carry a deployment's state between runs (budget.keys).
_PARTS = ("tokens", "requests", "cooldown", "rate", "window")


def state_path(settings: Settings) -> Path:
    if settings.state_dir is not None:
        base = Path(settings.state_dir)
    else:
        xdg = os.environ.get("XDG_STATE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".local" / "state") / "quotaflow"
    return base / STATE_FILE


def _identity(dep: DeploymentSettings) -> str:
    text = json.dumps([dep.kind, dep.base_url, dep.model, dep.name])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dump(client: redis.Redis, key: str) -> dict[str, Any] | None:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    ttl = client.pttl(key)
    if kind == "string":
        value: Any = decoded(client.get(key))
    elif kind == "hash":
        value = {decoded(k): decoded(v) for k, v in client.hgetall(key).items()}
    elif kind == "zset":
        pairs: list[Any] = list(client.zrange(key, 0, -1, withscores=True))
        value = [[decoded(member), score] for member, score in pairs]
    else:
        return None
    return {"type": kind, "value": value, "pttl": ttl if ttl and ttl > 0 else None}


def _load(client: redis.Redis, key: str, saved: dict[str, Any]) -> None:
    kind, value = saved["type"], saved["value"]
    pipe = client.pipeline()
    pipe.delete(key)
    if kind == "string":
        pipe.set(key, value)
    elif kind == "hash" and value:
        pipe.hset(key, mapping=value)
    elif kind == "zset" and value:
        pipe.zadd(key, {member: float(score) for member, score in value})
    if saved.get("pttl"):
        pipe.pexpire(key, int(saved["pttl"]))
    pipe.execute()


def save(client: redis.Redis, settings: Settings) -> None:
    """Write the deployments' gate state to the state file (best effort)."""
    path = state_path(settings)
    try:
        state = _read(path)
        for dep in settings.deployments:
            keys = deployment_keys(settings.key_prefix, dep.name)
            parts = {}
            for part in _PARTS:
                dumped = _dump(client, getattr(keys, part))
                if dumped is not None:
                    parts[part] = dumped
            state[_identity(dep)] = parts
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    except (OSError, redis.RedisError) as exc:
        log.warning("could not keep the budget state for the next run in %s: %s", path, exc)


def restore(client: redis.Redis, settings: Settings) -> int:
    """Load the saved gate state of the configured deployments; returns how many."""
    path = state_path(settings)
    state = _read(path)
    restored = 0
    for dep in settings.deployments:
        parts = state.get(_identity(dep))
        if not isinstance(parts, dict):
            continue
        keys = deployment_keys(settings.key_prefix, dep.name)
        try:
            for part, saved in parts.items():
                if part in _PARTS:
                    _load(client, getattr(keys, part), saved)
        except (KeyError, TypeError, ValueError, redis.RedisError) as exc:
            log.warning("ignoring the saved budget state of %s in %s: %s", dep.name, path, exc)
            continue
        restored += 1
    return restored


def _read(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}
