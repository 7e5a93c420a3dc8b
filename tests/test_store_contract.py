"""The store contract (:mod:`webhook.store`), run unchanged on every backend.

Written only against the contract: ``open_store``, ``open_reader`` and the types of
:mod:`webhook.store`; :mod:`tests.stores` is the one place that knows how each backend is made.
Leases, delays and windows are short (0.2-1 s), and every wait is an ``eventually``; a "not due
yet" is a claim right away that returns nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.eventually import eventually_async
from tests.stores import Backend, opened
from webhook.store import (
    PRIORITIES,
    STATES,
    Dead,
    Delivered,
    Entry,
    Flow,
    Job,
    Lease,
    NoStore,
    Origin,
    Posted,
    Released,
    Retry,
    ScoreCounts,
    Scored,
    Skipped,
    Stage,
    Store,
    SweepLease,
    open_reader,
)

pytestmark = pytest.mark.anyio

SCORES = {"vocabulary_diversity": 73, "length": 12}
LONG = 60.0  # a lease that does not run out during a test
SHORT = 0.2  # one that does, soon


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with opened(backend.url) as s:
        yield s


@pytest.fixture
async def other(backend: Backend, store: Store) -> AsyncIterator[Store]:
    """A second instance on the same database (another process, in real life)."""
    async with opened(backend.url) as s:
        yield s


def body(request_id: str) -> bytes:
    return b'{"request_id":"' + request_id.encode() + b'"}'


async def add(store: Store, *request_ids: str, origin: Origin = "live") -> None:
    """Add in this order, one after the other (so their age is this order)."""
    for rid in request_ids:
        assert await store.add(rid, body(rid), origin)


async def claim_ids(store: Store, stage: Stage, limit: int = 10, lease: float = LONG) -> list[str]:
    return [job.request_id for job in await store.claim(stage, limit, lease)]


async def claim_one(store: Store, stage: Stage = "score", lease: float = LONG) -> Job:
    jobs = await store.claim(stage, 1, lease)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def entry(store: Store, request_id: str) -> Entry:
    return (await store.reader.entries([request_id]))[request_id]


async def to_post(
    store: Store, request_id: str, feedback: bool | None = None, origin: Origin = "live"
) -> None:
    """Add and score a webhook, leaving it due in the post stage."""
    await add(store, request_id, origin=origin)
    job = await claim_one(store)
    assert job.origin == origin
    assert await store.record([Scored(job.lease, SCORES, feedback, finished=False)]) == [True]


async def feedback_only(store: Store, request_id: str, origin: Origin = "live") -> None:
    """A webhook due in the post stage whose scores are posted: only its feedback is left."""
    await to_post(store, request_id, feedback=True, origin=origin)
    job = await claim_one(store, "post")
    assert await store.record([Released(job.lease, frozenset({"scores"}))]) == [True]


async def delivered(store: Store, request_id: str, feedback: bool | None = None) -> None:
    """A webhook done with every call posted (add it while nothing else is due to post)."""
    await to_post(store, request_id, feedback)
    job = await claim_one(store, "post")
    assert job.request_id == request_id
    calls: Posted = frozenset({"scores"} if feedback is None else {"scores", "feedback"})
    assert await store.record([Delivered(job.lease, 201, calls)]) == [True]


async def reclaimed(store: Store, stage: Stage, request_id: str) -> Job:
    """Wait until ``request_id`` is due again, and claim it."""

    async def due() -> Job | None:
        jobs = await store.claim(stage, 10, LONG)
        assert [j.request_id for j in jobs] in ([], [request_id]), jobs
        return jobs[0] if jobs else None

    return await eventually_async(due, 10, what=f"{request_id} due again for {stage}")


# Adding: durable, deduplicated


async def test_add_is_new_once_and_a_duplicate_after(store: Store) -> None:
    assert await store.add("a", body("a")) is True
    assert await store.add("a", b"another body") is False
    e = await entry(store, "a")
    assert (e.state, e.attempts, e.has_body, e.scores, e.posted) == (
        "pending", 0, True, None, frozenset()
    )  # fmt: skip
    job = await claim_one(store)
    assert job.body == body("a")  # the first body, not the duplicate's


async def test_concurrent_adds_of_one_id_store_it_once(store: Store, other: Store) -> None:
    results = await asyncio.gather(
        *(s.add("same", body("same")) for _ in range(10) for s in (store, other))
    )
    assert sorted(results) == [False] * 19 + [True]
    assert (await store.reader.stats()).counts["pending"] == 1


async def test_many_concurrent_adds_each_answer_for_its_own_id(store: Store) -> None:
    ids = [f"id-{i}" for i in range(50)]
    assert await asyncio.gather(*(store.add(rid, body(rid)) for rid in ids)) == [True] * 50
    assert await asyncio.gather(*(store.add(rid, body(rid)) for rid in ids)) == [False] * 50
    assert set(await store.reader.entries()) == set(ids)


# Claiming: order, priorities, stages


async def test_claims_the_oldest_first(store: Store) -> None:
    await add(store, "a", "b", "c")
    assert sorted(await claim_ids(store, "score", limit=2)) == ["a", "b"]
    assert await claim_ids(store, "score") == ["c"]
    assert await claim_ids(store, "score") == []


async def test_the_stages_are_independent(store: Store) -> None:
    await add(store, "to-score")
    assert await store.enqueue_scores("to-post", SCORES)
    [scoring] = await store.claim("score", 10, LONG)
    assert (scoring.request_id, scoring.body, scoring.scores) == (
        "to-score",
        body("to-score"),
        None,
    )
    [posting] = await store.claim("post", 10, LONG)
    assert (posting.request_id, posting.body, posting.scores) == ("to-post", None, SCORES)
    assert await claim_ids(store, "score") == []
    assert await claim_ids(store, "post") == []


async def test_live_webhooks_are_posted_before_backfilled_ones(store: Store) -> None:
    assert await store.enqueue_scores("backfilled", SCORES)  # older, but backfilled
    await to_post(store, "live-1")
    await to_post(store, "live-2")
    assert await claim_ids(store, "post", limit=1) == ["live-1"]
    assert await claim_ids(store, "post", limit=1) == ["live-2"]
    assert await claim_ids(store, "post", limit=1) == ["backfilled"]


async def test_the_score_stage_claims_live_then_reconciled_then_backfilled(store: Store) -> None:
    await add(store, "backfill", origin="backfill")  # oldest first, claimed last
    await add(store, "reconciled", origin="reconciled")
    await add(store, "live-1", "live-2")
    order = [await claim_one(store) for _ in range(4)]
    assert [(j.request_id, j.origin) for j in order] == [
        ("live-1", "live"), ("live-2", "live"), ("reconciled", "reconciled"),
        ("backfill", "backfill"),
    ]  # fmt: skip
    e = await entry(store, "reconciled")
    assert (e.origin, e.backfill) == ("reconciled", False)


async def test_the_post_stage_claims_by_origin_and_scores_before_feedback(store: Store) -> None:
    assert await store.enqueue_scores("backfill", SCORES)
    await feedback_only(store, "reconciled-feedback", origin="reconciled")
    await to_post(store, "reconciled-scores", origin="reconciled")
    await feedback_only(store, "live-feedback")  # older than live-scores, but scores come first
    await to_post(store, "live-scores", feedback=True)
    order = [await claim_one(store, "post") for _ in range(5)]
    assert [(j.request_id, j.origin) for j in order] == [
        ("live-scores", "live"), ("live-feedback", "live"),
        ("reconciled-scores", "reconciled"), ("reconciled-feedback", "reconciled"),
        ("backfill", "backfill"),
    ]  # fmt: skip


async def test_a_job_carries_when_helicone_logged_it_where_known(store: Store) -> None:
    logged = time.time() - 5 * 86400
    assert await store.add("swept", body("swept"), "reconciled", logged_at=logged)
    await add(store, "live")
    live, swept = await claim_one(store), await claim_one(store)  # live first
    assert (live.request_id, live.logged_at, live.logged) == ("live", None, live.received_at)
    assert swept.logged_at == pytest.approx(logged)
    assert swept.logged == pytest.approx(logged)
    # Scored, then claimed to post: it still knows.
    assert await store.record([Scored(swept.lease, SCORES, None, finished=False)]) == [True]
    assert (await claim_one(store, "post")).logged_at == pytest.approx(logged)
    # Backfilled scores carry it too, also when re-opened.
    assert await store.enqueue_scores("old", SCORES, logged_at=logged - 1)
    job = await claim_one(store, "post")
    assert job.logged_at == pytest.approx(logged - 1)
    assert await store.record([Dead(job.lease, 400, "no", frozenset())]) == [True]
    assert await store.enqueue_scores("old", SCORES, logged_at=logged - 2)
    assert (await claim_one(store, "post")).logged_at == pytest.approx(logged - 2)


async def test_a_job_carries_what_the_post_stage_needs(store: Store) -> None:
    await to_post(store, "a", feedback=True)
    job = await claim_one(store, "post")
    assert (job.body, job.scores, job.feedback, job.attempts, job.posted) == (
        None, SCORES, True, 1, frozenset()
    )  # fmt: skip
    e = await entry(store, "a")
    assert job.received_at == e.received_at
    assert e.state == "leased"


# Leases: expiry, fencing, extension


async def test_a_claim_takes_due_work_behind_work_waiting_for_a_retry(store: Store) -> None:
    """Work waiting for a later retry, first in the claim order, is passed over for the due
    work behind it; one claim across the order's groups takes them in that order."""
    for rid in ("live-waiting", "live-feedback-waiting"):
        await to_post(store, rid, feedback=True)
        job = await claim_one(store, "post")
        assert await store.record([Retry(job.lease, 3600, 500, "boom", frozenset())]) == [True]
    assert await store.enqueue_scores("backfilled-1", SCORES)
    assert await store.enqueue_scores("backfilled-2", SCORES)
    await feedback_only(store, "reconciled-feedback", origin="reconciled")
    await to_post(store, "reconciled-scores", origin="reconciled")
    assert set(await claim_ids(store, "post", limit=3)) == {
        "reconciled-scores", "reconciled-feedback", "backfilled-1",
    }  # fmt: skip
    assert await claim_ids(store, "post") == ["backfilled-2"]


