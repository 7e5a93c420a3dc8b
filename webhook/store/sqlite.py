"""The SQLite store: WAL mode, ``synchronous=FULL``, group commit (see :mod:`.sqlite_writer`).

Beside it: the schema and its migrations (:mod:`.sqlite_schema`), the read path on its own
read-only connection (:mod:`.sqlite_reader`), the posting budget (:mod:`.sqlite_budget`) and the
lock that tells which servers are alive (:mod:`.sqlite_lock`).

Fencing: a claim writes a new token into ``lease`` for the webhooks it takes, and every outcome
and extension applies ``WHERE request_id = ? AND lease = ?``; an outcome clears the token, so a
lease ends once, and an outcome of a lease that ran out and was claimed again changes nothing.

Wake-ups (:meth:`SQLiteStore.subscribe`) are in memory: this process's writes wake this
process's relay. Another process's writes (``backfill``, ``queue retry``) are found by the
relay's poll.

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
import contextlib
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson

from webhook.logs import event
from webhook.store import (
    ORIGINS,
    Dead,
    Delivered,
    Job,
    Lease,
    Origin,
    Outcome,
    Released,
    Retry,
    Scored,
    Skipped,
    Stage,
    StoreError,
    SweepLease,
)
from webhook.store.gather import Gatherer
from webhook.store.sqlite_budget import SQLiteBudget
from webhook.store.sqlite_lock import ServerLock
from webhook.store.sqlite_reader import SQLiteReader, connect
from webhook.store.sqlite_schema import bits, create_or_migrate, origin_code, origin_name, posted
from webhook.store.sqlite_writer import Writer

__all__ = ["SQLiteStore", "StoreUnavailable"]

log = logging.getLogger("webhook.store")

T = TypeVar("T")
# A webhook to insert: request_id, body, received_at, available_at, origin, logged_at
_Row = tuple[str, bytes, float, float, int, float | None]


class StoreUnavailable(StoreError):
    """The last write failed and nothing has succeeded since."""


PROBE_MAX = 16 * 1024 * 1024  # a readiness probe writes at most this much (one large webhook)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    at: float
    reason: str
    size: int  # bytes of webhooks the failed write carried: what a probe must prove fits


INSERT = (
    "INSERT OR IGNORE INTO webhooks"
    " (request_id, body, received_at, available_at, origin, logged_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# Each stage claims through its own partial index, so a long backlog of one never slows the other.
# By origin (live, reconciled, backfill), so a large sweep or backfill never delays live work;
# in the post stage, within one origin, scores still to post before feedback only.
#
# One range of the index per group of that order (an origin, and in the post stage whether its
# scores are posted), each read from its start up to what is due now and at most the limit, so a
# claim reads no more than a few limits of entries, however many wait for a later retry (an API
# outage puts the whole backlog there): one scan of the index in its order would read past all
# of those, in the writer's transaction, on every poll that finds nothing due.
_GROUP = (
    "SELECT * FROM (SELECT request_id, origin, {part} AS part, available_at"
    " FROM webhooks INDEXED BY {index}"
    " WHERE state IN ('pending', 'leased') AND {which} AND origin = {origin}"
    " AND {part} = {value} AND available_at <= :now ORDER BY available_at LIMIT :limit)"
)


def _claim(index: str, which: str, part: str, values: tuple[int, ...]) -> str:
    groups = " UNION ALL ".join(
        _GROUP.format(index=index, which=which, part=part, origin=origin, value=value)
        for origin in range(len(ORIGINS))
        for value in values
    )
    return (
        "UPDATE webhooks SET state = 'leased', available_at = :until, attempts = attempts + 1,"
        " lease = :token WHERE request_id IN (SELECT request_id FROM (" + groups + ")"
        " ORDER BY origin, part, available_at LIMIT :limit)"
    )


CLAIM = {
    # The score stage's index has no second part: a constant stands in for it.
    "score": _claim("webhooks_to_score", "scores IS NULL", "0", (0,)),
    "post": _claim("webhooks_to_post", "scores IS NOT NULL", "posted & 1", (0, 1)),
}
# The post stage needs no body (its scores are stored), so it never reads one back.
RETURNING = {
    "score": " RETURNING request_id, body, attempts, received_at, scores, feedback, posted, origin,"
    " logged_at",
    "post": " RETURNING request_id, NULL, attempts, received_at, scores, feedback, posted, origin,"
    " logged_at",
}
# One statement per outcome, each fenced by the lease token (request_id, lease), which it
# clears. Each returns whether the webhook waits for scoring, so a release wakes the right stage.
SCORED = (
    "UPDATE webhooks SET scores = ?, feedback = ?, state = ?, available_at = ?, attempts = 0,"
    " finished_at = ?, body = CASE WHEN ? THEN NULL ELSE body END, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)
DELIVERED = (
    "UPDATE webhooks SET state = 'done', body = NULL, last_status = ?, last_error = NULL,"
    " finished_at = ?, posted = posted | ?, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)
RETRY = (
    "UPDATE webhooks SET state = 'pending', available_at = ?, last_status = ?, last_error = ?,"
    " posted = posted | ?, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)
DEAD = (
    "UPDATE webhooks SET state = 'dead', last_status = ?, last_error = ?, posted = posted | ?,"
    " finished_at = ?, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)
SKIPPED = (
    "UPDATE webhooks SET state = 'done', body = NULL, skipped = ?, last_error = NULL,"
    " finished_at = ?, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)
# A claim counted an attempt; giving the lease back undoes that.
RELEASED = (
    "UPDATE webhooks SET state = 'pending', available_at = ?, attempts = MAX(attempts - 1, 0),"
    " posted = posted | ?, lease = NULL"
    " WHERE request_id = ? AND lease = ? RETURNING scores IS NULL"
)


# Confirming landed scores: done (not skipped), its scores posted before the time given, never
# re-posted as unconfirmed; re-opened for the post stage with its feedback still posted.
CONFIRMABLE_AMONG = (
    "SELECT request_id, scores FROM webhooks WHERE state = 'done' AND skipped IS NULL"
    " AND posted & 1 AND unconfirmed = 0 AND finished_at < ?"
)
REPOST = (
    "UPDATE webhooks SET state = 'pending', available_at = ?, attempts = 0,"
    " posted = posted & 2, unconfirmed = 1, last_status = NULL, last_error = NULL,"
    " finished_at = NULL, lease = NULL WHERE request_id = ? AND state = 'done'"
    " AND skipped IS NULL AND posted & 1 AND unconfirmed = 0 AND finished_at < ?"
)
STORED_AMONG = "SELECT request_id FROM webhooks WHERE"
# The sweep's lease ("token expires_at") and where the last sweep ended, in ``meta``.
SWEEP_LEASE, SWEEP_UNTIL = "sweep_lease", "sweep_until"
CHUNK = 500  # ids per statement, well under SQLite's limit of bound parameters
# Posts waiting out a retry after no answer, a 408 or a 5xx (Store.retry_now): a batch of one
# group of the index of the webhooks to post, read from now on (the rows made due leave it).
RETRY_NOW = (
    "UPDATE webhooks SET available_at = :now WHERE request_id IN (SELECT request_id FROM webhooks"
    " INDEXED BY webhooks_to_post WHERE state IN ('pending', 'leased') AND scores IS NOT NULL"
    " AND origin = :origin AND posted & 1 = :part AND available_at > :now"
    " AND state = 'pending' AND last_error IS NOT NULL"
    " AND (last_status IS NULL OR last_status = 408 OR last_status >= 500) LIMIT :limit)"
)
RETRY_NOW_BATCH = 1000


def _statement(outcome: Outcome, now: float) -> tuple[str, tuple[Any, ...]]:
    """The statement that applies ``outcome``, with its parameters."""
    fence = (outcome.lease.request_id, outcome.lease.token)
    match outcome:
        case Scored(scores=scores, feedback=feedback, finished=finished):
            state = "done" if finished else "pending"
            rating = None if feedback is None else int(feedback)
            params = (orjson.dumps(scores).decode(), rating, state, now)
            return SCORED, (*params, now if finished else None, finished, *fence)
        case Delivered(status=status, posted=calls):
            return DELIVERED, (status, now, bits(calls), *fence)
        case Retry(delay=delay, status=status, error=error, posted=calls):
            return RETRY, (now + delay, status, error, bits(calls), *fence)
        case Dead(status=status, error=error, posted=calls):
            return DEAD, (status, error, bits(calls), now, *fence)
        case Released(posted=calls, delay=delay):
            return RELEASED, (now + delay, bits(calls), *fence)
        case Skipped(reason=reason):
            return SKIPPED, (reason, now, *fence)
    raise TypeError(f"not an outcome: {outcome!r}")


def _wakes(outcome: Outcome, to_score: bool) -> Stage | None:
    """The stage an applied outcome made work due for, now."""
    if isinstance(outcome, Scored) and not outcome.finished:
        return "post"
    if isinstance(outcome, Released) and outcome.delay <= 0:
        return "score" if to_score else "post"
    return None


Row = tuple[str, bytes | None, int, float, str | None, int | None, int, int, float | None]


def _job(token: str, row: Row) -> Job:
    rid, body, attempts, received, scores, feedback, calls, origin, logged = row
    return Job(
        Lease(rid, token),
        None if body is None else bytes(body),
        attempts,
        received,
        None if scores is None else orjson.loads(scores),
        None if feedback is None else bool(feedback),
        posted(calls),
        origin_name(origin),
        logged,
    )


class SQLiteStore:
    def __init__(self, path: str, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._writer = Writer(path, busy_timeout_ms)
        self._lock = None if path == ":memory:" else ServerLock(path)
        self._reader: SQLiteReader | None = None
        self._subscribers: list[Callable[[Stage], None]] = []
        self._adds: Gatherer[_Row, bool] = Gatherer(self._insert)
        self._budgets: list[SQLiteBudget] = []
        self._outcomes: Gatherer[Outcome, tuple[bool, bool]] = Gatherer(self._apply)
        self._failure: WriteFailure | None = None
        self._probe: asyncio.Task[None] | None = None

    async def open(self, *, serving: bool = False) -> None:
        try:
            await self._open(serving)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(str(exc) or type(exc).__name__) from exc

    async def _open(self, serving: bool) -> None:
        self._writer.start()
        try:
            await self._writer.run(create_or_migrate)
            self._reader = SQLiteReader(await asyncio.to_thread(connect, self.path))
            if serving and self._lock is not None:
                try:
                    if self._lock.acquire():
                        recovered = await self._writer.run(_recover_orphans)
                        if recovered:
                            event(
                                log,
                                f"took back {recovered} webhook(s) a stopped server had claimed",
                            )
                        self._lock.share()
                except BaseException:
                    self._lock.release()
                    raise
        except BaseException:
            await self._close_reader()
            await self._writer.stop()
            raise

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for gatherer in (self._adds, self._outcomes):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await gatherer.drain()
        for budget in self._budgets:
            await budget.settle()
        await self._close_reader()
        await self._writer.stop()
        if self._lock is not None:
            self._lock.release()

    async def _close_reader(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def reader(self) -> SQLiteReader:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    def alive_until(self, claimed: float) -> float:
        return math.inf  # a live server's leases end only by running out (see .sqlite_lock)

    def budget(self, limit: int, window: float) -> SQLiteBudget:
        budget = SQLiteBudget(self._writer.run, self._query, limit, window)
        self._budgets.append(budget)
        return budget

    async def _query(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return await self.reader.query(query)

    def subscribe(self, wake: Callable[[Stage], None]) -> None:
        self._subscribers.append(wake)

    def _wake(self, stage: Stage) -> None:
        for wake in self._subscribers:
            try:
                wake(stage)
            except Exception:
                log.exception("a wake-up subscriber failed")

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

    async def add(
        self,
        request_id: str,
        body: bytes,
        origin: Origin = "live",
        logged_at: float | None = None,
    ) -> bool:
        # Gathered on the event loop and handed to the writer as one operation (see .gather).
        now = time.time()
        (new,) = await self._adds.submit(
            [(request_id, body, now, now, origin_code(origin), logged_at)]
        )
        return new

    async def _insert(self, rows: list[_Row]) -> list[bool]:
        failure = self._failure
        try:
            inserted = await self._writer.run(partial(_insert_all, self._writer, rows))
        except Exception as exc:
            self._failed(exc, min(sum(len(row[1]) for row in rows), PROBE_MAX))
            raise
        self._succeeded(failure)
        if any(inserted):
            self._wake("score")
        return inserted

    async def claim(self, stage: Stage, limit: int, lease_seconds: float) -> list[Job]:
        token = secrets.token_hex(8)  # one per claim: a lease is (request_id, token)

        def op(conn: sqlite3.Connection) -> list[Job]:
            now = time.time()
            params = {"until": now + lease_seconds, "token": token, "now": now, "limit": limit}
            rows = conn.execute(CLAIM[stage] + RETURNING[stage], params).fetchall()
            return sorted((_job(token, row) for row in rows), key=lambda j: j.received_at)

        return await self._writer.run(op)

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        def op(conn: sqlite3.Connection) -> list[bool]:
            until = time.time() + lease_seconds
            sql = "UPDATE webhooks SET available_at = ? WHERE request_id = ? AND lease = ?"
            return [
                conn.execute(sql, (until, lease.request_id, lease.token)).rowcount == 1
                for lease in leases
            ]

        return await self._writer.run(op) if leases else []

    async def record(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        # Concurrent records are gathered into one operation (see .gather).
        results = await self._outcomes.submit(outcomes)
        for outcome, (held, to_score) in zip(outcomes, results, strict=True):
            if held and (stage := _wakes(outcome, to_score)) is not None:
                self._wake(stage)
        return [held for held, _ in results]

    async def _apply(self, outcomes: list[Outcome]) -> list[tuple[bool, bool]]:
        def op(conn: sqlite3.Connection) -> list[tuple[bool, bool]]:
            now = time.time()
            applied = []
            for outcome in outcomes:
                rows = conn.execute(*_statement(outcome, now)).fetchall()
                applied.append((bool(rows), bool(rows and rows[0][0])))
            return applied

        return await self._writer.run(op)

    async def enqueue_scores(
        self, request_id: str, scores: dict[str, int], logged_at: float | None = None
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT state, scores, posted FROM webhooks WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO webhooks"
                    " (request_id, received_at, available_at, scores, origin, logged_at)"
                    " VALUES (?, ?, ?, ?, 2, ?)",
                    (request_id, now, now, orjson.dumps(scores).decode(), logged_at),
                )
                return True
            state, stored, calls = row
            if state in ("pending", "leased"):
                return False
            if state == "done" and "scores" in posted(calls) and orjson.loads(stored) == scores:
                return False
            conn.execute(
                "UPDATE webhooks SET state = 'pending', scores = ?, feedback = NULL, posted = 0,"
                " origin = 2, received_at = ?, available_at = ?, attempts = 0, skipped = NULL,"
                " last_status = NULL, last_error = NULL, finished_at = NULL, lease = NULL,"
                " logged_at = ? WHERE request_id = ?",
                (orjson.dumps(scores).decode(), now, now, logged_at, request_id),
            )
            return True

        queued = await self._writer.run(op)
        if queued:
            self._wake("post")
        return queued

    async def unseen(self, request_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(request_ids))

        def query(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"{STORED_AMONG} request_id IN ({marks})"
                found.update(rid for (rid,) in conn.execute(sql, chunk))
            return set(ids) - found

        return await self._query(query) if ids else set()

    async def confirm(
        self, landed: Mapping[str, frozenset[str]], posted_before: float
    ) -> list[str]:
        ids = list(landed)

        def op(conn: sqlite3.Connection) -> list[str]:
            # In the writer's transaction (BEGIN IMMEDIATE): no other process changes these rows
            # between the read and the update.
            reopened: list[str] = []
            now = time.time()
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"{CONFIRMABLE_AMONG} AND request_id IN ({marks})", (posted_before, *chunk)
                ).fetchall()
                for rid, scores in rows:
                    if set(orjson.loads(scores)) <= landed[rid]:
                        continue
                    conn.execute(REPOST, (now, rid, posted_before))
                    reopened.append(rid)
            return reopened

        reopened = await self._writer.run(op) if ids else []
        if reopened:
            self._wake("post")
        return reopened

    async def claim_sweep(self, lease_seconds: float) -> SweepLease | None:
        token = secrets.token_hex(8)

        def op(conn: sqlite3.Connection) -> SweepLease | None:
            now = time.time()
            keys = (SWEEP_LEASE, SWEEP_UNTIL)
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", keys))
            held = meta.get(SWEEP_LEASE)
            if held is not None and float(held.partition(" ")[2]) > now:
                return None
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (SWEEP_LEASE, f"{token} {now + lease_seconds!r}"),
            )
            (created,) = conn.execute("SELECT value FROM meta WHERE key = 'created'").fetchone()
            until = meta.get(SWEEP_UNTIL)
            return SweepLease(token, None if until is None else float(until), float(created))

        return await self._writer.run(op)

    async def end_sweep(self, lease: SweepLease, until: float | None) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            freed = conn.execute(
                "DELETE FROM meta WHERE key = ? AND substr(value, 1, instr(value, ' ') - 1) = ?",
                (SWEEP_LEASE, lease.token),
            ).rowcount
            if freed and until is not None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (SWEEP_UNTIL, repr(float(until))),
                )
            return freed == 1

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

    async def requeue_dead(self, request_ids: Sequence[str] | None) -> int:
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
                for rid in dict.fromkeys(request_ids)
            )

        count: int = await self._writer.run(op)
        if count:
            self._wake("score")
            self._wake("post")
        return count

    async def retry_now(self) -> int:
        def op(origin: int, part: int, conn: sqlite3.Connection) -> int:
            params = {"now": time.time(), "origin": origin, "part": part, "limit": RETRY_NOW_BATCH}
            return conn.execute(RETRY_NOW, params).rowcount

        total = 0
        for origin in range(len(ORIGINS)):
            for part in (0, 1):
                while count := await self._writer.run(partial(op, origin, part)):
                    total += count
                    self._wake("post")
                    if count < RETRY_NOW_BATCH:
                        break
        return total

    async def purge_dead(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM webhooks WHERE state = 'dead'").rowcount

        return await self._writer.run(op)

    async def prune_done(self, before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM webhooks WHERE state = 'done' AND finished_at < ?"
            return conn.execute(sql, (before,)).rowcount

        return await self._writer.run(op)


def _insert_all(
    writer: Writer,
    rows: list[_Row],
    conn: sqlite3.Connection,
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
    """Make every lease pending, due now, its attempt not counted (no server holds one), and
    end its token; free the sweep lease too (keeping where the last sweep ended), so a
    restart after a crash sweeps at once rather than after the lease. Returns the webhooks."""
    conn.execute("DELETE FROM meta WHERE key = ?", (SWEEP_LEASE,))
    return conn.execute(
        "UPDATE webhooks SET state = 'pending', available_at = ?, lease = NULL,"
        " attempts = MAX(attempts - 1, 0) WHERE state = 'leased'",
        (time.time(),),
    ).rowcount
