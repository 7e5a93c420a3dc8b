"""Two server processes on one PostgreSQL database: one queue, one budget, takeover.

Each test starts two real ``serve`` processes at once on the same database (a schema of the
test's own) and talks to both:

- a duplicate sent to both at once is stored by one (202) and seen as one by the other (200),
  and posted once;
- their posts together stay inside the stand-in's own window (it would answer 429), and a 429
  seen by one holds the other's calls until its ``Retry-After`` has passed;
- work stored by one wakes the other at once (LISTEN/NOTIFY), with no polling;
- SIGKILLed while webhooks arrive and its posts are in flight, one instance leaves leases that
  the other takes over: every webhook it acknowledged is delivered within 30 s. Delivery is at
  least once: only a webhook the killed instance held a lease on at the kill may be posted
  twice (its call was made, or even answered, with no outcome recorded); any other repeat
  would be a fencing failure.

Rows are read through the store's read path (:func:`tests.server.entries`); the two facts it
does not give, which instance holds a lease and whether the budget is paused, are read with SQL
from the tables the PostgreSQL store documents. The rolling restart on PostgreSQL is in
``tests/test_deploy.py``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.eventually import eventually
from tests.server import Server, payload, wait_done, with_api
from tests.standin import Injected, StandIn
from tests.traffic import Traffic

Instances = Callable[..., tuple[Server, Server]]


def posted_by(server: Server) -> set[str]:
    """The request ids this server logged as delivered (it recorded the delivery)."""
    return set(re.findall(r"delivered request_id=(\S+) outcome=posted", server.log()))


def wait_both_posted(*servers: Server) -> None:
    """Wait until each server has logged a delivery of its own (logged just after the
    stand-in answered, so awaited)."""
    eventually(
        lambda: all(posted_by(s) for s in servers),
        10,
        what="a delivery logged by each instance",
        show=lambda: [posted_by(s) for s in servers],
    )


def holders(url: str) -> dict[str, int]:
    """The webhooks leased for their post: request id -> the pid of the instance holding it."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT w.request_id, i.pid FROM webhooks w JOIN instances i ON i.id = w.holder"
            " WHERE w.state = 'leased' AND w.scores IS NOT NULL"
        ).fetchall()
    return {str(rid): int(pid) for rid, pid in rows}


def leased_by(url: str, pid: int) -> set[str]:
    """The webhooks the instance running as ``pid`` holds a lease on, awaiting their post."""
    return {rid for rid, holder in holders(url).items() if holder == pid}


@pytest.fixture
def instances(tmp_path: Path, postgres_url: str) -> Iterator[Instances]:
    """Start two servers on ``postgres_url``, talking to the given stand-in."""
    started: list[Server] = []

    def make(standin: StandIn, **env: str) -> tuple[Server, Server]:
        settings = with_api(standin.base_url) | {"SCORER_DATABASE_URL": postgres_url} | env
        a, b = Server(tmp_path, settings), Server(tmp_path, settings)
        started.extend((a, b))
        # Started at once, on a schema neither has created: they migrate and join together.
        for server in (a, b):
            server.start(wait=False)
        for server in (a, b):
            server.wait_healthy()
        return a, b

    yield make
    for server in started:
        server.close()