async def test_an_expired_lease_is_claimable_again_and_counts_an_attempt(store: Store) -> None:
    await add(store, "a")
    first = await claim_one(store, lease=SHORT)
    assert first.attempts == 1
    assert await claim_ids(store, "score") == []  # still leased
    second = await reclaimed(store, "score", "a")
    assert second.attempts == 2
    assert second.lease.token != first.lease.token


async def test_a_stale_holder_is_fenced_off(store: Store, other: Store) -> None:
    await add(store, "a")
    stale = await claim_one(store, lease=SHORT)
    fresh = await reclaimed(other, "score", "a")
    # The first holder's outcomes and extension change nothing: someone else owns it now.
    assert await store.extend([stale.lease], LONG) == [False]
    assert await store.record([Scored(stale.lease, {"stale": 1}, None, finished=True)]) == [False]
    assert await store.record([Dead(stale.lease, 500, "stale", frozenset())]) == [False]
    e = await entry(store, "a")
    assert (e.state, e.attempts, e.scores) == ("leased", 2, None)
    assert await other.record([Scored(fresh.lease, SCORES, None, finished=True)]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.scores) == ("done", SCORES)


async def test_an_expired_lease_not_yet_reclaimed_still_holds(store: Store) -> None:
    await add(store, "a")
    job = await claim_one(store, lease=0.01)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]


async def test_an_outcome_ends_its_lease(store: Store) -> None:
    await to_post(store, "a")
    job = await claim_one(store, "post")
    assert await store.record([Delivered(job.lease, 201, frozenset({"scores"}))]) == [True]
    assert await store.record([Retry(job.lease, 0, 500, "late", frozenset())]) == [False]
    assert await store.extend([job.lease], LONG) == [False]
    assert (await entry(store, "a")).state == "done"


async def test_a_made_up_lease_holds_nothing(store: Store) -> None:
    await add(store, "a")
    await claim_one(store)
    made_up = Lease("a", "not-the-token")
    assert await store.record([Dead(made_up, None, "x", frozenset())]) == [False]
    assert await store.extend([made_up, Lease("nobody", "x")], LONG) == [False, False]
    assert (await entry(store, "a")).state == "leased"


async def test_extend_keeps_a_lease_past_its_end(store: Store) -> None:
    await add(store, "kept", "let-go")
    jobs = await store.claim("score", 10, SHORT)
    kept = next(j for j in jobs if j.request_id == "kept")
    assert await store.extend([kept.lease], LONG) == [True]
    # Both leases would run out together; only the one not extended comes back.
    again = await reclaimed(store, "score", "let-go")
    assert again.attempts == 2
    assert await store.record([Scored(kept.lease, SCORES, None, finished=True)]) == [True]


