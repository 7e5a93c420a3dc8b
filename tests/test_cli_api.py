"""``evals``, ``post-scores`` and ``feedback`` as a user runs them, against the stand-in."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from tests.cli import api_env, one_line_error, run
from tests.standin import Injected, StandIn

HOURS = [f"2024-01-01T{h:02d}:00:00.000Z" for h in range(6)]


def eval_row(name: str, values: list[float], counts: list[int], **over: Any) -> dict[str, Any]:
    """A row as Helicone's EvalManager builds it (its averageScore is not the mean)."""
    return {
        "name": name,
        "averageScore": sum(values) / max(1, sum(counts)),
        "minScore": min(v for v, c in zip(values, counts, strict=True) if c),
        "maxScore": max(v for v, c in zip(values, counts, strict=True) if c),
        "count": sum(counts),
        "overTime": [{"date": d, "count": c} for d, c in zip(HOURS, counts, strict=True)],
        "averageOverTime": [{"date": d, "value": v} for d, v in zip(HOURS, values, strict=True)],
        **over,
    }


@pytest.fixture
def evals_standin(standin: StandIn) -> StandIn:
    standin.evals = [
        eval_row("vocabulary_diversity", [80, 0, 50, 90, 0, 70], [3, 0, 1, 2, 0, 4]),
        eval_row("is_polite", [1, 1, 0, 1, 1, 1], [2, 1, 1, 5, 1, 1]),
    ]
    return standin


def test_evals_table_sends_iso_time_filter_and_shows_true_means(
    tmp_path: Path, evals_standin: StandIn
) -> None:
    result = run(
        tmp_path,
        api_env(evals_standin.base_url, tmp_path),
        "evals",
        "--since",
        "2024-01-01",
        "--until",
        "2024-01-02T00:00:00Z",
    )
    assert result.returncode == 0, result.stderr
    (call,) = evals_standin.calls
    assert call.body["filter"] == "all"
    assert call.body["timeFilter"] == {
        "start": "2024-01-01T00:00:00.000Z",
        "end": "2024-01-02T00:00:00.000Z",
    }
    lines = result.stdout.splitlines()
    assert lines[0] == "Scores from 2024-01-01 00:00 to 2024-01-02 00:00 UTC"
    header = lines[2].split()
    assert header[:5] == ["name", "count", "avg", "min", "max"]
    vocab = lines[3].split(maxsplit=5)
    # (80·3 + 50·1 + 90·2 + 70·4) / 10 = 75, not Helicone's sum-of-hourly-averages / count (29).
    assert vocab[:5] == ["vocabulary_diversity", "10", "75.00", "50", "90"]
    assert vocab[5] == "▇ ▁█ ▅"  # empty hours are gaps, not zeros
    polite = lines[4].split()
    assert polite[:5] == ["is_polite", "11", "0.91", "0", "1"]
    assert polite[5] == "██▁███"


def test_evals_default_window_is_the_last_seven_days(tmp_path: Path, standin: StandIn) -> None:
    before = datetime.now(UTC)
    result = run(tmp_path, api_env(standin.base_url, tmp_path), "evals")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No scores from ")
    window = standin.calls[0].body["timeFilter"]
    start, end = (datetime.fromisoformat(window[k]) for k in ("start", "end"))
    assert end - start == timedelta(days=7)
    assert before - timedelta(seconds=1) <= end <= datetime.now(UTC)


def test_evals_json_and_name_filter(tmp_path: Path, evals_standin: StandIn) -> None:
    evals_standin.evals.append(
        {
            "name": "empty",
            "averageScore": None,
            "minScore": None,
            "maxScore": None,
            "count": 0,
            "overTime": [],
            "averageOverTime": [],
        }
    )
    env = api_env(evals_standin.base_url, tmp_path)
    result = run(tmp_path, env, "evals", "--json", "--name", "is_polite")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == [evals_standin.evals[1]]
    result = run(tmp_path, env, "evals", "--json")
    assert orjson.loads(result.stdout) == evals_standin.evals  # Helicone's nulls survive
    result = run(tmp_path, env, "evals", "--name", "nope")
    assert result.returncode == 0
    assert result.stdout.startswith("No scores named 'nope' from ")


def test_evals_plot_svg_and_png(tmp_path: Path, evals_standin: StandIn) -> None:
    env = api_env(evals_standin.base_url, tmp_path)
    result = run(tmp_path, env, "evals", "--since", "2024-01-01", "--plot", "chart.svg")
    assert result.returncode == 0, result.stderr
    assert "wrote chart.svg" in result.stderr
    svg = ET.parse(tmp_path / "chart.svg").getroot()  # noqa: S314  (our own output)
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert "vocabulary_diversity" in texts
    assert "is_polite" in texts
    # vocabulary_diversity has gaps at hours 1 and 4: a dot, a line, a dot; is_polite one line.
    assert len(list(svg.iter(f"{ns}polyline"))) == 2
    assert len(list(svg.iter(f"{ns}circle"))) == 2

    result = run(tmp_path, env, "evals", "--since", "2024-01-01", "--plot", "chart.png")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "chart.png") as image:
        assert image.format == "PNG"
        assert image.size == (800, 44 + 2 * 132)
        rgb = image.convert("RGB")
        pixels = [rgb.getpixel((x, y)) for x in range(rgb.width) for y in range(rgb.height)]
        target = (0x25, 0x63, 0xEB)
        blue = [
            p
            for p in pixels
            if isinstance(p, tuple) and sum(abs(a - b) for a, b in zip(p, target, strict=True)) < 60
        ]
        assert len(blue) > 100  # the first series was drawn, in its colour


