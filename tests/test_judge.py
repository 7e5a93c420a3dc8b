"""The LLM judge, against a loopback OpenAI-compatible stand-in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from scorers import Context, Outcome, Scorer, ScorerConfigError, available, run_scorers, select
from scorers.builtin.judge import Judge, parse_reply
from tests import cli
from tests.conftest import ServerFactory
from tests.server import payload
from tests.standin import StandIn
from tests.stubs import ChatStandIn, Reply

CTX = Context.from_payload(
    {
        "request_id": "r",
        "request_body": {"messages": [{"role": "user", "content": "What is 2+2?"}]},
        "response_body": {"choices": [{"message": {"content": "2+2 is 4."}}]},
    }
)
CRITERIA = ("accuracy", "relevance", "helpfulness")


@pytest.fixture
def chat() -> Iterator[ChatStandIn]:
    c = ChatStandIn().start()
    yield c
    c.stop()


@pytest.fixture
def judge(chat: ChatStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Scorer:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("SCORER_JUDGE_BASE_URL", f"{chat.base_url}/v1/")
    monkeypatch.setenv("SCORER_JUDGE_MODEL", "judge-1")
    monkeypatch.setenv("SCORER_JUDGE_API_KEY", "sk-judge")
    monkeypatch.setenv("SCORER_JUDGE_TIMEOUT", "1")
    monkeypatch.setenv("SCORER_JUDGE_CONCURRENCY", "2")
    return available()["judge"]


def run(judge: Scorer, ctx: Context = CTX) -> Outcome:
    return asyncio.run(run_scorers([judge], ctx))


def test_judge_scores_each_criterion(judge: Scorer, chat: ChatStandIn) -> None:
    assert isinstance(judge.func, Judge)
    assert judge.default
    assert judge.problem is None
    outcome = run(judge)
    assert outcome.scores == {"judge_accuracy": 90, "judge_relevance": 80, "judge_helpfulness": 70}
    [sent] = chat.requests
    assert sent["model"] == "judge-1"
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["temperature"] == 0
    prompt = sent["messages"][1]["content"]
    assert "What is 2+2?" in prompt
    assert "2+2 is 4." in prompt
    assert "accuracy, relevance, helpfulness" in sent["messages"][0]["content"]


def test_malformed_replies_drop_only_the_judges_scores(
    judge: Scorer, chat: ChatStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    chat.replies.extend(
        [
            Reply("Sure! The answer deserves a 90."),
            Reply(raw=b"<html>oops</html>"),
            Reply('{"accuracy": 50}', status=500),
            Reply("[90, 80, 70]"),
            Reply('{"unrelated": 1}'),
        ]
    )
    errors = []
    for _ in range(5):
        outcome = asyncio.run(run_scorers([judge, Scorer("other", lambda c: 1, "x")], CTX))
        assert outcome.scores == {"other": 1}
        errors.append(outcome.errors["judge"])
    assert "not JSON" in errors[0]
    assert "not a chat completion" in errors[1]
    assert "HTTP 500" in errors[2]
    assert "not a JSON object" in errors[3]
    assert "none of the criteria" in errors[4]
    assert "scorer judge failed" in caplog.text


def test_a_stalled_judge_times_out(judge: Scorer, chat: ChatStandIn) -> None:
    chat.replies.append(Reply('{"accuracy": 1}', stall=3))
    outcome = run(judge)
    assert outcome.scores == {}
    # Its own 1 s timeout fired, before the runner's 2 s (SCORER_JUDGE_TIMEOUT + 1).
    assert outcome.errors == {"judge": "ValueError: judge did not answer in 1s"}


def test_at_most_concurrency_calls_at_once(judge: Scorer, chat: ChatStandIn) -> None:
    chat.default = Reply('{"accuracy": 1, "relevance": 2, "helpfulness": 3}', stall=0.3)

    async def many() -> list[Outcome]:
        return await asyncio.gather(*(run_scorers([judge], CTX) for _ in range(6)))

    outcomes = asyncio.run(many())
    assert [o.scores.get("judge_helpfulness") for o in outcomes] == [3] * 6, [
        o.errors for o in outcomes
    ]
    assert chat.max_in_flight == 2


def test_no_text_no_call(judge: Scorer, chat: ChatStandIn) -> None:
    assert run(judge, Context.from_payload({"response_body": {}})).scores == {}
    assert chat.requests == []


def test_parse_reply_is_lenient_about_numbers_only() -> None:
    reply = '```json\n{"Accuracy": 87.6, "relevance": "85%", "helpfulness": 150, "x": 1}\n```'
    assert parse_reply(reply, CRITERIA) == {
        "judge_accuracy": 88,
        "judge_relevance": 85,
        "judge_helpfulness": 100,
    }
    assert parse_reply('{"accuracy": true, "relevance": -5}', CRITERIA) == {"judge_relevance": 0}
    with pytest.raises(ValueError, match="none of the criteria"):
        parse_reply('{"accuracy": "high"}', CRITERIA)
    with pytest.raises(ValueError, match="no text"):
        parse_reply(None, CRITERIA)


def test_off_unless_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SCORER_JUDGE_BASE_URL", "SCORER_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    registry = available()
    assert registry["judge"].problem == "set SCORER_JUDGE_BASE_URL and SCORER_JUDGE_MODEL"
    assert "judge" not in {s.name for s in select(registry)}
    with pytest.raises(ScorerConfigError, match=r"^scorer judge is enabled but not configured"):
        select(registry, ["judge"])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCORER_JUDGE_CRITERIA", "accuracy, Bad Name"),
        ("SCORER_JUDGE_CRITERIA", " , "),
        ("SCORER_JUDGE_TIMEOUT", "0"),
        ("SCORER_JUDGE_CONCURRENCY", "many"),
        ("SCORER_JUDGE_BASE_URL", "api.openai.com"),
    ],
)
def test_bad_judge_settings_stop_the_start_with_one_line(
    tmp_path: Path, name: str, value: str
) -> None:
    result = cli.run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", name: value}, "serve")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"helicone-scorer: invalid setting {name}:")


def test_a_disabled_judge_does_not_read_its_settings(tmp_path: Path) -> None:
    env = {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_JUDGE_TIMEOUT": "never"}
    assert cli.run(tmp_path, env, "scorers").returncode == 2
    assert cli.run(tmp_path, env | {"SCORER_DISABLED": "judge"}, "scorers").returncode == 0


def test_enabled_without_configuration_stops_the_start(tmp_path: Path) -> None:
    result = cli.run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_ENABLED": "judge"}, "serve")
    assert result.returncode == 2
    assert result.stderr == (
        "helicone-scorer: scorer judge is enabled but not configured:"
        " set SCORER_JUDGE_BASE_URL and SCORER_JUDGE_MODEL\n"
    )


def test_the_server_posts_the_judges_scores(
    make_server: ServerFactory, standin: StandIn, chat: ChatStandIn
) -> None:
    server = make_server(
        SCORER_JUDGE_BASE_URL=f"{chat.base_url}/v1",
        SCORER_JUDGE_MODEL="judge-1",
        SCORER_JUDGE_API_KEY="sk-judge",
        SCORER_JUDGE_CRITERIA="accuracy,concision",
    )
    chat.default = Reply('{"accuracy": 95, "concision": 60}')
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "Paris.")).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    [scores] = standin.scores_for(rid)
    assert (scores["judge_accuracy"], scores["judge_concision"]) == (95, 60)
    assert scores["word_count"] == 1
    assert "concision" in orjson.dumps(chat.requests[0]).decode()
