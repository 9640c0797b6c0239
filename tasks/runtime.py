"""What a task needs at run time, built once per process from the installed settings.

`pipeline` installs the settings when the Celery app is created (the edge); tasks
never read the environment. Clients are per process: a forked pool child must not
reuse its parent's sockets.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from budget import Gate
from settings import Settings
from tasks.errors import NotConfigured
from tasks.jobstore import JobStore
from tasks.metrics import Metrics


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    gate: Gate
    jobs: JobStore
    metrics: Metrics
    pid: int


_settings: Settings | None = None
_runtime: Runtime | None = None
_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Install the settings every task in this process will use."""
    global _settings, _runtime
    with _lock:
        _settings = settings
        _runtime = None


def configured() -> Settings | None:
    """The settings installed in this process, if any (builds no clients)."""
    return _settings


def redis_client(url: str) -> redis.Redis:
    # Short timeouts: a gate that cannot answer quickly fails closed and defers.
    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=15
    )


def current() -> Runtime:
    global _runtime
    rt = _runtime
    if rt is not None and rt.pid == os.getpid():
        return rt
    with _lock:
        if _settings is None:
            raise NotConfigured(
                "quotaflow tasks are not configured: start workers with "
                "`celery -A pipeline worker` or call tasks.runtime.configure(settings)"
            )
        if _settings.redis_url is None:
            raise NotConfigured("QUOTAFLOW_REDIS_URL is not set; workers need a shared Redis")
        client = redis_client(_settings.redis_url)
        gate = Gate(
            client,
            _settings.deployments,
            key_prefix=_settings.key_prefix,
            horizon_seconds=_settings.booking_horizon_seconds,
            admission_log=_settings.admission_log,
            max_cooldown_seconds=_settings.max_cooldown_seconds,
            rate_regain_per_second=_settings.rate_regain_per_second,
            neighbour_learning=_settings.neighbour_learning,
            neighbour_smoothing_seconds=_settings.neighbour_smoothing_seconds,
            neighbour_sample_seconds=_settings.neighbour_sample_seconds,
            neighbour_reserve=_settings.neighbour_reserve,
        )
        _runtime = Runtime(
            settings=_settings,
            redis=client,
            gate=gate,
            jobs=JobStore(
                client,
                key_prefix=_settings.key_prefix,
                retention_seconds=_settings.retention_seconds,
            ),
            metrics=Metrics(
                client, key_prefix=_settings.key_prefix, max_tenants=_settings.metrics_max_tenants
            ),
            pid=os.getpid(),
        )
        return _runtime
