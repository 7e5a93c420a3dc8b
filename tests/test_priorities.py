"""One budget, with priorities: live webhooks are posted before a backlog of reconciled or
backfilled ones, on the real server under a small budget.

The budget is paused (a 429 with ``Retry-After``) while live webhooks arrive behind a large
backlog, so that when it ends every kind is due at once: the posts that follow must be the
live ones first, whatever the order they were stored in. (Between reconciled and backfilled
ones the order is by origin among what is due; a webhook given back for want of room is due
again later, so the two may interleave.)
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.server import Server, payload, wait_done
from tests.standin import Injected, StandIn
from tests.stores import BACKENDS, opened


def throttled(server: Server) -> float:
    """429s the server has taken in (counted once it has stored their pause)."""
    text = server.client.get("/metrics").text
    return metric(text, "helicone_scorer_post_failures_total", default=0, status="429")


async def queue_backlog(url: str, backfilled: list[str], reconciled: list[str]) -> None:
    async with opened(url) as store:
        for rid in backfilled:
            assert await store.enqueue_scores(rid, {"word_count": 3})
        for rid in reconciled:
            body = orjson.loads(payload(rid))
            assert await store.add(rid, orjson.dumps(body), origin="reconciled")


@pytest.mark.parametrize("store", BACKENDS)
def test_live_webhooks_are_posted_before_a_backlog_of_reconciled_and_backfilled_ones(
    make_server: ServerFactory, standin: StandIn, store: str
) -> None:
    server = make_server(
        start=False,
        store=store,
        SCORER_RATE_LIMIT_PER_MINUTE="12",  # a window holds the live ones exactly
        SCORER_RATE_WINDOW_SECONDS="1",
    )
    backfilled = [f"backfill-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    reconciled = [str(uuid.uuid4()) for _ in range(8)]
    asyncio.run(queue_backlog(server.store_url, backfilled, reconciled))
    # The first call gets a 429 asking for 10 s: everything waits, and meanwhile live
    # webhooks arrive and are scored.
    standin.fail_next(Injected(429, headers={"Retry-After": "10"}))
    server.start()
    # Counted once the server has taken the pause in (the stand-in records the 429 before
    # sending it).
    eventually(lambda: throttled(server) == 1, 20, what="the 429 taken in")
    live = [str(uuid.uuid4()) for _ in range(12)]
    for rid in live:
        assert server.post(payload(rid)).status_code == 202
    scored = server.wait_rows(lambda rows: all(r in rows and rows[r]["scores"] for r in live))
    assert set(live) <= set(scored)
    paused_at = next(c.at for c in standin.calls if c.status == 429)
    wait_done(server.store_url, [*live, *reconciled, *backfilled], 60)
    # Calls in flight when the 429 came may still arrive (slowly, under load), then none until
    # the pause ends, 10 s after the 429.
    pause = [c for c in standin.calls if paused_at + 3 < c.arrived < paused_at + 9.5]
    assert pause == [], "calls during the pause"

    posts = [c for c in standin.calls if c.kind == "score" and c.status == 201]
    resumed = [str(c.request_id) for c in posts if c.arrived > paused_at + 9.5]
    # When the pause ends, every live webhook is posted before any of the backlog (which was
    # due before them): the first claim takes them first, and they fill the window.
    kinds = {**dict.fromkeys(live, "live"), **dict.fromkeys(reconciled, "reconciled")}
    timeline = " ".join(
        f"{kinds.get(str(c.request_id), 'backfill')}:{c.status}@{c.arrived - paused_at:.3f}"
        for c in standin.calls
    )
    assert set(resumed[: len(live)]) == set(live), timeline
    # The backlog is all posted, once each.
    done = sorted(str(c.request_id) for c in posts)
    assert done == sorted({*done}) == sorted([*live, *reconciled, *backfilled])
