"""The real server while PostgreSQL goes away and comes back: every webhook it acknowledges is
delivered exactly once, and whatever it could not store gets 503, never 2xx.

The server reaches the database through a :class:`tests.link.LinkThread` the test cuts (every
connection reset, new ones refused: the database down or unreachable), freezes (no byte passes,
nothing is closed: a hung path) and restores; a restart
as the server sees it is ``pg_terminate_backend`` on each of its sessions, found by the
``application_name`` its URL sets.
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.link import LinkThread
from tests.server import Server, payload, read_rows, wait_done
from tests.standin import Injected, StandIn
from tests.stores import with_query

ACCEPTED, UNAVAILABLE = 202, 503


class Sender:
    """Posts webhooks to the server and keeps the ids it acknowledged."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.acked: set[str] = set()
        self.answers: dict[str, int] = {}
        self._lock = threading.Lock()

    def send(self, prefix: str, count: int = 1) -> list[int]:
        return [self.one(f"{prefix}-{i}-{uuid.uuid4().hex[:6]}") for i in range(count)]

    def one(self, rid: str) -> int:
        status = self.server.post(payload(rid)).status_code
        with self._lock:
            self.answers[rid] = status
            if 200 <= status < 300:
                self.acked.add(rid)
        return status

    def ready(self) -> int:
        return self.server.client.get("/readyz").status_code


def serve_through(make_server: ServerFactory, link: LinkThread, tag: str, **env: str) -> Sender:
    """A server on the database through ``link``, its sessions named ``tag``."""
    url = with_query(link.url, connect_timeout="1", application_name=tag)
    defaults = {
        "SCORER_DATABASE_URL": url,
        "SCORER_DATABASE_STATEMENT_TIMEOUT": "3",
        "SCORER_LEASE_SECONDS": "5",  # an outcome lost with its connection is tried again soon
    }
    return Sender(make_server(**(defaults | env)))


