"""The reconciliation sweep: real servers list the stand-in's logged requests, queue what never
arrived as a webhook, and post it; the end mark, the sweep lease, the filters and the
confirmation of landed scores, and ``helicone-scorer reconcile``."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cli import api_env, one_line_error, run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.server import Server, payload, read_rows
from tests.standin import Call, StandIn
from webhook.logged import RequestRow, iso
from webhook.reconcile import Policy, landed_names
from webhook.sample import in_sample
from webhook.store import open_store

VOCAB = {"SCORER_ENABLED": "vocabulary_diversity"}
# Sweeps every half second, of everything logged up to now.
SWEEP = VOCAB | {"SCORER_RECONCILE_INTERVAL": "0.5", "SCORER_RECONCILE_SETTLE": "0"}
TEXTS = {"one two two": 67, "a b c d": 100, "x x x x": 25, "hello hello world": 67}
SWEPT = "reconcile: window "


def log(standin: StandIn, text: str = "one two two", rid: str | None = None, **fields: Any) -> str:
    """Log a chat request answered ``text``, created now (after the store was created)."""
    rid = rid or str(uuid.uuid4())
    standin.log_request(
        rid,
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
        {"choices": [{"message": {"role": "assistant", "content": text}}]},
        created_at=iso(datetime.now(UTC)),
        **fields,
    )
    return rid


def queries(standin: StandIn) -> list[Call]:
    return [c for c in standin.calls if c.kind == "request_query" and c.status == 200]


def bounds(call: Call) -> tuple[float, float]:
    """The window a request query asked for: ``[gte, lt)`` in epoch seconds."""
    f = call.body["filter"]
    start = f["left"]["request"]["created_at"]["gte"]
    end = f["right"]["request"]["created_at"]["lt"]
    return datetime.fromisoformat(start).timestamp(), datetime.fromisoformat(end).timestamp()


def sweeps(server: Server) -> list[str]:
    return [line for line in server.log().splitlines() if SWEPT in line]


def live(server: Server, standin: StandIn, text: str = "one two two") -> str:
    """A webhook that did arrive: logged in Helicone, and sent to the server."""
    rid = log(standin, text)
    assert server.post(payload(rid, text)).status_code == 202
    return rid


def test_requests_missed_while_down_are_posted_within_one_sweep(
    make_server: ServerFactory, standin: StandIn
) -> None:
    first = make_server(SCORER_RECONCILE_INTERVAL="0", **VOCAB)  # creates the store, no sweep
    arrived = [live(first, standin) for _ in range(2)]
    standin.wait_for(lambda: standin.posted_ids() >= set(arrived))
    assert first.terminate()
    assert queries(standin) == []

    missed = {log(standin, text): score for text, score in TEXTS.items()}  # while it was down
    second = make_server(**SWEEP)
    standin.wait_for(lambda: standin.posted_ids() >= set(missed))
    first_sweep = second.wait_for_log(SWEPT).splitlines()
    (line,) = [line for line in first_sweep if SWEPT in line][:1]
    assert "listed 6, missing 4, reconciled 4, failed 0, unconfirmed 0" in line
    for rid, score in missed.items():
        assert standin.scores_for(rid) == [{"vocabulary_diversity": score}]
    # Later sweeps list them all again and queue nothing: each request was posted once.
    second.wait_rows(lambda rows: all(r["state"] == "done" for r in rows.values()))
    standin.wait_for(lambda: len(sweeps(second)) >= 3)
    assert standin.posts() == dict.fromkeys([*arrived, *missed], 1)
    rows = second.rows()
    assert {rid: rows[rid]["origin"] for rid in rows} == {
        **dict.fromkeys(arrived, "live"),
        **dict.fromkeys(missed, "reconciled"),
    }
    assert "missing 0, reconciled 0" in sweeps(second)[-1]
    text = second.client.get("/metrics").text
    assert metric(text, "helicone_scorer_reconcile_reconciled_total") == 4
    assert metric(text, "helicone_scorer_reconcile_last_completed_timestamp_seconds") > 0


def _ids(percent: float, inside: bool, n: int) -> Iterator[str]:
    """``n`` fresh request ids in (or out of) a ``percent`` sample."""
    found = 0
    while found < n:
        rid = str(uuid.uuid4())
        if in_sample(rid, percent) == inside:
            found += 1
            yield rid


def test_the_sweep_honours_the_property_filters_and_the_sample(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(
        SCORER_RECONCILE_PROPERTIES="app=chat, env=prod",
        SCORER_RECONCILE_SAMPLE="50",
        **SWEEP,
    )
    props = {"app": "chat", "env": "prod"}
    wanted = [
        log(standin, rid=rid, request_properties=props | {"user": "u"}) for rid in _ids(50, True, 3)
    ]
    sampled_out = [log(standin, rid=rid, request_properties=props) for rid in _ids(50, False, 3)]
    other = [
        log(standin, rid=rid, request_properties=p)
        for rid, p in zip(
            _ids(50, True, 4),
            [{}, {"app": "chat"}, {"app": "chat", "env": "dev"}, {"app": "Chat", "env": "prod"}],
            strict=True,
        )
    ]
    standin.wait_for(lambda: standin.posted_ids() >= set(wanted))
    count = len(sweeps(server))
    standin.wait_for(lambda: len(sweeps(server)) >= count + 2)  # two more full sweeps
    assert set(server.rows()) == set(wanted)
    assert standin.posted_ids() == set(wanted)
    assert f"listed {len(wanted + sampled_out + other)}, missing 0" in sweeps(server)[-1]


def test_a_restart_resumes_from_the_stored_end_mark(
    make_server: ServerFactory, standin: StandIn
) -> None:
    env = SWEEP | {"SCORER_RECONCILE_INTERVAL": "1", "SCORER_RECONCILE_CONFIRM_AFTER": "0.5"}
    lookback = 1.5  # CONFIRM_AFTER + INTERVAL
    first = make_server(**env)
    standin.wait_for(lambda: len(queries(standin)) >= 4)
    assert first.terminate()
    before = queries(standin)
    created, _ = bounds(before[0])  # the very first sweep starts at the store's creation
    ends = [end for _, end in map(bounds, before)]

    make_server(**env)
    standin.wait_for(lambda: len(queries(standin)) > len(before))
    start, _ = bounds(queries(standin)[len(before)])
    assert start > created + 1  # not from the creation again...
    # ...but from where a sweep of the first server ended, less the look-back.
    assert min(abs(start - (end - lookback)) for end in ends) < 0.002


def test_two_instances_never_sweep_at_once_nor_post_a_request_twice(
    make_server: ServerFactory, standin: StandIn
) -> None:
    standin.query_stall = 0.2  # a sweep takes a while: another one would overlap it
    env = SWEEP | {"SCORER_RECONCILE_INTERVAL": "0.3"}
    servers = [make_server(store="postgres", **env) for _ in range(2)]
    missed = [log(standin, text) for text in TEXTS for _ in range(3)]
    standin.wait_for(lambda: standin.posted_ids() >= set(missed))
    count = len(queries(standin))
    standin.wait_for(lambda: len(queries(standin)) >= count + 6)
    assert standin.most_queries_at_once == 1
    assert standin.posts() == dict.fromkeys(missed, 1)
    assert all(sweeps(s) for s in servers), "each instance swept"


def test_a_score_helicone_dropped_is_posted_again_once(
    tmp_path: Path, make_server: ServerFactory, standin: StandIn
) -> None:
    confirm_after = 1.0
    # The look-back (CONFIRM_AFTER plus an interval) holds a request for a confirming sweep only
    # if it was posted within about an interval of being logged: 2 s, not SWEEP's 0.5 s, so a
    # loaded CI machine's slower post still falls inside it (a 0.5 s interval failed in CI).
    env = SWEEP | {
        "SCORER_RECONCILE_CONFIRM_AFTER": str(confirm_after),
        "SCORER_RECONCILE_INTERVAL": "2",
    }
    server = make_server(**env)
    dropped, kept = str(uuid.uuid4()), str(uuid.uuid4())
    standin.drop_scores(dropped, times=2)  # Helicone never shows them, even the second time
    for rid in (dropped, kept):
        log(standin, rid=rid)
        assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: standin.posts()[dropped] == 2)
    again = standin.ok_calls("score")[-1]
    assert again.request_id == dropped
    server.wait_rows(lambda rows: all(r["state"] == "done" for r in rows.values()))
    text = server.client.get("/metrics").text
    assert metric(text, "helicone_scorer_reconcile_unconfirmed_total") == 1
    assert server.terminate()

    # Listed again once the second post is old enough: still missing, but never posted a third
    # time (the look-back is sized for one confirmation; --since widens the window to here).
    eventually(lambda: time.monotonic() > again.at + confirm_after, 10, what="the post aged")
    cli = api_env(
        standin.base_url,
        tmp_path,
        SCORER_RECONCILE_SETTLE="0",
        SCORER_RECONCILE_CONFIRM_AFTER=str(confirm_after),
    )
    result = run(tmp_path, cli, "reconcile", "--since", "1h")
    assert result.returncode == 0, result.stderr
    assert "listed 2, missing 0, reconciled 0, failed 0, unconfirmed 0" in result.stdout
    rows = server.rows()
    assert {rid: (rows[rid]["state"], rows[rid]["unconfirmed"]) for rid in rows} == {
        dropped: ("done", True),
        kept: ("done", False),
    }
    assert standin.posts() == {dropped: 2, kept: 1}


def test_a_shutdown_does_not_wait_for_a_sweep(make_server: ServerFactory, standin: StandIn) -> None:
    standin.query_stall = 600.0  # the sweep's first query never ends by itself
    server = make_server(**SWEEP)
    standin.wait_for(lambda: standin.most_queries_at_once == 1)
    assert server.terminate(timeout=20)  # well before the query would end
    line = sweeps(server)[-1]
    assert "listed 0" in line
    assert "stopped early at its start (cancelled)" in line


def test_in_sample_is_stable_and_takes_the_share_asked() -> None:
    ids = [str(uuid.uuid4()) for _ in range(4000)]
    assert [in_sample(rid, 30) for rid in ids] == [in_sample(rid, 30) for rid in ids]
    assert 1000 < sum(in_sample(rid, 30) for rid in ids) < 1400
    assert not any(in_sample(rid, 0) for rid in ids)
    assert all(in_sample(rid, 100) for rid in ids)
    # A larger sample holds every id of a smaller one.
    assert all(in_sample(rid, 60) for rid in ids if in_sample(rid, 30))


def test_landed_names_take_the_boolean_suffix_off() -> None:
    assert landed_names({"words": 3, "refusal-hcone-bool": 0}) == {"words", "refusal"}
    assert landed_names({}) == frozenset()


def _create_store(url: str) -> None:
    async def go() -> None:
        store = open_store(url)
        await store.open()
        await store.close()

    asyncio.run(go())


def test_reconcile_command_runs_one_sweep_and_prints_what_it_found(
    tmp_path: Path, standin: StandIn
) -> None:
    env = api_env(standin.base_url, tmp_path, SCORER_RECONCILE_SETTLE="0")
    _create_store(env["SCORER_DATABASE_URL"])
    result = run(tmp_path, env | {"SCORER_RECONCILE_SETTLE": "120"}, "reconcile")
    assert result.returncode == 0, result.stderr
    assert "is empty (the store is younger than SCORER_RECONCILE_SETTLE, 120s)" in result.stdout
    assert queries(standin) == []
    standin.log_request(  # before the store was created: backfill's, unless --since says so
        str(uuid.uuid4()),
        {},
        {"choices": [{"message": {"content": "old"}}]},
        created_at=iso(datetime.fromtimestamp(time.time() - 3600, UTC)),
        body="inline",
    )
    good = [log(standin, text) for text in list(TEXTS)[:2]]
    expired = log(standin, body="expired")

    result = run(tmp_path, env, "reconcile")
    assert result.returncode == 1
    assert "listed 3, missing 3, reconciled 2, failed 1, unconfirmed 0" in result.stdout
    assert "2 queued: the relay of `helicone-scorer serve` on this store posts them" in (
        result.stdout
    )
    line = one_line_error(result)
    assert "1 missed request(s) not queued" in line
    assert f"{expired!r}: body URL answered Forbidden" in line
    rows = {rid: (e["state"], e["origin"]) for rid, e in read_rows(tmp_path / "scorer.db").items()}
    assert rows == dict.fromkeys(good, ("pending", "reconciled"))

    result = run(tmp_path, env, "reconcile", "--since", "2h")
    assert "listed 4, missing 2, reconciled 1, failed 1" in result.stdout


def swept_store(standin: StandIn, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A store for ``reconcile`` runs, made now; their settings: no settle time, and a
    look-back of 0.2 s (an interval and a confirmation delay of 0.1 s)."""
    env = api_env(
        standin.base_url,
        tmp_path,
        SCORER_RECONCILE_SETTLE="0",
        SCORER_RECONCILE_INTERVAL="0.1",
        SCORER_RECONCILE_CONFIRM_AFTER="0.1",
        **extra,
    )
    _create_store(env["SCORER_DATABASE_URL"])
    return env


