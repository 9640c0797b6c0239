"""The budget-checking base task: estimate, reserve, call, settle.

A refused reservation is a deferral: `self.retry(countdown=..., queue=<main>)`, with
the booking and a deferral count carried in the message headers. Deferrals never
use up `max_retries` and never lengthen backoff: only transient provider failures
(429, 5xx, timeouts, dropped connections) count, and they go to the retry queue.
Permanent failures are dead-lettered at once, with the reason, for replay.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

import redis
from celery import Task
from kombu.exceptions import OperationalError

from budget import (
    BudgetUnavailable,
    Decision,
    InvalidRequest,
    NeverAdmissible,
    Outcome,
    QuotaflowError,
    Reservation,
)
from budget.estimate import Estimate, estimate_request
from settings import DeploymentSettings, Settings, SettingsError
from tasks import provider, runtime
from tasks.errors import Deferred, PermanentFailure, PermanentProviderError, TransientProviderError
from tasks.jobs import ADHOC_JOB

log = logging.getLogger(__name__)

#: Message header: how many times the budget postponed this request.
H_DEFERRALS = "quotaflow_deferrals"
#: Message header: the booked reservation a deferred task comes back with.
H_BOOKING = "quotaflow_booking"
#: Message header: why this delivery happened ("deferral" or "retry"); none when new.
H_REASON = "quotaflow_reason"
#: Redis (budget or broker) unreachable: fail closed, hold the message and wait.
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, BudgetUnavailable, OperationalError)
#: A booking this close is waited for in place rather than through the broker.
INLINE_WAIT_SECONDS = 1.0
#: A deferred booking comes back this much before its slot and waits out the rest in
#: place: an ETA task can start late on a busy worker, and a late start loses its slot.
WAKE_EARLY_SECONDS = 0.25


def route(settings: Settings, body: Any, deployment: str | None) -> DeploymentSettings:
    """The named deployment, else one serving the body's model, else the default."""
    if deployment:
        return settings.deployment(deployment)
    model = body.get("model") if isinstance(body, dict) else None
    for dep in settings.deployments:
        if model in (dep.model, dep.name):
            return dep
    return settings.deployments[0]


def backoff(attempt: int, *, base: float, cap: float, floor: float = 0.0) -> float:
    """Capped exponential backoff with full jitter, never below the provider's ask."""
    return max(floor, random.uniform(0, min(cap, base * 2**attempt)))


