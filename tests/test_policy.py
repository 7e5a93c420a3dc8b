"""Delivery that never floods and never drops: rate limit, 429, stalls, dead letters."""

from __future__ import annotations

import uuid

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.server import Rows, payload
from tests.standin import Call, Injected, StandIn
from tests.stores import with_store
from webhook.deliver import RetryPolicy
from webhook.store import Store


def scored(rows: Rows, state: str) -> int:
    """How many webhooks with their scores stored are in ``state``."""
    return sum(1 for row in rows.values() if row["state"] == state and row["scores"] is not None)


def max_in_window(calls: list[Call], window: float) -> int:
    """The most calls the stand-in saw in any ``window`` seconds."""
    times = sorted(c.at for c in calls)
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


def test_rate_limit_is_never_exceeded_for_scores_and_feedback(
    make_server: ServerFactory,
) -> None:
    window = 3.0
    limited = StandIn(window_limit=5, window=window).start()
    try:
        server = make_server(
            HELICONE_API_BASE=limited.base_url,
            SCORER_RATE_LIMIT_PER_MINUTE="5",
            SCORER_RATE_WINDOW_SECONDS=str(window),
            SCORER_FEEDBACK_RULE="vocabulary_diversity >= 0",
        )
        ids = [str(uuid.uuid4()) for _ in range(8)]
        for rid in ids:
            assert server.post(payload(rid)).status_code == 202
        # 8 score posts and 8 feedback posts: 16 calls at 5 per 3 s. The store is read all along.
        samples: list[Rows] = []

        def drained() -> bool:
            samples.append(server.rows())
            return len(limited.ok_calls("feedback")) == 8

        eventually(drained, 40, what="8 feedback posts", show=lambda: len(limited.calls))
        assert [c for c in limited.calls if c.status == 429] == []
        assert len(limited.ok_calls("score")) == 8
        assert max_in_window(limited.calls, window) <= 5
        # The backlog waited in the store: scored webhooks stayed pending on disk while the limit
        # had no room, and no more were ever claimed for posting than the limit let through.
        assert max(scored(rows, "pending") for rows in samples) >= 6
        assert max(scored(rows, "leased") for rows in samples) <= 5
        final = server.wait_rows(lambda rows: scored(rows, "done") == 8)
        assert all(row["feedback"] is not None for row in final.values())
        assert limited.violations == []
    finally:
        limited.stop()


def test_rate_limit_holds_across_a_restart(make_server: ServerFactory) -> None:
    window = 4.0
    limited = StandIn(window_limit=3, window=window).start()
    try:
        env = {
            "HELICONE_API_BASE": limited.base_url,
            "SCORER_RATE_LIMIT_PER_MINUTE": "3",
            "SCORER_RATE_WINDOW_SECONDS": str(window),
        }
        server = make_server(**env)
        first = [str(uuid.uuid4()) for _ in range(3)]
        for rid in first:
            server.post(payload(rid))
        limited.wait_for(lambda: len(limited.ok_calls()) == 3)
        assert server.terminate()
        server.start()  # a fresh process: its budget must come from the store, not be full
        second = [str(uuid.uuid4()) for _ in range(3)]
        for rid in second:
            server.post(payload(rid))
        limited.wait_for(lambda: len(limited.ok_calls()) == 6, timeout=30)
        assert [c for c in limited.calls if c.status == 429] == []
    finally:
        limited.stop()


def test_429_pauses_all_posting_until_retry_after(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_RELAY_CONCURRENCY="4")
    standin.fail_next(
        Injected(429, {"error": "Too many requests, please try again later."}, {"Retry-After": "2"})
    )
    ids = [str(uuid.uuid4()) for _ in range(4)]
    for rid in ids:
        assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: set(ids) <= standin.posted_ids(), timeout=20)
    limited = next(c for c in standin.calls if c.status == 429)
    # Calls sent alongside the one that got 429 are answered with it; after that, nothing is
    # sent until Retry-After has passed, by any of the four concurrent deliveries.
    during_pause = [c.at - limited.at for c in standin.calls if 0.3 < c.at - limited.at < 1.9]
    assert during_pause == []
    retried = [c for c in standin.calls if c.request_id == limited.request_id and c.status == 201]
    assert retried[0].at - limited.at >= 1.9


