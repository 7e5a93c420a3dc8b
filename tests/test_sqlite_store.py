"""What only the SQLite store does: its migrations from schema versions 1, 2 and 3, a read path
that never waits for the writer, and a posting budget kept in the file. (What every store
promises is the contract suite's.)"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3  # to build a version 1 file
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.stores import every_kind, sqlite_counts_agree, sqlite_writes_held, with_store
from webhook.helicone import SCORING_WINDOW
from webhook.store import (
    Delivered,
    Flow,
    QueueStats,
    ScoreCounts,
    Store,
    open_reader,
    open_store,
)

# The schema of version 1, as the first release created it.
SCHEMA_V1 = """
CREATE TABLE webhooks (
    request_id   TEXT PRIMARY KEY,
    body         BLOB,
    state        TEXT NOT NULL DEFAULT 'pending',
    received_at  REAL NOT NULL,
    available_at REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    scores       TEXT,
    feedback     INTEGER,
    posted       INTEGER NOT NULL DEFAULT 0,
    backfill     INTEGER NOT NULL DEFAULT 0,
    last_status  INTEGER,
    last_error   TEXT,
    finished_at  REAL
) WITHOUT ROWID;
CREATE INDEX webhooks_to_score ON webhooks (available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NULL;
CREATE INDEX webhooks_to_post ON webhooks (backfill, available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NOT NULL;
CREATE INDEX webhooks_state ON webhooks (state, finished_at);
CREATE TABLE post_log (ended_at REAL NOT NULL);
CREATE INDEX post_log_ended ON post_log (ended_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


def run(db: Path, work: Callable[[Store], Awaitable[None]]) -> None:
    with_store(f"sqlite:///{db}", work)


def test_a_version_1_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V1)
        conn.executemany(
            "INSERT INTO webhooks (request_id, body, state, received_at, available_at, attempts,"
            " scores, feedback, posted, last_status, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                ("unscored", b'{"request_id":"unscored"}', "pending", 1.0, 1.0, 0, None, None,
                 0, None, None),
                # Its scores were posted, its feedback not yet: only the feedback is left to post.
                ("half", None, "pending", 2.0, 2.0, 1, '{"a":1}', 1, 1, None, None),
                ("done", None, "done", 3.0, 3.0, 1, '{"a":2}', 0, 3, 201, 4.0),
            ],
        )  # fmt: skip

    async def read_v1() -> dict[str, frozenset[str]]:
        reader = await open_reader(f"sqlite:///{db}")  # reads version 1 without migrating it
        try:
            return {rid: e.posted for rid, e in (await reader.entries()).items()}
        finally:
            await reader.close()

    expected = {
        "unscored": frozenset(),
        "half": frozenset({"scores"}),
        "done": frozenset({"scores", "feedback"}),
    }
    assert asyncio.run(read_v1()) == expected
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)

    async def work(store: Store) -> None:
        entries = await store.reader.entries()
        assert {rid: e.posted for rid, e in entries.items()} == expected
        assert (entries["done"].state, entries["done"].scores) == ("done", {"a": 2})
        assert entries["unscored"].has_body
        (job,) = await store.claim("post", 10, 60)
        assert (job.request_id, job.posted, job.feedback, job.attempts) == (
            "half", frozenset({"scores"}), True, 2,
        )  # fmt: skip
        assert await store.record([Delivered(job.lease, 201, frozenset({"feedback"}))]) == [True]
        (job,) = await store.claim("score", 10, 60)
        assert (job.request_id, job.body) == ("unscored", b'{"request_id":"unscored"}')
        half = (await store.reader.entries(["half"]))["half"]
        assert (half.state, half.posted) == ("done", frozenset({"scores", "feedback"}))

    run(db, work)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    sqlite_counts_agree(db)


