"""The relay, against the real server and the stand-in: retries, dry runs, crashes, shutdown."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable

import httpx2

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.server import Server, payload
from tests.standin import Injected, StandIn


def test_5xx_and_no_answer_are_retried_until_delivered(server: Server, standin: StandIn) -> None:
    standin.fail_next(Injected(503), Injected(500), Injected(502))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    statuses = [c.status for c in standin.calls if c.request_id == rid]
    assert statuses == [503, 500, 502, 201]
    # The stand-in records its 201 before the server has read it and stored the outcome.
    standin.wait_for(lambda: server.rows()[rid]["state"] == "done")
    assert server.rows()[rid]["attempts"] == 4


def test_unreachable_api_is_retried(make_server: ServerFactory, standin: StandIn) -> None:
    dead_port = StandIn().port  # nothing listens there
    server = make_server(HELICONE_API_BASE=f"http://127.0.0.1:{dead_port}")
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    row = server.wait_rows(lambda rows: rows[rid]["attempts"] >= 2, 10)[rid]
    assert row["state"] in ("pending", "leased")
    assert row["attempts"] >= 2
    assert "ConnectError" in row["last_error"]
    # Point it at the real stand-in: the same stored webhook is delivered.
    server.terminate()
    server.env["HELICONE_API_BASE"] = standin.base_url
    server.start()
    standin.wait_for(lambda: rid in standin.posted_ids())


def test_the_first_success_after_an_outage_makes_the_waiting_retries_due(
    server: Server, standin: StandIn
) -> None:
    """Three posts fail with 503s asking for ten minutes; the next call succeeds: the three are
    posted at once, not ten minutes later, with no attempt added."""
    down = Injected(503, {"data": None, "error": "down"}, headers={"Retry-After": "600"})
    standin.fail_next(down, down, down)
    waiting = [str(uuid.uuid4()) for _ in range(3)]
    for rid in waiting:
        assert server.post(payload(rid)).status_code == 202
    rows = server.wait_rows(
        lambda rows: all(r in rows and rows[r]["last_status"] == 503 for r in waiting)
    )
    assert {rows[r]["state"] for r in waiting} == {"pending"}
    assert all(rows[r]["available_at"] > time.time() + 500 for r in waiting)
    back = str(uuid.uuid4())
    assert server.post(payload(back)).status_code == 202
    standin.wait_for(lambda: set(waiting) | {back} <= standin.posted_ids(), 30)
    server.wait_for_log("the API answers again: 3 webhook(s) waiting out a retry are due now")
    rows = server.wait_rows(lambda rows: all(rows[r]["state"] == "done" for r in waiting))
    assert [rows[r]["attempts"] for r in waiting] == [2, 2, 2]
    assert all(standin.posts()[r] == 1 for r in [*waiting, back])


def test_permanent_4xx_goes_to_dead_letters(server: Server, standin: StandIn) -> None:
    standin.fail_next(Injected(400, {"data": None, "error": "bad scores"}))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: any(c.request_id == rid for c in standin.calls))
    row = server.wait_rows(lambda rows: rows[rid]["state"] == "dead", 10)[rid]
    assert (row["state"], row["last_status"], row["last_error"]) == ("dead", 400, "bad scores")
    assert len([c for c in standin.calls if c.request_id == rid]) == 1


def test_dry_run_scores_and_stores_but_posts_nothing(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(api=False, HELICONE_API_BASE=standin.base_url)
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "one two two")).status_code == 202
    row = server.wait_rows(lambda rows: rows[rid]["state"] == "done", 10)[rid]
    assert row["scores"]["vocabulary_diversity"] == 67
    assert row["last_status"] is None
    assert standin.calls == []
    log = server.log()
    assert "dry run" in log
    assert f"request_id={rid} outcome=dry_run" in log


def test_no_scores_posts_nothing(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    assert server.post(b'{"request_id":"%s"}' % rid.encode()).status_code == 202
    marker = str(uuid.uuid4())
    assert server.post(payload(marker)).status_code == 202
    standin.wait_for(lambda: marker in standin.posted_ids())
    server.wait_rows(lambda rows: rows[rid]["state"] == "done", 5)
    assert rid not in {c.request_id for c in standin.calls}


def _burst(server: Server, count: int, acked: list[str], stop: threading.Event) -> None:
    """Send ``count`` webhooks from 16 threads; record every id the server acknowledged."""

    def one(i: int) -> None:
        if stop.is_set():
            return
        rid = f"burst-{i}-{uuid.uuid4()}"
        try:
            response = server.post(payload(rid))
        except httpx2.TransportError:
            return
        if response.status_code == 202:
            acked.append(rid)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def _cut_burst(server: Server, total: int, after: int, cut: Callable[[], object]) -> list[str]:
    """Send a burst; once ``after`` webhooks are acknowledged, ``cut`` it; the acked ids."""
    acked: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=_burst, args=(server, total, acked, stop))
    sender.start()
    eventually(
        lambda: len(acked) >= after, 60, what=f"{after} webhooks acknowledged", interval=0.01
    )
    cut()
    stop.set()
    sender.join()
    return acked


def test_sigkill_mid_burst_loses_no_acknowledged_webhook(
    make_server: ServerFactory, standin: StandIn
) -> None:
    # A slow API keeps work in flight, so the kill lands on leased and pending webhooks alike.
    server = make_server(SCORER_LEASE_SECONDS="2")
    standin.fail_next(*[Injected(201, {"data": None, "error": None}, stall=0.3)] * 40)
    acked = _cut_burst(server, 600, 150, server.kill)
    assert len(acked) >= 150
    server.start()
    standin.wait_for(lambda: set(acked) <= standin.posted_ids(), timeout=60)
    assert standin.violations == []
    standin.wait_for(lambda: all(server.rows()[rid]["state"] == "done" for rid in acked))


def test_sigterm_releases_work_in_flight_and_restart_finishes_it(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_SHUTDOWN_GRACE="0.5", SCORER_LEASE_SECONDS="600")
    standin.fail_next(Injected(201, stall=5.0), Injected(201, stall=5.0))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert server.post(payload(first)).status_code == 202
    assert server.post(payload(second)).status_code == 202
    standin.wait_for(lambda: _leased(server) == 2, timeout=10)
    assert server.terminate()
    rows = server.rows()
    # The grace period ended before the stalled posts answered: both were released, not lost,
    # and, with a 10-minute lease, only the release lets a restart pick them up at once.
    assert rows[first]["state"] == rows[second]["state"] == "pending"
    assert "released 2 unfinished webhook(s)" in server.log()
    server.start()
    standin.wait_for(lambda: {first, second} <= standin.posted_ids(), timeout=20)


def _leased(server: Server) -> int:
    return sum(1 for r in server.rows().values() if r["state"] == "leased")


def test_a_burst_cut_by_sigterm_keeps_every_acknowledged_webhook(
    server: Server, standin: StandIn
) -> None:
    """Every webhook acknowledged before the shutdown is stored, and delivered after a restart.

    (That a request caught mid-body is still answered is tests/test_shutdown.py's job.)
    """
    clean: list[bool] = []
    acked = _cut_burst(server, 200, 20, lambda: clean.append(server.terminate()))
    assert clean == [True]
    rows = server.rows()
    assert set(acked) <= set(rows)
    server.start()
    standin.wait_for(lambda: set(acked) <= standin.posted_ids(), timeout=30)