def test_stall_longer_than_the_client_timeout_is_retried(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_POST_TIMEOUT="0.5")
    standin.fail_next(Injected(201, stall=3.0))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids(), timeout=20)
    # The stalled call timed out and counted as the first attempt; the second was posted.
    row = server.wait_rows(lambda rows: rows[rid]["state"] == "done")[rid]
    assert row["attempts"] == 2
    retried = [line for line in server.log().splitlines() if f"request_id={rid}" in line]
    assert any("outcome=retry" in line and "Timeout" in line for line in retried), retried


def test_the_default_attempts_span_at_least_18_minutes() -> None:
    """An outage shorter than that makes no dead letter, whatever the jitter draws: with full
    jitter (a wait anywhere from 0), a 10-minute outage made 1 or 2 in 300 webhooks."""
    policy = RetryPolicy()
    for _ in range(1000):
        waits = [policy.delay(attempt) for attempt in range(1, policy.max_attempts)]
        assert sum(waits) >= 18 * 60
        assert all(w <= policy.cap for w in waits)
    assert policy.delay(1, retry_after=30.0) == 30.0  # a longer Retry-After wins


def test_exhausted_retries_become_dead_letters(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_MAX_ATTEMPTS="3")
    standin.fail_next(Injected(500), Injected(502), Injected(503))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid)).status_code == 202
    server.wait_rows(lambda rows: rows[rid]["state"] == "dead")
    row = server.rows()[rid]
    assert (row["attempts"], row["last_status"]) == (3, 503)
    assert "injected 503" in row["last_error"]


def test_400_is_permanent_and_posted_once(make_server: ServerFactory, standin: StandIn) -> None:
    server = make_server()
    standin.fail_next(Injected(400, {"data": None, "error": "bad request"}))
    rid = str(uuid.uuid4())
    server.post(payload(rid))
    server.wait_rows(lambda rows: rows[rid]["state"] == "dead")
    assert [c.status for c in standin.calls if c.request_id == rid] == [400]


def test_feedback_follows_the_rule_for_uuid_ids_only(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(
        SCORER_FEEDBACK_RULE="vocabulary_diversity>=50 and not vocabulary_diversity > 100"
    )
    good, poor, not_uuid = str(uuid.uuid4()), str(uuid.uuid4()), "req_abc123"
    server.post(payload(good, "every word here is different"))  # 100
    server.post(payload(poor, "la la la la la la"))  # 1 unique of 6: 17
    server.post(payload(not_uuid, "every word here is different"))
    standin.wait_for(lambda: len(standin.ok_calls("feedback")) == 2)
    standin.wait_for(lambda: not_uuid in standin.posted_ids())
    ratings = {c.request_id: c.body["rating"] for c in standin.ok_calls("feedback")}
    assert ratings == {good: True, poor: False}
    server.wait_rows(lambda rows: all(r["state"] == "done" for r in rows.values()))


def test_feedback_leaves_the_last_place_of_the_budget_to_live_scores(
    make_server: ServerFactory, standin: StandIn
) -> None:
    limit, window = 20, 600.0  # a reserve of one place for each class below live scores
    server = make_server(
        SCORER_RATE_LIMIT_PER_MINUTE=str(limit),
        SCORER_RATE_WINDOW_SECONDS=str(window),
        SCORER_FEEDBACK_RULE="vocabulary_diversity >= 0",
    )

    async def hold(store: Store) -> None:  # 18 calls made elsewhere: two places are left
        budget = store.budget(limit, window)
        for _ in range(18):
            slot = await budget.take()
            assert slot is not None
            await budget.spent(slot)

    with_store(server.store_url, hold)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert server.post(payload(first)).status_code == 202
    # Its scores take the 19th place; its feedback may not take the last one: it waits.
    server.wait_rows(
        lambda rows: rows[first]["posted"] == {"scores"} and rows[first]["state"] == "pending"
    )
    assert server.post(payload(second)).status_code == 202
    standin.wait_for(lambda: second in standin.posted_ids())  # the last place: live scores
    assert standin.ok_calls("feedback") == []
    assert [c.request_id for c in standin.ok_calls("score")] == [first, second]
