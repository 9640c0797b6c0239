"""One delivery of one request: its counters and the ways it leaves the worker
other than with a result (deferral, transient retry, held back, dead letter).

Every way out puts the request somewhere: back on a queue or in the dead-letter
list. None acks a message without a result or a dead letter.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Reject

from budget import InvalidRequest, NeverAdmissible, Reservation
from settings import DeploymentSettings, SettingsError
from tasks import auth, provider, runtime
from tasks.errors import (
    Deferred,
    PermanentFailure,
    PermanentProviderError,
    TransientProviderError,
)
from tasks.request import LLMRequest

if TYPE_CHECKING:
    from tasks.base import BudgetedTask

log = logging.getLogger(__name__)

#: Message header: how many times this request was put back on the main queue
#: (budget deferrals and Redis outages). These never count against max_retries.
H_DEFERRALS = "quotaflow_deferrals"
#: Message header: the booked reservation a deferred task comes back with.
H_BOOKING = "quotaflow_booking"
#: Message header: why this delivery happened ("deferral" or "retry"); none when new.
H_REASON = "quotaflow_reason"
#: Message header: a provider reply that is paid for but not yet stored.
H_REPLY = "quotaflow_reply"


def booking_from_header(value: Any) -> Reservation | None:
    """The booking a message carries, or None when it carries none or one this
    version cannot read (a rolling upgrade changed its fields): the request then
    asks the gate again, which is always safe. Unknown fields are ignored."""
    if not value:
        return None
    try:
        return Reservation(
            id=str(value["id"]),
            deployment=str(value["deployment"]),
            tokens=int(value["tokens"]),
            requests=int(value["requests"]),
            start_at=float(value["start_at"]),
        )
    except (TypeError, KeyError, ValueError) as exc:
        log.warning("booking header unreadable (%r: %s); asking the gate again", value, exc)
        return None


def reply_from_header(value: Any) -> provider.ProviderReply | None:
    """The paid reply a held-back message carries, or None when it carries none.

    Read leniently: the body and the usage are what is paid for, and they are kept
    whatever else changed between versions; only a reply without a body cannot be
    stored (the request is then called again, and says so).
    """
    if not value:
        return None
    body = value.get("body") if isinstance(value, Mapping) else None
    if not isinstance(body, dict):
        log.error("kept reply unreadable (no body); the request is called again")
        return None
    raw_usage = body.get("usage")
    usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, Mapping) else {}
    headers = value.get("headers")

    def number(name: str, default: Any) -> int:
        try:
            return int(value.get(name, default) or 0)
        except (TypeError, ValueError):
            return int(default or 0)

    request_id = value.get("request_id")
    return provider.ProviderReply(
        body=body,
        headers=dict(headers) if isinstance(headers, Mapping) else {},
        status=number("status", 200) or 200,
        request_id=str(request_id) if request_id is not None else None,
        prompt_tokens=number("prompt_tokens", usage.get("prompt_tokens")),
        completion_tokens=number("completion_tokens", usage.get("completion_tokens")),
    )


def backoff(attempt: int, *, base: float, cap: float, floor: float = 0.0) -> float:
    """Capped exponential backoff with full jitter, never below `floor` (itself capped)."""
    return max(min(floor, cap), random.uniform(0, min(cap, base * 2 ** min(attempt, 30))))


class Delivery:
    """This delivery of `request`: what the exits need to know."""

    def __init__(self, task: BudgetedTask, rt: runtime.Runtime, request: LLMRequest) -> None:
        self.task = task
        self.rt = rt
        self.request = request
        self.dep: DeploymentSettings | None = None
        self.deferrals = int(self.header(H_DEFERRALS) or 0)
        #: Until when (monotonic) this delivery waits for an unreachable Redis.
        self.outage_deadline = time.monotonic() + rt.settings.budget_outage_wait_seconds
        self.counters: list[tuple[str, Mapping[str, str], float]] = []

    def header(self, name: str) -> Any:
        req = self.task.request
        value = getattr(req, name, None)
        if value is None:
            value = (req.headers or {}).get(name)
        return value

    @property
    def attempt(self) -> int:
        """Transient failures so far (deliveries minus deferrals)."""
        return int(self.task.request.retries or 0) - self.deferrals

    # Counters: buffered, written in one round trip when the delivery ends.

    def count(self, name: str, labels: dict[str, str], amount: float = 1) -> None:
        self.counters.append((name, labels, amount))

    def metric(self, name: str, **labels: str) -> None:
        labels["deployment"] = self.dep.name if self.dep else (self.request.deployment or "")
        self.count(name, labels)

    def flush(self) -> None:
        if self.counters:
            self.rt.metrics.add(self.counters)  # never raises: metrics are best effort
            self.counters = []

    # The exits.

    def defer(self, countdown: float, booking: Reservation | None, reason: str) -> NoReturn:
        """Postpone on the main queue; never counted against max_retries."""
        r = self.request
        self.rt.jobs.transition(r.job, r.custom_id, "deferred")
        self.rt.jobs.count(r.job, "deferrals")
        labels = {"deployment": self.dep.name if self.dep else ""}
        self.count("deferrals_total", labels)
        self.count("deferral_seconds_total", labels, countdown)
        headers = {
            H_REASON: "deferral",
            H_DEFERRALS: self.deferrals + 1,
            H_BOOKING: None if booking is None else dataclasses.asdict(booking),
        }
        self._send_back(
            countdown=max(0.0, countdown),
            queue=self.rt.settings.queue,
            headers=headers,
            exc=Deferred(reason),
        )

    def hold_back(self, exc: BaseException, *, keep: dict[str, Any] | None = None) -> NoReturn:
        """Redis cannot serve this request now: back on the main queue, not lost.

        Nothing is written to Redis on the way (it may be what is failing). `keep`
        is a provider reply already paid for: it travels with the message so the
        next delivery stores it instead of calling again.
        """
        s = self.rt.settings
        countdown = backoff(self.deferrals, base=1.0, cap=s.max_defer_seconds, floor=1.0)
        log.error(
            "request %s of job %s held back %.1fs, Redis cannot serve it: %s",
            self.request.custom_id, self.request.job, countdown, exc,
        )  # fmt: skip
        self._send_back(
            countdown=countdown,
            queue=s.queue,
            headers={
                H_REASON: "deferral",
                H_DEFERRALS: self.deferrals + 1,
                H_BOOKING: None,
                H_REPLY: keep,
            },
            exc=Deferred(f"held back: {exc}"),
        )

    def retry_transient(self, exc: TransientProviderError) -> NoReturn:
        """Retry on the retry queue with backoff; dead-letter once retries run out.

        The provider's retry-after is honoured up to `backoff_cap_seconds`: a longer
        countdown could outlast the visibility timeout and run the request twice.
        """
        s = self.rt.settings
        attempt = self.attempt
        if attempt >= s.max_retries:
            self.dead_letter(exc, code="retries_exhausted", note=f"after {attempt + 1} attempts")
        countdown = backoff(
            attempt, base=s.backoff_base_seconds, cap=s.backoff_cap_seconds,
            floor=exc.retry_after or 0.0,
        )  # fmt: skip
        r = self.request
        self.rt.jobs.transition(r.job, r.custom_id, "retrying")
        self.rt.jobs.count(r.job, "retries")
        self._send_back(
            countdown=countdown,
            queue=s.retry_queue,
            headers={H_REASON: "retry", H_DEFERRALS: self.deferrals, H_BOOKING: None},
            exc=exc,
        )

    def check_auth(self, dep: DeploymentSettings) -> None:
        """Dead-letter at once, with no call, if `dep` is stopped for its API key."""
        stop = auth.guard_for(self.rt.redis, self.rt.settings.key_prefix).stopped(dep)
        if stop is not None:
            self.dead_letter(PermanentProviderError(stop.reason), code="auth_failed")

    def dead_letter(
        self, exc: BaseException, *, code: str | None = None, note: str = ""
    ) -> NoReturn:
        r = self.request
        code = code or getattr(exc, "code", None) or _code_for(exc)
        message = f"{exc} ({note})" if note else str(exc)
        if self.dep is not None:
            message = provider.scrub(message, self.dep)
        message = provider.clip(message)  # any exception's text can echo a reply
        if self.dep is not None and getattr(exc, "status", None) in auth.AUTH_STATUSES:
            # The key, not the request, is wrong: a few of these stop the deployment.
            code = "auth_failed"
            auth.guard_for(self.rt.redis, self.rt.settings.key_prefix).failed(self.dep, message)
        entry = {
            "custom_id": r.custom_id,
            "job_id": r.job,
            "endpoint": r.endpoint,
            "body": r.body,
            "deployment": r.deployment,
            "tenant": r.tenant,
            "error": {"code": code, "message": message},
            "status": getattr(exc, "status", None),
            "task_id": self.task.request.id,
            "attempts": self.attempt + 1,
            "at": time.time(),
        }
        self.rt.jobs.record_dead(r.job, r.custom_id, entry)
        self.metric("dead_letters_total", code=code)
        log.warning("request %s of job %s dead-lettered: %s: %s", r.custom_id, r.job, code, message)
        raise PermanentFailure(f"{code}: {message}")

    def _send_back(self, **retry_options: Any) -> NoReturn:
        try:
            raise self.task.retry(**retry_options)
        except Reject as exc:
            # Celery rejects *without* requeue when the retry cannot be published,
            # which would drop the request. Requeue it instead; if the broker is
            # gone too, the message stays unacked and comes back after the
            # visibility timeout.
            log.error(
                "request %s could not be sent back (%s); requeued as it was",
                self.request.custom_id, exc.reason,
            )  # fmt: skip
            raise Reject(exc.reason, requeue=True) from None


def _code_for(exc: BaseException) -> str:
    if isinstance(exc, NeverAdmissible):
        return "never_admissible"
    if isinstance(exc, InvalidRequest):
        return "context_length_exceeded" if "context window" in str(exc) else "invalid_request"
    if isinstance(exc, SettingsError):
        return "unknown_deployment"
    return type(exc).__name__
