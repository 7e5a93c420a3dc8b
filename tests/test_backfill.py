"""``backfill``: past requests from the stand-in's request query, scored, queued in the real store,
and delivered by the real server's relay."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli import api_env, one_line_error, run
from tests.conftest import ServerFactory
from tests.server import Server, payload, read_rows
from tests.standin import API_KEY, Injected, StandIn
from tests.stores import BACKENDS, with_store
from webhook.logged import HeliconeRequests, QueryFailed, iso, pages
from webhook.store import Dead, Delivered, Scored, Store

# Past traffic: a day of two days ago, well inside Helicone's 30-day scoring window.
DAY = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
SINCE = f"{DAY}T00:00:00Z"
UNTIL = f"{(datetime.now(UTC) - timedelta(days=1)).date().isoformat()}T00:00:00Z"

# Answer texts and their vocabulary_diversity, the one built-in scorer.
TEXTS = {"one two two": 67, "a b c d": 100, "x x x x": 25, "hello hello world": 67}


def log(standin: StandIn, text: str | None, second: int, body: str = "gzip", **fields: Any) -> str:
    """Log a chat request answered ``text`` (None: an error wrapper, with nothing to score)."""
    rid = str(uuid.uuid4())
    answer = {"choices": [{"message": {"role": "assistant", "content": text}}]}
    standin.log_request(
        rid,
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
        answer if text is not None else {"helicone_error": "upstream failed", "body": ""},
        created_at=f"{DAY}T10:{second // 60:02d}:{second % 60:02d}.000Z",
        body=body,
        **fields,
    )
    return rid


def queries(standin: StandIn) -> list[tuple[int, int, int]]:
    return [
        (c.body["offset"], c.body["limit"], c.status)
        for c in standin.calls
        if c.kind == "request_query"
    ]


def backfill_env(server: Server, standin: StandIn, tmp_path: Path) -> dict[str, str]:
    """The settings of ``backfill`` beside ``server``: on its store, whichever backend."""
    return api_env(standin.base_url, tmp_path, SCORER_DATABASE_URL=server.store_url)


@pytest.mark.parametrize("store", BACKENDS)
def test_backfill_scores_past_traffic_and_the_running_relay_delivers_it(
    tmp_path: Path, make_server: ServerFactory, standin: StandIn, store: str
) -> None:
    server = make_server(store=store, SCORER_ENABLED="vocabulary_diversity")
    expected = {
        log(standin, text, i, body): score
        for i, ((text, score), body) in enumerate(
            zip(TEXTS.items(), ["gzip", "raw-gzip", "plain", "inline"], strict=True)
        )
    }
    result = run(tmp_path, backfill_env(server, standin, tmp_path), "backfill", "--since", SINCE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "read 4 request(s): 4 queued for delivery, 0 already queued or posted,"
        " 0 without scores, 0 without bodies"
    )
    assert result.stderr == ""  # the progress bar shows on a terminal only, never in a pipe
    (query,) = [c.body for c in standin.calls if c.kind == "request_query"]
    until = datetime.fromisoformat(query["filter"]["right"]["request"]["created_at"]["lt"])
    assert abs((datetime.now(UTC) - until).total_seconds()) < 60  # --until defaults to now
    assert query["filter"] == {
        "left": {"request": {"created_at": {"gte": f"{DAY}T00:00:00.000Z"}}},
        "operator": "and",
        "right": {
            "request": {"created_at": {"lt": until.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}}
        },
    }
    assert (query["offset"], query["limit"], query["sort"]) == (0, 100, {"created_at": "asc"})

    standin.wait_for(lambda: standin.posted_ids() >= set(expected))
    for rid, score in expected.items():
        assert standin.scores_for(rid) == [{"vocabulary_diversity": score}]
    assert standin.violations == []
    server.wait_rows(lambda rows: all(r["state"] == "done" for r in rows.values()), 10)


def test_backfill_skips_requests_without_bodies_and_the_next_serve_delivers(
    tmp_path: Path, make_server: ServerFactory, standin: StandIn
) -> None:
    good = log(standin, "one two two", 0)
    log(standin, "a b c d", 1, "expired")  # the signed URL answers 403
    log(standin, "a b c d", 2, "none")  # placeholders and no signed URL
    log(standin, "a b c d", 3, "none", signed_body_url="http://203.0.113.7/body")  # untrusted
    log(standin, None, 4, "inline")  # a body, but nothing to score
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "backfill", "--since", SINCE, "--until", UNTIL)
    assert result.returncode == 1
    assert "1 queued for delivery" in result.stdout
    assert "1 without scores, 3 without bodies" in result.stdout
    line = one_line_error(result)
    assert "3 request(s) skipped, their bodies could not be fetched" in line
    assert "body URL answered Forbidden" in line
    assert "untrusted host (203.0.113.7)" in line
    assert "no body and no signed_body_url" in line

    stored = read_rows(tmp_path / "scorer.db")
    assert list(stored) == [good]
    assert (stored[good]["state"], stored[good]["scores"]) == (
        "pending",
        {"vocabulary_diversity": 67},
    )
    assert standin.ok_calls("score") == []  # no server yet: nothing posted

    make_server(SCORER_ENABLED="vocabulary_diversity")
    standin.wait_for(lambda: good in standin.posted_ids())
    assert standin.scores_for(good) == [{"vocabulary_diversity": 67}]
    assert standin.posted_ids() == {good}


@pytest.mark.parametrize("store", BACKENDS)
def test_backfill_again_skips_what_is_queued_or_already_posted(
    tmp_path: Path, make_server: ServerFactory, standin: StandIn, store: str
) -> None:
    server = make_server(store=store, SCORER_ENABLED="vocabulary_diversity")
    ids = [log(standin, text, i) for i, text in enumerate(TEXTS)]
    env = backfill_env(server, standin, tmp_path)
    assert run(tmp_path, env, "backfill", "--since", SINCE).returncode == 0
    standin.wait_for(lambda: standin.posted_ids() >= set(ids))
    delivered = server.wait_rows(lambda rows: all(r["state"] == "done" for r in rows.values()), 10)
    assert set(delivered) == set(ids)
    posts = len(standin.ok_calls("score"))

    result = run(tmp_path, env, "backfill", "--since", SINCE)
    assert result.returncode == 0, result.stderr
    assert "0 queued for delivery, 4 already queued or posted" in result.stdout
    # Nothing was queued again: the store holds the same rows, all delivered, so the relay has
    # nothing to post. A live webhook sent after it is then the stand-in's only new score post.
    assert server.rows() == delivered
    marker = str(uuid.uuid4())
    assert server.post(payload(marker)).status_code == 202
    standin.wait_for(lambda: marker in standin.posted_ids())
    assert [c.request_id for c in standin.ok_calls("score")[posts:]] == [marker]


def test_backfill_limit_reads_the_oldest_pages(tmp_path: Path, standin: StandIn) -> None:
    ids = [log(standin, "one two two", i, "inline") for i in range(250)]
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "backfill", "--since", SINCE, "--limit", "120")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("read 120 request(s): 120 queued")
    assert queries(standin) == [(0, 100, 200), (100, 20, 200)]
    assert set(read_rows(tmp_path / "scorer.db")) == set(ids[:120])


def test_backfill_retries_a_rate_limited_query(tmp_path: Path, standin: StandIn) -> None:
    rid = log(standin, "one two two", 0, "inline")
    standin.fail_next(Injected(429, headers={"Retry-After": "0"}), Injected(502))
    result = run(tmp_path, api_env(standin.base_url, tmp_path), "backfill", "--since", SINCE)
    assert result.returncode == 0, result.stderr
    assert queries(standin) == [(0, 100, 429), (0, 100, 502), (0, 100, 200)]
    assert list(read_rows(tmp_path / "scorer.db")) == [rid]


def _read_all(standin: StandIn, **paging: Any) -> list[str]:
    async def go() -> list[str]:
        client = HeliconeRequests(standin.base_url, API_KEY)
        try:
            since = datetime.fromisoformat(SINCE)
            until = datetime.fromisoformat(UNTIL)
            found = []
            async for page in pages(client, since, until, **paging):
                found += [r.request_id for r in page]
            return found
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_pages_move_the_start_past_helicones_offset_cap(standin: StandIn) -> None:
    standin.max_offset = 50  # Helicone's is 10,000
    # Three requests per second, so page boundaries split requests logged at the same instant.
    ids = [log(standin, "x", i // 3, "inline") for i in range(181)]
    assert _read_all(standin, page_size=20, max_offset=50) == ids
    assert all(status == 200 for _, _, status in queries(standin))
    starts = {c.body["filter"]["left"]["request"]["created_at"]["gte"] for c in standin.calls}
    assert len(starts) > 2  # it did move its start, more than once


def test_pages_give_up_when_one_instant_holds_more_than_the_cap(standin: StandIn) -> None:
    standin.max_offset = 50
    for _ in range(80):
        log(standin, "x", 0, "inline")
    with pytest.raises(QueryFailed, match="more than 50 requests at"):
        _read_all(standin, page_size=20, max_offset=50)


def test_enqueue_scores_inserts_reopens_and_leaves_alone(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        assert await store.enqueue_scores("new", {"a": 1})
        assert not await store.enqueue_scores("new", {"a": 2})  # pending: left alone
        (job,) = await store.claim("post", 10, 60)
        assert (job.request_id, job.scores) == ("new", {"a": 1})  # no scoring again
        assert not await store.enqueue_scores("new", {"a": 2})  # leased: left alone
        assert await store.record([Delivered(job.lease, 201, frozenset({"scores"}))]) == [True]
        assert not await store.enqueue_scores("new", {"a": 1})  # posted as is: nothing to do
        assert await store.enqueue_scores("new", {"a": 1, "b": 0})  # a new scorer: re-opened
        (job,) = await store.claim("post", 10, 60)
        assert (job.attempts, job.scores, job.posted) == (1, {"a": 1, "b": 0}, frozenset())
        assert time.time() - job.received_at < 60  # its age starts again
        assert await store.record([Dead(job.lease, 400, "bad", frozenset())]) == [True]
        assert await store.enqueue_scores("new", {"a": 1, "b": 0})  # a dead letter: re-opened
        assert await store.add("live", b'{"request_id": "live"}')
        assert not await store.enqueue_scores("live", {"a": 5})  # a live webhook waiting
        (job,) = await store.claim("score", 10, 60)
        # No scores (or a dry run): finished, so backfilled scores may be queued for it.
        assert await store.record([Scored(job.lease, {}, None, finished=True)]) == [True]
        assert await store.enqueue_scores("live", {"a": 5})
        stats = await store.reader.stats()
        assert stats.counts == {"pending": 2, "leased": 0, "done": 0, "dead": 0}

    with_store(f"sqlite:///{tmp_path / 'q.db'}", go)


def test_live_webhooks_are_posted_before_backfilled_ones(tmp_path: Path) -> None:
    async def go(store: Store) -> None:
        assert await store.enqueue_scores("old-backfill", {"a": 1})
        assert await store.add("live", b'{"request_id": "live"}')
        (scoring,) = await store.claim("score", 10, 60)
        assert await store.record([Scored(scoring.lease, {"a": 2}, None, finished=False)])
        first, second = await store.claim("post", 1, 60), await store.claim("post", 1, 60)
        assert [j.request_id for j in first + second] == ["live", "old-backfill"]

    with_store(f"sqlite:///{tmp_path / 'q.db'}", go)


def test_backfill_leaves_out_requests_past_helicones_30_day_window(
    tmp_path: Path, standin: StandIn
) -> None:
    old = datetime.now(UTC) - timedelta(days=31)
    stale = str(uuid.uuid4())
    standin.log_request(
        stale, {}, {"choices": [{"message": {"content": "a b"}}]}, created_at=iso(old)
    )
    fresh = log(standin, "a b c d", 0)
    env = api_env(standin.base_url, tmp_path)
    result = run(tmp_path, env, "backfill", "--since", iso(old - timedelta(hours=1)))
    assert result.returncode == 0, result.stderr
    assert "1 older than Helicone's 30-day scoring window" in result.stdout
    assert list(read_rows(tmp_path / "scorer.db")) == [fresh]


def test_backfill_queries_wait_their_turn_in_the_shared_budget(
    tmp_path: Path, standin: StandIn
) -> None:
    # Two calls in any 2 s: the stand-in answers 429 past that, and the backfill's five
    # queries take their places in the store's budget, so none is refused.
    standin.window_limit, standin.window = 2, 2.0
    for i in range(450):
        log(standin, "one two two", i, "inline")
    env = api_env(
        standin.base_url,
        tmp_path,
        SCORER_RATE_LIMIT_PER_MINUTE="2",
        SCORER_RATE_WINDOW_SECONDS="2",
    )
    result = run(tmp_path, env, "backfill", "--since", SINCE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("read 450 request(s): 450 queued")
    assert [status for _, _, status in queries(standin)] == [200] * 5