def test_evals_plot_refuses_other_formats_before_asking(tmp_path: Path, standin: StandIn) -> None:
    result = run(tmp_path, api_env(standin.base_url, tmp_path), "evals", "--plot", "chart.pdf")
    assert result.returncode == 2
    assert ".svg or .png" in one_line_error(result)
    assert standin.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "neither a duration"),
        (["--since", "1d", "--until", "2d"], "must be before"),
    ],
)
def test_evals_bad_times(tmp_path: Path, standin: StandIn, args: list[str], message: str) -> None:
    result = run(tmp_path, api_env(standin.base_url, tmp_path), "evals", *args)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert standin.calls == []


def test_post_scores_sends_ints_and_bools(tmp_path: Path, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "post-scores", rid, "accuracy=88", "has_citations=true", "d=-3")
    assert result.returncode == 0, result.stderr
    assert "accuracy=88, has_citations=true, d=-3" in result.stdout
    assert standin.scores_for(rid) == [{"accuracy": 88, "has_citations": True, "d": -3}]
    assert standin.violations == []


@pytest.mark.parametrize(
    "bad",
    ["x=1.5", "x=1e3", "x=0.0", "x=yes", "x=", "x", "=3", "x=9223372036854775808", "x=NaN"],
)
def test_post_scores_refuses_anything_but_ints_and_bools(
    tmp_path: Path, standin: StandIn, bad: str
) -> None:
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "post-scores", str(uuid.uuid4()), "ok=1", bad)
    assert result.returncode == 2
    one_line_error(result)
    assert standin.calls == []  # refused before anything was sent


def test_post_scores_refuses_a_name_given_twice(tmp_path: Path, standin: StandIn) -> None:
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "post-scores", str(uuid.uuid4()), "a=1", "a=2")
    assert result.returncode == 2
    assert "given twice" in one_line_error(result)
    assert standin.calls == []


def test_feedback_up_and_down(tmp_path: Path, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    env = api_env(standin.base_url, tmp_path)
    assert run(tmp_path, env, "feedback", rid, "up").returncode == 0
    result = run(tmp_path, env, "feedback", rid, "down")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"feedback down recorded for {rid}"
    assert [c.body for c in standin.ok_calls("feedback")] == [{"rating": True}, {"rating": False}]


def test_feedback_refuses_non_uuid_and_bad_rating(tmp_path: Path, standin: StandIn) -> None:
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "feedback", "req_abc123", "up")
    assert result.returncode == 2
    assert "UUID" in one_line_error(result)
    result = run(tmp_path, env, "feedback", str(uuid.uuid4()), "sideways")
    assert result.returncode == 2
    assert standin.calls == []


COMMANDS = [
    ["evals"],
    ["post-scores", str(uuid.uuid4()), "a=1"],
    ["feedback", str(uuid.uuid4()), "up"],
    ["backfill", "--since", "1d"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_missing_api_key_is_one_line(tmp_path: Path, standin: StandIn, command: list[str]) -> None:
    env = api_env(standin.base_url, tmp_path)
    del env["HELICONE_API_KEY"]
    result = run(tmp_path, env, *command)
    assert result.returncode == 2
    assert "HELICONE_API_KEY is not set" in one_line_error(result)
    assert standin.calls == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("401", "401 (Unauthorized): check HELICONE_API_KEY"),
        ("429", "429, rate limited (200 requests/minute); retry in 42s"),
        ("500", "500: injected 500"),
        ("503", "503: injected 503"),
        ("unreachable", "ConnectError"),
    ],
)
def test_api_errors_are_one_line_and_exit_1(
    tmp_path: Path, standin: StandIn, command: list[str], failure: str, expected: str
) -> None:
    env = api_env(standin.base_url, tmp_path)
    if failure == "401":
        env["HELICONE_API_KEY"] = "sk-wrong"
    elif failure == "unreachable":
        env["HELICONE_API_BASE"] = f"http://127.0.0.1:{StandIn().port}"  # nothing listens
    else:
        # Five answers: enough for the backfill's own retries too (they honour Retry-After).
        code, retry_after = int(failure), "42" if failure == "429" else "0"
        first = "0" if command[0] == "backfill" else retry_after
        standin.fail_next(*[Injected(code, headers={"Retry-After": first})] * 4)
        standin.fail_next(Injected(code, headers={"Retry-After": retry_after}))
    result = run(tmp_path, env, *command)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in one_line_error(result)