# Outcomes


async def test_scored_and_finished_is_done(store: Store) -> None:
    await add(store, "a")
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, False, finished=True)]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.scores, e.feedback, e.has_body) == ("done", SCORES, False, False)
    assert e.finished_at is not None
    assert await claim_ids(store, "post") == []
    assert await claim_ids(store, "score") == []


async def test_scored_not_finished_waits_for_the_post_stage_with_fresh_attempts(
    store: Store,
) -> None:
    await add(store, "a")
    await claim_one(store, lease=SHORT)
    job = await reclaimed(store, "score", "a")
    assert job.attempts == 2
    assert await store.record([Scored(job.lease, SCORES, None, finished=False)]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.attempts, e.scores, e.finished_at) == ("pending", 0, SCORES, None)
    assert await claim_ids(store, "score") == []
    posting = await claim_one(store, "post")
    assert (posting.attempts, posting.scores) == (1, SCORES)


async def test_delivered_is_done_with_its_calls(store: Store) -> None:
    await to_post(store, "a", feedback=True)
    job = await claim_one(store, "post")
    both: Posted = frozenset({"scores", "feedback"})
    assert await store.record([Delivered(job.lease, 201, both)]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.last_status, e.posted, e.has_body) == ("done", 201, both, False)
    assert e.finished_at is not None
    assert await claim_ids(store, "post") == []


async def test_retry_is_not_due_until_its_delay_has_passed(store: Store) -> None:
    await to_post(store, "a")
    job = await claim_one(store, "post")
    assert await store.record([Retry(job.lease, 0.5, 503, "busy", frozenset())]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.last_status, e.last_error) == ("pending", 503, "busy")
    assert await claim_ids(store, "post") == []
    again = await reclaimed(store, "post", "a")
    assert again.attempts == 2


async def test_dead_is_a_dead_letter(store: Store) -> None:
    await to_post(store, "a")
    job = await claim_one(store, "post")
    assert await store.record([Dead(job.lease, 400, "bad request", frozenset())]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.last_status, e.last_error) == ("dead", 400, "bad request")
    [letter] = await store.reader.dead_letters(10)
    assert (letter.request_id, letter.attempts, letter.last_status, letter.last_error) == (
        "a", 1, 400, "bad request"
    )  # fmt: skip
    assert letter.received_at == e.received_at
    assert await claim_ids(store, "post") == []


async def test_released_does_not_count_the_attempt_and_keeps_the_calls(store: Store) -> None:
    await to_post(store, "a", feedback=True)
    job = await claim_one(store, "post")
    scores_only: Posted = frozenset({"scores"})
    assert await store.record([Released(job.lease, scores_only)]) == [True]
    e = await entry(store, "a")
    assert (e.state, e.attempts, e.posted) == ("pending", 0, scores_only)
    again = await claim_one(store, "post")
    assert (again.attempts, again.posted) == (1, scores_only)


async def test_released_with_a_delay_is_not_due_until_then(store: Store) -> None:
    await add(store, "a")
    job = await claim_one(store)
    assert await store.record([Released(job.lease, delay=0.5)]) == [True]
    assert await claim_ids(store, "score") == []
    assert (await reclaimed(store, "score", "a")).attempts == 1


async def test_the_calls_made_are_kept_across_retries(store: Store) -> None:
    await to_post(store, "a", feedback=True)
    job = await claim_one(store, "post")
    assert await store.record([Retry(job.lease, 0, 500, "x", frozenset({"scores"}))]) == [True]
    job = await claim_one(store, "post")
    assert job.posted == {"scores"}
    # A later attempt reports only its own calls; the earlier ones stay made.
    assert await store.record([Retry(job.lease, 0, 500, "x", frozenset({"feedback"}))]) == [True]
    job = await claim_one(store, "post")
    assert job.posted == {"scores", "feedback"}
    assert await store.record([Dead(job.lease, 500, "x", frozenset())]) == [True]
    assert (await entry(store, "a")).posted == {"scores", "feedback"}


# Batches


async def test_record_says_per_outcome_whether_it_applied(store: Store) -> None:
    await add(store, "a", "b", "c")
    a = await claim_one(store)
    stale = await claim_one(store, lease=SHORT)
    c = await claim_one(store)
    fresh = await reclaimed(store, "score", "b")
    results = await store.record(
        [
            Scored(a.lease, SCORES, None, finished=True),
            Dead(stale.lease, None, "stale", frozenset()),
            Released(c.lease),
        ]
    )
    assert results == [True, False, True]
    entries = await store.reader.entries(["a", "b", "c"])
    assert {k: e.state for k, e in entries.items()} == {"a": "done", "b": "leased", "c": "pending"}
    assert await store.record([Dead(fresh.lease, None, "x", frozenset())]) == [True]
    assert await store.record([]) == []


async def test_a_batch_that_fails_applies_nothing(store: Store) -> None:
    await add(store, "a", "b")
    a, b = await store.claim("score", 2, LONG)
    too_large = 2**70  # no status column holds it: the second statement fails
    with pytest.raises(Exception):  # noqa: B017, PT011 (each backend fails in its own words)
        await store.record(
            [
                Scored(a.lease, SCORES, None, finished=True),
                Dead(b.lease, too_large, "x", frozenset()),
            ]
        )
    entries = await store.reader.entries(["a", "b"])
    assert [(e.state, e.scores) for e in entries.values()] == [("leased", None)] * 2
    # The leases still hold: the batch changed nothing.
    assert await store.record([Scored(a.lease, SCORES, None, finished=True)]) == [True]


# Dead letters


async def make_dead(store: Store, *request_ids: str) -> None:
    """Dead letters, dead in this order."""
    for rid in request_ids:
        await add(store, rid)
        job = await claim_one(store)
        assert await store.record([Dead(job.lease, 500, f"{rid} failed", frozenset())]) == [True]


async def test_dead_letters_longest_dead_first(store: Store) -> None:
    await make_dead(store, "c", "a", "b")
    assert [d.request_id for d in await store.reader.dead_letters(10)] == ["c", "a", "b"]
    assert [d.request_id for d in await store.reader.dead_letters(2)] == ["c", "a"]


