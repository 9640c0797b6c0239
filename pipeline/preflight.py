"""What a worker checks on its Redis before it takes any work."""

from __future__ import annotations

import redis

from settings import SettingsError

FIX = (
    "set it with `redis-cli CONFIG SET maxmemory-policy noeviction` and keep "
    "`maxmemory-policy noeviction` in redis.conf (docker-compose.yml does)"
)
#: The oldest Redis the scripts run on: SMISMEMBER (the job store) came in 6.2.
MIN_REDIS = (6, 2)
WHY = (
    "under memory pressure any other policy lets Redis delete the budget's keys (the gate "
    "then admits more than the quota) and queued messages (requests lost)"
)


def check_eviction_policy(client: redis.Redis) -> str | None:
    """None when Redis never evicts; a warning when it cannot tell.

    Raises SettingsError, saying why and how to fix it, when Redis may evict keys.
    """
    try:
        answer = client.config_get("maxmemory-policy")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return f"could not check Redis maxmemory-policy (Redis unreachable: {exc})"
    except redis.ResponseError as exc:
        # Managed Redis services and ACLs often disable or rename CONFIG.
        return (
            f"could not check Redis maxmemory-policy: CONFIG GET was refused ({exc}); "
            f"make sure it is noeviction: {WHY}"
        )
    policy = answer.get("maxmemory-policy")
    if policy is None:
        return "could not check Redis maxmemory-policy: CONFIG GET returned nothing"
    if policy != "noeviction":
        raise SettingsError(
            f"Redis maxmemory-policy is {policy!r}; quotaflow needs 'noeviction': {WHY}. "
            f"To fix, {FIX}"
        )
    return None


def check_redis_version(client: redis.Redis, *, floor: tuple[int, ...] = MIN_REDIS) -> str | None:
    """None when Redis is `floor` or newer; a warning when it cannot tell.

    Raises SettingsError, naming the version found and the one needed, when it is older.
    """
    need = ".".join(map(str, floor))
    try:
        version = str(client.info("server").get("redis_version", ""))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return f"could not check the Redis version (Redis unreachable: {exc})"
    except redis.ResponseError as exc:
        return f"could not check the Redis version: INFO was refused ({exc}); it must be {need}+"
    try:
        found = tuple(int(part) for part in version.split("."))
    except ValueError:
        return f"could not check the Redis version: INFO reports {version!r}; it must be {need}+"
    if found < floor:
        raise SettingsError(
            f"Redis {version} is too old: quotaflow needs Redis {need} or newer (its scripts "
            f"use commands added in {need}). Upgrade Redis, or point QUOTAFLOW_REDIS_URL at one"
        )
    return None
