"""The Celery app: `celery -A pipeline worker -Q quotaflow,quotaflow.retry`.

Settings are read here, once, and installed for the tasks. Everything that makes
redelivery safe and deferrals cheap is set here in one place.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

import tasks  # noqa: F401  - registers the shared tasks with every app
from pipeline import (
    installed,
    recovery,  # noqa: F401  - keeps requests recoverable; sweeps in workers
)
from pipeline.backlog import Backlog
from pipeline.broker import deployment_queues
from pipeline.clock import check_clock
from pipeline.compat import QuotaflowConnection
from pipeline.liveness import Liveness
from pipeline.preflight import check_eviction_policy, check_redis_version
from pipeline.publish import NO_REDIS, HideArguments, QuotaflowAMQP, route_task
from settings import Settings, SettingsError, load_settings
from tasks import runtime

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.redis_url
    vt = settings.visibility_timeout
    return {
        # No Redis configured: nothing may be published anywhere (see publish.QuotaflowAMQP).
        "broker_url": url or "memory://",
        "result_backend": url or "cache+memory://",
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A killed worker's task is redelivered; settlement and results are idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Deferred tasks are held in worker memory; bound them.
        "worker_eta_task_limit": settings.eta_task_limit,
        # Above every countdown the settings allow plus the longest run (see Settings).
        # kombu looks for messages past the timeout every interval x throttle seconds
        # (100 s by default): every 10 s, so they return soon after it.
        "broker_transport_options": {
            "visibility_timeout": vt,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": vt},
        # A task can't outlive the visibility timeout and run twice (prefork enforces
        # it; the threads and gevent pools cannot interrupt a running task).
        "task_time_limit": settings.task_time_limit_seconds,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        # New requests wait in their deployment's queue; workers consuming the main
        # queue consume those too, and pause one while its deployment is booked ahead.
        "task_queues": (
            Queue(settings.queue),
            # Each queue bound by its own name: a default binding would share the main
            # queue's routing key, and a message sent to that key would land in both.
            Queue(settings.retry_queue, routing_key=settings.retry_queue),
            *(Queue(q, routing_key=q) for q in deployment_queues(settings).values()),
        ),
        "task_routes": (route_task, {"quotaflow.*": {"queue": settings.queue}}),
        "task_create_missing_queues": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # The result backend holds what `.delay()` callers `.get()`: the return value
        # only (the job store keeps the request), written once (no STARTED state).
        "task_track_started": False,
        "result_expires": settings.retention_seconds,
        "result_extended": False,
        "worker_hijack_root_logger": False,
    }


class _AMQP(QuotaflowAMQP):
    # quotaflow's connections use its adjustments of kombu's Redis transport
    # (pipeline.compat); another app in the process keeps kombu's own.
    Connection = QuotaflowConnection


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    celery_app = Celery("quotaflow", set_as_current=True, amqp=_AMQP)
    celery_app.steps["consumer"].add(Backlog)
    celery_app.steps["consumer"].add(HideArguments)
    celery_app.steps["consumer"].add(Liveness)
    configure(celery_app, settings)
    return celery_app


def configure(celery_app: Celery, settings: Settings) -> None:
    """(Re)configure an app and the tasks for `settings`."""
    # Pooled broker connections and the result backend were made for the old URL.
    # (kombu's global pools stay open: another app may share them by URL.)
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
        # So are the queues (one per deployment), and the router and sender that hold them.
        for cached in ("queues", "default_queue", "router", "send_task_message"):
            amqp.__dict__.pop(cached, None)
        amqp._rtable = None
    if celery_app._local is not None and hasattr(celery_app._local, "backend"):
        del celery_app._local.backend
    celery_app.conf.update(celery_config(settings))
    # Not on app.conf: `celery inspect conf` and Flower print it (the URL has the password).
    installed.install(settings)
    runtime.configure(settings)


def connect(celery_app: Celery, settings: Settings) -> runtime.Runtime:
    """Configure `celery_app` and the tasks for `settings`; check that Redis answers."""
    configure(celery_app, settings)
    rt = runtime.current()
    rt.redis.ping()
    return rt


@signals.celeryd_init.connect
def _check_worker(**_: Any) -> None:
    if installed.error is not None:
        raise SystemExit(f"quotaflow worker: {installed.error}")
    settings = installed.settings
    if settings is not None and settings.redis_url is None:
        raise SystemExit(f"quotaflow worker: {NO_REDIS}")
    try:
        if settings is not None:
            settings.require_api_keys()  # workers make the calls: they need the keys
    except SettingsError as exc:
        raise SystemExit(f"quotaflow worker: {exc}") from None
    if settings is not None and settings.redis_url is not None:
        client = runtime.redis_client(settings.redis_url)
        try:
            warnings = [
                check_redis_version(client),
                check_eviction_policy(client),
                check_clock(client),
            ]
        except SettingsError as exc:
            raise SystemExit(f"quotaflow worker: {exc}") from None
        finally:
            client.close()
        for warning in filter(None, warnings):
            log.warning("quotaflow worker: %s", warning)


@signals.worker_init.connect
def _load_tokenizers(**_: Any) -> None:
    # Once, in the worker's main process, before the pool forks: otherwise every pool
    # process loads them on its first task (~0.5 s of CPU each, all at the same moment).
    from budget.estimate import encoding_for_model

    settings = installed.settings
    for dep in settings.deployments if settings is not None else ():
        encoding_for_model(dep.model)


@signals.worker_init.connect
@signals.worker_process_init.connect
def _build_clients(**_: Any) -> None:
    # Building a provider client takes ~0.1 s of CPU (TLS context, SDK set-up). Done on
    # a call's first use, that lands between the gate's slot and the call's arrival at
    # the provider, where a window limiter has only its guard band to absorb it.
    from tasks.errors import PermanentProviderError
    from tasks.provider import client_for

    settings = installed.settings
    for dep in settings.deployments if settings is not None else ():
        with contextlib.suppress(PermanentProviderError):  # no key: the first call says so
            client_for(dep)


def _default_app() -> Celery:
    # Importing `pipeline` must not fail on bad settings: the CLI reports them in one
    # line, a worker refuses to start with the same message (_check_worker), and
    # `.delay()` raises it (publish.QuotaflowAMQP).
    try:
        return create_app()
    except SettingsError as exc:
        celery_app = Celery("quotaflow", set_as_current=True, amqp=_AMQP)
        # Nothing may leave this process: publishing raises the settings error.
        celery_app.conf.update(broker_url="memory://", result_backend="cache+memory://")
        installed.failed(str(exc))
        return celery_app


app = _default_app()