async def test_dead_letters_most_recently_dead_first_when_asked(
    backend: Backend, store: Store
) -> None:
    await make_dead(store, "c", "a", "b")
    reader = await open_reader(backend.url)
    try:
        for read in (store.reader, reader):
            assert [d.request_id for d in await read.dead_letters(10, newest=True)] == [
                "b", "a", "c"
            ]  # fmt: skip
            assert [d.request_id for d in await read.dead_letters(2, newest=True)] == ["b", "a"]
            assert [d.request_id for d in await read.dead_letters(2)] == ["c", "a"]  # as before
    finally:
        await reader.close()
    # A letter re-queued and dead again is the most recently dead.
    assert await store.requeue_dead(["c"]) == 1
    job = await claim_one(store)
    assert await store.record([Dead(job.lease, 500, "again", frozenset())]) == [True]
    assert [d.request_id for d in await store.reader.dead_letters(10, newest=True)] == [
        "c", "b", "a"
    ]  # fmt: skip
    assert [d.request_id for d in await store.reader.dead_letters(10)] == ["a", "b", "c"]


async def test_retry_now_makes_due_only_posts_waiting_after_the_api_failed(
    store: Store, other: Store
) -> None:
    """The API answers again: posts waiting out a retry after no answer, a 408 or a 5xx are
    due now, of every origin, scores or feedback, attempts unchanged. Not one after a 429, one
    released for want of room, a score stage's retry, or one leased."""
    waits = {"none": None, "timeout": 408, "down": 503}
    for rid, status in waits.items():
        await to_post(store, rid, origin="reconciled" if rid == "down" else "live")
        job = await claim_one(store, "post")
        assert await store.record([Retry(job.lease, 3600, status, "x", frozenset())]) == [True]
    await feedback_only(store, "feedback")
    job = await claim_one(store, "post")
    assert await store.record([Retry(job.lease, 3600, 500, "x", frozenset({"scores"}))]) == [True]
    await to_post(store, "throttled")
    job = await claim_one(store, "post")
    assert await store.record([Retry(job.lease, 3600, 429, "slow", frozenset())]) == [True]
    await to_post(store, "no-room")
    job = await claim_one(store, "post")
    assert await store.record([Released(job.lease, frozenset(), 3600)]) == [True]
    await add(store, "unscored")
    job = await claim_one(store)
    assert await store.record([Retry(job.lease, 3600, 500, "x", frozenset())]) == [True]
    await to_post(store, "leased")
    leased = await claim_one(store, "post")
    attempts = {rid: (await entry(store, rid)).attempts for rid in [*waits, "feedback"]}

    assert await other.retry_now() == 4  # another instance: the store's, not the process's
    jobs = await store.claim("post", 10, LONG)
    assert sorted(j.request_id for j in jobs) == sorted([*waits, "feedback"])
    assert {j.request_id: j.attempts for j in jobs} == {r: a + 1 for r, a in attempts.items()}
    assert await store.claim("score", 10, LONG) == []
    assert await store.retry_now() == 0  # nothing left waiting after a failure
    assert await store.record([Delivered(leased.lease, 201, frozenset({"scores"}))]) == [True]


async def test_requeue_named_dead_letters(store: Store) -> None:
    await make_dead(store, "a", "b")
    assert await store.requeue_dead(["a", "never-stored"]) == 1
    e = await entry(store, "a")
    assert (e.state, e.attempts, e.finished_at) == ("pending", 0, None)
    assert (await entry(store, "b")).state == "dead"
    job = await claim_one(store)
    assert (job.request_id, job.attempts) == ("a", 1)
    assert await store.requeue_dead(["a"]) == 0  # leased, not dead


async def test_requeue_every_dead_letter(store: Store) -> None:
    await make_dead(store, "a", "b")
    await add(store, "live")
    assert await store.requeue_dead(None) == 2
    assert await store.reader.dead_letters(10) == []
    assert sorted(await claim_ids(store, "score")) == ["a", "b", "live"]


async def test_a_requeued_scored_letter_goes_back_to_the_post_stage(store: Store) -> None:
    await to_post(store, "a")
    job = await claim_one(store, "post")
    assert await store.record([Dead(job.lease, 500, "x", frozenset({"scores"}))]) == [True]
    assert await store.requeue_dead(["a"]) == 1
    job = await claim_one(store, "post")
    assert job.scores == SCORES
    assert job.posted == {"scores"}


async def test_purge_deletes_dead_letters_only(store: Store) -> None:
    await make_dead(store, "a", "b")
    await add(store, "live")
    assert await store.purge_dead() == 2
    assert await store.purge_dead() == 0
    assert set(await store.reader.entries()) == {"live"}
    assert await store.add("a", body("a")) is True  # gone for good: new again


# Retention


async def test_prune_done_forgets_delivered_webhooks_only(store: Store) -> None:
    await add(store, "done")
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]
    await make_dead(store, "dead")
    await add(store, "pending", "leased")
    await claim_one(store)  # "pending" is older: it is the one leased
    assert await store.prune_done(before=0) == 0
    assert await store.prune_done(before=time.time() + 3600) == 1
    assert set(await store.reader.entries()) == {"dead", "pending", "leased"}
    assert await store.add("done", body("done")) is True  # pruned: new again
    assert await store.add("dead", body("dead")) is False


# Backfill


async def test_enqueue_scores_inserts_a_new_id_for_the_post_stage(store: Store) -> None:
    assert await store.enqueue_scores("a", SCORES) is True
    e = await entry(store, "a")
    assert (e.state, e.scores, e.backfill, e.has_body, e.attempts) == (
        "pending", SCORES, True, False, 0
    )  # fmt: skip
    assert await claim_ids(store, "score") == []
    assert await claim_ids(store, "post") == ["a"]


async def test_enqueue_scores_leaves_unfinished_work_alone(store: Store) -> None:
    await add(store, "pending")
    assert await store.enqueue_scores("pending", SCORES) is False
    await add(store, "leased")
    await claim_ids(store, "score")
    assert await store.enqueue_scores("leased", SCORES) is False
    entries = await store.reader.entries(["pending", "leased"])
    assert [(e.scores, e.backfill) for e in entries.values()] == [(None, False)] * 2


async def test_enqueue_scores_skips_the_same_scores_already_posted(store: Store) -> None:
    await to_post(store, "a")
    job = await claim_one(store, "post")
    assert await store.record([Delivered(job.lease, 201, frozenset({"scores"}))]) == [True]
    before = await entry(store, "a")
    assert await store.enqueue_scores("a", dict(SCORES)) is False
    assert await entry(store, "a") == before


