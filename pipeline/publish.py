"""What a quotaflow message shows outside the worker, and what is refused before it is sent.

Celery puts a repr of every task's arguments (here: the prompt) in the message headers
(`argsrepr`, `kwargsrepr`), in the task-sent and task-received events, and in the
answers to `celery inspect active/reserved/scheduled`; Flower shows all of them. For
quotaflow's tasks these show the request's custom_id, job, tenant, deployment and
model instead, unless `show_task_arguments` is set. This holds for every publisher
that uses the quotaflow app: `.delay()` from user code, `quotaflow submit`, retries.

Refused before sending, with one error that says what to fix: a quotaflow message
without a Redis to go to, an over-long tenant, a body with SDK call options among its
keys (`extra_headers`, ...: tasks.provider.check_body).

Where a message goes: a new request to its deployment's queue (`route_task`), where
it waits in the broker while the deployment is booked ahead (pipeline.backlog);
deferrals and retries name their queue themselves (main, retry).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import bootsteps
from celery.app.amqp import AMQP
from celery.utils.saferepr import saferepr
from celery.worker.consumer.control import Control
from kombu.utils.encoding import safe_repr

from budget import InvalidRequest, QuotaflowError
from pipeline import installed
from pipeline.broker import deployment_queue
from settings import Settings, SettingsError, redact_url
from tasks import runtime
from tasks.errors import NotConfigured
from tasks.jobstate import ADHOC_JOB_SECONDS, adhoc_job, job_id_error
from tasks.metrics import check_tenant
from tasks.provider import check_body
from tasks.request import route

NO_REDIS = (
    "QUOTAFLOW_REDIS_URL is not set: workers and submitters need a shared Redis "
    "(e.g. QUOTAFLOW_REDIS_URL=redis://127.0.0.1:6379/0); `quotaflow run` and "
    "`quotaflow demo` start a private one for you"
)
#: What Flower shows in place of the request body.
HIDDEN_BODY = "<request body hidden: set show_task_arguments to show it>"
_SHOWN = ("custom_id", "job_id", "tenant", "deployment")
#: Nesting shown with show_task_arguments: args > body > messages > message > content.
_SHOWN_LEVELS = 6


def _ours(name: object) -> bool:
    return isinstance(name, str) and name.startswith("quotaflow.")


def _show_arguments() -> bool:
    settings = installed.settings
    return settings is not None and settings.show_task_arguments


def task_reprs(args: Any, kwargs: Any) -> tuple[str, str]:
    """(argsrepr, kwargsrepr) of a quotaflow task: who and what, never the prompt."""
    body = args[0] if isinstance(args, list | tuple) and args else None
    kw = kwargs if isinstance(kwargs, Mapping) else {}
    shown: dict[str, Any] = {k: kw.get(k) for k in _SHOWN}
    shown["model"] = body.get("model") if isinstance(body, Mapping) else None
    return f"({HIDDEN_BODY!r},)", safe_repr(shown)


def message_reprs(amqp: AMQP, args: Any, kwargs: Any) -> tuple[str, str]:
    """(argsrepr, kwargsrepr) of a quotaflow task's message: `task_reprs`, or with
    show_task_arguments the arguments whole (Celery's default stops three levels down)."""
    if _show_arguments():
        return (
            saferepr(args, amqp.argsrepr_maxsize, maxlevels=_SHOWN_LEVELS),
            saferepr(kwargs, amqp.kwargsrepr_maxsize),
        )
    return task_reprs(args, kwargs)


def route_task(
    name: str, args: Any, kwargs: Any, options: Mapping[str, Any], *_: Any, **__: Any
) -> dict[str, str] | None:
    """Celery router: a quotaflow request goes to its deployment's queue.

    A publish that names its queue (deferrals, retries) keeps it. A request no
    deployment serves goes to the main queue, where the task dead-letters it.
    """
    settings = installed.settings
    if not _ours(name) or settings is None or options.get("queue"):
        return None
    body = args[0] if isinstance(args, list | tuple) and args else None
    kw = kwargs if isinstance(kwargs, Mapping) else {}
    try:
        dep = route(settings, body, kw.get("deployment"))
    except (QuotaflowError, SettingsError):
        return {"queue": settings.queue}
    return {"queue": deployment_queue(settings, dep.name)}


class RedisUnreachable(QuotaflowError):
    """A publisher's Redis does not answer: nothing was sent."""


#: (process, URL) of each Redis that answered a publisher of this process.
_answered: set[tuple[int, str]] = set()


def check_reachable(url: str) -> None:
    """Raise RedisUnreachable, in one line and at once, if the Redis at `url` does not
    answer; checked once per process. (Celery's own path retries its result backend for
    ~20 s and ends in a chain of tracebacks that never names the URL.)"""
    if (os.getpid(), url) in _answered:
        return
    try:
        client = runtime.current().redis
    except NotConfigured:
        return
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnreachable(
            f"Redis at {redact_url(url)} does not answer ({exc}); nothing was sent: check "
            "that it is running and that QUOTAFLOW_REDIS_URL (host, port, password) is right"
        ) from None
    _answered.add((os.getpid(), url))


def with_job_id(kwargs: Mapping[str, Any], settings: Settings | None) -> dict[str, Any]:
    """A request's kwargs with its job id checked, or set to the adhoc job of now when
    it has none: fixed in the message, so its retries count in the same job."""
    job_id = kwargs.get("job_id")
    if job_id is None:
        seconds = ADHOC_JOB_SECONDS if settings is None else settings.adhoc_job_seconds
        return {**kwargs, "job_id": adhoc_job(time.time(), seconds)}
    error = job_id_error(job_id)
    if error is not None:
        raise InvalidRequest(error)
    return dict(kwargs)


class QuotaflowAMQP(AMQP):  # type: ignore[misc]
    """Builds quotaflow's task messages: argument reprs without the prompt; refusals."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        *rest: Any,
        argsrepr: str | None = None,
        kwargsrepr: str | None = None,
        **options: Any,
    ) -> Any:
        if installed.error is not None:
            # The settings could not be built: the app has no broker of quotaflow's,
            # and Celery's defaults (amqp://localhost) must never see a prompt.
            raise SettingsError(installed.error)
        if _ours(name):
            settings = installed.settings
            # A signal handler cannot refuse: Celery logs its exceptions and publishes.
            if settings is not None and settings.redis_url is None:
                raise SettingsError(NO_REDIS)
            if settings is not None and settings.redis_url is not None:
                check_reachable(settings.redis_url)
            if kwargs is None:
                kwargs = {}
            if isinstance(kwargs, Mapping):
                check_tenant(kwargs.get("tenant"))
                kwargs = with_job_id(kwargs, settings)
            # The router sends a body no deployment serves on to be dead-lettered with
            # its reason; a body carrying SDK call options is refused here, at once.
            body = args[0] if isinstance(args, list | tuple) and args else None
            if isinstance(body, Mapping):
                check_body(body)
            if argsrepr is None and kwargsrepr is None:
                argsrepr, kwargsrepr = message_reprs(self, args, kwargs)
        return super().as_task_v2(
            task_id, name, args, kwargs, *rest, argsrepr=argsrepr, kwargsrepr=kwargsrepr,
            **options,
        )  # fmt: skip


def _hide(info: Any) -> Any:
    """One task of an inspect answer, with its arguments replaced by their reprs."""
    if isinstance(info, dict) and isinstance(info.get("request"), dict):  # scheduled
        return {**info, "request": _hide(info["request"])}
    if isinstance(info, dict) and _ours(info.get("name")) and not _show_arguments():
        args, kwargs = info.get("args"), info.get("kwargs")
        if not isinstance(args, str):  # `active(safe=True)` already gives the reprs
            info = {**info, **dict(zip(("args", "kwargs"), task_reprs(args, kwargs), strict=True))}
    return info


def _hiding(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def hidden(state: Any, **kwargs: Any) -> Any:
        answer = command(state, **kwargs)
        return [_hide(i) for i in answer] if isinstance(answer, list) else answer

    hidden.quotaflow_hides = True  # type: ignore[attr-defined]
    return hidden


def hiding(handlers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a worker's control handlers whose `active`, `reserved` and `scheduled`
    (and their aliases) answer with reprs, not prompts."""
    out = dict(handlers)
    for name in ("active", "reserved", "scheduled"):
        command = out.get(name)
        if command is None or getattr(command, "quotaflow_hides", False):
            continue
        hidden = _hiding(command)
        for key, value in handlers.items():
            if value is command:  # the command under its own name and its aliases
                out[key] = hidden
    return out


class HideArguments(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: `celery inspect active/reserved/scheduled` (and Flower) show
    reprs, not prompts, for this worker. Only quotaflow's app has the step: Celery's
    own control Panel, which every app in the process shares, is left as it is."""

    requires = ("celery.worker.consumer.control:Control",)

    def start(self, c: Any) -> None:
        for step in c.steps:
            if isinstance(step, Control):
                step.box.node.handlers = hiding(step.box.node.handlers)
