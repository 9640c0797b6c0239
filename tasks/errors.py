"""The errors of the tasks package.

Provider errors are converted once, at the SDK boundary (`provider.py`). Each class
takes a single message argument so that Celery can rebuild it from a JSON result.
"""

from __future__ import annotations

from budget.errors import InvalidRequest, QuotaflowError


class ProviderError(QuotaflowError):
    """The provider did not return a usable answer."""

    status: int | None = None
    code: str = "provider_error"


class TransientProviderError(ProviderError):
    """Worth retrying later: 429, 5xx, timeouts, dropped connections."""

    retry_after: float | None = None


class PermanentProviderError(ProviderError):
    """Retrying cannot help: bad request, auth, unknown model, content filter."""


class PermanentFailure(QuotaflowError):
    """The request was dead-lettered; the message says why and what to do."""


class Cancelled(PermanentFailure):
    """The request's job was cancelled before this message was sent to the provider."""


class Deferred(QuotaflowError):
    """Not an error: the budget postponed the call (shown as the retry reason)."""


class NotConfigured(QuotaflowError):
    """The tasks were run before quotaflow's settings were installed."""


class UnknownModel(InvalidRequest):
    """The body's model is served by no configured deployment (or not by the one named)."""

    code = "model_not_configured"