class BudgetedTask(Task):  # type: ignore[misc]
    """Base of every LLM task. Subclasses call `execute` from their body."""

    # quotaflow counts transient retries itself; deferrals must not be counted.
    max_retries = None
    acks_late = True
    reject_on_worker_lost = True

    def _header(self, name: str) -> Any:
        value = getattr(self.request, name, None)
        if value is None:
            value = (self.request.headers or {}).get(name)
        return value

    def execute(
        self,
        body: dict[str, Any],
        *,
        endpoint: str,
        custom_id: str | None,
        job_id: str | None,
        deployment: str | None,
        tenant: str | None,
    ) -> dict[str, Any]:
        """Run one request; while Redis is unreachable, hold the message and wait."""
        rt = runtime.current()
        deadline = time.monotonic() + rt.settings.budget_outage_wait_seconds
        attempt = 0
        while True:
            try:
                return self._execute_once(body, endpoint, custom_id, job_id, deployment, tenant)
            except _OUTAGE as exc:
                if time.monotonic() > deadline:
                    raise
                log.error("Redis unreachable (failing closed), request waits: %s", exc)
                time.sleep(backoff(attempt, base=0.5, cap=5.0, floor=0.2))
                attempt += 1

    def _execute_once(
        self,
        body: dict[str, Any],
        endpoint: str,
        custom_id: str | None,
        job_id: str | None,
        deployment: str | None,
        tenant: str | None,
    ) -> dict[str, Any]:
        rt = runtime.current()
        job = job_id or ADHOC_JOB
        cid = custom_id or str(self.request.id)
        done = rt.jobs.get_result(job, cid)
        if done is not None:  # a redelivery of a request that already succeeded
            return dict(done["response"]["body"])
        if not self.request.retries:
            rt.jobs.add_queued(job, [cid])
        ctx = _Context(self, rt, job, cid, endpoint, body, deployment, tenant)
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        reason = self._header(H_REASON) or "new"
        ctx.count("deliveries_total", {"queue": queue, "reason": reason})
        try:
            return self._run(ctx, body, endpoint, deployment)
        finally:
            # One round trip for all of this delivery's counters, on every exit path.
            ctx.flush()

    def _run(
        self, ctx: _Context, body: dict[str, Any], endpoint: str, deployment: str | None
    ) -> dict[str, Any]:
        rt = ctx.rt
        try:
            dep = route(rt.settings, body, deployment)
            ctx.dep = dep
            if not isinstance(body, dict):
                raise InvalidRequest(f"body must be a JSON object, got {type(body).__name__}")
            est = estimate_request(
                body, endpoint=endpoint, model=body.get("model") or dep.model,
                context_window=dep.context_window,
            )  # fmt: skip
            reservation = self._admit(ctx, dep, est)
            return self._call(ctx, dep, est, reservation)
        except (InvalidRequest, NeverAdmissible, PermanentProviderError, SettingsError) as exc:
            if isinstance(exc, PermanentProviderError):
                ctx.metric("provider_responses_total", status=str(exc.status or exc.code))
            ctx.dead_letter(exc)
        except (QuotaflowError, *_OUTAGE):
            raise
        except Exception as exc:
            if _is_celery_control(exc):
                raise
            log.exception("request %s of job %s failed unexpectedly", ctx.cid, ctx.job)
            ctx.dead_letter(exc, code="internal_error")

    def _admit(self, ctx: _Context, dep: DeploymentSettings, est: Estimate) -> Reservation:
        # BudgetUnavailable propagates: `execute` fails closed and waits for Redis.
        rt = ctx.rt
        booking = self._header(H_BOOKING)
        if booking and booking.get("deployment") == dep.name:
            reservation = Reservation(**booking)
            early = reservation.start_at - rt.gate.now()
            if early > INLINE_WAIT_SECONDS:
                ctx.defer(
                    early - WAKE_EARLY_SECONDS, reservation,
                    f"booked in {early:.1f}s (came back early)",
                )  # fmt: skip
            if early > 0:
                time.sleep(early)
                return reservation
            if -early <= rt.gate.late_tolerance(dep.name, rt.settings.late_tolerance_seconds):
                return reservation
            # Started too late: the slot has passed; give it back where the limiter
            # can (nothing was sent in it) and book again.
            log.info("request %s started %.1fs late for its slot; booking again", ctx.cid, -early)
            rt.gate.release(reservation)
        decision = rt.gate.reserve(dep.name, tokens=est.total, reservation_id=uuid.uuid4().hex)
        ctx.metric("reservations_total", outcome=decision.outcome.value)
        return self._decided(ctx, decision)

    def _decided(self, ctx: _Context, decision: Decision) -> Reservation:
        s = ctx.rt.settings
        if decision.outcome is Outcome.NEVER:
            assert decision.error is not None
            raise decision.error
        if decision.outcome is Outcome.WAIT:
            countdown = min(
                decision.wait + random.uniform(0, s.defer_jitter_seconds), s.max_defer_seconds
            )
            ctx.defer(
                countdown,
                None,
                f"budget full on {decision.dimension}; asking again in {countdown:.1f}s",
            )
        reservation = decision.reservation
        assert reservation is not None
        countdown = decision.countdown
        if countdown > INLINE_WAIT_SECONDS:
            ctx.defer(
                countdown - WAKE_EARLY_SECONDS, reservation,
                f"booked on {decision.dimension} in {countdown:.1f}s",
            )  # fmt: skip
        if countdown > 0:
            time.sleep(countdown)
        return reservation

    def _call(
        self, ctx: _Context, dep: DeploymentSettings, est: Estimate, reservation: Reservation
    ) -> dict[str, Any]:
        rt = ctx.rt
        rt.jobs.transition(ctx.job, ctx.cid, "running")
        try:
            reply = provider.call(dep, ctx.endpoint, ctx.body)
        except TransientProviderError as exc:
            ctx.metric("provider_responses_total", status=str(exc.status or exc.code))
            if exc.status == 429:
                rt.gate.cooldown(dep.name, exc.retry_after or 1.0)
            # A refused or failed call used nothing that `actual` accounting could see.
            rt.gate.settle(reservation, actual_tokens=0)
            ctx.transient_retry(exc)
        ctx.metric("provider_responses_total", status=str(reply.status))
        try:
            rt.gate.settle(reservation, actual_tokens=reply.prompt_tokens + reply.completion_tokens)
            rt.gate.observe(dep.name, reply.headers)
        except BudgetUnavailable as exc:
            # The call is done and paid for: keep its result; the budget correction is lost.
            log.error("could not settle %s: %s", reservation.id, exc)
        cost = (
            reply.prompt_tokens * dep.price_input_per_1m
            + reply.completion_tokens * dep.price_output_per_1m
        ) / 1e6
        line = {
            "id": f"batch_req_{self.request.id}",
            "custom_id": ctx.cid,
            "response": {
                "status_code": reply.status,
                "request_id": reply.request_id or "",
                "body": reply.body,
            },
            "error": None,
        }
        stored = rt.jobs.record_result(
            ctx.job, ctx.cid, line,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=cost,
        )  # fmt: skip
        if stored:
            rt.jobs.note_attempts(ctx.job, ctx.cid, deferrals=ctx.deferrals, retries=ctx.attempt)
            labels = {"deployment": dep.name, "tenant": ctx.tenant or ""}
            ctx.count("tokens_estimated_total", labels, est.total)
            ctx.count("tokens_prompt_total", labels, reply.prompt_tokens)
            ctx.count("tokens_completion_total", labels, reply.completion_tokens)
            ctx.count("cost_usd_total", labels, cost)
            ctx.count("requests_done_total", labels)
        return reply.body


