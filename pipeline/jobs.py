"""Jobs: submit many requests as one, follow them, export results, replay failures."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from budget import InvalidRequest, NeverAdmissible
from budget.estimate import estimate_request
from budget.limits import check_admissible
from pipeline.batchfile import (
    URLS,
    BatchLine,
    LineError,
    output_error_line,
    read_batch,
    rejected_id,
)
from pipeline.messages import Template
from pipeline.recovery import Recovery
from pipeline.sending import pending_request, send, send_all
from settings import Settings, SettingsError
from tasks.jobstate import job_id_error
from tasks.jobstore import JobStatus, JobStore
from tasks.metrics import check_tenant
from tasks.request import route

ENDPOINT_FOR_URL = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
_PUBLISH_CHUNK = 500


@dataclass
class SubmitReport:
    """What a submission did."""

    job_id: str
    #: Requests sent to the queue.
    submitted: int = 0
    #: Lines refused at submit, each recorded on the job as failed.
    rejected: list[LineError] = field(default_factory=list)
    #: Lines whose custom_id the job already had (a resubmission): not sent again.
    skipped: int = 0
    #: Of the submitted: requests an interrupted submit of this job never published.
    resumed: int = 0
    #: Tokens the submitted requests are estimated to cost.
    tokens_estimated: int = 0


@dataclass
class CancelReport:
    """What a cancel did."""

    job_id: str
    #: Waiting requests dead-lettered `cancelled` (their messages are dropped on arrival).
    cancelled: int = 0
    #: Waiting requests with no kept copy (published before they were kept): left alone.
    not_kept: int = 0
    #: Requests with a result, kept.
    done: int = 0
    #: Requests being called now: they finish.
    running: int = 0


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def check_job_id(job_id: str) -> str:
    """`job_id` if it is a valid job id, else a SettingsError that says what is allowed."""
    error = job_id_error(job_id)
    if error is not None:
        raise SettingsError(error)
    return job_id


class Jobs:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store

    def check(self, line: BatchLine, deployment: str | None) -> tuple[int, LineError | None]:
        """Validate a request at submit: what would fail at run fails here, clearly."""
        try:
            dep = route(self.settings, line.body, deployment)
            est = estimate_request(
                line.body,
                endpoint=ENDPOINT_FOR_URL[line.url],
                model=dep.model,
                context_window=dep.context_window,
            )
            check_admissible(dep, tokens=est.total)
        except (InvalidRequest, NeverAdmissible, SettingsError) as exc:
            return 0, LineError(line.line, line.custom_id, str(exc))
        return est.total, None

    def submit(
        self,
        lines: Iterable[BatchLine | LineError],
        *,
        job_id: str | None = None,
        deployment: str | None = None,
        tenant: str | None = None,
        meta: dict[str, str] | None = None,
        celery_results: bool = False,
    ) -> SubmitReport:
        """Queue every valid line; record every invalid one on the job as failed.

        Publishing is chunked; a resubmission of the same job skips custom_ids the job
        already has, so an interrupted submit can simply be run again: what it left
        unpublished (marked unsent, and in no queue) is published then, once.

        Results are read from the job (`results`, `export`): the workers write no
        Celery result for them unless `celery_results` (an `AsyncResult` per task id).
        """
        if deployment is not None:
            self.settings.deployment(deployment)  # unknown: fail before anything is queued
        check_tenant(tenant)
        report = SubmitReport(job_id=job_id or new_job_id())
        self.store.create(report.job_id, meta={**(meta or {}), "tenant": tenant or ""})
        chunk: list[tuple[BatchLine, int]] = []
        unsent: list[str] = []
        # Each task's message per queue, made once per submit (pipeline.messages).
        templates: dict[str, dict[str, Template]] = {}
        for item in lines:
            if isinstance(item, LineError):
                self._reject(report, item)
                continue
            cost, error = self.check(item, deployment)
            if error is not None:
                self._reject(report, error)
                continue
            chunk.append((item, cost))
            if len(chunk) >= _PUBLISH_CHUNK:
                unsent += self._publish(
                    report, chunk, deployment, tenant, celery_results, templates
                )
                chunk = []
        if chunk:
            unsent += self._publish(report, chunk, deployment, tenant, celery_results, templates)
        if unsent:
            recovery = Recovery(self.settings, self.store)
            report.resumed = recovery.resend_unsent(report.job_id, unsent)
            report.submitted += report.resumed
            report.skipped += len(unsent) - report.resumed
        return report

    def _publish(
        self,
        report: SubmitReport,
        chunk: list[tuple[BatchLine, int]],
        deployment: str | None,
        tenant: str | None,
        celery_results: bool,
        templates: dict[str, dict[str, Template]],
    ) -> list[str]:
        """Publish the chunk's new requests; returns the known ones an interrupted
        submit of this job had marked unsent (the caller checks them in the broker)."""
        job_id = report.job_id
        known = self.store.known(job_id, [line.custom_id for line, _ in chunk])
        fresh = [(line, cost) for (line, cost), k in zip(chunk, known, strict=True) if not k]
        old = [line.custom_id for (line, _), k in zip(chunk, known, strict=True) if k]
        unsent = [cid for cid, u in zip(old, self.store.unsent(job_id, old), strict=True) if u]
        report.skipped += len(old) - len(unsent)
        pending = {
            line.custom_id: pending_request(
                line.url, line.body, deployment, tenant, uuid.uuid4().hex
            )
            for line, _ in fresh
        }
        # Kept and marked unsent, then counted in, all before publishing: a fast
        # worker finds its request known, and a kill mid-chunk leaves the mark.
        self.store.begin_publish(job_id, pending)
        self.store.add_queued(job_id, list(pending), estimated=sum(c for _, c in fresh))
        send_all(job_id, pending, celery_result=celery_results, templates=templates)
        report.submitted += len(fresh)
        report.tokens_estimated += sum(cost for _, cost in fresh)
        self.store.end_publish(job_id, pending)
        return unsent

    def _reject(self, report: SubmitReport, error: LineError) -> None:
        report.rejected.append(error)
        cid = error.custom_id or rejected_id(error.line)
        self.store.add_queued(report.job_id, [cid])
        self.store.record_dead(
            report.job_id,
            cid,
            {
                "custom_id": cid,
                "job_id": report.job_id,
                "line": error.line,
                "body": None,
                "error": {"code": "invalid_request", "message": str(error)},
                "replayable": False,
                "at": time.time(),
            },
        )

    def submit_file(self, path: Path, **options: Any) -> SubmitReport:
        return self.submit(read_batch(path), meta={"source": str(path)}, **options)

    def submit_bodies(
        self, bodies: Iterable[dict[str, Any]], *, url: str = "/v1/chat/completions", **options: Any
    ) -> SubmitReport:
        """Submit request bodies; custom_ids are their positions ("0", "1", ...)."""
        if url not in URLS:
            raise InvalidRequest(f"url must be one of {', '.join(URLS)}, got {url!r}")
        lines = (BatchLine(i + 1, str(i), url, body) for i, body in enumerate(bodies))
        return self.submit(lines, **options)

    def status(self, job_id: str) -> JobStatus:
        if not self.store.exists(job_id):
            raise SettingsError(f"no job {job_id!r}; `quotaflow status` lists the jobs")
        return self.store.status(job_id)

    def output_lines(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every finished request as a Batch output line: results, then failures."""
        for _, line in self.store.results(job_id):
            yield line
        for cid, raw in sorted(self.store.dead_letters(job_id).items()):
            entry = json.loads(raw)
            err = entry.get("error") or {}
            yield output_error_line(
                cid,
                str(err.get("code", "error")),
                str(err.get("message", "")),
                status=entry.get("status"),
            )

    def export(self, job_id: str, out: TextIO) -> int:
        n = 0
        for line in self.output_lines(job_id):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            n += 1
        return n

    def replay(self, job_id: str) -> tuple[int, int]:
        """Resubmit the job's dead letters; returns (replayed, not replayable).

        Each is queued before its dead letter is claimed, so a crash in between can
        at worst leave a stale dead letter, never lose a request.
        """
        self.status(job_id)
        replayed = skipped = 0
        for cid, raw in self.store.dead_letters(job_id).items():
            entry = json.loads(raw)
            body = entry.get("body")
            url = {v: k for k, v in ENDPOINT_FOR_URL.items()}.get(entry.get("endpoint", ""))
            if entry.get("replayable") is False or not isinstance(body, dict) or url is None:
                skipped += 1
                continue
            pending = pending_request(
                url, body, entry.get("deployment"), entry.get("tenant"), uuid.uuid4().hex
            )
            self.store.store_pending(job_id, {cid: pending})
            send(job_id, cid, pending, celery_result=False)
            self.store.claim_dead(job_id, cid, raw)
            replayed += 1
        return replayed, skipped

    def cancel(self, job_id: str) -> CancelReport:
        """Stop the job's waiting requests (queued, deferred, retrying): each is
        dead-lettered `cancelled` (replayable) and its message dropped when it reaches a
        worker. Requests running finish; results stay."""
        self.status(job_id)
        store = self.store
        k = store.keys(job_id)
        waiting = [
            cid.decode()
            for cid, state in store.client.hscan_iter(k.states, count=1000)
            if state in (b"queued", b"deferred", b"retrying")
        ]
        report = CancelReport(job_id)
        now = time.time()
        for start in range(0, len(waiting), _PUBLISH_CHUNK):
            chunk = waiting[start : start + _PUBLISH_CHUNK]
            kept = store.pending(job_id, chunk)
            report.not_kept += len(chunk) - len(kept)
            entries = {
                cid: {
                    "custom_id": cid, "job_id": job_id,
                    "endpoint": ENDPOINT_FOR_URL.get(request.get("url", ""), "chat"),
                    "body": request.get("body"), "deployment": request.get("deployment"),
                    "tenant": request.get("tenant"),
                    "error": {"code": "cancelled", "message": (
                        f"cancelled before it was sent (`quotaflow cancel {job_id}`); "
                        f"`quotaflow replay {job_id}` sends it again")},
                    "status": None, "task_id": request.get("task_id") or "", "attempts": 0,
                    "at": now,
                }
                for cid, request in kept.items()
            }  # fmt: skip
            report.cancelled += store.cancel(job_id, entries)
        status = self.status(job_id)
        report.done = status.counts["done"]
        report.running = status.counts["running"]
        return report

    def recover(self, job_id: str, *, older_than: float | None = None) -> int:
        """Send again the unfinished requests whose message was lost.

        Workers do this for every job on their own (pipeline.recovery); this runs it
        now for one job. A request is lost when it is unfinished, silent for
        `older_than` seconds (settings.recover_after_seconds), and its task id is in
        no queue and held by no worker, twice in a row. Returns how many were sent
        again. Results are stored once per custom_id, so even a false alarm never
        duplicates a result.
        """
        self.status(job_id)
        limit = self.settings.recover_after_seconds if older_than is None else older_than
        return Recovery(self.settings, self.store).recover_job(job_id, older_than=limit)
