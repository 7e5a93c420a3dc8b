"""``helicone-scorer score`` and ``helicone-scorer scorers``, run as a user would."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests import FIXTURES
from tests.cli import run


def test_score_prints_a_table(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "score", str(FIXTURES / "anthropic_messages.json"))
    assert result.returncode == 0, result.stderr
    rows = dict(line.split() for line in result.stdout.splitlines()[1:])
    assert result.stdout.splitlines()[0].split() == ["SCORE", "VALUE"]
    # "Yes, 17 is prime. It has no other divisors.": 9 words; 0.000486 USD
    assert (rows["word_count"], rows["latency_ms"], rows["cost_micro_usd"]) == ("9", "1530", "486")
    assert rows["completion_tokens"] == "30"
    assert result.stderr == ""


def test_score_json_from_stdin(tmp_path: Path) -> None:
    body = (FIXTURES / "openai_multiple_choices.json").read_text()
    result = run(tmp_path, {}, "score", "-", "--json", stdin=body)
    assert result.returncode == 0, result.stderr
    out = orjson.loads(result.stdout)
    assert out["request_id"] == "0b0e5d3a-1f8e-4c7a-9f51-000000000007"
    # Worker parity: "Blue." and "Deep blue." (the empty choice skipped), lower-cased and
    # split on \s+: {blue., deep} = 2 unique; split(" "): 1 + 2 = 3 words -> 66.67 -> 67
    assert out["scores"]["vocabulary_diversity"] == 67
    assert out["errors"] == {}
    assert set(out["durations_ms"]) >= {"vocabulary_diversity", "readability"}


def test_score_applies_the_servers_rules_and_feedback_rule(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text("[readability]\nsample = 0\n")
    body = (FIXTURES / "openai_multiple_choices.json").read_text()
    env = {"SCORER_RULES_FILE": "rules.toml", "SCORER_FEEDBACK_RULE": "vocabulary_diversity > 50"}
    result = run(tmp_path, env, "score", "-", "--json", stdin=body)
    assert result.returncode == 0, result.stderr
    out = orjson.loads(result.stdout)
    assert "readability" not in out["scores"]  # sampled out, as the server would
    assert out["scores"]["vocabulary_diversity"] == 67
    assert out["feedback"] is True  # 67 > 50, and the request id is a UUID


def test_score_honours_enabled_and_reports_failures(tmp_path: Path) -> None:
    payload = orjson.loads((FIXTURES / "openai_chat.json").read_bytes())
    payload["metadata"]["latencyMs"] = 12
    body = orjson.dumps(payload).decode()
    result = run(tmp_path, {"SCORER_ENABLED": "latency_ms"}, "score", "-", "--json", stdin=body)
    assert orjson.loads(result.stdout)["scores"] == {"latency_ms": 12}


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("score", "missing.json"), None, "helicone-scorer: cannot read missing.json: "),
        (("score", "-"), "{not json", "helicone-scorer: - is not valid JSON: "),
        (("score", "-"), "[1, 2]", "helicone-scorer: - must hold a JSON object"),
    ],
)
def test_score_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    result = run(tmp_path, {}, *args, stdin=stdin)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(message)


def test_score_with_an_unknown_scorer_name(tmp_path: Path) -> None:
    result = run(tmp_path, {"SCORER_ENABLED": "vocab"}, "score", "-", stdin="{}")
    assert result.returncode == 2
    assert result.stderr.startswith("helicone-scorer: unknown scorer(s): vocab; known: ")


def test_no_text_no_scores(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "score", str(FIXTURES / "openai_tool_call.json"))
    assert result.returncode == 0
    # An OpenAI body without text: the Worker's 0, the finish reason, and the usage.
    assert result.stdout.split()[2:] == [
        "vocabulary_diversity", "0", "truncated", "0", "completion_tokens", "15"
    ]  # fmt: skip


def test_scorers_lists_every_builtin_with_its_scale(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "scorers", "--json")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in orjson.loads(result.stdout)}
    assert entries["readability"]["scale"] == "0-100"
    assert entries["word_count"]["scale"] == "0+"
    assert entries["refusal"]["scale"] == "0-1"
    assert entries["vocabulary_diversity"]["enabled"] is True
    assert entries["judge"]["enabled"] is False
    assert "SCORER_JUDGE_BASE_URL" in entries["judge"]["description"]
    assert all(e["source"] == "built-in" for e in entries.values())
    table = run(tmp_path, {}, "scorers")
    assert table.stdout.splitlines()[0].split() == ["NAME", "ON", "SCALE", "SOURCE", "DESCRIPTION"]


def test_scorers_still_lists_when_a_name_is_unknown(tmp_path: Path) -> None:
    result = run(tmp_path, {"SCORER_ENABLED": "vocab"}, "scorers")
    assert result.returncode == 0
    assert result.stderr.startswith("helicone-scorer: warning: unknown scorer(s): vocab")
    assert "vocabulary_diversity" in result.stdout
