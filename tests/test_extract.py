"""Text extraction: a fixture for every body shape in helicone-facts.md, and never raising."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorers import Context
from scorers.extract import (
    assistant_texts,
    decode_body,
    finish_reasons,
    is_too_large,
    last_user_text,
    refused,
    sse_events,
)
from tests import FIXTURES

# fixture -> (assistant texts, one per choice; last user message)
EXPECTED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "openai_chat": (("The capital of France is Paris.",), "What is the capital of France?"),
    "openai_tool_call": ((), "Weather in Paris?"),  # content null: tool calls only
    "openai_content_parts": (("A cat on a mat.",), "Describe this image."),  # refusal part skipped
    "openai_legacy_completion": ((" there was a small village.",), "Once upon a time"),
    "openai_streamed": (("One, two, three.",), "Count to three."),  # Helicone's rebuilt message
    "openai_streamed_no_message": (("Hi!", "Hello there!"), "Say hi."),  # from streamed_data
    "openai_multiple_choices": (("Blue.", "Deep blue."), "A color?"),  # the empty one skipped
    "responses_api": (("Seven is prime.",), "Name a prime."),  # reasoning item skipped
    "anthropic_messages": (("Yes, 17 is prime. It has no other divisors.",), "Is 17 prime?"),
    "anthropic_streamed": (("Bonjour le monde.",), "Say hello in French."),
    "anthropic_streamed_not_rebuilt": (("Bonjour le monde.",), "Say hello in French."),  # SSE
    "anthropic_streamed_data_only": (("Bonjour le monde.",), None),
    "gemini": (("Rayleigh scattering favours short wavelengths.",), "Why is the sky blue?"),
    "gemini_list": (("Red and green.",), "Two colors?"),  # thought part skipped
    "json_string_bodies": (
        ("Hey! Not much, just here to help you out. What's up with you?",),
        "test message",
    ),
    "too_large": ((), None),  # until fetched: see test_fetch.py
    "error_empty": ((), "Hi"),
    "error_helicone": ((), "Hi"),
    "error_html": ((), "Hi"),
    "minimal": (("Hello.",), "Hi"),
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return data


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_texts(name: str) -> None:
    texts, question = EXPECTED[name]
    ctx = Context.from_payload(load(name))
    assert ctx.texts == texts
    assert ctx.text == ("\n".join(texts) if texts else None)
    assert ctx.request_text == question


def test_context_fields() -> None:
    ctx = Context.from_payload(load("anthropic_messages"))
    assert (ctx.model, ctx.provider, ctx.user_id) == ("claude-sonnet-4-5", "ANTHROPIC", None)
    assert ctx.metadata["latencyMs"] == 1530
    assert ctx.request_id == "0b0e5d3a-1f8e-4c7a-9f51-000000000009"
    assert isinstance(ctx.response_body, dict)
    assert ctx.payload["provider"] == "ANTHROPIC"


def test_json_string_bodies_are_decoded() -> None:
    payload = load("json_string_bodies")
    assert isinstance(payload["response_body"], str)
    ctx = Context.from_payload(payload)
    assert isinstance(ctx.request_body, dict)
    assert isinstance(ctx.response_body, dict)
    assert decode_body('  {"a": 1}') == {"a": 1}
    assert decode_body("[1, 2") == "[1, 2"  # broken JSON stays a string
    assert decode_body("plain text") == "plain text"


def test_too_large_marker() -> None:
    payload = load("too_large")
    assert is_too_large(payload["response_body"])
    assert not is_too_large({"choices": []})
    assert not is_too_large("Body is fine")


def test_sse_parsing_skips_non_data_lines_and_junk() -> None:
    raw = 'event: ping\ndata: {"a": 1}\n\ndata: [DONE]\ndata: {broken\n: comment\ndata:{"b":2}\n'
    assert sse_events(raw) == [{"a": 1}, {"b": 2}]


def test_raw_sse_string_as_the_whole_body() -> None:
    chunks = [{"choices": [{"index": 0, "delta": {"content": c}}]} for c in ("Hel", "lo")]
    raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    assert list(assistant_texts(raw)) == ["Hello"]


def test_gemini_candidates_are_choices() -> None:
    body = {
        "candidates": [
            {"index": 1, "content": {"parts": [{"text": "second"}]}},
            {"index": 0, "content": {"parts": [{"text": "first"}]}},
        ]
    }
    assert list(assistant_texts(body)) == ["first", "second"]


def test_request_side_shapes() -> None:
    assert last_user_text({"prompt": ["a", "b"]}) == "b"
    assert last_user_text({"input": "plain"}) == "plain"
    assert last_user_text({"messages": [{"role": "user", "content": [{"type": "image"}]}]}) is None
    two = {"messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "2nd"}]}
    assert last_user_text(two) == "2nd"
    assert last_user_text("nope") is None


def test_finish_reasons_and_refusals() -> None:
    assert finish_reasons(load("openai_legacy_completion")["response_body"]) == ["length"]
    assert finish_reasons(load("anthropic_streamed")["response_body"]) == ["max_tokens"]
    assert finish_reasons(load("gemini_list")["response_body"]) == ["MAX_TOKENS"]
    assert finish_reasons({}) == []
    assert refused({"choices": [{"message": {"content": None, "refusal": "I can't."}}]})
    assert refused({"stop_reason": "refusal", "content": []})
    assert not refused(load("openai_chat")["response_body"])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "content",
                    "text",
                    "type",
                    "delta",
                    "candidates",
                    "parts",
                    "thought",
                    "streamed_data",
                    "output",
                    "completion",
                    "index",
                    "messages",
                    "role",
                    "request_body",
                    "response_body",
                    "metadata",
                    "prompt",
                    "contents",
                    "input",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_extraction_never_raises(value: Any) -> None:
    for text in assistant_texts(value):
        assert isinstance(text, str)
        assert text
    assert last_user_text(value) is None or isinstance(last_user_text(value), str)
    assert all(isinstance(r, str) for r in finish_reasons(value))
    assert isinstance(refused(value), bool)
    decode_body(value)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_context_never_raises(payload: Any, body: Any) -> None:
    for candidate in (payload, {"request_body": body, "response_body": payload}):
        ctx = Context.from_payload(candidate)
        assert ctx.text is None or ctx.text == "\n".join(ctx.texts)
        assert isinstance(ctx.tokens, list)


def test_deeply_nested_lists_do_not_recurse_forever() -> None:
    body: Any = [{"content": "x"}]
    for _ in range(5000):
        body = [body]
    assert list(assistant_texts(body)) == []
