"""One LLM request as the tasks see it, built once from the task's arguments, and
the deployment that serves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budget import InvalidRequest
from settings import DeploymentSettings, Settings
from tasks.errors import UnknownModel
from tasks.jobstore import ADHOC_JOB
from tasks.provider import check_body


@dataclass(frozen=True)
class LLMRequest:
    """What the caller asked for; the same on every delivery of one message."""

    #: The /v1/chat/completions or /v1/embeddings request body.
    body: dict[str, Any]
    #: "chat" or "embeddings".
    endpoint: str
    #: The caller's id for the request (the task id when none was given).
    custom_id: str
    #: The job it belongs to (ADHOC_JOB for `.delay()` without one).
    job: str
    #: The deployment asked for by name, if any.
    deployment: str | None
    #: Free-form tag that usage and cost are counted under.
    tenant: str | None

    @classmethod
    def from_task(
        cls,
        body: Any,
        *,
        endpoint: str,
        custom_id: str | None,
        job_id: str | None,
        deployment: str | None,
        tenant: str | None,
        task_id: str,
    ) -> LLMRequest:
        return cls(
            body=body,
            endpoint=endpoint,
            custom_id=custom_id or task_id,
            job=job_id or ADHOC_JOB,
            deployment=deployment,
            tenant=tenant,
        )


def route(settings: Settings, body: Any, deployment: str | None) -> DeploymentSettings:
    """The deployment that serves `body`: the one named, else the one whose `model` or
    `name` is the body's model, else (no model in the body) the first.

    A body whose model no deployment serves is refused: charging one deployment's
    budget while the provider bills another model's quota would break both. So is a
    body with SDK call options among its keys (`provider.check_body`): submit, publish
    and the worker (before the gate) all route, so all refuse it.
    """
    if not isinstance(body, dict):
        raise InvalidRequest(f"body must be a JSON object, got {type(body).__name__}")
    check_body(body)
    model = body.get("model")
    if deployment:
        dep = settings.deployment(deployment)
        if model and model not in (dep.model, dep.name):
            raise UnknownModel(
                f"the body asks for model {model!r} but deployment {dep.name!r} serves "
                f"{dep.model!r}: set the body's model to {dep.model!r} or pick another deployment"
            )
        return dep
    if not model:
        return settings.deployments[0]
    for dep in settings.deployments:
        if model in (dep.model, dep.name):
            return dep
    served = ", ".join(f"{d.model!r} (deployment {d.name!r})" for d in settings.deployments)
    raise UnknownModel(
        f"no deployment serves model {model!r}; configured: {served}. Set the body's "
        "model to one of them, or add a deployment for it"
    )
