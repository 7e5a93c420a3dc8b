"""A ``request_id`` is an outside string that becomes an API path segment and a log field: it
may never steer the path (``.``, ``..``, ``/``) nor forge a log line (control characters)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.cli import api_env, one_line_error, run
from tests.server import Server, payload, read_rows
from tests.standin import API_KEY, StandIn
from tests.test_backfill import DAY, UNTIL
from webhook.helicone import Helicone

BAD_IDS = [".", "..", "a/b", "../../v1/evals/query", "a\\b", "x\nFAKE outcome=posted", "nul\x00"]


def metric(server: Server, line: str) -> float:
    for row in server.client.get("/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


@pytest.mark.parametrize("rid", BAD_IDS, ids=repr)
def test_an_id_that_could_steer_the_path_is_422(server: Server, standin: StandIn, rid: str) -> None:
    counted = 'helicone_scorer_webhooks_received_total{outcome="bad_payload"}'
    before = metric(server, counted)
    response = server.post(payload(rid))
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    assert "request_id may not" in response.json()["error"]
    assert metric(server, counted) == before + 1
    # A good one after it is posted, on the expected path, and the bad one never was.
    good = str(uuid.uuid4())
    assert server.post(payload(good)).status_code == 202
    standin.wait_for(lambda: good in standin.posted_ids())
    assert standin.raw_paths == [f"/v1/request/{good}/score"]
    assert rid not in server.rows()


def test_the_client_never_sends_an_id_that_resolves(standin: StandIn) -> None:
    async def go() -> list[tuple[int | None, str | None]]:
        client = Helicone(standin.base_url, API_KEY)
        try:
            answers = [await client.post_scores(rid, {"a": 1}) for rid in (".", "..", "x/y")]
            answers.append(await client.post_feedback("..", True))
            answers.append(await client.post_scores("odd id %?#~", {"a": 1}))
        finally:
            await client.aclose()
        return [(a.status, a.error) for a in answers]

    results = asyncio.run(go())
    for status, err in results[:4]:
        assert status == 400
        assert err is not None
        assert err.startswith("not sent: request_id")
    assert results[4] == (201, None)
    # Only the odd-but-safe id was sent, as one percent-encoded segment.
    assert standin.raw_paths == ["/v1/request/odd%20id%20%25%3F%23~/score"]
    assert [c.request_id for c in standin.ok_calls()] == ["odd id %?#~"]


@pytest.mark.parametrize("rid", ["..", "a/b"])
def test_post_scores_refuses_such_an_id_before_sending(
    tmp_path: Path, standin: StandIn, rid: str
) -> None:
    result = run(tmp_path, api_env(standin.base_url, tmp_path), "post-scores", rid, "a=1")
    assert result.returncode == 2
    assert "request_id may not" in one_line_error(result)
    assert standin.raw_paths == []


def test_backfill_skips_a_row_whose_id_could_steer_the_path(
    tmp_path: Path, standin: StandIn
) -> None:
    good = str(uuid.uuid4())
    for rid, second in (("..", 1), (good, 2), ("red\x1b[31m\x1b[2J", 3)):
        answer = {"choices": [{"message": {"role": "assistant", "content": "a b c d"}}]}
        standin.log_request(rid, {}, answer, created_at=f"{DAY}T10:00:0{second}.000Z")
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "backfill", "--since", DAY, "--until", UNTIL)
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert "'..': request_id may not be . or .." in line
    # The id from Helicone is quoted, never written raw to the terminal.
    assert "'red\\x1b[31m\\x1b[2J': request_id may not hold" in line
    assert "\x1b" not in result.stderr
    assert "1 queued for delivery" in result.stdout
    # Its body was never fetched, and nothing but the query and the good body was asked for.
    assert standin.raw_paths == ["/v1/request/query", f"/bodies/{good}"]
    assert list(read_rows(tmp_path / "scorer.db")) == [good]
