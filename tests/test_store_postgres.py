"""What is PostgreSQL's own, beyond the contract suite (which runs on it too): instances on one
database (heartbeat takeover of a SIGKILLed one, NOTIFY wake-ups across them, a schema created
by two at once), the schema version, and a database that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from tests.eventually import eventually_async
from tests.link import Link
from tests.standin import free_port
from tests.stores import every_kind, opened, postgres_counts_agree, with_query
from webhook.helicone import SCORING_WINDOW
from webhook.store import (
    PostBudget,
    Retry,
    Scored,
    Stage,
    StoreError,
    open_reader,
    open_store,
    with_connection_settings,
)
from webhook.store.postgres_schema import MIGRATIONS

pytestmark = pytest.mark.anyio

FAST = {"heartbeat": "0.2", "takeover": "1"}  # a stopped instance is taken over within ~1 s


HOLDER = """
import asyncio, sys
from webhook.store import open_store

async def main() -> None:
    store = open_store(sys.argv[1])
    await store.open(serving=True)
    jobs = await store.claim("score", 10, 3600)
    print(" ".join(job.request_id for job in jobs), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_concurrent_adds_are_committed_together(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        ids = [f"id-{i}" for i in range(50)]
        assert await asyncio.gather(*(store.add(rid, b"{}") for rid in ids)) == [True] * 50
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            cur = await conn.execute("SELECT count(DISTINCT xmin::text) FROM webhooks")
            row = await cur.fetchone()
        assert row is not None
        assert row[0] < 5  # a handful of transactions (group commit), not one per webhook


async def test_concurrent_outcomes_are_recorded_together(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        ids = [f"id-{i}" for i in range(50)]
        await asyncio.gather(*(store.add(rid, b"{}") for rid in ids))
        jobs = await store.claim("score", 50, 60)
        assert len(jobs) == 50
        outcomes = [Scored(job.lease, {"s": 1}, None, True) for job in jobs]
        held = await asyncio.gather(*(store.record([outcome]) for outcome in outcomes))
        assert held == [[True]] * 50
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            cur = await conn.execute(
                "SELECT count(DISTINCT xmin::text), count(*) FILTER (WHERE state = 'done')"
                " FROM webhooks"
            )
            row = await cur.fetchone()
        assert row is not None
        transactions, done = row
        assert done == 50
        assert transactions < 5  # gathered, not one transaction per outcome


async def test_an_error_text_with_a_nul_is_recorded_and_fails_no_other_outcome(
    postgres_url: str,
) -> None:
    """PostgreSQL text cannot hold NUL, which an API's error body may carry: it is dropped,
    and an outcome gathered with it is never failed by it."""
    async with opened(postgres_url) as store:
        for rid in ("bad", "good", "refused"):
            assert await store.add(rid, b"{}")
        jobs = {job.request_id: job for job in await store.claim("score", 3, 60)}
        held = await asyncio.gather(
            store.record([Retry(jobs["bad"].lease, 5.0, 502, "bad\x00gateway", frozenset())]),
            store.record([Scored(jobs["good"].lease, {"s": 1}, None, True)]),
            # A score name jsonb cannot hold: refused, for its own caller only.
            store.record([Scored(jobs["refused"].lease, {"s\x00": 1}, None, True)]),
            return_exceptions=True,
        )
        assert list(held[:2]) == [[True], [True]]
        assert isinstance(held[2], StoreError)
        entries = await store.reader.entries(["bad", "good", "refused"])
        assert entries["bad"].last_error == "badgateway"
        assert entries["good"].state == "done"
        assert entries["refused"].state == "leased"


async def test_the_budget_counts_places_any_writer_added_without_reading_the_window(
    postgres_url: str,
) -> None:
    """Far below the limit a take does not count the window, yet places another instance or
    an older build inserted are never missed: a trigger keeps the bound."""

    async def bound(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> tuple[object, ...]:
        cur = await conn.execute("SELECT counted, added FROM budget WHERE id = 1")
        row = await cur.fetchone()
        assert row is not None
        return row

    async with (
        opened(postgres_url, serving=True) as store,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn,
    ):
        budget = store.budget(5, 60.0)
        assert await budget.take() is not None  # the first take counts the window: none
        assert await bound(conn) == (1, 0)
        second = await budget.take()  # far below the limit: no count, one place added
        assert second is not None
        assert await bound(conn) == (1, 1)
        await budget.spent(second)
        await conn.execute(  # an older build's takes, not through this budget
            "INSERT INTO post_slots (token, taken_at) VALUES ('a', scorer_now()),"
            " ('b', scorer_now())"
        )
        assert await bound(conn) == (1, 3)
        assert await budget.take() is not None  # 4 < 5: the last place, without a count
        assert await bound(conn) == (1, 4)
        # The bound reached the limit: the window is counted (5 held), and nothing is free.
        assert (await budget.room(), await budget.take()) == (0, None)
        assert await bound(conn) == (5, 0)


async def test_a_killed_instances_leases_are_taken_over(postgres_url: str) -> None:
    url = with_query(postgres_url, **FAST)
    async with opened(url, serving=True) as survivor:
        assert await survivor.add("a", b"{}")
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(holder.stdout.readline(), 30)
            assert line.decode().split() == ["a"]  # leased for an hour, by a live instance
            assert await survivor.claim("score", 10, 60) == []
        finally:
            holder.send_signal(signal.SIGKILL)
            await holder.wait()

        async def taken_over() -> list[str]:
            return [job.request_id for job in await survivor.claim("score", 10, 60)]

        assert await eventually_async(taken_over, 15) == ["a"]


async def test_an_instance_never_takes_over_its_own_leases(postgres_url: str) -> None:
    # After the database was away longer than the takeover time, its heartbeat looks stale,
    # but it is alive and its work may still be in flight: only others take the work over.
    async with opened(postgres_url, serving=True) as stale, opened(postgres_url) as other:
        assert await stale.add("a", b"{}")
        assert len(await stale.claim("score", 10, 3600)) == 1
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute("UPDATE instances SET heartbeat_at = 0")
        assert await stale.claim("score", 10, 60) == []
        [job] = await other.claim("score", 10, 60)
        assert (job.request_id, job.attempts) == ("a", 2)


async def test_a_closed_instances_leases_are_taken_over_at_once(postgres_url: str) -> None:
    async with opened(postgres_url, serving=True) as survivor:
        async with opened(postgres_url, serving=True) as leaving:
            assert await leaving.add("a", b"{}")
            assert len(await leaving.claim("score", 10, 3600)) == 1
            assert await survivor.claim("score", 10, 60) == []
        [job] = await survivor.claim("score", 10, 60)
        assert (job.request_id, job.attempts) == ("a", 2)


async def test_a_live_instance_keeps_its_leases(postgres_url: str) -> None:
    url = with_query(postgres_url, **FAST)
    async with opened(url, serving=True) as first, opened(url, serving=True) as second:
        assert await first.add("a", b"{}")
        assert [j.request_id for j in await first.claim("score", 10, 3600)] == ["a"]
        assert await second.add("clock", b"{}")
        assert [j.request_id for j in await second.claim("score", 10, 2)] == ["clock"]

        async def two_seconds_later() -> list[str]:
            # Its 2 s lease ran out: twice the takeover time has passed, heartbeats included.
            return [j.request_id for j in await second.claim("score", 10, 60)]

        assert await eventually_async(two_seconds_later, 15) == ["clock"]


async def test_a_call_in_flight_holds_its_place_while_its_instance_lives(
    postgres_url: str,
) -> None:
    url = with_query(postgres_url, **FAST)
    async with opened(url, serving=True) as watcher:
        async with opened(url, serving=True) as caller:
            assert await caller.budget(1, 0.5).take() is not None  # in flight, not spent
            budget = watcher.budget(1, 0.5)
            assert await watcher.add("clock", b"{}")
            assert len(await watcher.claim("score", 1, 2)) == 1

            async def two_seconds_later() -> list[str]:
                return [j.request_id for j in await watcher.claim("score", 1, 60)]

            assert await eventually_async(two_seconds_later, 15) == ["clock"]
            assert await budget.room() == 0  # four windows on, its caller still lives
            assert await budget.wait_time() >= 0.5
        # The caller closed with its call unspent: the place counts as ended when taken.

        async def taken() -> object:
            return await budget.take()

        await eventually_async(taken, 10)


async def test_wakes_reach_other_instances(postgres_url: str) -> None:
    async with opened(postgres_url) as adder, opened(postgres_url) as listener:
        woken: list[Stage] = []
        listener.subscribe(woken.append)
        await eventually_async(lambda: _settled(woken), 10)  # listening (it wakes on connect)
        woken.clear()
        assert await adder.add("a", b"{}")
        await eventually_async(lambda: _has(woken, "score"), 10, what="woken by another's add")
        assert await adder.enqueue_scores("b", {"x": 1})
        await eventually_async(lambda: _has(woken, "post"), 10, what="woken by another's backfill")


async def _settled(woken: list[Stage]) -> bool:
    return {"score", "post"} <= set(woken)


async def _has(woken: list[Stage], stage: Stage) -> bool:
    return stage in woken


async def test_two_instances_create_the_schema_at_once(postgres_url: str) -> None:
    stores = [open_store(postgres_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await asyncio.gather(*(s.add("a", b"{}") for s in stores)) in (
            [True, False, False, False],
            [False, True, False, False],
            [False, False, True, False],
            [False, False, False, True],
        )
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_version_this_build_does_not_know_is_refused(postgres_url: str) -> None:
    async with opened(postgres_url):
        pass
    conninfo = postgres_url
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("UPDATE scorer_meta SET value = '99' WHERE key = 'schema_version'")
    message = "the database has schema version 99; this build knows version 5"
    with pytest.raises(StoreError, match=f"^{re.escape(message)}$"):
        await open_store(postgres_url).open()
    with pytest.raises(StoreError, match=f"^{re.escape(message)}$"):
        await open_reader(postgres_url)


async def test_a_version_4_schema_gets_the_budgets_bound(postgres_url: str) -> None:
    """Version 4 as the build that shipped it left it: no bound. The migration adds it, and
    places taken from then on are counted in it, whoever inserts them."""
    async with opened(postgres_url):
        pass
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("DROP TRIGGER post_slots_added ON post_slots")
        await conn.execute("DROP FUNCTION scorer_slots_added()")
        await conn.execute(
            "ALTER TABLE budget DROP COLUMN counted, DROP COLUMN added, DROP COLUMN counted_over"
        )
        await conn.execute("UPDATE scorer_meta SET value = '4' WHERE key = 'schema_version'")
    async with opened(postgres_url) as store:  # migrates
        budget = store.budget(5, 60.0)
        slots = [await budget.take() for _ in range(6)]
        assert [s is not None for s in slots] == [True] * 5 + [False]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        version = await (
            await conn.execute("SELECT value FROM scorer_meta WHERE key = 'schema_version'")
        ).fetchone()
        row = await (
            await conn.execute("SELECT coalesce(counted, 0) + added FROM budget WHERE id = 1")
        ).fetchone()
    assert version == ("5",)
    assert row is not None
    assert row[0] >= 5  # the bound covers every place held: the five taken since


# The previous build's (version 2) backfill insert and claims, frozen as it ran them: during a
# rolling deploy its instances still work on a database the new build migrated.
OLD_ENQUEUE = (
    "INSERT INTO webhooks (request_id, received_at, available_at, scores, backfill)"
    " VALUES (%(rid)s, scorer_now(), scorer_now(), %(scores)s, true)"
    " ON CONFLICT (request_id) DO NOTHING"
)
_OLD_CLAIM = (
    "WITH due AS ("
    " SELECT request_id FROM webhooks w"
    " WHERE w.state IN ('pending', 'leased') AND {which} AND ("
    "  w.available_at <= scorer_now() OR (w.state = 'leased' AND w.holder IS NOT NULL"
    "   AND w.holder IS DISTINCT FROM %(holder)s"
    "   AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = w.holder"
    "    AND i.heartbeat_at > scorer_now() - %(takeover)s)))"
    " ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " UPDATE webhooks w SET state = 'leased', available_at = scorer_now() + %(lease)s,"
    " attempts = w.attempts + 1, lease = gen_random_uuid()::text, holder = %(holder)s"
    " FROM due WHERE w.request_id = due.request_id"
    " RETURNING w.request_id, w.lease, {body}, w.attempts, w.received_at, w.scores,"
    " w.feedback, w.posted_scores, w.posted_feedback"
)
OLD_CLAIM = {
    "score": _OLD_CLAIM.format(
        which="w.scores IS NULL", order="w.available_at, w.seq", body="w.body"
    ),
    "post": _OLD_CLAIM.format(
        which="w.scores IS NOT NULL", order="w.backfill, w.available_at, w.seq", body="NULL"
    ),
}


async def test_a_version_1_schema_is_migrated_to_origins_and_keeps_its_rows(
    postgres_url: str,
) -> None:
    # Version 1 here is the SQLite store's version 2 (it had the lease token from the start).
    connect = psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    async with await connect as conn, conn.transaction():
        for statement in filter(str.strip, MIGRATIONS[1].split(";\n")):
            await conn.execute(statement.encode())
        await conn.execute("INSERT INTO scorer_meta VALUES ('schema_version', '1')")
        await conn.execute(
            "INSERT INTO webhooks (request_id, received_at, available_at, scores, backfill,"
            " state, posted_scores, finished_at) VALUES"
            " ('backfilled', 1, 1, '{\"a\": 1}', true, 'pending', false, NULL),"
            " ('live', 2, 2, '{\"a\": 2}', false, 'pending', false, NULL),"
            " ('done', 3, 3, '{\"a\": 3}', false, 'done', true, 4)"
        )
    message = (
        "the database has schema version 1; this build reads version 5: start the server on it"
        " once to migrate it"
    )
    with pytest.raises(StoreError, match=f"^{re.escape(message)}$"):
        await open_reader(postgres_url)  # the read path never migrates
    migrated_after = time.time()
    async with opened(postgres_url) as store:
        entries = await store.reader.entries()
        assert {rid: (e.origin, e.unconfirmed, e.skipped) for rid, e in entries.items()} == {
            "backfilled": ("backfill", False, None),
            "live": ("live", False, None),
            "done": ("live", False, None),
        }
        assert (entries["done"].state, entries["done"].posted) == ("done", frozenset({"scores"}))
        first, second = await store.claim("post", 1, 60), await store.claim("post", 1, 60)
        assert [j.request_id for j in first + second] == ["live", "backfilled"]
        lease = await store.claim_sweep(60)
        assert lease is not None
        # Its live webhooks arrived long ago: the sweep starts at Helicone's window.
        window_start = lease.created + SCORING_WINDOW
        assert migrated_after - 5 <= window_start <= time.time() + 5  # the database's clock
        assert lease.since is None
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT value FROM scorer_meta WHERE key = 'schema_version'")
        assert await cur.fetchone() == ("5",)
        cur = await conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'webhooks' AND table_schema = current_schema()"
        )
        columns = {str(name) for (name,) in await cur.fetchall()}
    assert {"origin", "unconfirmed", "skipped", "backfill"} <= columns  # expand, then contract
    # The previous build's backfill and claims still run, and it posts live scores first.
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO webhooks (request_id, body, received_at, available_at) VALUES"
            " ('old-live', '{}', scorer_now(), scorer_now()),"
            " ('old-scored', NULL, scorer_now(), scorer_now())"
        )
        await conn.execute("UPDATE webhooks SET scores = '{}' WHERE request_id = 'old-scored'")
        await conn.execute(OLD_ENQUEUE.encode(), {"rid": "old-backfilled", "scores": "{}"})
        await conn.execute(  # the backfilled is the older: live first all the same
            "UPDATE webhooks SET available_at = available_at - 10 WHERE request_id LIKE 'old-%'"
            " AND request_id <> 'old-scored'"
        )
        claimed = {}
        for stage, sql in OLD_CLAIM.items():
            params = {"holder": None, "takeover": 10, "limit": 1, "lease": 60}
            cur = await conn.execute(sql.encode(), params)
            claimed[stage] = [str(row[0]) for row in await cur.fetchall()]
    assert claimed == {"score": ["old-live"], "post": ["old-scored"]}
    postgres_counts_agree(postgres_url)


async def test_a_migrated_schema_sweeps_from_the_last_live_webhook(postgres_url: str) -> None:
    """The requests Helicone logged while the deploy that migrates the database was under way
    are swept: ``created`` is when the previous build received its last live webhook."""
    connect = psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    async with await connect as conn, conn.transaction():
        for statement in filter(str.strip, MIGRATIONS[1].split(";\n")):
            await conn.execute(statement.encode())
        await conn.execute("INSERT INTO scorer_meta VALUES ('schema_version', '1')")
        cur = await conn.execute(
            "INSERT INTO webhooks (request_id, received_at, available_at, state, backfill)"
            " SELECT rid, scorer_now() - ago, 0, 'done', backfill"
            " FROM (VALUES ('earlier', 3660, false), ('last', 3600, false),"
            "  ('backfilled', 600, true)) AS t(rid, ago, backfill)"
            " RETURNING request_id, received_at"
        )
        last = {str(rid): float(at) for rid, at in await cur.fetchall()}["last"]
    async with opened(postgres_url) as store:
        lease = await store.claim_sweep(60)
    assert lease is not None
    assert lease.created == last


async def test_no_server_is_one_line_at_open() -> None:
    url = f"postgresql://root@127.0.0.1:{free_port()}/test?connect_timeout=2"
    with pytest.raises(StoreError, match=r"^connection failed: .*refused") as caught:
        await open_store(url).open()
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match=r"^connection failed: "):
        await open_reader(url)


@pytest.mark.parametrize(
    "option", [{"pool_max": "many"}, {"pool_max": "0"}, {"statement_timeout": "0"}]
)
async def test_a_bad_url_option_is_one_line(postgres_url: str, option: dict[str, str]) -> None:
    with pytest.raises(StoreError, match=r"^bad option in the database URL: "):
        open_store(with_query(postgres_url, **option))


async def test_a_statement_past_the_statement_timeout_fails_and_the_store_goes_on(
    postgres_url: str,
) -> None:
    url = with_connection_settings(postgres_url, pool_size=2, statement_timeout=0.5)
    async with opened(url) as store:
        async with await psycopg.AsyncConnection.connect(postgres_url) as locker:
            await locker.execute("LOCK TABLE webhooks IN EXCLUSIVE MODE")  # no writer gets in
            with pytest.raises(StoreError, match=r"^canceling statement due to statement timeout$"):
                await store.add("a", b"{}")
            with pytest.raises(StoreError, match=r"^the last write failed "):
                await store.ping()
            await locker.rollback()
        assert await store.add("a", b"{}")  # it was not stored; the pool goes on
        await store.ping()


@contextlib.asynccontextmanager
async def budget_row_held(
    postgres_url: str, limit: int
) -> AsyncIterator[tuple[PostBudget, Callable[[], Awaitable[None]]]]:
    """A budget of ``limit`` calls a minute while another session holds the budget row's lock
    (every write of the budget waits for it), and the call that lets it go."""
    async with (
        opened(postgres_url) as store,
        await psycopg.AsyncConnection.connect(postgres_url) as locker,
    ):
        budget = store.budget(limit, 60.0)
        assert await budget.room() == limit
        await locker.execute("SELECT 1 FROM budget WHERE id = 1 FOR UPDATE")
        yield budget, locker.rollback


async def test_a_pause_holds_in_its_process_before_its_write_commits(postgres_url: str) -> None:
    """A 429's pause stops this process's calls the moment it is known, not once its write
    (which the other instances wait for) commits: a round trip later, or never."""
    async with budget_row_held(postgres_url, 5) as (budget, release):
        pausing = asyncio.ensure_future(budget.pause(60))
        await asyncio.sleep(0.2)
        assert not pausing.done()  # its write waits for the lock
        assert await asyncio.wait_for(budget.room(), 5) == 0
        assert await asyncio.wait_for(budget.take(), 5) is None
        assert await asyncio.wait_for(budget.wait_time(), 5) > 30
        await release()
        await asyncio.wait_for(pausing, 10)
        assert await budget.take() is None


async def test_a_place_being_taken_is_not_counted_free(postgres_url: str) -> None:
    """A take under way holds its place for room and wait_time before the database has it:
    the relay claims again as soon as the last claim's jobs have started their takes, and
    counted those places free (test_priorities, in CI: a reconciled post took a live one's
    place)."""
    async with budget_row_held(postgres_url, 1) as (budget, release):
        taking = asyncio.ensure_future(budget.take())
        await asyncio.sleep(0.2)
        assert not taking.done()  # it waits for the lock
        assert await asyncio.wait_for(budget.room(), 5) == 0
        assert await asyncio.wait_for(budget.wait_time(), 5) > 30
        await release()
        slot = await asyncio.wait_for(taking, 10)
        assert slot is not None
        assert await budget.room() == 0
        await budget.spent(slot)


async def test_a_database_that_goes_away_and_comes_back(postgres_url: str) -> None:
    async with (
        Link(postgres_url) as link,
        opened(with_query(link.url, connect_timeout="1")) as store,
        opened(postgres_url) as direct,
    ):
        woken: list[Stage] = []
        store.subscribe(woken.append)
        await eventually_async(lambda: _settled(woken), 10, what="listening")
        assert await store.add("before", b"{}")
        await store.ping()
        await link.cut()
        with pytest.raises(StoreError):
            await store.add("during", b"{}")
        with pytest.raises(StoreError, match=r"^the last write failed "):
            await store.ping()  # at once, while the last write of webhooks failed
        woken.clear()
        await link.start()

        async def ready() -> bool:
            try:
                await store.ping()
            except StoreError:
                return False
            return True

        await eventually_async(ready, 20, what="ping succeeds once the database is back")
        assert await store.add("during", b"{}")  # it was never stored
        assert set(await store.reader.entries()) == {"before", "during"}
        # Listening again, it woke both stages (it may have missed a NOTIFY), and hears others.
        await eventually_async(lambda: _settled(woken), 20, what="listening again")
        woken.clear()
        assert await direct.add("from-another", b"{}")
        await eventually_async(lambda: _has(woken, "score"), 10, what="woken by another's add")


async def test_a_database_that_stops_answering_fails_writes_within_the_statement_timeout(
    postgres_url: str,
) -> None:
    async with Link(postgres_url) as link:
        url = with_query(link.url, connect_timeout="1")
        async with opened(with_connection_settings(url, statement_timeout=1)) as store:
            assert await store.add("before", b"{}")
            link.freeze()  # no reset, no answer: a hung network path
            with pytest.raises(StoreError):
                await asyncio.wait_for(store.add("frozen", b"{}"), 30)  # not a hang
            with pytest.raises(StoreError, match=r"^the last write failed "):
                await store.ping()
            link.freeze(False)


async def test_a_version_3_schema_gets_counters_that_count_its_rows(postgres_url: str) -> None:
    """The migration counts the rows it finds, and from then on the triggers keep the counters,
    whoever writes: this build, or a previous one's statement on the migrated database."""
    async with opened(postgres_url) as store:
        expected = await every_kind(store)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        # Back to version 3: its schema without the counters (the rest of 4 is the same).
        for trigger in ("insert", "update", "delete"):
            await conn.execute(f"DROP TRIGGER webhooks_count_{trigger} ON webhooks".encode())
        await conn.execute("DROP FUNCTION scorer_count()")
        await conn.execute("DROP TABLE webhook_counts")
        await conn.execute("DROP INDEX webhooks_waiting")
        await conn.execute("DROP TRIGGER post_slots_added ON post_slots")
        await conn.execute("DROP FUNCTION scorer_slots_added()")
        await conn.execute(
            "ALTER TABLE budget DROP COLUMN counted, DROP COLUMN added, DROP COLUMN counted_over"
        )
        await conn.execute("UPDATE scorer_meta SET value = '3' WHERE key = 'schema_version'")
        await conn.execute(OLD_ENQUEUE.encode(), {"rid": "c1", "scores": "{}"})
    expected |= {"pending": 3, "scores_due": 3}
    async with opened(postgres_url) as store:  # migrates
        stats, flow = await store.reader.stats(), await store.reader.flow(600)
    postgres_counts_agree(postgres_url)
    assert stats.counts == {s: expected[s] for s in ("pending", "leased", "done", "dead")}
    backlog = expected["to_score"] + expected["scores_due"] + expected["feedback_due"]
    assert (flow.backlog, flow.backlog_calls, flow.unconfirmed, flow.skipped) == (4, backlog, 1, 1)
    # Another instance's statements (a previous build's claim, a purge) keep them too.
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        params = {"holder": None, "takeover": 10, "limit": 10, "lease": 60}
        await conn.execute(OLD_CLAIM["post"].encode(), params)
        await conn.execute("DELETE FROM webhooks WHERE state = 'dead'")
    postgres_counts_agree(postgres_url)
    reader = await open_reader(postgres_url)
    try:
        counts = (await reader.stats()).counts
    finally:
        await reader.close()
    assert counts == {"pending": 1, "leased": 3, "done": 1, "dead": 0}
