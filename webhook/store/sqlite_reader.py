"""The SQLite read path: its own read-only connection, run in a worker thread.

In WAL mode a reader sees the last commit and never waits for a writer, nor a writer for it; the
queries run in a thread (:func:`asyncio.to_thread`), so neither the event loop nor the writer
thread ever waits on a read. The connection is opened read-only (``mode=ro``): the read path
never creates a store, never migrates one, and a missing file is :class:`NoStore`, not a new
empty database. So it reads older versions as they are: before version 3, a webhook's origin is
its ``backfill`` flag, and none is unconfirmed or skipped.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from webhook.store import (
    STATES,
    DeadLetter,
    Entry,
    Flow,
    NoStore,
    QueueStats,
    ScoreCounts,
    StoreError,
    fold_score_counts,
)
from webhook.store.sqlite_schema import READABLE, origin_name, posted, version_problem

__all__ = ["SQLiteReader"]

T = TypeVar("T")

ENTRY = (
    "SELECT request_id, state, attempts, received_at, available_at, scores, feedback, posted,"
    " {origin}, last_status, last_error, finished_at, body IS NOT NULL, {unconfirmed}, {skipped}"
    " FROM webhooks"
)
# The columns version 3 added, as an older version reads them.
COLUMNS = {"origin": "origin", "unconfirmed": "unconfirmed", "skipped": "skipped"}
COLUMNS_BEFORE_3 = {
    "origin": "CASE WHEN backfill THEN 2 ELSE 0 END",
    "unconfirmed": "0",
    "skipped": "NULL",
}
CHUNK = 500  # ids per query, well under SQLite's limit of bound parameters

# From version 4 the counts are the counters the schema's triggers keep (see .sqlite_schema).
COUNTERS = (
    "SELECT pending, leased, done, dead, to_score, scores_due, feedback_due, unconfirmed,"
    " skipped FROM counts"
)
# The oldest unfinished webhook: from version 4 over its own index, named, since the planner
# would otherwise read every pending row through webhooks_state.
OLDEST = "SELECT MIN(received_at) FROM webhooks {index} WHERE state IN ('pending', 'leased')"
# Before version 4, the flow's counts, each over an index (partial where it can be), in one
# snapshot; and the counts by state.
STATE_COUNTS = "SELECT state, COUNT(*) FROM webhooks GROUP BY state"
FLOW = {
    "arrived": "SELECT COUNT(*) FROM webhooks WHERE {origin} = 0 AND received_at > ?",
    "posted": "SELECT COUNT(*) FROM post_log WHERE ended_at > ?",
    "to_score": "SELECT COUNT(*) FROM webhooks"
    " WHERE state IN ('pending', 'leased') AND scores IS NULL",
    "to_post": "SELECT COUNT(*) FROM webhooks"
    " WHERE state IN ('pending', 'leased') AND scores IS NOT NULL",
    "scores_due": "SELECT COUNT(*) FROM webhooks"
    " WHERE state IN ('pending', 'leased') AND scores IS NOT NULL AND posted & 1 = 0",
    "feedback_due": "SELECT COUNT(*) FROM webhooks"
    " WHERE state IN ('pending', 'leased') AND feedback IS NOT NULL AND posted & 2 = 0",
    "unconfirmed": "SELECT COUNT(*) FROM webhooks WHERE {unconfirmed}",
    "skipped": "SELECT COUNT(*) FROM webhooks WHERE {skipped} IS NOT NULL",
}

# Dead letters by when each became one, longest-dead first or most recently dead first (both
# over webhooks_state).
DEAD_LETTERS = (
    "SELECT request_id, attempts, last_status, last_error, received_at FROM webhooks"
    " WHERE state = 'dead' ORDER BY finished_at {order} LIMIT ?"
)
# The latest live webhooks' scores since a time, counted per (name, value) in SQL, then how many
# were read. From version 3 read newest first over the live arrivals' index, named, so the
# planner never scans the table; before, by the backfill flag, over the table. Integer values
# only: a scorer gives nothing else (see scorers.run.as_score).
SCORE_COUNTS = (
    "WITH latest AS MATERIALIZED (SELECT scores FROM webhooks {index}"
    " WHERE {origin} = 0 AND received_at >= ? AND scores IS NOT NULL"
    " ORDER BY received_at DESC LIMIT ?)"
    " SELECT s.key, s.value, COUNT(*) FROM latest, json_each(latest.scores) AS s"
    " WHERE s.type = 'integer' GROUP BY s.key, s.value"
    " UNION ALL SELECT NULL, NULL, COUNT(*) FROM latest"
)
# Where the last sweep ended, as the store's end_sweep records it (any version has ``meta``).
SWEEP_MARK = "SELECT value FROM meta WHERE key = 'sweep_until'"


def _version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def _columns(conn: sqlite3.Connection) -> dict[str, str]:
    return COLUMNS if _version(conn) >= 3 else COLUMNS_BEFORE_3


def _counters(conn: sqlite3.Connection) -> dict[str, int] | None:
    """The counters of a version 4 store, None before (nothing keeps them)."""
    if _version(conn) < 4:
        return None
    cur = conn.execute(COUNTERS)
    (row,) = cur.fetchall()
    return {column[0]: int(value) for column, value in zip(cur.description, row, strict=True)}


def _entry(row: tuple[Any, ...]) -> Entry:
    rid, state, attempts, received, available, scores, feedback, bits, origin, *rest = row
    last_status, last_error, finished_at, has_body, unconfirmed, skipped = rest
    return Entry(
        request_id=rid,
        state=state,
        attempts=attempts,
        received_at=received,
        available_at=available,
        scores=None if scores is None else orjson.loads(scores),
        feedback=None if feedback is None else bool(feedback),
        posted=posted(bits),
        origin=origin_name(origin),
        last_status=last_status,
        last_error=last_error,
        finished_at=finished_at,
        has_body=bool(has_body),
        unconfirmed=bool(unconfirmed),
        skipped=skipped,
    )


def connect(path: str, busy_timeout_ms: int = 5_000) -> sqlite3.Connection:
    """A read-only connection to the store at ``path``, checked to be one.

    :class:`NoStore` when there is no file, or a database with no store in it;
    :class:`StoreError` when it is a directory, not a database, or of a schema this build does
    not know. Messages are the reason only: the caller says where.
    """
    file = Path(path)
    if file.is_dir():
        raise StoreError("it is a directory")
    if not file.is_file():
        raise NoStore(f"no store at {file.resolve()}")
    try:
        conn = sqlite3.connect(
            f"{file.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise StoreError(str(exc)) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'webhooks'").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(str(exc)) from exc
    if version == 0 and tables is None:
        conn.close()
        raise NoStore(f"no store in {file.resolve()}")
    if (problem := version_problem(version, READABLE)) is not None:
        conn.close()
        raise StoreError(problem)
    return conn


class SQLiteReader:
    """:class:`webhook.store.Reader` over one read-only connection, used by one thread at a
    time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: str) -> SQLiteReader:
        return cls(await asyncio.to_thread(connect, path))

    async def query(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``query`` on the read-only connection, in a thread (this backend's own reads)."""

        def run() -> T:
            with self._lock:
                if self._conn is None:
                    raise StoreError("the store is closed")
                try:
                    return query(self._conn)
                except sqlite3.Error as exc:
                    raise StoreError(str(exc)) from exc

        return await asyncio.to_thread(run)

    async def stats(self) -> QueueStats:
        def query(conn: sqlite3.Connection) -> QueueStats:
            counts = dict.fromkeys(STATES, 0)
            conn.execute("BEGIN")  # one snapshot for both figures
            try:
                counters = _counters(conn)
                if counters is not None:
                    counts = {state: counters[state] for state in STATES}
                else:
                    for state, n in conn.execute(STATE_COUNTS):
                        counts[state] = n
                index = "INDEXED BY webhooks_waiting" if counters is not None else ""
                (oldest,) = conn.execute(OLDEST.format(index=index)).fetchone()
            finally:
                conn.execute("COMMIT")
            return QueueStats(counts, oldest)

        return await self.query(query)

    async def dead_letters(self, limit: int, *, newest: bool = False) -> list[DeadLetter]:
        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            sql = DEAD_LETTERS.format(order="DESC" if newest else "ASC")
            return [DeadLetter(*row) for row in conn.execute(sql, (limit,))]

        return await self.query(query)

    async def entries(self, request_ids: Sequence[str] | None = None) -> dict[str, Entry]:
        def query(conn: sqlite3.Connection) -> dict[str, Entry]:
            entry = ENTRY.format_map(_columns(conn))
            if request_ids is None:
                return {row[0]: _entry(row) for row in conn.execute(entry)}
            found: dict[str, Entry] = {}
            ids = list(dict.fromkeys(request_ids))
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(f"{entry} WHERE request_id IN ({marks})", chunk):
                    found[row[0]] = _entry(row)
            return found

        return await self.query(query)

    async def flow(self, window: float) -> Flow:
        def query(conn: sqlite3.Connection) -> Flow:
            since = time.time() - window
            counts: dict[str, int] = {}
            conn.execute("BEGIN")  # one snapshot for every count
            try:
                columns = _columns(conn)
                counters = _counters(conn)
                for name, sql in FLOW.items():
                    if counters is not None and name in counters:
                        counts[name] = counters[name]
                    elif counters is not None and name == "to_post":
                        backlog = counters["pending"] + counters["leased"]
                        counts[name] = backlog - counters["to_score"]
                    else:
                        params = (since,) if "?" in sql else ()
                        (counts[name],) = conn.execute(sql.format_map(columns), params).fetchone()
            finally:
                conn.execute("COMMIT")
            return Flow(
                window=window,
                arrived=counts["arrived"],
                posted=counts["posted"],
                backlog=counts["to_score"] + counts["to_post"],
                backlog_calls=counts["to_score"] + counts["scores_due"] + counts["feedback_due"],
                unconfirmed=counts["unconfirmed"],
                skipped=counts["skipped"],
            )

        return await self.query(query)

    async def score_counts(self, since: float, most: int) -> ScoreCounts:
        def query(conn: sqlite3.Connection) -> ScoreCounts:
            columns = _columns(conn)
            index = "INDEXED BY webhooks_arrived" if columns is COLUMNS else ""
            sql = SCORE_COUNTS.format(index=index, origin=columns["origin"])
            return fold_score_counts(conn.execute(sql, (since, most)))

        return await self.query(query)

    async def sweep_mark(self) -> float | None:
        def query(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(SWEEP_MARK).fetchone()
            return None if row is None else float(row[0])

        return await self.query(query)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)