async def test_enqueue_scores_reopens_finished_work(store: Store) -> None:
    # Delivered with other scores, done without posting (same scores), and dead.
    await to_post(store, "delivered")
    job = await claim_one(store, "post")
    assert await store.record([Delivered(job.lease, 201, frozenset({"scores"}))]) == [True]
    await add(store, "finished")
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]
    await make_dead(store, "dead")
    new = {"vocabulary_diversity": 10}
    assert await store.enqueue_scores("delivered", new) is True
    assert await store.enqueue_scores("finished", SCORES) is True
    assert await store.enqueue_scores("dead", new) is True
    for rid, scores in (("delivered", new), ("finished", SCORES), ("dead", new)):
        e = await entry(store, rid)
        assert (e.state, e.scores, e.attempts, e.posted, e.backfill, e.finished_at) == (
            "pending", scores, 0, frozenset(), True, None
        ), rid  # fmt: skip
    assert sorted(await claim_ids(store, "post")) == ["dead", "delivered", "finished"]


# The posting budget


async def test_the_budget_allows_limit_calls_in_a_window(store: Store) -> None:
    budget = store.budget(2, 2.0)  # long enough for a loaded machine between the steps
    assert await budget.room() == 2
    assert await budget.wait_time() == 0
    first, second = await budget.take(), await budget.take()
    assert first is not None
    assert second is not None
    assert first != second
    assert await budget.take() is None
    assert await budget.room() == 0
    await budget.spent(first)
    await budget.spent(second)
    assert await budget.take() is None  # a spent place holds for the window after it ended
    assert 0 < await budget.wait_time() <= 2.0

    async def freed() -> bool:
        return await budget.room() == 2 and await budget.wait_time() == 0

    await eventually_async(freed, 10)
    assert await budget.take() is not None


async def test_a_place_whose_holder_is_gone_frees_on_its_own(backend: Backend) -> None:
    async with opened(backend.url) as gone:
        assert await gone.budget(1, 1.0).take() is not None  # never spent
    async with opened(backend.url) as store:
        budget = store.budget(1, 1.0)
        assert await budget.room() == 0

        async def taken() -> object:
            return await budget.take()

        await eventually_async(taken, 10)


async def test_a_pause_stops_every_call_until_it_ends(store: Store) -> None:
    budget = store.budget(5, 0.5)
    await budget.pause(0.5)
    assert await budget.room() == 0
    assert await budget.take() is None
    assert 0 < await budget.wait_time() <= 0.5

    async def taken() -> object:
        return await budget.take()

    await eventually_async(taken, 10)


async def test_a_longer_pause_already_set_wins(store: Store) -> None:
    budget = store.budget(5, 0.5)
    await budget.pause(60)
    await budget.pause(0.1)
    assert await budget.wait_time() > 30
    assert await budget.take() is None


async def test_a_count_over_a_shorter_window_never_lets_a_longer_one_pass_its_limit(
    store: Store,
) -> None:
    """Two processes with different windows on one store: the one with the shorter window
    counts its window and resets the bound; the longer one must not trust that count."""
    long, short = store.budget(2, 60.0), store.budget(1, 0.5)
    first = await long.take()
    assert first is not None
    await long.spent(first)
    await long.settle()

    async def taken_by_short() -> bool:  # once the first call is half a second old: its count
        return await short.take() is not None  # holds its own place only (left in flight)

    assert await eventually_async(taken_by_short, 10)
    # Two calls in the last 60 s: the 60 s budget has no place left, whatever short counted.
    assert (await long.room(), await long.take()) == (0, None)


async def test_two_instances_share_one_budget(store: Store, other: Store) -> None:
    mine, theirs = store.budget(3, 60), other.budget(3, 60)
    taken = await asyncio.gather(*(b.take() for _ in range(4) for b in (mine, theirs)))
    assert sum(slot is not None for slot in taken) == 3
    assert await theirs.room() == 0
    assert await mine.room() == 0
    await theirs.pause(60)
    assert await mine.wait_time() > 30


# Wake-ups


async def test_subscribers_are_woken_when_work_becomes_due(store: Store) -> None:
    woken: list[Stage] = []
    store.subscribe(woken.append)

    async def saw(stage: Stage) -> bool:
        seen = stage in woken
        woken.clear()
        return seen

    await add(store, "a")
    await eventually_async(lambda: saw("score"), 10, what="woken for score by an add")
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=False)]) == [True]
    await eventually_async(lambda: saw("post"), 10, what="woken for post by scores to post")
    job = await claim_one(store, "post")
    assert await store.record([Released(job.lease)]) == [True]
    await eventually_async(lambda: saw("post"), 10, what="woken for post by work given back")
    job = await claim_one(store, "post")
    assert await store.record([Dead(job.lease, 500, "x", frozenset())]) == [True]
    assert await store.requeue_dead(None) == 1
    await eventually_async(lambda: saw("post"), 10, what="woken for post by a re-queue")
    assert await store.enqueue_scores("b", SCORES)
    await eventually_async(lambda: saw("post"), 10, what="woken for post by a backfill")


# Reading


async def test_stats_count_every_state(store: Store) -> None:
    empty = await store.reader.stats()
    assert empty.counts == dict.fromkeys(STATES, 0)
    assert empty.oldest_pending_at is None
    await add(store, "leased", "pending")
    await claim_one(store)
    await make_dead(store, "dead")
    await add(store, "done")
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]
    stats = await store.reader.stats()
    assert stats.counts == {"pending": 1, "leased": 1, "done": 1, "dead": 1}
    assert stats.oldest_pending_at == (await entry(store, "leased")).received_at


async def test_entries_all_or_named(store: Store) -> None:
    await add(store, "a", "b")
    assert set(await store.reader.entries()) == {"a", "b"}
    assert set(await store.reader.entries(["b", "missing"])) == {"b"}
    assert await store.reader.entries([]) == {}
    a = await entry(store, "a")
    assert a.request_id == "a"
    assert a.available_at >= a.received_at
    assert (a.backfill, a.last_status, a.last_error, a.finished_at) == (False, None, None, None)


async def scored(
    store: Store,
    request_id: str,
    scores: dict[str, int],
    *,
    origin: Origin = "live",
    finished: bool = True,
) -> None:
    """Add and score a webhook (add it while nothing else is due to score)."""
    await add(store, request_id, origin=origin)
    job = await claim_one(store)
    assert job.request_id == request_id
    assert await store.record([Scored(job.lease, scores, None, finished=finished)]) == [True]


MOST = 1000