def terminate_sessions(url: str, tag: str, *, waiting_on_a_lock: bool = False) -> int:
    """``pg_terminate_backend`` each session of the server tagged ``tag`` (only those waiting
    on a lock, if asked); how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            " AND (NOT %s OR wait_event_type = 'Lock')",
            (tag, waiting_on_a_lock),
        ).fetchall()
    return len(rows)


def delivered_exactly_once(standin: StandIn, sender: Sender, direct_url: str) -> None:
    """Every acknowledged webhook is done in the store, and reached the stand-in once.

    Counted only once all are done: a repeat (an outcome lost, the webhook claimed again after
    its lease) is posted before the delivery that ends it is recorded."""
    wait_done(direct_url, sender.acked, 60)
    posts = standin.posts()
    not_once = {rid: posts[rid] for rid in sender.acked if posts[rid] != 1}
    assert not_once == {}, standin.calls


def test_database_down_then_back_and_its_sessions_killed(
    make_server: ServerFactory, standin: StandIn, postgres_url: str, link: LinkThread
) -> None:
    tag = f"scorer-{uuid.uuid4().hex[:8]}"
    sender = serve_through(make_server, link, tag)
    server = sender.server
    assert sender.send("before", 5) == [ACCEPTED] * 5
    assert sender.ready() == 200

    link.cut()
    eventually(lambda: sender.ready() == UNAVAILABLE, 10, what="/readyz 503 while it is down")
    assert sender.send("down", 3) == [UNAVAILABLE] * 3
    assert server.post(payload("down-json")).json() == {
        "error": "could not store the webhook; it was not accepted"
    }
    assert server.client.get("/metrics").status_code == UNAVAILABLE  # a failed scrape, no 500
    assert server.proc is not None
    assert server.proc.poll() is None  # it did not stop

    link.start()
    eventually(lambda: sender.ready() == 200, 30, what="/readyz 200 once it is back")
    assert sender.send("back", 5) == [ACCEPTED] * 5
    # The read path has connections of its own, which come back by themselves too.
    eventually(lambda: server.client.get("/metrics").status_code == 200, 30, what="/metrics 200")

    # A database restart, as the server sees it: each of its sessions ends under it.
    assert terminate_sessions(postgres_url, tag) >= 1
    assert set(sender.send("restarted", 3)) <= {ACCEPTED, UNAVAILABLE}
    eventually(lambda: sender.ready() == 200, 30, what="/readyz 200 after the restart")
    assert sender.send("after", 5) == [ACCEPTED] * 5

    down = {rid for rid, status in sender.answers.items() if rid.startswith("down")}
    assert not down & set(read_rows(postgres_url))  # what got 503 while down was not stored
    delivered_exactly_once(standin, sender, postgres_url)


def test_a_webhook_whose_connection_dies_while_it_is_stored(
    make_server: ServerFactory, standin: StandIn, postgres_url: str, link: LinkThread
) -> None:
    tag = f"scorer-{uuid.uuid4().hex[:8]}"
    sender = serve_through(make_server, link, tag)
    assert sender.send("warm") == [ACCEPTED]

    # Its INSERT waits on a lock; its session ends while it waits: never committed, so 503.
    with psycopg.connect(postgres_url) as locker:
        locker.execute("LOCK TABLE webhooks IN EXCLUSIVE MODE")
        answer: list[int] = []
        sending = threading.Thread(target=lambda: answer.append(sender.one("in-flight")))
        sending.start()
        eventually(
            lambda: terminate_sessions(postgres_url, tag, waiting_on_a_lock=True),
            10,
            what="its INSERT waiting on the lock, and ended",
        )
        sending.join(30)
        locker.rollback()
    assert answer == [UNAVAILABLE]
    assert "in-flight" not in read_rows(postgres_url)

    # A burst cut in the middle: each webhook gets 202 or 503, and each 202 is stored.
    threads = [threading.Thread(target=sender.send, args=(f"burst-{n}", 4)) for n in range(6)]
    for thread in threads:
        thread.start()
    eventually(lambda: len(sender.answers) >= 6, 30, what="the burst under way")
    link.cut()
    link.start()
    for thread in threads:
        thread.join(60)
    burst = {rid: s for rid, s in sender.answers.items() if rid.startswith("burst")}
    assert len(burst) == 24
    assert set(burst.values()) <= {ACCEPTED, UNAVAILABLE}, burst
    assert {rid for rid, s in burst.items() if s == ACCEPTED} <= set(read_rows(postgres_url))
    eventually(lambda: sender.ready() == 200, 30, what="/readyz 200 after the cut")
    assert sender.send("after") == [ACCEPTED]
    delivered_exactly_once(standin, sender, postgres_url)


def test_a_database_that_stops_answering_gets_503s_not_hangs(
    make_server: ServerFactory, standin: StandIn, postgres_url: str, link: LinkThread
) -> None:
    tag = f"scorer-{uuid.uuid4().hex[:8]}"
    sender = serve_through(make_server, link, tag)
    assert sender.send("before", 3) == [ACCEPTED] * 3
    link.freeze()  # bytes stop, nothing is closed: no reset ever tells the server
    assert sender.send("hung", 2) == [UNAVAILABLE] * 2
    assert sender.ready() == UNAVAILABLE
    link.freeze(False)
    eventually(lambda: sender.ready() == 200, 30, what="/readyz 200 once it answers again")
    assert sender.send("after", 3) == [ACCEPTED] * 3
    delivered_exactly_once(standin, sender, postgres_url)


@pytest.mark.parametrize("lease", ["5", "600"], ids=["lease-ran-out", "heartbeats-stopped"])
def test_a_call_left_waiting_on_a_frozen_database_is_not_made_after_its_lease(
    make_server: ServerFactory, standin: StandIn, postgres_url: str, link: LinkThread, lease: str
) -> None:
    """A webhook with two calls (scores, then feedback): the database freezes as its first
    call is answered, so the second waits on the store (its place in the budget). Another
    instance claims it meanwhile, once its lease ran out or, with a long lease, once the first
    one's heartbeats stopped for the takeover time, and makes both calls (the first again: its
    outcome was never recorded, so delivery is at least once). After the thaw, the first holder
    must not make its second call: its lease may have gone (it had), whatever the store says."""
    rule = {"SCORER_FEEDBACK_RULE": "word_count > 1", "SCORER_LEASE_SECONDS": lease}
    first = serve_through(make_server, link, f"scorer-{uuid.uuid4().hex[:8]}", **rule)
    standin.fail_next(Injected(201, {"data": None, "error": None}, then=link.freeze))
    rid = str(uuid.uuid4())  # feedback is rated for UUIDs only
    assert first.one(rid) == ACCEPTED
    eventually(lambda: standin.posts()[rid] == 1, 20, what="its scores answered, then a freeze")

    make_server(SCORER_DATABASE_URL=postgres_url, **rule)
    wait_done(postgres_url, {rid}, 30)  # the second instance delivered it
    link.freeze(False)
    log = first.server.wait_for_log(f"request_id={rid} outcome=fenced", 30)

    feedback = [c for c in standin.ok_calls("feedback") if c.request_id == rid]
    assert len(feedback) == 1, log
    assert standin.posts()[rid] == 2  # the first call, made by both holders
    assert f"request_id={rid} outcome=fenced dropped=released" in log
