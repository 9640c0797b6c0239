"""Publishing quotaflow's requests, each kept in its job until it finishes.

`send` publishes one kept request through Celery; `send_all` a submit's chunk in
batches of one round trip (pipeline.messages), Celery's path where that cannot serve.
Any other publish of a quotaflow task (`complete.delay(...)`) is kept by an
`after_task_publish` hook on the publisher's side, once the broker has the message,
so that pipeline.recovery can send it again if the broker loses it. Kept after, not
before: a publish that raises leaves nothing that recovery would send (the caller was
told it failed, and may well send it again itself).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals

from pipeline.broker import all_queues
from pipeline.liveness import announce
from pipeline.messages import Batch, NoTemplate, Template
from tasks import TASK_FOR_URL, runtime
from tasks.errors import NotConfigured
from tasks.jobstore import ADHOC_JOB

log = logging.getLogger(__name__)

#: Message header: the publisher already kept this request (the hook skips it).
H_RECORDED = "quotaflow_recorded"
#: Redis commands buffered before a batched publish sends them (two per message).
BATCH_SIZE = 200
#: What a batch published by `send_all` shares with `send(..., celery_result=False)`.
_SUBMIT_OPTIONS = {"ignore_result": True, "headers": {H_RECORDED: True}}
URL_FOR_TASK = {task.name: url for url, task in TASK_FOR_URL.items()}


def pending_request(
    url: str,
    body: Any,
    deployment: str | None,
    tenant: str | None,
    task_id: str,
) -> dict[str, Any]:
    """What is kept of a request until it finishes: enough to publish it again."""
    return {"url": url, "body": body, "deployment": deployment, "tenant": tenant,
            "task_id": task_id}  # fmt: skip


def send(
    job_id: str,
    custom_id: str,
    pending: dict[str, Any],
    *,
    celery_result: bool = True,
    producer: Any = None,
) -> None:
    """Publish a kept request (its record is already written).

    `celery_result=False` for requests whose result only the job store needs (a
    submit, a replay): the worker writes no result-backend entry for them.
    """
    TASK_FOR_URL[pending["url"]].apply_async(
        ignore_result=not celery_result,
        producer=producer,
        task_id=pending["task_id"],
        args=(pending["body"],),
        kwargs=_kwargs(job_id, custom_id, pending),
        headers={H_RECORDED: True},
    )


def _kwargs(job_id: str, custom_id: str, pending: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "job_id": job_id,
        "deployment": pending.get("deployment"),
        "tenant": pending.get("tenant"),
    }


def send_all(
    job_id: str,
    requests: dict[str, dict[str, Any]],
    *,
    celery_result: bool = True,
    templates: dict[str, dict[str, Template]] | None = None,
) -> None:
    """Publish kept requests in batches, one round trip each (pipeline.messages; with
    `celery_result`, or on a broker it cannot serve, Celery's path in pipelined kombu
    batches of BATCH_SIZE commands). On return every message is in the broker; on an
    exception, any may not be. A caller sending many chunks passes one `templates`
    dict (task name -> queue -> template) to every call, so each is made once."""
    if not requests:
        return
    _register_queues()
    task = TASK_FOR_URL[next(iter(requests.values()))["url"]]
    if not celery_result and all(TASK_FOR_URL[r["url"]] is task for r in requests.values()):
        # A pooled connection (a new one per chunk costs ~10 ms), a channel of our own
        # (the default one may hold expiring reply queues, which no template covers).
        with task.app.pool.acquire(block=True) as conn:
            channel = conn.channel()
            try:
                batch = Batch(
                    task.app, task, channel, options=_SUBMIT_OPTIONS,
                    templates=None if templates is None else templates.setdefault(task.name, {}),
                )  # fmt: skip
                batch.send(
                    (r["task_id"], (r["body"],), _kwargs(job_id, cid, r))
                    for cid, r in requests.items()
                )
                return
            except NoTemplate as exc:
                log.debug("publishing through Celery: %s", exc)
            finally:
                channel.close()
    with task.app.producer_or_acquire() as producer, producer.batch(max_size=BATCH_SIZE):
        for custom_id, pending in requests.items():
            send(job_id, custom_id, pending, celery_result=celery_result, producer=producer)


#: The (Redis client, queues) this process added to the set of queues ever used.
_registered: set[tuple[int, tuple[str, ...]]] = set()


def _register_queues() -> None:
    """Add this publisher's queues to the set of queues ever used, once per process:
    a worker that does not know a deployment yet still looks in its queue before it
    takes a request for lost (pipeline.recovery)."""
    try:
        rt = runtime.current()
    except NotConfigured:
        return
    queues = tuple(all_queues(rt.settings))
    if (id(rt.redis), queues) in _registered:
        return
    try:
        announce(rt.redis, rt.settings)
    except redis.RedisError as exc:
        log.warning("queues not registered for recovery (Redis: %s)", exc)
        return
    _registered.add((id(rt.redis), queues))


@signals.after_task_publish.connect
def _record_publish(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """Keep a request published outside `submit` (e.g. `complete.delay`) for recovery.

    A worker may have taken the message already: the job store then leaves a request
    that finished as it is (tasks/lua/queue.lua)."""
    url = URL_FOR_TASK.get(sender or "")
    headers = headers or {}
    if url is None or headers.get(H_RECORDED) or headers.get("retries"):
        return  # not ours, kept already, or a retry/deferral of a kept request
    try:
        rt = runtime.current()
    except NotConfigured:
        return
    try:
        args, kwargs = body[0], body[1]
        task_id = str(headers["id"])
        req = args[0] if args else kwargs.get("body")
        cid = kwargs.get("custom_id") or task_id
        # pipeline.publish sets the job id (the adhoc job of the hour when none is given).
        job = kwargs.get("job_id") or ADHOC_JOB
        pending = pending_request(url, req, kwargs.get("deployment"), kwargs.get("tenant"),
                                  task_id)  # fmt: skip
        rt.jobs.record_published(job, cid, pending, queue=routing_key)
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        log.warning("not kept for recovery: unexpected %s message (%s)", sender, exc)
    except redis.RedisError as exc:
        log.warning("not kept for recovery (Redis: %s): %s %s", exc, sender, headers.get("id"))