async def test_score_counts_count_live_scored_webhooks_per_scorer_and_value(
    backend: Backend, store: Store
) -> None:
    assert await store.reader.score_counts(0, MOST) == ScoreCounts({}, 0)
    await scored(store, "early", {"vocabulary_diversity": 67, "length": 12})  # before the window
    # In the window, in every state a scored webhook can be in.
    await scored(store, "dead", {"vocabulary_diversity": 67, "length": 12}, finished=False)
    job = await claim_one(store, "post")
    assert await store.record([Dead(job.lease, 500, "x", frozenset())]) == [True]
    await scored(store, "done", {"vocabulary_diversity": 67, "length": 12})
    await scored(
        store, "to-post", {"vocabulary_diversity": 100, "length": 40, "judge": 0}, finished=False
    )
    # Not live, or not scored: never counted.
    await scored(store, "reconciled", {"vocabulary_diversity": 67}, origin="reconciled")
    assert await store.enqueue_scores("backfilled", {"vocabulary_diversity": 67, "other": 5})
    await add(store, "skipped")
    job = await claim_one(store)
    assert await store.record([Skipped(job.lease, "sampled out")]) == [True]
    await add(store, "unscored")
    times = {rid: e.received_at for rid, e in (await store.reader.entries()).items()}
    since = times["dead"]
    assert times["early"] < since <= min(times["done"], times["to-post"])

    expected = {
        "vocabulary_diversity": {67: 2, 100: 1},
        "length": {12: 2, 40: 1},
        "judge": {0: 1},
    }
    reader = await open_reader(backend.url)
    try:
        for read in (store.reader, reader):
            # "dead" arrived at ``since``
            assert await read.score_counts(since, MOST) == ScoreCounts(expected, 3)
            assert await read.score_counts(times["done"], MOST) == ScoreCounts(
                {
                    "vocabulary_diversity": {67: 1, 100: 1},
                    "length": {12: 1, 40: 1},
                    "judge": {0: 1},
                },
                2,
            )
            everything = expected | {
                "vocabulary_diversity": {67: 3, 100: 1},
                "length": {12: 3, 40: 1},
            }
            assert await read.score_counts(0, MOST) == ScoreCounts(everything, 4)
            # At most ``most``, the latest: "to-post" (added last), then "done".
            assert await read.score_counts(0, 1) == ScoreCounts(
                {"vocabulary_diversity": {100: 1}, "length": {40: 1}, "judge": {0: 1}}, 1
            )
            assert (await read.score_counts(0, 2)).webhooks == 2
            assert await read.score_counts(max(times.values()) + 1, MOST) == ScoreCounts({}, 0)
    finally:
        await reader.close()
    # Once scored, the unscored one counts too.
    job = await claim_one(store)
    assert job.request_id == "unscored"
    assert await store.record([Scored(job.lease, {"length": 40}, None, finished=True)]) == [True]
    assert (await store.reader.score_counts(since, MOST)).counts["length"] == {12: 2, 40: 2}


async def test_reads_never_wait_for_a_writer(backend: Backend, store: Store) -> None:
    await add(store, "a")
    reader = await open_reader(backend.url)
    try:
        async with backend.hold_writes():
            adding = asyncio.ensure_future(store.add("b", body("b")))
            for read in (store.reader, reader):
                stats = await asyncio.wait_for(read.stats(), 5)
                assert stats.counts["pending"] == 1
                assert set(await asyncio.wait_for(read.entries(), 5)) == {"a"}
            assert not adding.done()  # the write really was held
        assert await adding is True
        assert set(await reader.entries()) == {"a", "b"}
    finally:
        await reader.close()


async def test_open_reader_on_a_missing_store_is_no_store(backend: Backend) -> None:
    with pytest.raises(NoStore):
        await open_reader(backend.missing_url)
    with pytest.raises(NoStore):  # and it created none
        await open_reader(backend.missing_url)


async def test_open_reader_reads_a_stores_dead_letters(backend: Backend, store: Store) -> None:
    await make_dead(store, "a")
    reader = await open_reader(backend.url)
    try:
        assert [d.request_id for d in await reader.dead_letters(10)] == ["a"]
    finally:
        await reader.close()


# Several instances on one database


async def test_two_instances_never_both_claim_one_webhook(store: Store, other: Store) -> None:
    ids = {f"id-{i:02}" for i in range(40)}
    await asyncio.gather(*(store.add(rid, body(rid)) for rid in sorted(ids)))
    claimed: list[str] = []
    while True:
        batches = await asyncio.gather(
            *(s.claim("score", 3, LONG) for _ in range(3) for s in (store, other))
        )
        jobs = [job.request_id for batch in batches for job in batch]
        if not jobs:
            break
        claimed += jobs
    assert sorted(claimed) == sorted(ids)


async def test_a_serving_open_alone_takes_back_every_lease(backend: Backend) -> None:
    async with opened(backend.url) as first:
        await add(first, "a")
        await claim_one(first)
    async with opened(backend.url, serving=True) as server:
        job = await claim_one(server)  # at once, not after the lease
        assert (job.request_id, job.attempts) == ("a", 1)


async def test_a_serving_store_keeps_its_claims_alive_from_its_open_on(backend: Backend) -> None:
    """A lease this server claims cannot be taken over for it having stopped while it runs
    (PostgreSQL: for the takeover time after its last heartbeat; SQLite: never), and for the
    caller's clock: ``alive_until`` is in the future, and finite only where heartbeats rule."""
    before = time.monotonic()
    async with opened(backend.url, serving=True) as server:
        claimed = time.monotonic()
        until = server.alive_until(claimed)
        assert until > time.monotonic()
        assert (until == float("inf")) == (backend.name == "sqlite")
        if backend.name == "postgres":  # a claim sent before this server joined is not covered
            assert server.alive_until(before) == float("-inf")


# Skipped: finished without posting, not a dead letter


async def test_skipped_is_done_with_its_reason_from_either_stage(store: Store) -> None:
    await add(store, "sampled-out")
    job = await claim_one(store)
    assert await store.record([Skipped(job.lease, "sampled out")]) == [True]
    await to_post(store, "too-old")
    job = await claim_one(store, "post")
    assert await store.record([Skipped(job.lease, "older than 30 days")]) == [True]
    for rid, reason in (("sampled-out", "sampled out"), ("too-old", "older than 30 days")):
        e = await entry(store, rid)
        assert (e.state, e.skipped, e.has_body, e.posted) == ("done", reason, False, frozenset())
        assert e.finished_at is not None
    assert await store.reader.dead_letters(10) == []
    assert await claim_ids(store, "score") == await claim_ids(store, "post") == []


