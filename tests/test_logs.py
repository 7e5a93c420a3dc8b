"""Text logs, read from the real server's log file: outside strings cannot forge a line or make
the file binary, and a field without a value is left out."""

from __future__ import annotations

import time
import uuid

import orjson

from tests.conftest import ServerFactory
from tests.server import Server, payload
from tests.standin import StandIn


def wait_for_log(server: Server, fragment: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if fragment in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{fragment!r} not logged in {timeout}s:\n{server.log()}")


def test_control_characters_in_a_request_id_are_escaped(server: Server) -> None:
    forged = "x\nFAKE outcome=posted"
    for rid in (forged, "nul\x00byte", "sep\u2028arator", "c1\x85next"):
        assert server.post(payload(rid)).status_code == 422
    log = wait_for_log(server, "c1\\x85next")
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
    log = wait_for_log(server, "FAKE")
    lines = [orjson.loads(line) for line in log.splitlines() if "FAKE" in line]
    assert [line["request_id"] for line in lines] == ["x\nFAKE\x00"]


def test_a_line_never_says_none(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    log = wait_for_log(server, f"delivered request_id={rid}")
    assert "=None" not in log
    [line] = [line for line in log.splitlines() if f"request_id={rid}" in line]
    assert "outcome=posted" in line
    assert "feedback" not in line
