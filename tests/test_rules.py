"""The rule parsers and the sliding window, as pure functions."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from scorers import Context
from webhook.limit import SlidingWindow
from webhook.rules import RuleError, ScorerRule, load_scorer_rules, parse_feedback_rule


@pytest.mark.parametrize(
    ("rule", "scores", "rating"),
    [
        ("vocabulary_diversity>=50", {"vocabulary_diversity": 50}, True),
        ("vocabulary_diversity>=50", {"vocabulary_diversity": 49}, False),
        ("refusal==0 and word_count>=20", {"refusal": 0, "word_count": 20}, True),
        ("refusal==0 and word_count>=20", {"refusal": 1, "word_count": 99}, False),
        ("refusal == 1 or word_count < 5", {"refusal": 0, "word_count": 3}, True),
        ("not (a > 1)", {"a": 1}, True),
        ("0 <= a <= 10", {"a": 11}, False),
        ("a != -3", {"a": -3}, False),
        ("a == True", {"a": 1}, True),
        # A missing score gives no rating, unless the rest decides it anyway.
        ("missing >= 1", {"a": 1}, None),
        ("missing >= 1 and a == 0", {"a": 1}, False),
        ("missing >= 1 or a == 1", {"a": 1}, True),
        ("not missing > 1", {}, None),
    ],
)
def test_feedback_rule_ratings(rule: str, scores: dict[str, int], rating: bool | None) -> None:
    assert parse_feedback_rule(rule).rating(scores) is rating


@pytest.mark.parametrize(
    "rule",
    [
        "a = 5",
        "a >= ",
        "__import__('os').system('id')",
        "a.b > 1",
        "a > 1.5",
        "a > 'x'",
        "a in [1]",
        "a + 1 > 2",
        "a",
        "lambda: 1",
        "a is 1",
    ],
)
def test_feedback_rule_refuses_anything_else(rule: str) -> None:
    with pytest.raises(RuleError):
        parse_feedback_rule(rule)


def test_feedback_rule_names() -> None:
    assert parse_feedback_rule("a > 1 and (b < 2 or not c == 3)").names == {"a", "b", "c"}


def ctx(model: str = "gpt-4o", provider: str = "OPENAI", user: str | None = "u1") -> Context:
    payload = {"request_id": str(uuid.uuid4()), "model": model, "provider": provider}
    if user is not None:
        payload["user_id"] = user
    return Context.from_payload(payload)


def test_scorer_rule_filters() -> None:
    rule = ScorerRule(models=("gpt-4o*",), providers=("OPENAI",), users=("u*",))
    assert rule.applies("judge", ctx())
    assert not rule.applies("judge", ctx(model="gpt-3.5-turbo"))
    assert rule.applies("judge", ctx(provider="openai"))  # providers are case-insensitive
    assert not rule.applies("judge", ctx(provider="ANTHROPIC"))
    assert not rule.applies("judge", ctx(user=None))


def test_sampling_is_stable_and_proportional() -> None:
    rule = ScorerRule(sample=0.1)
    contexts = [ctx() for _ in range(4000)]
    chosen = [c for c in contexts if rule.applies("judge", c)]
    assert 300 < len(chosen) < 500
    assert all(rule.applies("judge", c) for c in chosen)  # the same answer every time
    assert not any(ScorerRule(sample=0).applies("judge", c) for c in contexts)


def test_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[judge]\nsample = 0.25\nproviders = ["openai"]\n')
    assert load_scorer_rules(path, ["judge"]) == {
        "judge": ScorerRule(sample=0.25, providers=("OPENAI",))
    }
    for bad, message in [
        ("[nope]\n", "unknown scorer; known: judge"),
        ("[judge]\nsample = 2\n", "sample must be a number from 0 to 1"),
        ("[judge]\nmodels = 'gpt'\n", "models must be a list of strings"),
        ("[judge]\nsampel = 0.5\n", "unknown key(s) sampel"),
        ("[judge\n", "rules.toml"),
    ]:
        path.write_text(bad)
        with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_scorer_rules(path, ["judge"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_counts_each_call_until_a_window_after_it_ended() -> None:
    clock = Clock()
    window = SlidingWindow(2, 60.0, clock)
    clock.now = 1006
    window.seed([1005])  # a call that ended at 1005
    window.hold()  # and one in flight, holding its place until it ends
    assert window.free() == 0
    assert window.wait_time() == pytest.approx(59.0)  # the first frees its place at 1065
    clock.now = 1005 + 59.9
    assert window.free() == 0
    clock.now = 1005 + 60
    assert window.free() == 1
    window.pause(30)
    assert (window.free(), window.wait_time()) == (0, 30)


def test_sliding_window_full_of_calls_in_flight_waits_for_one_to_end() -> None:
    window = SlidingWindow(1, 60.0, Clock())
    window.hold()
    assert (window.free(), window.wait_time()) == (0, 1.0)  # each end wakes the waiters


def test_sliding_window_seeded_from_earlier_calls() -> None:
    clock = Clock()
    window = SlidingWindow(3, 60.0, clock)
    window.seed([clock.now - 70, clock.now - 30, clock.now - 10])  # the first is too old
    assert window.free() == 1
    window.seed([clock.now - 1])
    assert window.free() == 0
    assert window.wait_time() == pytest.approx(30.0)