def test_the_status_reads_read_a_version_1_database_as_it_is(tmp_path: Path) -> None:
    """Before version 3 a webhook's origin is its backfill flag, and no sweep ever ended."""
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V1)
        conn.executemany(
            "INSERT INTO webhooks (request_id, state, received_at, available_at, scores, backfill,"
            " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("before", "done", 1.0, 1.0, '{"a":1}', 0, 2.0),
                ("live", "done", 3.0, 3.0, '{"a":1,"b":0}', 0, 4.0),
                ("dead", "dead", 4.0, 4.0, '{"a":2}', 0, 9.0),
                ("backfilled", "pending", 5.0, 5.0, '{"a":1}', 1, None),
                ("unscored", "dead", 6.0, 6.0, None, 0, 7.0),
            ],
        )

    async def read() -> tuple[object, ...]:
        reader = await open_reader(f"sqlite:///{db}")
        try:
            newest = [d.request_id for d in await reader.dead_letters(10, newest=True)]
            counts = await reader.score_counts(3.0, 10), await reader.score_counts(3.0, 1)
            return *counts, await reader.sweep_mark(), newest
        finally:
            await reader.close()

    assert asyncio.run(read()) == (
        ScoreCounts({"a": {1: 1, 2: 1}, "b": {0: 1}}, 2),
        ScoreCounts({"a": {2: 1}}, 1),  # the latest: "dead"
        None,
        ["dead", "unscored"],
    )
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)  # read, not migrated


# Version 2: version 1 and the lease token.
SCHEMA_V2 = (
    SCHEMA_V1.replace("PRAGMA user_version = 1;", "PRAGMA user_version = 2;")
    + "ALTER TABLE webhooks ADD COLUMN lease TEXT;"
)


# The previous build's (version 2) writes and claims, frozen as it ran them: during a rolling
# restart a server of that build still works on a file the new build migrated.
OLD_INSERT = (
    "INSERT OR IGNORE INTO webhooks (request_id, body, received_at, available_at)"
    " VALUES (?, ?, ?, ?)"
)
OLD_ENQUEUE = (
    "INSERT INTO webhooks (request_id, received_at, available_at, scores, backfill)"
    " VALUES (?, ?, ?, ?, 1)"
)
OLD_CLAIM = {
    "score": (
        "UPDATE webhooks SET state = 'leased', available_at = ?, attempts = attempts + 1,"
        " lease = ?"
        " WHERE request_id IN (SELECT request_id FROM webhooks INDEXED BY webhooks_to_score"
        "   WHERE state IN ('pending', 'leased') AND scores IS NULL AND available_at <= ?"
        "   ORDER BY available_at LIMIT ?)"
        " RETURNING request_id, body, attempts, received_at, scores, feedback, posted"
    ),
    "post": (
        "UPDATE webhooks SET state = 'leased', available_at = ?, attempts = attempts + 1,"
        " lease = ?"
        " WHERE request_id IN (SELECT request_id FROM webhooks INDEXED BY webhooks_to_post"
        "   WHERE state IN ('pending', 'leased') AND scores IS NOT NULL AND available_at <= ?"
        "   ORDER BY backfill, available_at LIMIT ?)"
        " RETURNING request_id, NULL, attempts, received_at, scores, feedback, posted"
    ),
}


def _old_build_works(db: Path) -> None:
    """The previous build's add, backfill and both claims still run on the migrated file, and
    its claim still posts live scores before backfilled ones."""
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.execute(OLD_INSERT, ("old-live", b"{}", now, now))
        conn.execute(OLD_ENQUEUE, ("old-backfilled", now - 1, now - 1, '{"a":1}'))
        conn.execute(
            "INSERT INTO webhooks (request_id, received_at, available_at, scores)"
            " VALUES ('old-scored', ?, ?, '{\"a\":2}')",
            (now, now),
        )
        claimed = {}
        for stage, sql in OLD_CLAIM.items():
            rows = conn.execute(sql, (now + 60, f"old-{stage}", now + 1, 10)).fetchall()
            claimed[stage] = [row[0] for row in rows]
    assert claimed["score"] == ["old-live"]
    assert sorted(claimed["post"]) == ["old-backfilled", "old-scored"]
    with sqlite3.connect(db) as conn:  # its order: live first, though the backfilled is older
        conn.execute(
            "UPDATE webhooks SET state = 'pending', available_at = 0, lease = NULL"
            " WHERE request_id LIKE 'old-%'"
        )
        (row,) = conn.execute(OLD_CLAIM["post"], (now + 60, "again", now + 1, 1)).fetchall()
    assert row[0] == "old-scored"


