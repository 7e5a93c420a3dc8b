"""``vocabulary_diversity``: the Worker's numbers, worked out by hand.

The Worker, for every choice with truthy ``message.content``:
  unique |= set(content.toLowerCase().split(/\\s+/))     (one set for all choices, "" included)
  total  += content.split(" ").length                    (single spaces, case kept)
and scores 0 if total is 0, else Math.round(unique / total * 100).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorers import Context
from scorers.builtin.vocabulary import _JS_WHITESPACE, js_round, js_words, vocabulary_diversity


def openai(*contents: Any) -> Context:
    choices = [{"message": {"role": "assistant", "content": c}} for c in contents]
    return Context.from_payload({"request_id": "r", "response_body": {"choices": choices}})


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        # [the, cat, saw, the, dog]: 4 unique; split(" ") gives 5 -> 4/5 = 80
        (("the cat saw the dog",), 80),
        # /\s+/ splits the newline: [one, two, three] = 3 unique;
        # split(" ") gives ["one", "two\nthree"] = 2 -> 3/2 = 150
        (("one two\nthree",), 150),
        # double space: /\s+/ gives [a, b] = 2; split(" ") gives ["a", "", "b"] = 3 -> 66.67 -> 67
        (("a  b",), 67),
        # non-breaking space is \s in JS: [a, b, c] = 3; split(" ") gives ["a\u00a0b", "c"] = 2
        # -> 150
        (("a\u00a0b c",), 150),
        # leading and trailing spaces: " hello hello " / \s+ -> ["", hello, hello, ""]: {"", hello}
        # = 2 unique; split(" ") -> ["", "Hello", "hello", ""] = 4 -> 50
        ((" Hello hello ",), 50),
        # case: {go} = 1 unique of 3 -> 33.33 -> 33
        (("Go go GO",), 33),
        # a tab: [x, y] = 2; split(" ") = ["x\ty"] = 1 -> 200
        (("x\ty",), 200),
        # Math.round rounds halves up: 1 unique of 8 words = 12.5 -> 13 (Python's round gives 12)
        (("a a a a a a a a",), 13),
        # several choices share one set: {red, fish, blue} = 3; totals 2 + 2 = 4 -> 75;
        # the empty choice is skipped (not truthy)
        (("Red fish", "blue fish", ""), 75),
        # \x1c is whitespace to Python's str.split() but not to JS's \s:
        # ["a\x1cb"] = 1 unique of 1 -> 100
        (("a\x1cb",), 100),
        # U+FEFF is \s in JS but not Python whitespace: [a, b] = 2 of 1 -> 200
        (("a\ufeffb",), 200),
        # only whitespace: "   " / \s+ -> ["", ""] = {""} = 1; split(" ") = 4 -> 25
        (("   ",), 25),
    ],
)
def test_worker_parity(contents: tuple[str, ...], expected: int) -> None:
    assert vocabulary_diversity(openai(*contents)) == expected


@pytest.mark.parametrize("content", ["", None])
def test_empty_content_scores_zero_like_the_worker(content: str | None) -> None:
    # No truthy content: total is 0, and the Worker scores 0.
    assert vocabulary_diversity(openai(content)) == 0
    assert vocabulary_diversity(openai()) == 0  # "choices": []


def test_non_openai_body_uses_the_extracted_text_as_one_choice() -> None:
    # Anthropic "Hi  there": /\s+/ -> [hi, there] = 2; split(" ") -> ["Hi", "", "there"] = 3
    # -> 66.67 -> 67
    body = {"content": [{"type": "text", "text": "Hi  there"}]}
    assert vocabulary_diversity(Context.from_payload({"response_body": body})) == 67


def test_no_text_and_not_openai_is_skipped() -> None:
    # The Worker throws (500) here; we skip rather than invent a 0.
    assert vocabulary_diversity(Context.from_payload({"response_body": {}})) is None
    assert vocabulary_diversity(Context.from_payload({})) is None


def test_js_round() -> None:
    assert [js_round(x) for x in (12.5, 13.5, -0.5, 2.4999, 66.666)] == [13, 14, 0, 2, 67]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \t\n\u00a0\x1c\x85\ufeff\u2028\u3000Xy"), max_size=30))
def test_fast_split_matches_the_js_regex(text: str) -> None:
    lower = text.lower()
    assert js_words(lower) == set(_JS_WHITESPACE.split(lower))