def test_no_room_in_the_budget_stops_a_sweep_at_its_last_page_and_the_next_goes_on(
    tmp_path: Path, standin: StandIn
) -> None:
    env = swept_store(
        standin,
        tmp_path,
        SCORER_RECONCILE_PROPERTIES="app=x",
        SCORER_RATE_LIMIT_PER_MINUTE="1",  # one query at a time...
        SCORER_RATE_WINDOW_SECONDS="0.5",  # ...per half second
    )
    created = time.time()
    eventually(lambda: time.time() > created + 2, 10, what="two seconds passed")
    # 1,500 requests a millisecond apart: two pages. Two of them are within the filter.
    rows = []
    for i in range(1500):
        at = created + 0.2 + i / 1000
        rid = str(uuid.uuid4())
        props = {"app": "x"} if i in (10, 1200) else {}
        standin.log_request(
            rid,
            {},
            {"choices": [{"message": {"content": "a b"}}]},
            created_at=iso(datetime.fromtimestamp(at, UTC)),
            body="inline",
            request_properties=props,
        )
        rows.append((rid, at))

    result = run(tmp_path, env, "reconcile")
    assert result.returncode == 1
    assert "listed 1000, missing 1, reconciled 1, failed 0" in result.stdout
    assert "the sweep stopped early: no room in the API budget" in one_line_error(result)
    assert set(read_rows(tmp_path / "scorer.db")) == {rows[10][0]}
    first = len(queries(standin))

    def goes_on() -> Any:
        again = run(tmp_path, env, "reconcile")
        return again if again.returncode == 0 else None

    again = eventually(goes_on, 20, what="a sweep with room")
    # It began at the last row the first sweep handled, less the look-back.
    start, _ = bounds(queries(standin)[first])
    assert abs(start - (rows[999][1] - 0.2)) < 0.002
    # From row 800 on (or 799: times are sent to the millisecond), the second page included.
    assert re.search(r"listed 70[01], missing 1, reconciled 1, failed 0,", again.stdout)
    assert set(read_rows(tmp_path / "scorer.db")) == {rows[10][0], rows[1200][0]}


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"HELICONE_API_KEY": ""}, [], "HELICONE_API_KEY is not set: reconcile needs"),
        ({}, [], "no store at sqlite:///"),
        ({}, ["--since", "lately"], "neither a duration"),
        ({"SCORER_RECONCILE_SAMPLE": "101"}, [], "invalid setting SCORER_RECONCILE_SAMPLE:"),
        (
            {"SCORER_RECONCILE_PROPERTIES": "app"},
            [],
            "invalid setting SCORER_RECONCILE_PROPERTIES: 'app': expected key=value pairs",
        ),
    ],
)
def test_reconcile_command_errors_are_one_line(
    tmp_path: Path, standin: StandIn, env: dict[str, str], args: list[str], message: str
) -> None:
    result = run(tmp_path, api_env(standin.base_url, tmp_path, **env), "reconcile", *args)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert queries(standin) == []