async def test_skipped_is_fenced_by_its_lease(store: Store) -> None:
    await add(store, "a")
    stale = await claim_one(store, lease=SHORT)
    await reclaimed(store, "score", "a")
    assert await store.record([Skipped(stale.lease, "sampled out")]) == [False]
    e = await entry(store, "a")
    assert (e.state, e.skipped) == ("leased", None)


# Reconciliation: unseen ids, confirming landed scores, the sweep's lease


async def test_unseen_names_the_ids_never_stored_or_pruned(store: Store) -> None:
    await add(store, "kept")
    await add(store, "pruned")
    job = await claim_one(store)
    assert job.request_id == "kept"
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]
    assert await store.prune_done(time.time() + 1) == 1
    assert await store.unseen(["kept", "pruned", "new", "kept", "new"]) == {"pruned", "new"}
    assert await store.unseen([]) == set()
    many = [f"id-{i}" for i in range(1200)]  # more than one statement's worth of ids
    assert await store.unseen([*many, "kept"]) == set(many)


LANDED_NONE: frozenset[str] = frozenset()
ALL_LANDED = frozenset(SCORES)
ONE_LANDED = frozenset({"length"})


async def test_confirm_reposts_the_scores_helicone_does_not_show_once(store: Store) -> None:
    await delivered(store, "missing", feedback=True)
    await delivered(store, "partly")
    before = time.time()
    assert await store.confirm({"missing": LANDED_NONE, "partly": ONE_LANDED}, before) in (
        ["missing", "partly"], ["partly", "missing"]
    )  # fmt: skip
    for rid, calls in (("missing", {"feedback"}), ("partly", set())):
        e = await entry(store, rid)
        assert (e.state, e.attempts, e.posted, e.unconfirmed, e.scores, e.finished_at) == (
            "pending", 0, frozenset(calls), True, SCORES, None
        ), rid  # fmt: skip
    # The relay posts its scores again, and not its feedback.
    jobs = {j.request_id: j for j in await store.claim("post", 10, LONG)}
    assert set(jobs) == {"missing", "partly"}
    assert (jobs["missing"].scores, jobs["missing"].feedback) == (SCORES, True)
    assert jobs["missing"].posted == frozenset({"feedback"})
    assert await store.record(
        [Delivered(j.lease, 201, j.posted | {"scores"}) for j in jobs.values()]
    ) == [True, True]
    # Still missing after the re-post: never re-posted again.
    again = {"missing": LANDED_NONE, "partly": LANDED_NONE}
    assert await store.confirm(again, time.time() + 60) == []
    e = await entry(store, "missing")
    assert (e.state, e.posted, e.unconfirmed) == ("done", frozenset({"scores", "feedback"}), True)


async def test_confirm_leaves_everything_else_alone(store: Store) -> None:
    await delivered(store, "all-landed")
    await delivered(store, "more-landed")
    await add(store, "not-posted")  # done without posting anything
    job = await claim_one(store)
    assert await store.record([Scored(job.lease, SCORES, None, finished=True)]) == [True]
    await feedback_only(store, "skipped")  # its scores posted, then skipped (too old)
    job = await claim_one(store, "post")
    assert await store.record([Skipped(job.lease, "older than 30 days")]) == [True]
    await make_dead(store, "dead")
    mark = time.time()
    await delivered(store, "too-recent")  # finished after the time given
    await to_post(store, "not-done")  # still to post
    landed = {
        "not-done": LANDED_NONE,
        "not-posted": LANDED_NONE,
        "skipped": LANDED_NONE,
        "all-landed": ALL_LANDED,
        "more-landed": ALL_LANDED | {"another"},
        "dead": LANDED_NONE,
        "too-recent": LANDED_NONE,
        "never-stored": LANDED_NONE,
    }
    before = await store.reader.entries()
    assert await store.confirm(landed, mark) == []
    assert await store.reader.entries() == before
    assert await store.confirm({}, time.time()) == []
    # The same webhook, once it is old enough, is re-posted.
    assert await store.confirm({"too-recent": LANDED_NONE}, time.time() + 60) == ["too-recent"]


async def test_two_confirms_at_once_repost_a_webhook_once(store: Store, other: Store) -> None:
    ids = [f"id-{i}" for i in range(10)]
    for rid in ids:
        await delivered(store, rid)
    landed = dict.fromkeys(ids, LANDED_NONE)
    results = await asyncio.gather(
        store.confirm(landed, time.time() + 60), other.confirm(landed, time.time() + 60)
    )
    assert sorted(results[0] + results[1]) == sorted(ids)


async def test_only_one_process_holds_the_sweep_lease(store: Store, other: Store) -> None:
    first = await store.claim_sweep(LONG)
    assert first is not None
    assert first.since is None  # no sweep ever ended
    assert time.time() - 600 < first.created <= time.time()
    assert await other.claim_sweep(LONG) is None
    assert await store.claim_sweep(LONG) is None  # held, by this process too
    assert await store.end_sweep(first, 1000.5) is True
    second = await other.claim_sweep(LONG)
    assert second is not None
    assert (second.since, second.created) == (1000.5, first.created)
    assert second.token != first.token
    assert await other.end_sweep(second, None) is True  # the mark stays where it was
    third = await store.claim_sweep(LONG)
    assert third is not None
    assert third.since == 1000.5
    assert await store.end_sweep(third, 2000.0) is True


async def test_the_sweep_mark_is_where_the_last_sweep_ended(
    backend: Backend, store: Store, other: Store
) -> None:
    reader = await open_reader(backend.url)
    try:
        assert await store.reader.sweep_mark() is None
        assert await reader.sweep_mark() is None
        first = await store.claim_sweep(LONG)
        assert first is not None
        assert await store.reader.sweep_mark() is None  # a sweep under way has not ended
        assert await store.end_sweep(first, 1000.5) is True
        assert await store.reader.sweep_mark() == 1000.5
        assert await reader.sweep_mark() == 1000.5
        second = await other.claim_sweep(LONG)
        assert second is not None
        assert await other.end_sweep(second, None) is True  # leaves the mark where it was
        assert await reader.sweep_mark() == 1000.5
        third = await other.claim_sweep(SHORT)
        assert third is not None
        fourth = await eventually_async(
            lambda: store.claim_sweep(LONG), 10, what="the expired sweep lease taken"
        )
        assert await other.end_sweep(third, 9999.0) is False  # stale: records nothing
        assert await reader.sweep_mark() == 1000.5
        assert await store.end_sweep(fourth, 2000.25) is True
        assert await other.reader.sweep_mark() == 2000.25
        assert await reader.sweep_mark() == 2000.25
    finally:
        await reader.close()


