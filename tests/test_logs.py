"""Text logs, read from the real server's log file: outside strings cannot forge a line or make
the file binary, and a field without a value is left out."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from tests.conftest import ServerFactory
from tests.plugins import install_plugin
from tests.server import Server, payload
from tests.standin import StandIn

FORGER = """
def forger(ctx):
    \"\"\"Fails with an error text full of control characters.\"\"\"
    raise ValueError("boom\\x00\\x1b[31mred\\x85FAKE outcome=posted")
"""


def test_control_characters_in_a_request_id_are_escaped(server: Server) -> None:
    forged = "x\nFAKE outcome=posted"
    for rid in (forged, "nul\x00byte", "sep\u2028arator", "c1\x85next"):
        assert server.post(payload(rid)).status_code == 422
    log = server.wait_for_log("c1\\x85next")
    raw = server.log_path.read_bytes()
    assert b"\x00" not in raw
    assert "\u2028".encode() not in raw
    assert "\x85".encode() not in raw
    assert not any(line.startswith("FAKE") for line in log.splitlines())
    assert "request_id=x\\nFAKE outcome=posted" in log
    assert "request_id=nul\\x00byte" in log
    assert "request_id=sep\\u2028arator" in log


def test_json_logs_keep_the_id_exact_on_one_line(make_server: ServerFactory) -> None:
    server = make_server(SCORER_LOG_FORMAT="json")
    assert server.post(payload("x\nFAKE\x00")).status_code == 422
    log = server.wait_for_log("FAKE")
    lines = [orjson.loads(line) for line in log.splitlines() if "FAKE" in line]
    assert [line["request_id"] for line in lines] == ["x\nFAKE\x00"]


def test_a_line_never_says_none(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    log = server.wait_for_log(f"delivered request_id={rid}")
    assert "=None" not in log
    [line] = [line for line in log.splitlines() if f"request_id={rid}" in line]
    assert "outcome=posted" in line
    assert "feedback" not in line


@pytest.fixture(scope="module")
def forger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(
        tmp_path_factory.mktemp("forger"),
        "forger_plugin",
        {"forger_plugin": FORGER},
        {"forger": "forger_plugin:forger"},
    )


def test_a_plugins_error_text_is_escaped(
    make_server: ServerFactory, standin: StandIn, forger: Path
) -> None:
    server = make_server(PYTHONPATH=str(forger))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    log = server.wait_for_log("scorer forger failed")
    raw = server.log_path.read_bytes()
    assert b"\x00" not in raw
    assert b"\x1b" not in raw
    assert "\x85".encode() not in raw
    # (the runner already folds whitespace, \\x85 included, into single spaces)
    assert "ValueError: boom\\x00\\x1b[31mred FAKE outcome=posted" in log
