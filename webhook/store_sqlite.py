"""The SQLite store: WAL mode, ``synchronous=FULL``, and group commit.

One writer thread owns the connection. Callers on the event loop hand it operations and await a
future. The thread takes every operation that is waiting, runs them in one transaction and commits
once, so one fsync acknowledges a whole burst of concurrent webhooks instead of one each. If the
batch fails, each operation is retried in a transaction of its own, so one bad operation fails
alone and nothing is acknowledged that was not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from webhook.store import DeadLetter, Job, QueueStats

__all__ = ["SQLiteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    request_id   TEXT PRIMARY KEY,
    body         BLOB,
    state        TEXT NOT NULL DEFAULT 'pending',
    received_at  REAL NOT NULL,
    available_at REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    scores       TEXT,
    last_status  INTEGER,
    last_error   TEXT,
    finished_at  REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (available_at)
    WHERE state IN ('pending', 'leased');
CREATE INDEX IF NOT EXISTS webhooks_state ON webhooks (state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""

MAX_BATCH = 1024

Op = Callable[[sqlite3.Connection], Any]


def _dumps(scores: dict[str, int] | None) -> str | None:
    return None if scores is None else orjson.dumps(scores).decode()


class SQLiteStore:
    def __init__(self, path: str, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._ops: queue.SimpleQueue[
            tuple[Op, asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    # -- the writer thread ------------------------------------------------------------------

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()
        await self._submit(self._init)

    async def close(self) -> None:
        if self._thread is None:
            return
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _init(self, conn: sqlite3.Connection) -> None:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                first = self._ops.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._apply(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _apply(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[Op, asyncio.Future[Any], asyncio.AbstractEventLoop]],
    ) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [op(conn) for op, _, _ in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) == 1:
                _settle(batch, [exc], failed=True)
            else:
                for item in batch:
                    self._apply(conn, [item])
            return
        _settle(batch, results, failed=False)

    async def _submit(self, op: Op) -> Any:
        if self._thread is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.put((op, fut, loop))
        return await fut

    # -- the protocol -----------------------------------------------------------------------

    async def add(self, request_id: str, body: bytes) -> bool:
        now = time.time()

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO webhooks (request_id, body, received_at, available_at)"
                " VALUES (?, ?, ?, ?)",
                (request_id, body, now, now),
            )
            return cur.rowcount == 1

        return bool(await self._submit(op))

    async def claim(self, limit: int, lease_seconds: float) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            now = time.time()
            rows = conn.execute(
                "UPDATE webhooks SET state = 'leased', available_at = ?, attempts = attempts + 1"
                " WHERE request_id IN (SELECT request_id FROM webhooks"
                "   WHERE state IN ('pending', 'leased') AND available_at <= ?"
                "   ORDER BY available_at LIMIT ?)"
                " RETURNING request_id, body, attempts, received_at, scores",
                (now + lease_seconds, now, limit),
            ).fetchall()
            jobs = [
                Job(rid, bytes(body), attempts, received, orjson.loads(sc) if sc else None)
                for rid, body, attempts, received, sc in rows
            ]
            jobs.sort(key=lambda j: j.received_at)
            return jobs

        result: list[Job] = await self._submit(op)
        return result

    async def complete(self, request_id: str, scores: dict[str, int], status: int | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhooks SET state = 'done', body = NULL, scores = ?, last_status = ?,"
                " last_error = NULL, finished_at = ? WHERE request_id = ?",
                (_dumps(scores), status, time.time(), request_id),
            )

        await self._submit(op)

    async def retry(
        self,
        request_id: str,
        scores: dict[str, int] | None,
        delay: float,
        status: int | None,
        error: str,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhooks SET state = 'pending', available_at = ?, scores = ?,"
                " last_status = ?, last_error = ? WHERE request_id = ?",
                (time.time() + delay, _dumps(scores), status, error, request_id),
            )

        await self._submit(op)

    async def bury(
        self, request_id: str, scores: dict[str, int] | None, status: int | None, error: str
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhooks SET state = 'dead', scores = ?, last_status = ?, last_error = ?,"
                " finished_at = ? WHERE request_id = ?",
                (_dumps(scores), status, error, time.time(), request_id),
            )

        await self._submit(op)

    async def enqueue_scores(self, request_id: str, scores: dict[str, int]) -> bool:
        stub = orjson.dumps({"request_id": request_id})  # the relay never reads it: scores are set

        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT state, scores, last_status FROM webhooks WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO webhooks (request_id, body, received_at, available_at, scores)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (request_id, stub, now, now, _dumps(scores)),
                )
                return True
            state, stored, last_status = row
            if state in ("pending", "leased"):
                return False
            posted = state == "done" and last_status is not None and stored is not None
            if posted and orjson.loads(stored) == scores:
                return False
            conn.execute(
                "UPDATE webhooks SET state = 'pending', body = COALESCE(body, ?), scores = ?,"
                " received_at = ?, available_at = ?, attempts = 0, last_status = NULL,"
                " last_error = NULL, finished_at = NULL WHERE request_id = ?",
                (stub, _dumps(scores), now, now, request_id),
            )
            return True

        return bool(await self._submit(op))

    async def release(self, request_ids: list[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE webhooks SET state = 'pending', available_at = ?,"
                " attempts = MAX(attempts - 1, 0) WHERE request_id = ? AND state = 'leased'",
                [(time.time(), rid) for rid in request_ids],
            )

        if request_ids:
            await self._submit(op)

    async def ping(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('heartbeat', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(time.time()),),
            )

        await self._submit(op)

    async def stats(self) -> QueueStats:
        def op(conn: sqlite3.Connection) -> QueueStats:
            counts = dict.fromkeys(("pending", "leased", "done", "dead"), 0)
            for state, n in conn.execute("SELECT state, COUNT(*) FROM webhooks GROUP BY state"):
                counts[state] = n
            (oldest,) = conn.execute(
                "SELECT MIN(received_at) FROM webhooks WHERE state IN ('pending', 'leased')"
            ).fetchone()
            return QueueStats(counts, oldest)

        result: QueueStats = await self._submit(op)
        return result

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT request_id, attempts, last_status, last_error, received_at FROM webhooks"
                " WHERE state = 'dead' ORDER BY finished_at LIMIT ?",
                (limit,),
            )
            return [DeadLetter(*row) for row in rows]

        result: list[DeadLetter] = await self._submit(op)
        return result

    async def requeue_dead(self, request_ids: list[str] | None) -> int:
        sql = (
            "UPDATE webhooks SET state = 'pending', available_at = ?, attempts = 0,"
            " finished_at = NULL WHERE state = 'dead'"
        )

        def op(conn: sqlite3.Connection) -> int:
            now = time.time()
            if request_ids is None:
                return conn.execute(sql, (now,)).rowcount
            return sum(
                conn.execute(sql + " AND request_id = ?", (now, rid)).rowcount
                for rid in request_ids
            )

        result: int = await self._submit(op)
        return result

    async def purge_dead(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM webhooks WHERE state = 'dead'").rowcount

        result: int = await self._submit(op)
        return result


def _settle(
    batch: list[tuple[Op, asyncio.Future[Any], asyncio.AbstractEventLoop]],
    results: list[Any],
    *,
    failed: bool,
) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for (_, fut, loop), result in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((fut, result))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, pairs, failed)


def _resolve(pairs: list[tuple[asyncio.Future[Any], Any]], failed: bool) -> None:
    for fut, result in pairs:
        if fut.done():
            continue
        if failed:
            fut.set_exception(result)
        else:
            fut.set_result(result)