def test_a_duplicate_sent_to_both_is_acknowledged_by_both_and_posted_once(
    instances: Instances, standin: StandIn, postgres_url: str
) -> None:
    a, b = instances(standin)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    statuses: dict[str, list[int]] = {rid: [] for rid in ids}

    def send(server: Server, rid: str) -> None:
        statuses[rid].append(server.post(payload(rid)).status_code)

    for rid in ids:  # the two copies race: each to its instance, at once
        threads = [threading.Thread(target=send, args=(s, rid)) for s in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    # Exactly one instance stored each webhook (202), the other saw the duplicate (200).
    assert {rid: sorted(got) for rid, got in statuses.items() if sorted(got) != [200, 202]} == {}
    wait_done(postgres_url, ids, 30)
    assert standin.posts() == Counter(ids)


def test_their_posts_together_never_pass_the_window_and_all_are_delivered(
    instances: Instances, postgres_url: str
) -> None:
    window, limit = 3.0, 4
    limited = StandIn(window_limit=limit, window=window).start()
    try:
        a, b = instances(
            limited,
            SCORER_RATE_LIMIT_PER_MINUTE=str(limit),
            SCORER_RATE_WINDOW_SECONDS=str(window),
            SCORER_RELAY_CONCURRENCY="1",  # one call at a time each: both take turns
        )
        ids = [str(uuid.uuid4()) for _ in range(16)]
        for i, rid in enumerate(ids):
            assert (a, b)[i % 2].post(payload(rid)).status_code == 202
        # 16 posts at 4 per 3 s, between two instances each of which could send all at once.
        wait_done(postgres_url, ids, 60)
        # The stand-in answers 429 to any call past its window: none was.
        assert [c for c in limited.calls if c.status == 429] == []
        assert limited.posts() == Counter(ids)
        assert limited.violations == []
        # Both took part: the budget was shared, not one instance doing all the posting.
        wait_both_posted(a, b)
    finally:
        limited.stop()


def test_new_work_wakes_the_other_instance_at_once(
    instances: Instances, standin: StandIn, postgres_url: str
) -> None:
    # Neither polls for minutes: only a wake-up moves work. Each makes one call at a time, and
    # the first call stalls; the second webhook, stored by the instance making that call, must
    # be posted by the other, woken by its notification (else it would wait for the stall).
    a, b = instances(standin, SCORER_POLL_INTERVAL="300", SCORER_RELAY_CONCURRENCY="1")
    standin.fail_next(Injected(201, stall=30.0))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert a.post(payload(first)).status_code == 202
    pid = eventually(lambda: holders(postgres_url).get(first), 20, what="a call of the first")
    busy, idle = (a, b) if a.proc is not None and a.proc.pid == pid else (b, a)
    assert busy.post(payload(second)).status_code == 202
    eventually(lambda: second in posted_by(idle), 20, what="the other posted the second")
    assert standin.posted_ids() == {second}  # the first is still stalled


def paused_for(url: str) -> float:
    """Seconds the shared posting pause still runs (<= 0: none), on the database's clock."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT paused_until - scorer_now() FROM budget WHERE id = 1").fetchone()
    assert row is not None
    return float(row[0])


def test_a_429_seen_by_one_instance_pauses_the_other(
    instances: Instances, standin: StandIn, postgres_url: str
) -> None:
    retry_after = 3
    # Two calls at a time each, and the first four after the 429 stall: so once the pause ends,
    # both instances must be calling.
    a, b = instances(standin, SCORER_RELAY_CONCURRENCY="2")
    standin.fail_next(
        Injected(429, headers={"Retry-After": str(retry_after)}),
        *[Injected(201, stall=1.5)] * 4,
    )
    first = str(uuid.uuid4())
    assert a.post(payload(first)).status_code == 202
    eventually(lambda: paused_for(postgres_url) > 0, 20, what="the pause stored")
    limited = next(c for c in standin.calls if c.status == 429)
    assert limited.request_id == first

    # Work arrives at both while the pause runs; neither calls before it ends.
    later = [str(uuid.uuid4()) for _ in range(6)]
    for i, rid in enumerate(later):
        assert (b, a)[i % 2].post(payload(rid)).status_code == 202
    standin.wait_for(lambda: standin.posted_ids() == {first, *later}, timeout=30)
    after = [c for c in standin.calls if c is not limited]
    # The pause ends Retry-After after the 429 was recorded, which is after the stand-in sent
    # it: no call reached the stand-in before then (a stalled call counts from its arrival).
    # The tenth of a second allows for the two clocks' readings (monotonic, epoch).
    assert min(c.arrived for c in after) - limited.at >= retry_after - 0.1, after
    wait_both_posted(a, b)
    assert standin.posts() == Counter([first, *later])


def test_one_killed_mid_burst_and_the_other_posts_all_it_had_acknowledged(
    instances: Instances, standin: StandIn, postgres_url: str
) -> None:
    a, b = instances(standin, SCORER_RELAY_CONCURRENCY="4")
    assert a.proc is not None
    pid = a.proc.pid
    # Every call is slow at first, so the instance to be killed holds leases with calls in
    # flight. The stand-in still answers a call whose caller died: that is what at-least-once
    # may repeat.
    standin.fail_next(*[Injected(201, stall=2.0)] * 12)
    burst = [str(uuid.uuid4()) for _ in range(24)]
    for i, rid in enumerate(burst):
        assert (a, b)[i % 2].post(payload(rid)).status_code == 202
    # Webhooks keep arriving at the one to be killed until it dies.
    traffic = Traffic(a.url).start()
    try:
        eventually(lambda: leased_by(postgres_url, pid), 20, what="a post in flight on a")
        traffic.wait_for_more(10)
        a.kill()
        killed_at = time.monotonic()
    finally:
        traffic.stop()
    # After the kill nothing changes its rows until the takeover: these are the leases it held.
    orphaned = leased_by(postgres_url, pid)
    assert orphaned, "the killed instance held no lease"
    acked = set(burst) | {rid for rid, sent in traffic.sent.items() if sent.outcome == 202}

    # Done in the store: only a live instance records a delivery (a call of the killed one
    # that the stand-in answered after the kill counts for nothing here).
    wait_done(postgres_url, orphaned, 30)
    took = time.monotonic() - killed_at
    print(f"takeover: SIGKILL to all of the killed instance's leases delivered in {took:.1f}s")
    wait_done(postgres_url, acked, 30 - (time.monotonic() - killed_at))
    assert acked <= standin.posted_ids()
    eventually(lambda: orphaned <= posted_by(b), 10, what="the orphans delivered by the other")
    # Posted once each, except a webhook whose lease the killed instance held: its call may
    # have been answered with no outcome recorded, so the takeover posts it again (at most
    # once more). Any other repeat is a fencing failure.
    counted = standin.posts()
    assert {rid: n for rid, n in counted.items() if n != 1 and rid not in orphaned} == {}
    assert all(counted[rid] in (1, 2) for rid in orphaned), counted