def test_a_version_2_database_is_migrated_to_origins_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V2)
        conn.executemany(
            "INSERT INTO webhooks (request_id, body, state, received_at, available_at, attempts,"
            " scores, feedback, posted, backfill, last_status, finished_at, lease)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                # The backfilled one is older: live is posted first all the same.
                ("backfilled", None, "pending", 1.0, 1.0, 0, '{"a":1}', None, 0, 1, None, None,
                 None),
                ("live", None, "pending", 2.0, 2.0, 0, '{"a":2}', None, 0, 0, None, None, None),
                ("done", None, "done", 3.0, 3.0, 1, '{"a":3}', None, 1, 0, 201, 4.0, None),
            ],
        )  # fmt: skip

    async def read_v2() -> dict[str, tuple[str, bool, str | None]]:
        reader = await open_reader(f"sqlite:///{db}")  # reads version 2 without migrating it
        try:
            entries = await reader.entries()
            assert (await reader.flow(60)).backlog == 2
            return {rid: (e.origin, e.unconfirmed, e.skipped) for rid, e in entries.items()}
        finally:
            await reader.close()

    expected = {
        "backfilled": ("backfill", False, None),
        "live": ("live", False, None),
        "done": ("live", False, None),
    }
    assert asyncio.run(read_v2()) == expected
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    migrated_after = time.time()

    async def work(store: Store) -> None:
        entries = await store.reader.entries()
        assert {rid: (e.origin, e.unconfirmed, e.skipped) for rid, e in entries.items()} == (
            expected
        )
        assert (entries["done"].state, entries["done"].posted) == ("done", frozenset({"scores"}))
        first, second = await store.claim("post", 1, 60), await store.claim("post", 1, 60)
        assert [j.request_id for j in first + second] == ["live", "backfilled"]
        assert second[0].origin == "backfill"
        lease = await store.claim_sweep(60)
        assert lease is not None
        # Its live webhooks arrived long ago: the sweep starts at Helicone's window.
        window_start = lease.created + SCORING_WINDOW
        assert migrated_after <= window_start <= time.time()
        assert lease.since is None

    run(db, work)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(webhooks)")}
        assert {"origin", "unconfirmed", "skipped", "backfill"} <= columns  # expand, then contract
    _old_build_works(db)
    sqlite_counts_agree(db)


def test_a_migrated_store_sweeps_from_the_last_live_webhook(tmp_path: Path) -> None:
    """The requests Helicone logged while the deploy that migrates the store was under way are
    swept: ``created`` is when the previous build received its last live webhook."""
    db = tmp_path / "v2.db"
    last = time.time() - 3600
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V2)
        conn.executemany(
            "INSERT INTO webhooks (request_id, state, received_at, available_at, backfill)"
            " VALUES (?, 'done', ?, ?, ?)",
            [("earlier", last - 60, 0, 0), ("last", last, 0, 0), ("backfilled", last + 600, 0, 1)],
        )

    async def created(store: Store) -> float:
        lease = await store.claim_sweep(60)
        assert lease is not None
        return lease.created

    assert with_store(f"sqlite:///{db}", created) == last


def test_a_migrated_store_with_no_webhook_sweeps_from_its_migration(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_V2)
    migrated_after = time.time()

    async def created(store: Store) -> float:
        lease = await store.claim_sweep(60)
        assert lease is not None
        return lease.created

    assert migrated_after <= with_store(f"sqlite:///{db}", created) <= time.time()


def test_the_read_path_never_waits_for_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "q.db"

    async def work(store: Store) -> None:
        assert await store.add("first", b"{}")
        # Another connection holds the write lock with a write of its own: the store's writer
        # waits for it (up to its busy timeout), and the reader must not.
        with sqlite_writes_held(db) as lock:
            lock.execute("DELETE FROM webhooks")
            adding = asyncio.create_task(store.add("second", b"{}"))
            stats = await asyncio.wait_for(store.reader.stats(), 30)
            entries = await asyncio.wait_for(store.reader.entries(), 30)
            assert not adding.done()  # the writer is still waiting: the reads did not
        assert stats.counts["pending"] == 1  # the last commit, not the uncommitted delete
        assert list(entries) == ["first"]
        assert await adding
        assert set(await store.reader.entries()) == {"first", "second"}

    run(db, work)