def test_a_request_whose_bodies_failed_is_tried_again_past_the_look_back(
    tmp_path: Path, standin: StandIn
) -> None:
    env = swept_store(standin, tmp_path)
    stuck = log(standin, "a b c d", body="expired")  # its signed URL answers 403, for now
    result = run(tmp_path, env, "reconcile")
    assert "missing 1, reconciled 0, failed 1" in result.stdout, result.stdout
    # Later: its body can be had, and more traffic was logged well past the look-back.
    eventually(
        lambda: (
            time.time()
            > datetime.fromisoformat(standin.logged[-1]["request_created_at"]).timestamp() + 1
        ),
        10,
        what="a second passed",
    )
    standin.bodies[stuck] = (
        orjson.dumps({"request": {}, "response": {"choices": [{"message": {"content": "a b"}}]}}),
        {},
    )
    later = log(standin, "x x x x", body="inline")
    again = run(tmp_path, env, "reconcile")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "missing 2, reconciled 2, failed 0" in again.stdout
    assert set(read_rows(tmp_path / "scorer.db")) == {stuck, later}


def test_a_request_is_swept_only_once_settled_after_its_call_ended() -> None:
    policy = Policy(interval=60, settle=120)
    now = time.time()

    def row(age: float, took_ms: float | None) -> RequestRow:
        created = iso(datetime.fromtimestamp(now - age, UTC))
        return RequestRow(request_id="r", request_created_at=created, delay_ms=took_ms)

    assert policy.settled(row(121, 0), now)
    assert not policy.settled(row(119, None), now)
    # A call that ran 5 minutes sends its webhook once it ended: not missing yet at 6 minutes.
    assert not policy.settled(row(360, 300_000), now)
    assert policy.settled(row(421, 300_000), now)


def test_a_row_that_says_nothing_of_scores_confirms_nothing() -> None:
    quiet = RequestRow.model_validate({"request_id": "a"})
    empty = RequestRow.model_validate({"request_id": "b", "scores": {}})
    assert quiet.scores is None  # so the sweep does not take it for "none applied"
    assert empty.scores == {}
