"""The built-in scorers: what each one says on known answers, and its range on any input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorers import Context, Scorer, available
from scorers.builtin.readability import mattr
from scorers.builtin.safety import luhn_ok
from scorers.run import INT64_MAX, INT64_MIN

REGISTRY = available()
BUILTINS = {n: s for n, s in REGISTRY.items() if s.plugin is None}
EXPECTED_NAMES = {
    "vocabulary_diversity", "word_count", "has_citations", "has_code_examples",
    "starts_with_greeting", "exceeds_min_length", "contains_markdown", "readability",
    "lexical_diversity", "query_overlap", "refusal", "pii_detected", "valid_json", "truncated",
    "latency_ms", "cost_micro_usd", "completion_tokens", "judge",
}  # fmt: skip


def ctx(
    text: str | None = None,
    question: str | None = None,
    *,
    request: dict[str, Any] | None = None,
    response: Any = None,
    metadata: Any = None,
) -> Context:
    payload: dict[str, Any] = {"request_id": "r"}
    if response is None and text is not None:
        response = {"choices": [{"message": {"role": "assistant", "content": text}}]}
    if response is not None:
        payload["response_body"] = response
    if request is None and question is not None:
        request = {"messages": [{"role": "user", "content": question}]}
    if request is not None:
        payload["request_body"] = request
    if metadata is not None:
        payload["metadata"] = metadata
    return Context.from_payload(payload)


def score(name: str, context: Context) -> Any:
    return BUILTINS[name].func(context)


def test_all_builtins_are_registered_with_a_scale() -> None:
    assert set(BUILTINS) == EXPECTED_NAMES
    for s in BUILTINS.values():
        assert s.description, s.name
        assert s.bounds[0] is not None, s.name  # every built-in documents its lower bound
    on = {s.name for s in REGISTRY.values() if s.default and not s.problem}
    assert on == EXPECTED_NAMES - {"judge"}  # all on by default except the judge


def test_nothing_to_score_gives_no_scores() -> None:
    empty = Context.from_payload({"request_id": "r"})
    assert {n: score(n, empty) for n in BUILTINS} == dict.fromkeys(BUILTINS)


def test_seed_quality_checks() -> None:
    text = (
        "Hello! Here is the answer [1], per Smith (2023).\n\n```python\nprint('x')\n```\n"
        "See **this** and more words to pass one hundred characters in total, surely."
    )
    c = ctx(text)
    assert score("word_count", c) == len(text.split())
    assert score("has_citations", c) is True
    assert score("has_code_examples", c) is True
    assert score("starts_with_greeting", c) is True
    assert score("exceeds_min_length", c) is True
    assert score("contains_markdown", c) is True
    plain = ctx("History shows snake_case_names like #1 are not markdown.")
    assert score("starts_with_greeting", plain) is False  # the docs' regex says True
    assert score("contains_markdown", plain) is False  # the docs' regex says True
    assert score("has_citations", plain) is False
    assert score("exceeds_min_length", plain) is False
    assert score("word_count", ctx("a\nb  c")) == 3  # the docs' split(" ") says 3 too, by luck
    assert score("word_count", ctx("one\ntwo")) == 2  # split(" ") would say 1
    assert score("contains_markdown", ctx("Steps:\n1. mix\n2. bake")) is True
    assert score("contains_markdown", ctx("## Title\ntext")) is True
    assert score("has_citations", ctx("as shown[^2]")) is True
    assert score("starts_with_greeting", ctx("  **Hey** you")) is True
    assert score("exceeds_min_length", ctx("x" * 100)) is False
    assert score("exceeds_min_length", ctx("x" * 101)) is True


def test_readability() -> None:
    easy = ctx("The cat sat on the mat. The dog ran to the cat. It was fun.")
    hard = ctx(
        "Notwithstanding considerable institutional heterogeneity, comparative "
        "constitutional jurisprudence demonstrates remarkable interpretive convergence "
        "regarding fundamental procedural guarantees."
    )
    assert score("readability", easy) == 100  # 206.8 - 1.015*14/3 - 84.6*14/14, clamped
    assert score("readability", hard) == 0  # long words, one long sentence: clamped at 0
    # "Reading is fun." 3 words, 1 sentence, 4 syllables (read-ing is fun):
    # 206.835 - 1.015*3 - 84.6*4/3 = 91.0
    assert score("readability", ctx("Reading is fun.")) == 91
    assert score("readability", ctx("123 456")) is None  # no words


def test_mattr_is_the_moving_average() -> None:
    tokens = [w.encode() for w in ("a b c a b d e a f g h b " * 20).split()]

    def reference(window: int) -> float:
        n = len(tokens)
        spans = [len(set(tokens[s : s + window])) for s in range(n - window + 1)]
        return sum(spans) / (len(spans) * window)

    for window in (1, 2, 5, 50, 239, 240):
        assert mattr(tokens, window) == pytest.approx(reference(window))
    assert mattr([], 50) == 0.0
    assert mattr([b"x", b"y", b"x"], 50) == pytest.approx(2 / 3)


def test_lexical_diversity() -> None:
    assert score("lexical_diversity", ctx("one two three four")) == 100
    assert score("lexical_diversity", ctx("same same same same")) == 25
    assert score("lexical_diversity", ctx("... !!!")) is None


def test_query_overlap() -> None:
    c = ctx("Paris is the capital of France.", "What is the capital of France?")
    assert score("query_overlap", c) == 100  # {capital, france} both used
    c = ctx("Bananas are yellow.", "What is the capital of France?")
    assert score("query_overlap", c) == 0
    assert score("query_overlap", ctx("Anything.", "What is it?")) is None  # only stopwords
    assert score("query_overlap", ctx("Anything.")) is None  # no question


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I\u2019m sorry, I cannot assist with this request.",
        "I cannot provide instructions for that.",
        "As an AI language model, I cannot do that.",
        "Sorry — I won't be able to... actually, I won't help with that.",
    ],
)
def test_refusal_phrases(text: str) -> None:
    assert score("refusal", ctx(text)) is True


def test_refusal_negatives_and_flags() -> None:
    assert score("refusal", ctx("Sure! Here is how to bake bread.")) is False
    assert score("refusal", ctx("I can help with that. Sorry for the wait.")) is False
    flagged = {"choices": [{"message": {"content": None, "refusal": "I can't do that."}}]}
    assert score("refusal", ctx(response=flagged)) is True
    assert score("refusal", ctx(response={"stop_reason": "refusal", "content": []})) is True


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Write to jane.doe+news@example.co.uk today.", True),
        ("Call (415) 555-2671 or 415.555.2671.", True),
        ("International: +44 20 7946 0958.", True),
        ("Card 4111 1111 1111 1111 expires soon.", True),  # a Luhn-valid test number
        ("Card 4111 1111 1111 1112 is mistyped.", False),  # fails Luhn
        ("In 2023-10-12 we sold 1,234,567 units at v1.2.3.", False),
        ("Use x@y for a handle, or @someone.", False),
        ("Pi is 3.14159265358979.", False),
    ],
)
def test_pii_detected(text: str, found: bool) -> None:
    assert score("pii_detected", ctx(text)) is found


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")


def test_valid_json_only_when_asked() -> None:
    asked = {"messages": [{"role": "user", "content": "Give JSON"}]}
    assert score("valid_json", ctx('{"a": 1}', request=asked)) is None  # not asked for JSON
    obj = asked | {"response_format": {"type": "json_object"}}
    assert score("valid_json", ctx('{"a": 1}', request=obj)) is True
    assert score("valid_json", ctx("[1, 2]", request=obj)) is False  # json mode means an object
    assert score("valid_json", ctx("```json\n{}\n```", request=obj)) is False
    schema = asked | {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "required": ["name"]}},
        }
    }
    assert score("valid_json", ctx('{"name": "A"}', request=schema)) is True
    assert score("valid_json", ctx('{"other": 1}', request=schema)) is False
    gemini = {"contents": [], "generationConfig": {"responseMimeType": "application/json"}}
    assert score("valid_json", ctx("[1, 2]", request=gemini)) is True
    tool_call: dict[str, Any] = {"choices": [{"message": {"content": None, "tool_calls": []}}]}
    assert score("valid_json", ctx(request=obj, response=tool_call)) is None


def test_truncated() -> None:
    cut = {"choices": [{"message": {"content": "Once"}, "finish_reason": "length"}]}
    assert score("truncated", ctx(response=cut)) is True
    done = {"choices": [{"message": {"content": "Done."}, "finish_reason": "stop"}]}
    assert score("truncated", ctx(response=done)) is False
    assert score("truncated", ctx("no finish reason")) is None


def test_metadata_scores() -> None:
    meta = {"cost": 0.00020250000000000002, "latencyMs": 930.4, "completionTokens": 17}
    c = ctx("hi", metadata=meta)
    assert (score("latency_ms", c), score("cost_micro_usd", c)) == (930, 203)
    assert score("completion_tokens", c) == 17
    zero = ctx(
        response={"usage": {"output_tokens": 30}, "content": []}, metadata={"completionTokens": 0}
    )
    assert score("completion_tokens", zero) == 30  # 0 is Helicone's "could not count"
    assert score("completion_tokens", ctx(metadata={"completionTokens": 0})) == 0
    bad = ctx(metadata={"cost": -1, "latencyMs": "fast", "completionTokens": True})
    assert [score(n, bad) for n in ("cost_micro_usd", "latency_ms", "completion_tokens")] == [
        None,
        None,
        None,
    ]
    assert score("latency_ms", ctx(metadata={"latencyMs": 1e300})) is None  # not an Int64


# -- every scorer, on anything: never raises, ints within the documented range ----------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
texts = st.text(max_size=400) | st.sampled_from(
    ["", " ", "I'm sorry, but I can't help.", "{}", "[1]", "```x```", "a\x1cb", "4111111111111111"]
)
numbers = st.integers() | st.floats() | st.booleans() | st.text(max_size=5) | st.none()


def _sse(text: str) -> str:
    event = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}
    return f"data: {json.dumps(event)}\n\n"


responses = st.one_of(
    json_values,
    st.lists(texts, max_size=3).map(
        lambda ts: {"choices": [{"message": {"content": t}, "finish_reason": "length"} for t in ts]}
    ),
    texts.map(lambda t: {"content": [{"type": "text", "text": t}], "stop_reason": "max_tokens"}),
    texts.map(lambda t: {"candidates": [{"content": {"parts": [{"text": t}]}}]}),
    texts.map(lambda t: {"streamed_data": _sse(t)}),
    texts.map(lambda t: json.dumps({"choices": [{"text": t}]})),
)
requests = st.one_of(
    json_values,
    texts.map(
        lambda t: {
            "messages": [{"role": "user", "content": t}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"required": [t]}},
            },
        }
    ),
)
metadata = json_values | st.fixed_dictionaries(
    {}, optional={"cost": numbers, "latencyMs": numbers, "completionTokens": numbers}
)
payloads = st.fixed_dictionaries(
    {"request_id": st.text(max_size=8)},
    optional={
        "request_body": requests,
        "response_body": responses,
        "metadata": metadata,
        "model": json_values,
        "provider": json_values,
        "user_id": json_values,
    },
)


def _check(s: Scorer, result: Any) -> None:
    if result is None:
        return
    items = result.items() if isinstance(result, Mapping) else [(s.name, result)]
    low, high = s.bounds
    for key, value in items:
        assert isinstance(key, str)
        assert isinstance(value, int), (s.name, key, value)  # bool is an int
        assert INT64_MIN <= value <= INT64_MAX
        assert low is None or value >= low, (s.name, value)
        assert high is None or value <= high, (s.name, value)


@settings(max_examples=600, deadline=None)
@given(payloads)
def test_every_scorer_never_raises_and_stays_in_range(payload: dict[str, Any]) -> None:
    c = Context.from_payload(payload)
    for s in BUILTINS.values():
        _check(s, s.func(c))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_every_scorer_survives_arbitrary_json(payload: Any) -> None:
    c = Context.from_payload(payload if isinstance(payload, dict) else {"response_body": payload})
    for s in BUILTINS.values():
        _check(s, s.func(c))
