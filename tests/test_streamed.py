"""Streams Helicone did not rebuild still give ``truncated`` and ``completion_tokens``: their
chunks carry the finish reason and the usage."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from scorers.extract import stream_finish_reasons, stream_usage
from tests import FIXTURES
from tests.cli import run


@pytest.mark.parametrize(
    ("fixture", "truncated", "tokens"),
    [
        # OpenAI chunks: index 0 ends with "stop", index 1 never says; the last chunk has usage.
        ("openai_streamed_no_message", 0, 4),
        # Anthropic SSE: message_delta says max_tokens, with the cumulative output_tokens 12
        # (message_start's 1 is only the count so far).
        ("anthropic_streamed_not_rebuilt", 1, 12),
    ],
)
def test_streamed_bodies_score_truncated_and_completion_tokens(
    tmp_path: Path, fixture: str, truncated: int, tokens: int
) -> None:
    result = run(tmp_path, {}, "score", str(FIXTURES / f"{fixture}.json"), "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    scores = orjson.loads(result.stdout)["scores"]
    assert scores["truncated"] == truncated
    assert scores["completion_tokens"] == tokens


def test_the_last_finish_reason_per_choice_and_the_last_usage_count() -> None:
    events = [
        {
            "choices": [
                {"index": 0, "delta": {"content": "a"}},
                {"index": 1, "finish_reason": "stop"},
            ]
        },
        {"choices": [{"index": 0, "finish_reason": "length"}]},
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 3}},
        {"choices": [], "usage": {"completion_tokens": 7}},
        "junk",
    ]
    assert sorted(stream_finish_reasons(events)) == ["length", "stop"]
    assert stream_usage(events) == {"completion_tokens": 7}
