"""What a new user meets first: settings and rule errors, help texts, ``--version``, ``send``
without a key. Everything runs the real command line, or the real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import FIXTURES
from tests.cli import Completed, one_line_error, run
from tests.conftest import ServerFactory
from tests.server import SECRET, Server

README = Path(__file__).parent.parent / "README.md"


def score(tmp_path: Path, **env: str) -> Completed:
    return run(tmp_path, env, "score", str(FIXTURES / "openai_chat.json"), "--json")


# -- 18: settings errors are the validator's words, not pydantic's ---------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"HELICONE_API_BASE": "api.helicone.ai"},
            "invalid setting HELICONE_API_BASE: must start with https:// or http://",
        ),
        (
            {"SCORER_JUDGE_CRITERIA": "Accuracy!"},
            "invalid setting SCORER_JUDGE_CRITERIA: criterion 'accuracy!':",
        ),
        (
            {"SCORER_DATABASE_URL": "mysql://db"},
            "invalid setting SCORER_DATABASE_URL: must be sqlite:///PATH or postgresql://",
        ),
        (
            {"SCORER_BODY_URL_ALLOW": "ftp://x"},
            "invalid setting SCORER_BODY_URL_ALLOW: 'ftp://x' is not",
        ),
    ],
)
def test_a_settings_error_has_no_pydantic_prefix(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", **env}, "serve")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "Value error" not in line
    assert line.startswith(f"helicone-scorer: {expected}"), line


# -- 19: --version, help texts, the README, a half-configured judge, hex case ----------------


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "helicone-scorer 0.1.0\n"


COMMANDS = [
    [], ["serve"], ["send"], ["score"], ["scorers"], ["queue"], ["queue", "dead"],
    ["queue", "retry"], ["queue", "purge"], ["evals"], ["post-scores"], ["feedback"],
    ["backfill"], ["reconcile"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_texts_have_no_stray_space_before_a_full_stop(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(tmp_path, {}, *command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(line.strip(" │╭╮╰╯─") for line in result.stdout.splitlines())
    assert not re.search(r"\w \.", text), result.stdout


def test_port_help_names_port_and_its_default(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "serve", "--help")
    [line] = [line for line in result.stdout.splitlines() if "--port" in line]
    assert "$PORT" in line
    assert "8080" in line


def test_readme_names_serve_options_and_defaults() -> None:
    readme = README.read_text()
    assert "serve --host" in readme
    assert "`0.0.0.0`" in readme
    assert "--log-level" in readme
    assert "--version" in readme


@pytest.mark.parametrize(
    ("env", "why"),
    [
        (
            {"SCORER_JUDGE_MODEL": "gpt-4o-mini"},
            "SCORER_JUDGE_MODEL is set but SCORER_JUDGE_BASE_URL is not",
        ),
        (
            {"SCORER_JUDGE_BASE_URL": "http://127.0.0.1:9/v1"},
            "SCORER_JUDGE_BASE_URL is set but SCORER_JUDGE_MODEL is not",
        ),
    ],
)
def test_a_half_configured_judge_warns_at_start(
    make_server: ServerFactory, env: dict[str, str], why: str
) -> None:
    server = make_server(**env)
    assert f"WARNING scorers.judge: the judge is off: {why}" in server.log()


def test_uppercase_hex_signatures_are_accepted(server: Server) -> None:
    from tests.server import payload
    from webhook.verify import sign

    body = payload()
    upper = sign(SECRET, body).upper()
    response = server.post(body, secret=None, **{"Helicone-Signature": upper})
    assert response.status_code == 202, response.text
    assert "either case" in README.read_text()


# -- 16: send without a key ------------------------------------------------------------------


def test_send_without_a_key_says_the_webhook_is_unsigned(tmp_path: Path, server: Server) -> None:
    result = run(tmp_path, {}, "send", "--url", f"{server.url}/webhook")
    assert result.returncode == 1
    line = one_line_error(result)
    assert line == (
        "helicone-scorer: 401: the webhook was sent unsigned: no key to sign with;"
        " set HELICONE_WEBHOOK_SECRET or pass --secret"
    )
    assert result.stdout.startswith("401 ")


def test_send_with_the_key_is_accepted(tmp_path: Path, server: Server) -> None:
    result = run(
        tmp_path, {"HELICONE_WEBHOOK_SECRET": SECRET}, "send", "--url", f"{server.url}/webhook"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("202 ")
    assert result.stderr == ""


# -- 13: rules for a scorer that exists but is off -------------------------------------------


README_RULES = """\
[judge]
sample = 0.1              # share of webhooks to run it on, 0..1
models = ["gpt-4o*"]      # glob patterns on the payload's model
"""


def test_the_readmes_judge_rules_example_is_accepted_with_the_judge_off(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    assert README_RULES.splitlines()[0] in README.read_text()
    (tmp_path / "rules.toml").write_text(README_RULES)
    result = score(tmp_path, SCORER_RULES_FILE="rules.toml")
    assert result.returncode == 0, result.stderr
    server = make_server(
        SCORER_RULES_FILE=str(tmp_path / "rules.toml"),
        SCORER_FEEDBACK_RULE="judge_accuracy >= 50 or word_count > 1",
    )
    log = server.log()
    assert "INFO webhook: SCORER_RULES_FILE has rules for scorers that are off: judge" in log
    assert (
        "WARNING webhook: SCORER_FEEDBACK_RULE uses scores of scorers that are off"
        " (judge_accuracy)" in log
    )


def test_an_unknown_scorer_in_the_rules_lists_every_known_one(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text("[judg]\nsample = 0.5\n")
    result = score(tmp_path, SCORER_RULES_FILE="rules.toml")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "[judg]: unknown scorer; known: " in line
    known = line.split("known: ")[1].split(", ")
    assert "judge" in known
    assert "vocabulary_diversity" in known


# -- 14: the feedback rule -------------------------------------------------------------------


def test_a_feedback_rule_with_an_unknown_score_name_stops_the_start(tmp_path: Path) -> None:
    env = {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_FEEDBACK_RULE": "word_cout >= 20"}
    result = run(tmp_path, env, "serve")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "invalid setting SCORER_FEEDBACK_RULE: unknown score name(s) word_cout; known:" in line
    known = line.split("known: ")[1].split(", ")
    assert {"word_count", "judge_accuracy", "judge_helpfulness"} <= set(known)


def test_a_feedback_rule_may_use_the_judges_scores(tmp_path: Path) -> None:
    result = score(tmp_path, SCORER_FEEDBACK_RULE="judge_accuracy >= 50 or word_count > 1")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("x ==", "syntax error at the end"),
        ("word_count > > 1", "syntax error at column 14"),
        ("  word_count > > 1", "syntax error at column 16"),
        ("not " * 3000 + "word_count > 1", "longer than 1000 characters"),
        ("not " * 200 + "word_count > 1", "nested too deeply (at most 20 levels"),
        ("(word_count > 1 and " * 300 + "refusal == 0" + ")" * 300, "longer than"),
        ("(r > 1 and " * 60 + "r == 0" + ")" * 60, "nested too deeply (at most 20 levels"),
        ("word_count > " + "-" * 900 + "1", "nested too deeply (at most 20 levels"),
        ("word_count > " + "~" * 900 + "1", "nested too deeply (at most 20 levels"),
    ],
    ids=[
        "end",
        "column",
        "column-after-spaces",
        "not-3000",
        "not-200",
        "and-300",
        "and-60",
        "minus-900",
        "invert-900",
    ],
)
def test_a_bad_feedback_rule_is_one_line(tmp_path: Path, rule: str, message: str) -> None:
    result = score(tmp_path, SCORER_FEEDBACK_RULE=rule)
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("helicone-scorer: invalid setting SCORER_FEEDBACK_RULE: ")
    assert message in line
