"""The LLM tasks. Thin: decode arguments, hand over to the budget-checking base.

Declared with `shared_task` so `tasks` never imports `pipeline`; the app created
there binds them. Names are stable: `quotaflow.complete`, `quotaflow.embed`.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tasks.base import BudgetedTask
from tasks.errors import PermanentFailure
from tasks.hidden import QuietRequest, hide_results_from_log

#: A dead letter is an expected end: the worker logs it as one line (the warning from
#: the dead-letter path), with no "raised unexpected" traceback; `.get()` still raises.
_EXPECTED = (PermanentFailure,)
# Responses stay out of task events, Flower and the worker log (tasks.hidden).
hide_results_from_log()


@shared_task(
    bind=True,
    base=BudgetedTask,
    name="quotaflow.complete",
    throws=_EXPECTED,
    Request=QuietRequest,
)
def complete(
    self: BudgetedTask,
    body: dict[str, Any],
    *,
    custom_id: str | None = None,
    job_id: str | None = None,
    deployment: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """One chat completion. `body` is a /v1/chat/completions request body.

    Returns the response body; the Batch-format line is stored on the job.
    """
    return self.execute(
        body, endpoint="chat", custom_id=custom_id, job_id=job_id,
        deployment=deployment, tenant=tenant,
    )  # fmt: skip


@shared_task(
    bind=True,
    base=BudgetedTask,
    name="quotaflow.embed",
    throws=_EXPECTED,
    Request=QuietRequest,
)
def embed(
    self: BudgetedTask,
    body: dict[str, Any],
    *,
    custom_id: str | None = None,
    job_id: str | None = None,
    deployment: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """One embeddings call. `body` is a /v1/embeddings request body."""
    return self.execute(
        body, endpoint="embeddings", custom_id=custom_id, job_id=job_id,
        deployment=deployment, tenant=tenant,
    )  # fmt: skip


#: Task for each endpoint path of the OpenAI Batch input format.
TASK_FOR_URL = {"/v1/chat/completions": complete, "/v1/embeddings": embed}