def test_the_posting_budget_is_kept_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "q.db"

    async def spend(store: Store) -> None:
        budget = store.budget(3, 60.0)
        first = await budget.take()
        assert first is not None
        await budget.spent(first)
        assert await budget.take() is not None  # never spent: its process "died"
        # Another server on the same file shares the budget: one place is left, for one of them.
        other = open_store(f"sqlite:///{db}")
        await other.open()
        try:
            assert await other.budget(3, 60.0).room() == 1
            assert await other.budget(3, 60.0).take() is not None
            assert (await budget.room(), await budget.take()) == (0, None)
        finally:
            await other.close()

    async def pause(store: Store) -> None:
        budget = store.budget(10, 60.0)
        assert await budget.room() == 7
        await budget.pause(600.0)

    async def paused(store: Store) -> None:
        budget = store.budget(10, 60.0)
        assert (await budget.room(), await budget.take()) == (0, None)
        assert await budget.wait_time() > 60  # the pause, not the window

    run(db, spend)
    run(db, pause)  # after a restart: the three places are still held
    run(db, paused)  # and so is the 429's pause


def test_the_budget_counts_places_any_writer_added_without_reading_the_window(
    tmp_path: Path,
) -> None:
    """Far below the limit a take does not count the window, yet places another process or an
    older build wrote (straight into post_log) are never missed: triggers keep the bound."""
    db = tmp_path / "q.db"

    def bound() -> tuple[int | None, int]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT counted, added FROM post_bound").fetchone()
        return row[0], row[1]

    async def work(store: Store) -> None:
        budget = store.budget(5, 60.0)
        assert await budget.take() is not None  # the first take counts the window: none
        assert bound() == (1, 0)
        second = await budget.take()  # far below the limit: no count, one place added
        assert second is not None
        assert bound() == (1, 1)
        await budget.spent(second)  # a moved end counts as added too (never less)
        await budget.settle()  # (spent does not wait for its write)
        assert bound() == (1, 2)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            now = time.time()  # an older build's takes, not through this budget
            conn.executemany("INSERT INTO post_log (ended_at) VALUES (?)", [(now,), (now,)])
        assert bound() == (1, 4)
        # The bound (5) reached the limit: the next take counts the window (4 held) and takes
        # the last place; then there is none, whoever wrote the places.
        assert await budget.take() is not None
        assert bound() == (5, 0)
        assert (await budget.room(), await budget.take()) == (0, None)

    run(db, work)


def _as_version_3(db: Path) -> None:
    """Take a version 4 file back to version 3: its schema without the counters and the
    budget's bound (the rest of version 4 is the same)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for trigger in ("insert", "delete", "update"):
            conn.execute(f"DROP TRIGGER webhooks_count_{trigger}")
        conn.execute("DROP TABLE counts")
        conn.execute("DROP INDEX webhooks_waiting")
        for trigger in ("added", "moved"):
            conn.execute(f"DROP TRIGGER post_log_{trigger}")
        conn.execute("DROP TABLE post_bound")
        conn.execute("PRAGMA user_version = 3")


def test_a_version_3_database_gets_counters_that_count_its_rows(tmp_path: Path) -> None:
    """The migration counts the rows it finds, and from then on the triggers keep the counters,
    whoever writes: this build, or a previous one's statement on the migrated file."""
    db = tmp_path / "v3.db"
    expected = with_store(f"sqlite:///{db}", every_kind)
    _as_version_3(db)
    now = time.time()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # written by version 3
        conn.execute(OLD_INSERT, ("c1", b"{}", now, now))
    expected |= {"pending": 3, "to_score": 2}

    async def read() -> tuple[QueueStats, Flow]:
        reader = await open_reader(f"sqlite:///{db}")
        try:
            return await reader.stats(), await reader.flow(600)
        finally:
            await reader.close()

    counted = asyncio.run(read())  # version 3, read as it is: counted row by row
    states = {state: expected[state] for state in ("pending", "leased", "done", "dead")}
    assert counted[0].counts == states
    backlog = expected["to_score"] + expected["scores_due"] + expected["feedback_due"]
    assert (counted[1].backlog, counted[1].backlog_calls) == (4, backlog)
    assert (counted[1].unconfirmed, counted[1].skipped) == (1, 1)

    async def migrate(store: Store) -> None:
        pass

    run(db, migrate)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    sqlite_counts_agree(db)
    assert asyncio.run(read()) == counted  # now from the counters
    # Another process's statements (a previous build's claim, a purge) keep them too.
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(OLD_CLAIM["score"], (now + 60, "old", now + 1, 10)).fetchall()
        conn.execute("DELETE FROM webhooks WHERE state = 'dead'")
    sqlite_counts_agree(db)
    stats = asyncio.run(read())[0]
    assert stats.counts == states | {"pending": 1, "leased": 3, "dead": 0}
