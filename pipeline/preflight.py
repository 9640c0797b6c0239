"""What a worker checks on its Redis before it takes any work."""

from __future__ import annotations

import redis

from settings import SettingsError

FIX = (
    "set it with `redis-cli CONFIG SET maxmemory-policy noeviction` and keep "
    "`maxmemory-policy noeviction` in redis.conf (docker-compose.yml does)"
)
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
