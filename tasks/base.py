"""The budget-checking base task: estimate, admit, call, settle, record.

A refused reservation is a deferral: `self.retry(countdown=..., queue=<main>)`, with
the booking and a deferral count carried in the message headers. Deferrals never
use up `max_retries` and never lengthen backoff: only transient provider failures
(429, 5xx, timeouts, dropped connections) count, and they go to the retry queue.
Permanent failures are dead-lettered at once, with the reason, for replay. The
exits live in `delivery.py`; this module tells the story of one call.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from typing import Any

import redis
from celery import Task
from kombu.exceptions import OperationalError

from budget import (
    BudgetError,
    BudgetStoreError,
    BudgetUnavailable,
    Decision,
    InvalidRequest,
    NeverAdmissible,
    Outcome,
    QuotaflowError,
    Redemption,
    Reservation,
)
from budget.estimate import Estimate, estimate_request
from budget.store import passes
from settings import DeploymentSettings, SettingsError
from tasks import provider, runtime
from tasks.deadline import DeadlineExceeded, run_with_deadline
from tasks.delivery import (
    H_BOOKING,
    H_REASON,
    H_REPLY,
    Delivery,
    backoff,
    booking_from_header,
    reply_from_header,
)
from tasks.errors import PermanentFailure, PermanentProviderError, TransientProviderError
from tasks.request import LLMRequest, route

log = logging.getLogger(__name__)

#: Redis (budget or broker) unreachable: fail closed, hold the message and wait.
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, BudgetUnavailable, OperationalError)


def _outage(exc: BaseException) -> bool:
    """Unreachable, or an answer that means "not now" (a replica during a failover:
    READONLY, LOADING...), from the gate or from the job store alike."""
    return isinstance(exc, _OUTAGE) or (isinstance(exc, redis.ResponseError) and passes(exc))


#: A deferred booking comes back `inline_seconds` before its slot and waits out the
#: rest in place, timed on the Redis clock: an ETA fires on the consuming worker's
#: clock, which may lag the publisher's, and an ETA task can start late on a busy
#: worker; a late start loses its slot. A booking this many `inline_seconds` ahead
#: (or less) is waited for in place when it comes back, so a consumer whose clock is
#: ahead by up to `inline_seconds` does not defer it again either.
REDEEM_IN_PLACE = 2.0


class _Finished(Exception):
    """The request finished (done, or this message cancelled) before its call."""


class BudgetedTask(Task):  # type: ignore[misc]
    """Base of every LLM task. Subclasses call `execute` from their body."""

    # quotaflow counts transient retries itself; deferrals must not be counted.
    max_retries = None
    acks_late = True
    reject_on_worker_lost = True
    # A hard time limit (prefork) kills the call with no result and no dead letter:
    # requeue the message rather than ack it. Other failures dead-letter first and
    # are acked. (acks_on_failure_or_timeout: Celery before 5.7; there a failure's
    # reject without requeue removes the message from Redis, as an ack does.)
    acks_on_timeout = False
    acks_on_failure = True
    acks_on_failure_or_timeout = False

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
        """Run one request. While Redis is unreachable, hold the message and wait; past
        `budget_outage_wait_seconds`, put it back on the main queue."""
        request = LLMRequest.from_task(
            body, endpoint=endpoint, custom_id=custom_id, job_id=job_id,
            deployment=deployment, tenant=tenant, task_id=str(self.request.id),
        )  # fmt: skip
        d = Delivery(self, runtime.current(), request)
        attempt = 0
        while True:
            try:
                return self._deliver(d)
            except BudgetStoreError as exc:
                # Redis answered with an error waiting will not cure: say so loudly,
                # keep the request.
                log.error("budget store error, request %s held back: %s", request.custom_id, exc)
                d.hold_back(exc)
            except Exception as exc:
                if not _outage(exc):
                    raise
                if time.monotonic() > d.outage_deadline:
                    d.hold_back(exc)
                log.error("Redis unreachable (failing closed), request waits: %s", exc)
                time.sleep(backoff(attempt, base=0.5, cap=5.0, floor=0.2))
                attempt += 1

    def _deliver(self, d: Delivery) -> dict[str, Any]:
        rt, r = d.rt, d.request
        # A message `quotaflow cancel` stopped raises Cancelled here: dropped, never sent.
        done = rt.jobs.arrive(
            r.job, r.custom_id, first=not self.request.retries, task_id=str(self.request.id)
        )
        if done is not None:  # a redelivery of a request that already succeeded
            return dict(done["response"]["body"])
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        d.count("deliveries_total", {"queue": queue, "reason": d.header(H_REASON) or "new"})
        try:
            return self._run(d)
        finally:
            # One round trip for all of this delivery's counters, on every exit path.
            d.flush()

    def _run(self, d: Delivery) -> dict[str, Any]:
        r = d.request
        try:
            dep = d.dep = route(d.rt.settings, r.body, r.deployment)
            kept = reply_from_header(d.header(H_REPLY))
            if kept is not None:  # paid for on an earlier delivery; only the write failed
                return self._record(d, dep, kept, estimated=0)
            d.check_auth(dep)
            est = estimate_request(
                r.body, endpoint=r.endpoint, model=dep.model, context_window=dep.context_window
            )
            reservation, start = self._admit(d, dep, est)
            reply = self._call(d, dep, reservation, start)
            return self._record(d, dep, reply, estimated=est.total)
        except _Finished:
            return self._finished(d)
        except (InvalidRequest, NeverAdmissible, PermanentProviderError, SettingsError) as exc:
            if isinstance(exc, PermanentProviderError):
                d.metric("provider_responses_total", status=str(exc.status or exc.code))
            d.dead_letter(exc)
        except Exception as exc:
            if isinstance(exc, QuotaflowError) or _outage(exc) or _is_celery_control(exc):
                raise
            log.exception("request %s of job %s failed unexpectedly", r.custom_id, r.job)
            d.dead_letter(exc, code="internal_error")

    def _finished(self, d: Delivery) -> dict[str, Any]:
        """The end of a message whose request finished before its call: the result a
        copy of it stored, or Cancelled (as on arrival)."""
        r = d.request
        done = d.rt.jobs.arrive(r.job, r.custom_id, first=False, task_id=str(self.request.id))
        if done is not None:
            return dict(done["response"]["body"])
        raise PermanentFailure(
            f"request {r.custom_id} of job {r.job} finished before it was sent; not sent"
        )

    def _admit(
        self, d: Delivery, dep: DeploymentSettings, est: Estimate
    ) -> tuple[Reservation, float]:
        """A reservation for this call and when (monotonic) it may start."""
        # BudgetUnavailable propagates: `execute` fails closed and waits for Redis.
        gate = d.rt.gate
        reservation = booking_from_header(d.header(H_BOOKING))
        if reservation is not None and reservation.deployment == dep.name:
            # One round trip checks the booking against the gate and uses it up: a
            # copy of this message, or a booking made before a 429, gets no call.
            answer, now = gate.redeem(
                reservation, inline_seconds=REDEEM_IN_PLACE * gate.inline_seconds
            )
            early = reservation.start_at - now
            if answer is Redemption.EARLY:
                d.defer(
                    early - gate.inline_seconds, reservation,
                    f"booked in {early:.1f}s (came back early)",
                )  # fmt: skip
            if answer is Redemption.VALID:
                if early >= 0:
                    return reservation, time.monotonic() + early
                late_ok = gate.late_tolerance(dep.name, d.rt.settings.late_tolerance_seconds)
                if -early <= late_ok:
                    return reservation, time.monotonic()
                # Started too late: the slot has passed; give it back where the limiter
                # can (nothing was sent in it) and book again.
                log.info(
                    "request %s started %.1fs late for its slot; booking again",
                    d.request.custom_id, -early,
                )  # fmt: skip
                gate.release(reservation)
            else:
                log.info(
                    "request %s: booking %s is %s; asking the gate again",
                    d.request.custom_id, reservation.id, answer.value,
                )  # fmt: skip
        decision = gate.reserve(dep.name, tokens=est.total, reservation_id=uuid.uuid4().hex)
        d.metric("reservations_total", outcome=decision.outcome.value)
        return self._decided(d, decision)

    def _decided(self, d: Delivery, decision: Decision) -> tuple[Reservation, float]:
        s = d.rt.settings
        if decision.outcome is Outcome.NEVER:
            assert decision.error is not None
            raise decision.error
        if decision.outcome is Outcome.WAIT:
            countdown = min(
                decision.wait + random.uniform(0, s.defer_jitter_seconds), s.max_defer_seconds
            )
            d.defer(
                countdown,
                None,
                f"budget full on {decision.dimension}; asking again in {countdown:.1f}s",
            )
        reservation = decision.reservation
        assert reservation is not None
        countdown = decision.countdown
        inline = d.rt.gate.inline_seconds
        # A booking this close is waited for in place rather than through the broker.
        if countdown > inline:
            d.defer(
                countdown - inline, reservation,
                f"booked on {decision.dimension} in {countdown:.1f}s",
            )  # fmt: skip
        return reservation, time.monotonic() + max(0.0, countdown)

    def _call(
        self, d: Delivery, dep: DeploymentSettings, reservation: Reservation, start: float
    ) -> provider.ProviderReply:
        rt, r = d.rt, d.request
        # Before the wait: between the slot and the provider there is only the HTTP
        # request (a window limiter's guard band has nothing to spare for Redis).
        if not rt.jobs.start(r.job, r.custom_id, task_id=str(self.request.id)):
            # Cancelled, or done by a copy of this message, since it arrived: calling
            # now would send a cancelled request, or pay for one twice.
            rt.gate.release(reservation)
            raise _Finished
        wait = start - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            reply = run_with_deadline(
                lambda: provider.call(dep, r.endpoint, r.body), dep.timeout_seconds
            )
        except DeadlineExceeded:
            timeout = TransientProviderError(f"timed out after {dep.timeout_seconds:g}s")
            timeout.code = "timeout"
            d.metric("provider_responses_total", status=timeout.code)
            d.retry_transient(timeout)
        except TransientProviderError as exc:
            d.metric("provider_responses_total", status=str(exc.status or exc.code))
            if exc.status == 429:
                rt.gate.cooldown(dep.name, exc.retry_after or 1.0)
                # A refused call was not counted by the provider. (A timeout or a 5xx
                # may have been: those keep their charge.) The refund stops at the
                # cooldown just set.
                rt.gate.settle(reservation, actual_tokens=0)
            d.retry_transient(exc)
        d.metric("provider_responses_total", status=str(reply.status))
        try:
            rt.gate.settle(reservation, actual_tokens=reply.prompt_tokens + reply.completion_tokens)
            rt.gate.observe(dep.name, reply.headers, sent_at=reservation.start_at)
        except BudgetError as exc:
            # The call is done and paid for: keep its result; the budget correction is lost.
            log.error("could not settle %s: %s", reservation.id, exc)
        return reply

    def _record(
        self, d: Delivery, dep: DeploymentSettings, reply: provider.ProviderReply, *, estimated: int
    ) -> dict[str, Any]:
        """Store the result once. The reply is paid for: while Redis is away the write
        is retried, never the call."""
        attempt = 0
        while True:
            try:
                return self._store(d, dep, reply, estimated=estimated)
            except Exception as exc:
                if not _outage(exc):
                    raise
                if time.monotonic() > d.outage_deadline:
                    d.hold_back(exc, keep=reply.as_dict())
                log.error(
                    "result of %s not stored yet, Redis unreachable: %s", d.request.custom_id, exc
                )
                time.sleep(backoff(attempt, base=0.5, cap=5.0, floor=0.2))
                attempt += 1

    def _store(
        self, d: Delivery, dep: DeploymentSettings, reply: provider.ProviderReply, *, estimated: int
    ) -> dict[str, Any]:
        rt, r = d.rt, d.request
        cost = (
            reply.prompt_tokens * dep.price_input_per_1m
            + reply.completion_tokens * dep.price_output_per_1m
        ) / 1e6
        line = {
            "id": f"batch_req_{self.request.id}",
            "custom_id": r.custom_id,
            "response": {
                "status_code": reply.status,
                "request_id": reply.request_id or "",
                "body": reply.body,
            },
            "error": None,
        }
        stored = rt.jobs.record_result(
            r.job, r.custom_id, line,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=cost, deferrals=d.deferrals, retries=d.attempt,
        )  # fmt: skip
        if stored:
            labels = {"deployment": dep.name, "tenant": r.tenant or ""}
            d.count("tokens_estimated_total", labels, estimated)
            d.count("tokens_prompt_total", labels, reply.prompt_tokens)
            d.count("tokens_completion_total", labels, reply.completion_tokens)
            d.count("cost_usd_total", labels, cost)
            d.count("requests_done_total", labels)
        return reply.body


def _is_celery_control(exc: BaseException) -> bool:
    from celery.exceptions import Ignore, Reject, Retry

    return isinstance(exc, (Retry, Ignore, Reject))
