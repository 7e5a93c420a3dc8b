"""Pure pieces of the API commands: times, scores, sparklines, Helicone's shapes, payloads."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta, timezone

import pytest
import typer

from scorers import Context
from scorers.fetch import FetchError, _decode
from webhook.cli.api import parse_scores, parse_when
from webhook.logged import (
    MAX_SIGNED_BODY,
    PLACEHOLDER_KEY,
    RequestRow,
    created_filter,
    iso,
    real_body,
    to_payload,
)
from webhook.offline.evals import mean, series, sparkline, summarize
from webhook.offline.types import Eval

NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("12h", NOW - timedelta(hours=12)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2w", NOW - timedelta(weeks=2)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T10:00:00Z", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("2024-01-01T12:00:00+02:00", datetime(2024, 1, 1, 10, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7y", "last week", "2024-13-01"])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_when(text, NOW)


def test_iso_is_javascripts_to_iso_string() -> None:
    assert iso(datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2024-01-02T03:04:05.678Z"
    plus2 = timezone(timedelta(hours=2))
    assert iso(datetime(2024, 1, 2, 3, 0, tzinfo=plus2)) == "2024-01-02T01:00:00.000Z"
    assert iso(datetime(2024, 1, 2)) == "2024-01-02T00:00:00.000Z"  # naive is UTC


def test_parse_scores() -> None:
    assert parse_scores(["a=1", "b=-2", "c=true", "d=FALSE", " e = +3 "]) == {
        "a": 1,
        "b": -2,
        "c": True,
        "d": False,
        "e": 3,
    }
    assert parse_scores(["x=9223372036854775807"]) == {"x": 2**63 - 1}


@pytest.mark.parametrize("bad", ["a=1.0", "a=1.", "a=.5", "a=1e2", "a=0x1", "a=", "a", "=1"])
def test_parse_scores_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match=r"a score is an integer|expected name=value"):
        parse_scores([bad])


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, None, 5]) == "▄ ▄"  # flat: mid-height; a gap stays blank
    assert sparkline([None, None]) == "  "
    # Longer series are averaged into buckets, gaps ignored inside a bucket.
    assert sparkline([0, None, 0, 0, 10, 10, 10, None], width=2) == "▁█"
    assert len(sparkline(list(range(500)))) == 28


def test_eval_shapes_from_javascript() -> None:
    """An empty score: Infinity and NaN became null; counts may come as strings."""
    ev = Eval.model_validate(
        {
            "name": "s",
            "averageScore": None,
            "minScore": None,
            "maxScore": None,
            "count": "0",
            "overTime": [{"date": "2024-01-01T00:00:00.000Z", "count": "0"}],
            "averageOverTime": [{"date": "2024-01-01T00:00:00.000Z", "value": 0}],
        }
    )
    summary = summarize(ev)
    assert (summary.count, summary.mean, summary.min, summary.max) == (0, None, None, None)
    assert [p.value for p in summary.points] == [None]


def test_mean_is_weighted_by_counts_and_falls_back_to_average_score() -> None:
    ev = Eval.model_validate(
        {
            "name": "s",
            "averageScore": 1.0,
            "count": 4,
            "overTime": [{"date": "a", "count": 3}, {"date": "b", "count": 1}],
            "averageOverTime": [{"date": "a", "value": 10}, {"date": "b", "value": 50}],
        }
    )
    assert mean(ev) == 20
    bare = Eval.model_validate({"name": "s", "averageScore": 7.5, "count": 2})
    assert series(bare) == []
    assert mean(bare) == 7.5


def test_placeholder_bodies_are_not_bodies() -> None:
    assert real_body({PLACEHOLDER_KEY: "fetching body from signed_url..."}) is None
    assert real_body({PLACEHOLDER_KEY: "x", "choices": []}) == {PLACEHOLDER_KEY: "x", "choices": []}
    assert real_body(None) is None


def test_to_payload_is_webhook_shaped() -> None:
    row = RequestRow.model_validate(
        {
            "request_id": "r1",
            "request_created_at": "2024-03-01T10:00:00.000Z",
            "request_model": "gpt-4o",
            "model_override": None,
            "provider": "OPENAI",
            "request_user_id": "alice",
            "delay_ms": "321",
            "prompt_tokens": 7,
            "completion_tokens": 5,
            "total_tokens": None,
            "costUSD": 0.0001,
            "request_properties": {"Helicone-Property-App": "x"},
        }
    )
    request = {"messages": [{"role": "user", "content": "Hi there"}]}
    response = {"choices": [{"message": {"content": "Hello"}}]}
    payload = to_payload(row, request, response)
    assert payload == {
        "request_id": "r1",
        "request_body": request,
        "response_body": response,
        "user_id": "alice",
        "model": "gpt-4o",
        "provider": "OPENAI",
        "metadata": {"cost": 0.0001, "promptTokens": 7, "completionTokens": 5, "latencyMs": 321},
    }
    ctx = Context.from_payload(payload)
    assert (ctx.text, ctx.request_text, ctx.user_id) == ("Hello", "Hi there", "alice")
    assert to_payload(RequestRow(request_id="r2"), None, None) == {"request_id": "r2"}


def test_created_filter() -> None:
    assert created_filter(datetime(2024, 1, 1, tzinfo=UTC), "2024-01-02T00:00:00.000Z") == {
        "left": {"request": {"created_at": {"gte": "2024-01-01T00:00:00.000Z"}}},
        "operator": "and",
        "right": {"request": {"created_at": {"lt": "2024-01-02T00:00:00.000Z"}}},
    }


def test_decode_undoes_gzip_within_bounds() -> None:
    assert _decode(b'{"a": 1}', 100) == {"a": 1}
    assert _decode(gzip.compress(b'{"a": 1}'), 100) == {"a": 1}
    with pytest.raises(FetchError, match="truncated"):
        _decode(gzip.compress(b'{"a": 1}')[:-12], 100)
    with pytest.raises(FetchError, match="once decompressed"):
        _decode(gzip.compress(b"\0" * (MAX_SIGNED_BODY + 1)), MAX_SIGNED_BODY)
