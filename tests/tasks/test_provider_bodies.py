"""A request body is data: the SDK call options among its keys are refused and never
sent; what a provider says back in an error is kept, bounded. The real openai SDK over
HTTP to the simulator, which records the headers it was sent."""

from __future__ import annotations

from typing import Any

import pytest
from support.cluster import sim_deployment

from budget import InvalidRequest
from settings import DeploymentSettings
from simulator import Simulator
from tasks import provider
from tasks.errors import PermanentProviderError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
#: What a batch line would send to bill another org or project, or change api-version.
HEADERS = {
    "OpenAI-Organization": "org-someone-else",
    "OpenAI-Project": "proj-other",
    "X-Victim": "1",
}
CONTROL = {**CHAT, "extra_headers": HEADERS, "extra_query": {"api-version": "1999-01-01"}}


def deployment(sim: Simulator, name: str, **overrides: Any) -> DeploymentSettings:
    # A name per test: provider clients are kept per deployment name.
    return DeploymentSettings(**sim_deployment(sim, name=name, **overrides))


def sent_headers(sim: Simulator) -> list[dict[str, str]]:
    return [r["headers"] for r in sim.stats()["requests"]]


def test_edge_call_options_in_a_body_are_refused_and_never_sent(simulator) -> None:  # type: ignore[no-untyped-def]
    sim = simulator()
    dep = deployment(sim, "options")
    with pytest.raises(InvalidRequest, match=r"body keys 'extra_headers', 'extra_query' are not"):
        provider.call(dep, "chat", CONTROL)
    for key in ("extra_body", "timeout", "extra_anything"):
        with pytest.raises(InvalidRequest, match=f"body key '{key}' is not a request field"):
            provider.call(dep, "chat", {**CHAT, key: {"X-Victim": "1"}})
    embed = {"model": "gpt-4o-mini", "input": "hi", "extra_headers": HEADERS}
    with pytest.raises(InvalidRequest, match="'extra_headers'"):
        provider.call(dep, "embeddings", embed)
    assert sim.stats()["requests"] == []  # nothing reached the provider

    assert provider.call(dep, "chat", CHAT).status == 200
    (request,) = sim.stats()["requests"]
    assert request["path"] == "/v1/chat/completions"  # no api-version query
    assert request["headers"]["authorization"] == "***"  # recorded, masked
    assert not {"openai-organization", "openai-project", "x-victim"} & set(request["headers"])


def test_unknown_body_fields_still_travel_as_data(simulator) -> None:  # type: ignore[no-untyped-def]
    # A field the SDK does not name (a compatible server's own, or a newer API's) is
    # data: it goes in the JSON body, as before; only call options are refused.
    body = {**CHAT, "top_k": 5, "repetition_penalty": 1.1, "user": "u-1"}
    args = provider._split(body, "chat")
    assert args["extra_body"] == {"top_k": 5, "repetition_penalty": 1.1}
    assert args["user"] == "u-1" and args["messages"] == CHAT["messages"]
    assert "extra_headers" not in args and "extra_query" not in args
    sim = simulator()
    assert provider.call(deployment(sim, "data"), "chat", body).status == 200


def test_the_sdk_options_are_derived_from_its_signature() -> None:
    # What the installed SDK takes besides the request body is what is refused.
    assert {"extra_headers", "extra_query", "extra_body", "timeout"} <= set(
        provider._control_arguments()
    )
    assert {"messages", "model", "max_tokens", "tools", "user"} <= provider.request_fields("chat")
    assert {"input", "model", "dimensions"} <= provider.request_fields("embeddings")
    assert not provider._control_arguments() & (
        provider.request_fields("chat") | provider.request_fields("embeddings")
    )


def test_edge_provider_error_text_and_code_are_bounded(simulator) -> None:  # type: ignore[no-untyped-def]
    # A provider (or a proxy) can answer with any text and any code: the dead letter
    # keeps the reason, cut to MAX_ERROR_TEXT, and a code no longer than MAX_ERROR_CODE.
    model = "m" * 5_000  # the 404 echoes the model
    sim = simulator(fail_models=[model])
    with pytest.raises(PermanentProviderError) as refused:
        provider.call(deployment(sim, "long-model", model=model), "chat", {**CHAT, "model": model})
    text = str(refused.value)
    assert "provider rejected the request (404)" in text and "does not exist" not in text
    assert len(text) <= provider.MAX_ERROR_TEXT + 60 and "more characters)" in text
    code = "a" * 3_000
    body = {**CHAT, "messages": [{"role": "user", "content": f"[[status:400]] [[code:{code}]]"}]}
    with pytest.raises(PermanentProviderError) as coded:
        provider.call(deployment(sim, "long-code"), "chat", body)
    assert len(coded.value.code) <= provider.MAX_ERROR_CODE
    assert coded.value.code.startswith("aaaa")
