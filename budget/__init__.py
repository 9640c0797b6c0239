"""The token gate: a shared, atomic budget per deployment in Redis.

    gate = Gate(redis_client, settings.deployments, key_prefix="quotaflow")
    decision = gate.reserve("gpt-4o", tokens=1200)
    if decision.outcome is Outcome.GRANTED: call the model, then gate.settle(...)

`budget` knows nothing of Celery; callers turn decisions into retries.
"""

from budget.decisions import (
    Admission,
    BudgetSnapshot,
    Decision,
    Outcome,
    Redemption,
    Reservation,
)
from budget.errors import (
    BudgetError,
    BudgetStoreError,
    BudgetUnavailable,
    ContextTooLong,
    InvalidRequest,
    NeverAdmissible,
    QuotaflowError,
)
from budget.estimate import Estimate, encoding_for_model, estimate_request
from budget.gate import Gate

__all__ = [
    "Admission",
    "BudgetError",
    "BudgetSnapshot",
    "BudgetStoreError",
    "BudgetUnavailable",
    "ContextTooLong",
    "Decision",
    "Estimate",
    "Gate",
    "InvalidRequest",
    "NeverAdmissible",
    "Outcome",
    "QuotaflowError",
    "Redemption",
    "Reservation",
    "encoding_for_model",
    "estimate_request",
]
