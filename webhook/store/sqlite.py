"""The SQLite store: WAL mode, ``synchronous=FULL``, group commit (see :mod:`sqlite_writer`).

Its health, for readiness: when a write of webhooks fails (a full disk, a lock held past the busy
timeout, the file deleted or replaced under us), the failure is kept, logged once at ERROR, and
:meth:`SQLiteStore.ping` raises it at once, so ``/readyz`` agrees with the 503s the webhooks get,
with no probe to wait for. It stands until webhooks are committed again, or until a probe as
large as the write that failed commits: each ``ping`` while it stands starts one in the
background, so readiness comes back without traffic (a load balancer that stops sending while
we are not ready would otherwise keep us out for good). A small probe is not enough: a nearly
full disk takes a heartbeat and refuses a webhook. A deleted or replaced file never clears: it
needs a restart.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import orjson

from webhook.logs import event
from webhook.store import SCORES_POSTED, DeadLetter, Job, QueueStats, Stage
from webhook.store.sqlite_lock import ServerLock
from webhook.store.sqlite_writer import Writer

__all__ = ["SQLiteStore", "StoreUnavailable"]

log = logging.getLogger("webhook.store")


class StoreUnavailable(Exception):
    """The last write failed and nothing has succeeded since."""


PROBE_MAX = 16 * 1024 * 1024  # a readiness probe writes at most this much (one large webhook)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    at: float
    reason: str
    size: int  # bytes of webhooks the failed write carried: what a probe must prove fits


SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
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
CREATE INDEX IF NOT EXISTS webhooks_to_score ON webhooks (available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NULL;
CREATE INDEX IF NOT EXISTS webhooks_to_post ON webhooks (backfill, available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhooks_state ON webhooks (state, finished_at);
CREATE TABLE IF NOT EXISTS post_log (ended_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS post_log_ended ON post_log (ended_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""

INSERT = (
    "INSERT OR IGNORE INTO webhooks (request_id, body, received_at, available_at)"
    " VALUES (?, ?, ?, ?)"
)
# Each stage claims through its own partial index, so a long backlog of one never slows the other.
# Live webhooks are posted before backfilled ones, so a large backfill never delays live scores.
CLAIM = {
    "score": (
        "UPDATE webhooks SET state = 'leased', available_at = ?, attempts = attempts + 1"
        " WHERE request_id IN (SELECT request_id FROM webhooks INDEXED BY webhooks_to_score"
        "   WHERE state IN ('pending', 'leased') AND scores IS NULL AND available_at <= ?"
        "   ORDER BY available_at LIMIT ?)"
    ),
    "post": (
        "UPDATE webhooks SET state = 'leased', available_at = ?, attempts = attempts + 1"
        " WHERE request_id IN (SELECT request_id FROM webhooks INDEXED BY webhooks_to_post"
        "   WHERE state IN ('pending', 'leased') AND scores IS NOT NULL AND available_at <= ?"
        "   ORDER BY backfill, available_at LIMIT ?)"
    ),
}
# The post stage needs no body (its scores are stored), so it never reads one back.
RETURNING = {
    "score": " RETURNING request_id, body, attempts, received_at, scores, feedback, posted",
    "post": " RETURNING request_id, NULL, attempts, received_at, scores, feedback, posted",
}


def _job(row: tuple[str, bytes | None, int, float, str | None, int | None, int]) -> Job:
    rid, body, attempts, received, scores, feedback, posted = row
    return Job(
        rid,
        None if body is None else bytes(body),
        attempts,
        received,
        None if scores is None else orjson.loads(scores),
        None if feedback is None else bool(feedback),
        posted,
    )


class SQLiteStore:
    def __init__(self, path: str, busy_timeout_ms: int = 10_000) -> None:
        self._writer = Writer(path, busy_timeout_ms)
        self._lock = None if path == ":memory:" else ServerLock(path)
        self._adds: list[tuple[str, bytes, float, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: WriteFailure | None = None
        self._probe: asyncio.Task[None] | None = None

    async def open(self, *, serving: bool = False) -> None:
        self._writer.start()
        await self._writer.run(_create_schema)
        if serving and self._lock is not None:
            try:
                if self._lock.acquire():
                    recovered = await self._writer.run(_recover_orphans)
                    if recovered:
                        event(log, f"took back {recovered} webhook(s) a stopped server had claimed")
                    self._lock.share()
            except BaseException:
                self._lock.release()
                await self._writer.stop()
                raise

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._writer.stop()
        if self._lock is not None:
            self._lock.release()

    def _failed(self, exc: BaseException, size: int) -> None:
        reason = str(exc) or type(exc).__name__
        if self._failure is None or self._failure.reason != reason:
            log.error("store: a write failed: %s; webhooks get 503 until one succeeds", reason)
        self._failure = WriteFailure(time.time(), reason, size)

    def _succeeded(self, failure: WriteFailure | None) -> None:
        """A write succeeded since ``failure`` was the last one: clear it, unless a newer one."""
        if failure is not None and self._failure is failure:
            self._failure = None
            log.info("store: writes succeed again")

    async def add(self, request_id: str, body: bytes) -> bool:
        # Adds are gathered on the event loop and handed to the writer as one operation: while
        # one commit is in flight, every webhook that arrives joins the next one.
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._adds.append((request_id, body, time.time(), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_adds())
        return await fut

    async def _flush_adds(self) -> None:
        try:
            while self._adds:
                batch, self._adds = self._adds, []
                rows = [(rid, body, now, now) for rid, body, now, _ in batch]
                failure = self._failure
                try:
                    inserted = await self._writer.run(partial(_insert_all, self._writer, rows))
                except Exception as exc:
                    size = sum(len(body) for _, body, *_ in batch)
                    self._failed(exc, min(size, PROBE_MAX))
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self._succeeded(failure)
                for (*_, fut), new in zip(batch, inserted, strict=True):
                    if not fut.done():
                        fut.set_result(new)
        finally:
            self._flusher = None

    async def claim(self, stage: Stage, limit: int, lease_seconds: float) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            now = time.time()
            rows = conn.execute(CLAIM[stage] + RETURNING[stage], (now + lease_seconds, now, limit))
            return sorted(map(_job, rows), key=lambda j: j.received_at)

        return await self._writer.run(op)

    async def scored(
        self, request_id: str, scores: dict[str, int], feedback: bool | None, finished: bool
    ) -> None:
        now = time.time()
        await self._execute(
            "UPDATE webhooks SET scores = ?, feedback = ?, state = ?, available_at = ?,"
            " attempts = 0, finished_at = ?, body = CASE WHEN ? THEN NULL ELSE body END"
            " WHERE request_id = ?",
            (
                orjson.dumps(scores).decode(),
                None if feedback is None else int(feedback),
                "done" if finished else "pending",
                now,
                now if finished else None,
                finished,
                request_id,
            ),
        )

    async def complete(self, request_id: str, status: int | None) -> None:
        await self._execute(
            "UPDATE webhooks SET state = 'done', body = NULL, last_status = ?, last_error = NULL,"
            " finished_at = ?, posted = 3 WHERE request_id = ?",
            (status, time.time(), request_id),
        )

    async def retry(
        self, request_id: str, delay: float, status: int | None, error: str, posted: int
    ) -> None:
        await self._execute(
            "UPDATE webhooks SET state = 'pending', available_at = ?, last_status = ?,"
            " last_error = ?, posted = ? WHERE request_id = ?",
            (time.time() + delay, status, error, posted, request_id),
        )

    async def bury(self, request_id: str, status: int | None, error: str, posted: int) -> None:
        await self._execute(
            "UPDATE webhooks SET state = 'dead', last_status = ?, last_error = ?, posted = ?,"
            " finished_at = ? WHERE request_id = ?",
            (status, error, posted, time.time(), request_id),
        )

    async def enqueue_scores(self, request_id: str, scores: dict[str, int]) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT state, scores, posted FROM webhooks WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO webhooks (request_id, received_at, available_at, scores, backfill)"
                    " VALUES (?, ?, ?, ?, 1)",
                    (request_id, now, now, orjson.dumps(scores).decode()),
                )
                return True
            state, stored, posted = row
            if state in ("pending", "leased"):
                return False
            if state == "done" and posted & SCORES_POSTED and orjson.loads(stored) == scores:
                return False
            conn.execute(
                "UPDATE webhooks SET state = 'pending', scores = ?, feedback = NULL, posted = 0,"
                " backfill = 1,"
                " received_at = ?, available_at = ?, attempts = 0, last_status = NULL,"
                " last_error = NULL, finished_at = NULL WHERE request_id = ?",
                (orjson.dumps(scores).decode(), now, now, request_id),
            )
            return True

        return await self._writer.run(op)

    async def release(self, posted: Mapping[str, int], delay: float = 0.0) -> None:
        def op(conn: sqlite3.Connection) -> None:
            # A claim counted an attempt; giving the lease back undoes that.
            conn.executemany(
                "UPDATE webhooks SET state = 'pending', available_at = ?,"
                " attempts = MAX(attempts - 1, 0), posted = posted | ?"
                " WHERE request_id = ? AND state = 'leased'",
                [(time.time() + delay, bits, rid) for rid, bits in posted.items()],
            )

        if posted:
            await self._writer.run(op)

    async def log_posts(self, ended_at: list[float]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO post_log (ended_at) VALUES (?)", [(t,) for t in ended_at])
            conn.execute("DELETE FROM post_log WHERE ended_at < ?", (time.time() - 3600,))

        if ended_at:
            await self._writer.run(op)

    async def recent_posts(self, since: float) -> list[float]:
        def op(conn: sqlite3.Connection) -> list[float]:
            rows = conn.execute("SELECT ended_at FROM post_log WHERE ended_at >= ?", (since,))
            return sorted(t for (t,) in rows)

        return await self._writer.run(op)

    async def ping(self) -> None:
        failure = self._failure
        if failure is not None:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self._probe_write(failure))
            ago = time.time() - failure.at
            raise StoreUnavailable(f"the last write failed {ago:.1f}s ago: {failure.reason}")
        try:
            await self._writer.run(partial(_heartbeat, self._writer, 0))
        except Exception as exc:
            self._failed(exc, 0)
            raise

    async def _probe_write(self, failure: WriteFailure) -> None:
        """Commit as many bytes as the failed write carried, then give the space back."""
        try:
            await self._writer.run(partial(_heartbeat, self._writer, failure.size))
            if failure.size:
                await self._writer.run(partial(_heartbeat, self._writer, 0))
        except Exception:
            return  # still failing; the next ping probes again
        self._succeeded(failure)

    async def stats(self) -> QueueStats:
        def op(conn: sqlite3.Connection) -> QueueStats:
            counts = dict.fromkeys(("pending", "leased", "done", "dead"), 0)
            for state, n in conn.execute("SELECT state, COUNT(*) FROM webhooks GROUP BY state"):
                counts[state] = n
            (oldest,) = conn.execute(
                "SELECT MIN(received_at) FROM webhooks WHERE state IN ('pending', 'leased')"
            ).fetchone()
            return QueueStats(counts, oldest)

        return await self._writer.run(op)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT request_id, attempts, last_status, last_error, received_at FROM webhooks"
                " WHERE state = 'dead' ORDER BY finished_at LIMIT ?",
                (limit,),
            )
            return [DeadLetter(*row) for row in rows]

        return await self._writer.run(op)

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

        return await self._writer.run(op)

    async def purge_dead(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM webhooks WHERE state = 'dead'").rowcount

        return await self._writer.run(op)

    async def prune_done(self, before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM webhooks WHERE state = 'done' AND finished_at < ?"
            return conn.execute(sql, (before,)).rowcount

        return await self._writer.run(op)

    async def _execute(self, sql: str, params: tuple[object, ...]) -> None:
        await self._writer.run(lambda conn: conn.execute(sql, params))


SCHEMA_VERSION = 1  # PRAGMA user_version; a change of schema needs a migration and a bump


def _create_schema(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version not in (0, SCHEMA_VERSION):
        raise RuntimeError(
            f"the database has schema version {version}; this build knows version {SCHEMA_VERSION}"
        )
    for statement in filter(str.strip, SCHEMA.split(";")):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _insert_all(
    writer: Writer, rows: list[tuple[str, bytes, float, float]], conn: sqlite3.Connection
) -> list[bool]:
    """Insert each webhook unless its request_id is stored; True for each one inserted.

    Never into a file the path no longer names: a restart would not find them.
    """
    writer.check_file()
    return [conn.execute(INSERT, row).rowcount == 1 for row in rows]


def _heartbeat(writer: Writer, size: int, conn: sqlite3.Connection) -> None:
    """A durable write for readiness; ``size`` bytes more in a probe row (none: emptied)."""
    writer.check_file()
    upsert = (
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )
    conn.execute(upsert, ("heartbeat", str(time.time())))
    conn.execute(upsert, ("probe", b"\x01" * size if size else None))


def _recover_orphans(conn: sqlite3.Connection) -> int:
    """Make every lease pending, due now, its attempt not counted (no server holds one)."""
    return conn.execute(
        "UPDATE webhooks SET state = 'pending', available_at = ?,"
        " attempts = MAX(attempts - 1, 0) WHERE state = 'leased'",
        (time.time(),),
    ).rowcount