class _Context:
    """One execution of one request: what the failure paths need to know."""

    def __init__(
        self,
        task: BudgetedTask,
        rt: runtime.Runtime,
        job: str,
        cid: str,
        endpoint: str,
        body: Any,
        deployment: str | None,
        tenant: str | None,
    ) -> None:
        self.task = task
        self.rt = rt
        self.job = job
        self.cid = cid
        self.endpoint = endpoint
        self.body = body
        self.deployment = deployment
        self.tenant = tenant
        self.dep: DeploymentSettings | None = None
        self.deferrals = int(task._header(H_DEFERRALS) or 0)
        self.counters: list[tuple[str, Mapping[str, str], float]] = []

    @property
    def attempt(self) -> int:
        """Transient failures so far (deliveries minus deferrals)."""
        return int(self.task.request.retries or 0) - self.deferrals

    def count(self, name: str, labels: dict[str, str], amount: float = 1) -> None:
        """Add to a counter when this delivery ends (see `flush`)."""
        self.counters.append((name, labels, amount))

    def metric(self, name: str, **labels: str) -> None:
        labels["deployment"] = self.dep.name if self.dep else (self.deployment or "")
        self.count(name, labels)

    def flush(self) -> None:
        if self.counters:
            self.rt.metrics.add(self.counters)  # never raises: metrics are best effort
            self.counters = []

    def defer(self, countdown: float, booking: Reservation | None, reason: str) -> NoReturn:
        """Postpone on the main queue; never counted against max_retries."""
        self.rt.jobs.transition(self.job, self.cid, "deferred")
        self.rt.jobs.count(self.job, "deferrals")
        labels = {"deployment": self.dep.name if self.dep else ""}
        self.count("deferrals_total", labels)
        self.count("deferral_seconds_total", labels, countdown)
        headers = {
            H_REASON: "deferral",
            H_DEFERRALS: self.deferrals + 1,
            H_BOOKING: None if booking is None else dataclasses.asdict(booking),
        }
        raise self.task.retry(
            countdown=max(0.0, countdown),
            queue=self.rt.settings.queue,
            headers=headers,
            exc=Deferred(reason),
        )

    def transient_retry(self, exc: TransientProviderError) -> NoReturn:
        """Retry on the retry queue with backoff; dead-letter once retries run out."""
        s = self.rt.settings
        attempt = self.attempt
        if attempt >= s.max_retries:
            self.dead_letter(exc, code="retries_exhausted", note=f"after {attempt + 1} attempts")
        countdown = backoff(
            attempt, base=s.backoff_base_seconds, cap=s.backoff_cap_seconds,
            floor=exc.retry_after or 0.0,
        )  # fmt: skip
        self.rt.jobs.transition(self.job, self.cid, "retrying")
        self.rt.jobs.count(self.job, "retries")
        raise self.task.retry(
            countdown=countdown,
            queue=s.retry_queue,
            headers={H_REASON: "retry", H_DEFERRALS: self.deferrals, H_BOOKING: None},
            exc=exc,
        )

    def dead_letter(
        self, exc: BaseException, *, code: str | None = None, note: str = ""
    ) -> NoReturn:
        code = code or getattr(exc, "code", None) or _code_for(exc)
        message = f"{exc} ({note})" if note else str(exc)
        if self.dep is not None:
            message = provider.scrub(message, self.dep)
        entry = {
            "custom_id": self.cid,
            "job_id": self.job,
            "endpoint": self.endpoint,
            "body": self.body,
            "deployment": self.deployment,
            "tenant": self.tenant,
            "error": {"code": code, "message": message},
            "status": getattr(exc, "status", None),
            "task_id": self.task.request.id,
            "attempts": self.attempt + 1,
            "at": time.time(),
        }
        self.rt.jobs.record_dead(self.job, self.cid, entry)
        self.metric("dead_letters_total", code=code)
        log.warning("request %s of job %s dead-lettered: %s: %s", self.cid, self.job, code, message)
        raise PermanentFailure(f"{code}: {message}")


def _code_for(exc: BaseException) -> str:
    if isinstance(exc, NeverAdmissible):
        return "never_admissible"
    if isinstance(exc, InvalidRequest):
        return "context_length_exceeded" if "context window" in str(exc) else "invalid_request"
    if isinstance(exc, SettingsError):
        return "unknown_deployment"
    return type(exc).__name__


def _is_celery_control(exc: BaseException) -> bool:
    from celery.exceptions import Ignore, Reject, Retry

    return isinstance(exc, (Retry, Ignore, Reject))
