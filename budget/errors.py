"""The errors of the budget package: one small tree."""

from __future__ import annotations


class QuotaflowError(Exception):
    """Base of every error quotaflow raises on purpose."""


class BudgetError(QuotaflowError):
    """The gate could not give an answer or the answer is final."""


class BudgetUnavailable(BudgetError):
    """Redis could not be reached. The gate fails closed: nothing is admitted."""


class BudgetStoreError(BudgetError):
    """Redis answered, with an error that waiting will not cure (a script error, OOM).

    Not an outage: it is reported loudly, with Redis's own message.
    """


class NeverAdmissible(BudgetError):
    """The request costs more than the deployment can ever admit at once."""

    def __init__(
        self,
        *,
        deployment: str,
        dimension: str,
        requested: float,
        capacity: float,
        hint: str = "tpm/rpm x burst_seconds/60; lower max_tokens or the prompt, or raise "
        "burst_seconds",
    ):
        self.deployment = deployment
        self.dimension = dimension
        self.requested = requested
        self.capacity = capacity
        super().__init__(
            f"request needs {requested:g} {dimension} but deployment {deployment!r} admits at "
            f"most {capacity:g} {dimension} at once ({hint})"
        )


class InvalidRequest(QuotaflowError):
    """A request body that cannot be sent as it is; the message says what to fix."""


class ContextTooLong(InvalidRequest):
    """The prompt plus the output limit exceed the model's context window."""

    def __init__(self, *, prompt_tokens: int, output_tokens: int, context_window: int):
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.context_window = context_window
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({output_tokens}) exceeds the "
            f"context window ({context_window} tokens); shorten the prompt or lower max_tokens"
        )