async def test_an_expired_sweep_lease_is_taken_and_its_end_is_stale(
    store: Store, other: Store
) -> None:
    lapsed = await store.claim_sweep(SHORT)
    assert lapsed is not None

    async def taken() -> SweepLease | None:
        return await other.claim_sweep(LONG)

    holder = await eventually_async(taken, 10, what="the expired sweep lease taken")
    assert await store.end_sweep(lapsed, 5000.0) is False  # changes nothing
    assert await store.claim_sweep(LONG) is None  # still held by the other
    assert await other.end_sweep(holder, None) is True
    after = await store.claim_sweep(LONG)
    assert after is not None
    assert after.since is None  # the stale end never recorded its mark


async def test_an_expired_sweep_lease_nobody_took_still_ends(store: Store) -> None:
    lapsed = await store.claim_sweep(0.01)
    assert lapsed is not None
    taken = time.time()
    await eventually_async(lambda: _past(taken + 0.05), 10, what="the sweep lease expired")
    assert await store.end_sweep(lapsed, 7.0) is True
    after = await store.claim_sweep(LONG)
    assert after is not None
    assert after.since == 7.0


async def test_a_serving_open_alone_frees_the_sweep_lease(backend: Backend) -> None:
    """A sweeper that crashed holds no lease past a restart: the sweep resumes at once, from
    where the last one ended."""
    async with opened(backend.url) as crashed:
        ended = await crashed.claim_sweep(LONG)
        assert ended is not None
        assert await crashed.end_sweep(ended, 1234.5) is True
        assert await crashed.claim_sweep(LONG) is not None  # then it stops, holding it
    async with opened(backend.url) as bystander:
        assert await bystander.claim_sweep(LONG) is None  # an open that is no server frees none
    async with opened(backend.url, serving=True) as server:
        resumed = await server.claim_sweep(LONG)
        assert resumed is not None
        assert resumed.since == 1234.5


async def test_a_serving_open_beside_a_live_server_leaves_the_sweep_lease(
    backend: Backend,
) -> None:
    async with opened(backend.url, serving=True) as first:
        held = await first.claim_sweep(LONG)
        assert held is not None
        async with opened(backend.url, serving=True) as second:
            assert await second.claim_sweep(LONG) is None
        assert await first.end_sweep(held, None) is True


async def _past(moment: float) -> bool:
    return time.time() > moment


# Budget priorities


async def test_each_class_leaves_its_reserve_to_the_classes_above(store: Store) -> None:
    budget = store.budget(20, 60)  # reserve: 1 place per class below live
    for _ in range(16):
        assert await budget.take() is not None
    rooms = [await budget.room(p) for p in PRIORITIES]
    assert rooms == [4, 3, 2, 1, 0]  # live, feedback, reconciled, query, backfill
    assert await budget.take("backfill") is None
    assert await budget.wait_time("backfill") > 0
    assert await budget.wait_time("query") == 0
    for _ in range(3):
        assert await budget.take("live") is not None
    assert await budget.room("live") == 1
    assert await budget.room("feedback") == 0
    assert await budget.take("query") is None
    assert await budget.take("feedback") is None
    assert await budget.take("live") is not None  # live can use the whole window
    assert await budget.take("live") is None


async def test_a_budget_with_limit_20_and_19_held_has_one_live_place(store: Store) -> None:
    budget = store.budget(20, 60)
    for _ in range(19):
        assert await budget.take("live") is not None
    assert await budget.take("query") is None
    assert await budget.take("live") is not None


async def test_a_tiny_budget_still_lets_every_class_call(store: Store) -> None:
    budget = store.budget(2, 60)
    assert await budget.room("backfill") == 1  # never the whole budget reserved
    assert await budget.take("backfill") is not None
    assert await budget.take("feedback") is None
    assert await budget.take("live") is not None


async def test_a_pause_stops_every_class(store: Store) -> None:
    budget = store.budget(20, 0.5)
    await budget.pause(60)
    for priority in PRIORITIES:
        assert await budget.room(priority) == 0
        assert await budget.take(priority) is None
        assert await budget.wait_time(priority) > 30


# The flow, for drain-time reporting


async def test_flow_counts_arrivals_posts_backlog_and_its_calls(store: Store) -> None:
    assert await store.reader.flow(60) == Flow(60, 0, 0, 0, 0, 0, 0)
    # Each claimed with nothing else due in its stage.
    await delivered(store, "repost")  # done; re-posted as unconfirmed below: 1 call
    await feedback_only(store, "feedback")  # 1 call
    await add(store, "skipped")
    job = await claim_one(store)
    assert await store.record([Skipped(job.lease, "sampled out")]) == [True]
    await to_post(store, "both", feedback=False)  # 2 calls
    await add(store, "unscored")  # 1 call
    await add(store, "reconciled", origin="reconciled")  # 1 call, not an arrival
    assert await store.enqueue_scores("backfilled", SCORES)  # 1 call, not an arrival
    assert await store.confirm({"repost": LANDED_NONE}, time.time() + 60) == ["repost"]
    budget = store.budget(10, 60)
    for _ in range(3):
        slot = await budget.take()
        assert slot is not None
        await budget.spent(slot)
    await budget.settle()  # the ends written
    flow = await store.reader.flow(600)
    assert flow == Flow(
        window=600, arrived=5, posted=3, backlog=6, backlog_calls=7, unconfirmed=1, skipped=1
    )
    assert (await store.reader.flow(60)).arrived == 5


async def test_a_value_that_cannot_be_sent_fails_only_its_own_outcome(store: Store) -> None:
    """Outcomes recorded at once share a transaction: one whose text the driver cannot encode
    (a lone surrogate) fails its own caller, and the others are applied."""
    await add(store, "bad", "good")
    jobs = {job.request_id: job for job in await store.claim("score", 2, LONG)}
    held = await asyncio.gather(
        store.record([Dead(jobs["bad"].lease, 500, "bad \ud800 text", frozenset())]),
        store.record([Scored(jobs["good"].lease, {"s": 1}, None, True)]),
        return_exceptions=True,
    )
    assert isinstance(held[0], Exception)
    assert held[1] == [True]
    assert (await entry(store, "good")).state == "done"
    assert (await entry(store, "bad")).state == "leased"
