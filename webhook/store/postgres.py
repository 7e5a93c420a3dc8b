"""The PostgreSQL store: several instances, on one machine or many, share one database.

Beside it: its schema (:mod:`.postgres_schema`), connections (:mod:`.postgres_db`), read path
(:mod:`.postgres_reader`) and posting budget (:mod:`.postgres_budget`).

- ``add`` acknowledges after commit (``synchronous_commit = on``). Adds are gathered while a
  commit is in flight and inserted in one multi-row ``INSERT ... ON CONFLICT DO NOTHING``
  round trip (group commit); a request id stored by any instance is a duplicate.
- ``claim`` picks due rows ``FOR UPDATE SKIP LOCKED``, so instances claiming at once never
  share a webhook, and sets a new lease token; each outcome is one
  ``UPDATE ... WHERE request_id = $1 AND lease = $2`` (fencing), and ``record`` applies a batch
  in one transaction. An outcome ends the lease (its token is cleared).
- A serving instance is a row in ``instances`` with a heartbeat every ``heartbeat`` seconds
  and is recorded as the holder of its leases. A claim takes over the leases of a holder whose
  heartbeat is older than ``takeover`` seconds, or which closed, so the work of a SIGKILLed
  instance is picked up within about ``takeover + heartbeat`` seconds; a serving open with no
  other live instance takes back every lease at once.
- Wake-ups: ``NOTIFY`` in the transaction that made work due (add, scored, released,
  re-queued), heard by every other instance on a dedicated ``LISTEN`` connection, plus an
  in-process wake for this instance's own work (its own notifications are ignored).
- Health: a failed write of webhooks is kept and makes ``ping`` fail at once (so readiness
  agrees with the 503s), until a write succeeds again; each such ``ping`` probes in the
  background. The pool replaces broken connections by itself (checked at checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

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
from webhook.store.postgres_budget import PostgresBudget
from webhook.store.postgres_db import Conn, Database, Options, one_line
from webhook.store.postgres_reader import PostgresReader, posted_set
from webhook.store.postgres_schema import migrate

__all__ = ["Options", "PostgresReader", "PostgresStore"]

log = logging.getLogger("webhook.store")

# A webhook to insert: request_id, body, origin code, logged_at
_Row = tuple[str, bytes, int, float | None]

CHANNEL = "scorer_wake"
# Posts waiting out a retry after no answer, a 408 or a 5xx (Store.retry_now): a batch of one
# group of the index of the webhooks to post, read from now on (the rows made due leave it);
# rows a claim holds are left to it.
RETRY_NOW: LiteralString = (
    "UPDATE webhooks SET available_at = scorer_now() WHERE request_id IN (SELECT request_id"
    " FROM webhooks WHERE state IN ('pending', 'leased') AND scores IS NOT NULL"
    " AND origin = %(origin)s AND posted_scores = %(part)s AND available_at > scorer_now()"
    " AND state = 'pending' AND last_error IS NOT NULL"
    " AND (last_status IS NULL OR last_status = 408 OR last_status >= 500)"
    " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
)
RETRY_NOW_BATCH = 1000


ORIGIN_CODES: tuple[LiteralString, ...] = ("0", "1", "2")  # ORIGINS' codes, in claim order


def _claim_sql(
    which: LiteralString,
    part: LiteralString,
    values: tuple[LiteralString, ...],
    body: LiteralString,
) -> LiteralString:
    """Due for a stage: pending and due, leased past its lease, or leased by another instance
    that stopped (its heartbeat is older than the takeover time, or it closed). Never this
    instance's own lease before it runs out: it is alive, whatever its heartbeat says after the
    database was away, and the work may still be in flight here.

    In the order of the claim: origin, then ``part`` (in the post stage whether the scores are
    posted), then due first. The due are read one range of the stage's index per group of that
    order, each up to now and at most the limit, and the leases of stopped instances over the
    leased rows' index, so a claim reads a few limits of rows however many wait for a later
    retry (one scan of the index would filter past every one of those, on every poll that
    finds nothing due). Each branch locks what it reads (SKIP LOCKED, so concurrent claims
    never wait on each other); the rows read and not taken are free again when it commits."""
    fields: LiteralString = (
        "SELECT w.request_id, w.origin, " + part + " AS part, w.available_at, w.seq FROM webhooks w"
        " WHERE w.state IN ('pending', 'leased') AND " + which
    )
    groups: list[LiteralString] = [
        "("
        + fields
        + " AND w.origin = "
        + origin
        + " AND "
        + part
        + " = "
        + value
        + " AND w.available_at <= scorer_now() ORDER BY w.available_at, w.seq"
        " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
        for origin in ORIGIN_CODES
        for value in values
    ]
    stopped: LiteralString = (
        "(" + fields + " AND w.state = 'leased' AND w.holder IS NOT NULL"
        " AND w.holder IS DISTINCT FROM %(holder)s"
        " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = w.holder"
        "  AND i.heartbeat_at > scorer_now() - %(takeover)s)"
        " ORDER BY w.origin, part, w.available_at, w.seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    )
    return (
        "WITH due AS (SELECT request_id FROM ("
        + " UNION ".join("SELECT * FROM " + branch + " g" for branch in [*groups, stopped])
        + ") d"
        " ORDER BY origin, part, available_at, seq LIMIT %(limit)s)"
        " UPDATE webhooks w SET state = 'leased', available_at = scorer_now() + %(lease)s,"
        " attempts = w.attempts + 1, lease = gen_random_uuid()::text, holder = %(holder)s"
        " FROM due WHERE w.request_id = due.request_id"
        " RETURNING w.request_id, w.lease, " + body + ", w.attempts, w.received_at, w.scores,"
        " w.feedback, w.posted_scores, w.posted_feedback, w.origin, w.logged_at"
    )


# By origin (live, reconciled, backfill), so a sweep or a backfill never delays live work; in
# the post stage, within one origin, scores still to post before feedback only. The post stage
# never reads a body back.
CLAIM: dict[Stage, LiteralString] = {
    "score": _claim_sql("w.scores IS NULL", "false", ("false",), "w.body"),
    "post": _claim_sql("w.scores IS NOT NULL", "w.posted_scores", ("false", "true"), "NULL"),
}

# Each outcome: one UPDATE that applies only while the lease holds, ends it, and returns the
# stage its webhook is due for next (NULL: nothing to wake).
FENCE = " WHERE request_id = %(rid)s AND lease = %(token)s AND state = 'leased'"
ENDS = "lease = NULL, holder = NULL"
POSTED = "posted_scores = posted_scores OR %(ps)s, posted_feedback = posted_feedback OR %(pf)s"
OUTCOME: dict[type[Outcome], LiteralString] = {
    Scored: (
        "UPDATE webhooks SET scores = %(scores)s, feedback = %(feedback)s,"
        " state = CASE WHEN %(finished)s THEN 'done' ELSE 'pending' END,"
        " available_at = scorer_now(), attempts = 0,"
        " finished_at = CASE WHEN %(finished)s THEN scorer_now() END,"
        " body = CASE WHEN %(finished)s THEN NULL ELSE body END, "
        + ENDS
        + FENCE
        + " RETURNING CASE WHEN %(finished)s THEN NULL ELSE 'post' END"
    ),
    Delivered: (
        "UPDATE webhooks SET state = 'done', body = NULL, last_status = %(status)s,"
        " last_error = NULL, finished_at = scorer_now(), "
        + POSTED
        + ", "
        + ENDS
        + FENCE
        + " RETURNING NULL"
    ),
    Retry: (
        "UPDATE webhooks SET state = 'pending', available_at = scorer_now() + %(delay)s,"
        " last_status = %(status)s, last_error = %(error)s, "
        + POSTED
        + ", "
        + ENDS
        + FENCE
        + " RETURNING NULL"
    ),
    Dead: (
        "UPDATE webhooks SET state = 'dead', last_status = %(status)s, last_error = %(error)s,"
        " finished_at = scorer_now(), " + POSTED + ", " + ENDS + FENCE + " RETURNING NULL"
    ),
    Skipped: (
        "UPDATE webhooks SET state = 'done', body = NULL, skipped = %(reason)s, last_error = NULL,"
        " finished_at = scorer_now(), " + ENDS + FENCE + " RETURNING NULL"
    ),
    Released: (
        "UPDATE webhooks SET state = 'pending', available_at = scorer_now() + %(delay)s,"
        " attempts = greatest(attempts - 1, 0), "
        + POSTED
        + ", "
        + ENDS
        + FENCE
        + " RETURNING CASE WHEN %(delay)s > 0 THEN NULL"
        " WHEN scores IS NULL THEN 'score' ELSE 'post' END"
    ),
}


def _refused_value(exc: Exception) -> bool:
    """Whether the database refused a value (a score name it cannot hold), not the work."""
    return isinstance(exc.__cause__, psycopg.DataError)


def _text(text: str | None) -> str | None:
    """Text PostgreSQL can hold: no NUL (an API's error body may carry one)."""
    return None if text is None else text.replace("\x00", "")


def _params(outcome: Outcome) -> dict[str, Any]:
    params: dict[str, Any] = {"rid": outcome.lease.request_id, "token": outcome.lease.token}
    match outcome:
        case Scored():
            params |= {
                "scores": Jsonb(outcome.scores),
                "feedback": outcome.feedback,
                "finished": outcome.finished,
            }
            return params
        case Delivered():
            params["status"] = outcome.status
        case Retry():
            params |= {"delay": outcome.delay, "status": outcome.status}
            params["error"] = _text(outcome.error)
        case Dead():
            params |= {"status": outcome.status, "error": _text(outcome.error)}
        case Released():
            params["delay"] = outcome.delay
        case Skipped():
            params["reason"] = _text(outcome.reason)
            return params
    params |= {"ps": "scores" in outcome.posted, "pf": "feedback" in outcome.posted}
    return params


def _job(row: TupleRow) -> Job:
    rid, token, body, attempts, received, scores, feedback, ps, pf, origin, logged = row
    return Job(
        Lease(rid, token),
        None if body is None else bytes(body),
        attempts,
        received,
        scores,
        feedback,
        posted_set(ps, pf),
        ORIGINS[origin],
        logged,
    )


@dataclass(slots=True)
class _Failure:
    at: float
    reason: str


class PostgresStore:
    def __init__(self, url: str) -> None:
        self._options = Options.parse(url)
        self._db = Database(self._options)
        # Reads (``/metrics``, which anyone may call) on a small pool of their own: never
        # holding the connections that webhooks are committed on.
        self._read_db = Database(self._options, max_size=2)
        self._reader = PostgresReader(self._read_db, owned=False)
        self._instance = uuid.uuid4().hex
        self._serving = False
        self._adds: Gatherer[_Row, bool] = Gatherer(self._flush_adds)
        self._outcomes: Gatherer[Outcome, bool] = Gatherer(self._apply, alone=_refused_value)
        self._budgets: list[PostgresBudget] = []
        self._failure: _Failure | None = None
        self._probe: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[Stage], None]] = []
        self._tasks: list[asyncio.Task[None]] = []  # the listener
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._opened = False
        # Heartbeats (monotonic): the end of the protection the last one that landed gives,
        # and when the current unbroken run of them began (see alive_until).
        self._alive_until, self._alive_since = math.inf, -math.inf

    # Opening and closing

    async def open(self, *, serving: bool = False) -> None:
        try:
            await self._db.open()
            async with self._db.connection() as conn:
                await migrate(conn)
                if serving:
                    sent = time.monotonic()
                    await self._register(conn)
                    self._alive_since = time.monotonic()
                    self._alive_until = sent + self._options.takeover
            await self._read_db.open()
        except psycopg.Error as exc:
            await self._read_db.close()
            await self._db.close()
            raise StoreError(one_line(exc)) from None
        except BaseException:
            await self._read_db.close()
            await self._db.close()
            raise
        self._opened = True
        self._serving = serving
        if serving:
            self._heartbeat = asyncio.create_task(self._heartbeats())
        if self._subscribers:
            self._listen()

    async def _register(self, conn: Conn) -> None:
        """Join the live instances; with none alive, every lease is orphaned: take it back,
        and free the sweep lease (keeping where the last sweep ended), so a restart after a
        crash sweeps at once rather than after the lease."""
        takeover = self._options.takeover
        async with conn.transaction():
            await conn.execute("LOCK TABLE instances IN EXCLUSIVE MODE")
            await conn.execute(
                "DELETE FROM instances WHERE heartbeat_at <= scorer_now() - %s", (takeover,)
            )
            cur = await conn.execute("SELECT count(*) FROM instances")
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                cur = await conn.execute(
                    "UPDATE webhooks SET state = 'pending', available_at = scorer_now(),"
                    " attempts = greatest(attempts - 1, 0), lease = NULL, holder = NULL"
                    " WHERE state = 'leased'"
                )
                if cur.rowcount:
                    event(log, f"took back {cur.rowcount} webhook(s) a stopped server had claimed")
                await conn.execute("DELETE FROM scorer_meta WHERE key = 'sweep_lease'")
            await conn.execute(
                "INSERT INTO instances (id, started_at, heartbeat_at, host, pid)"
                " VALUES (%s, scorer_now(), scorer_now(), %s, %s)",
                (self._instance, socket.gethostname(), os.getpid()),
            )

    async def _heartbeats(self) -> None:
        """Keep this instance alive in ``instances`` (back in it, if another took it over).

        It ends between beats when the store closes, never cancelled inside a statement."""
        # On a connection of its own, like the listener's: a busy pool (adds, claims, outcomes
        # waiting for a connection) must never make a live instance look stopped, or another
        # would take over its leases while its calls are in flight.
        conn: AsyncConnection[TupleRow] | None = None
        try:
            while not await self._closing_within(self._options.heartbeat):
                try:
                    if conn is None or conn.closed:
                        conn = await AsyncConnection.connect(
                            self._options.conninfo, autocommit=True
                        )
                    sent = time.monotonic()
                    await conn.execute(
                        "INSERT INTO instances (id, started_at, heartbeat_at, host, pid)"
                        " VALUES (%s, scorer_now(), scorer_now(), %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                        (self._instance, socket.gethostname(), os.getpid()),
                    )
                    self._beat_landed(sent)
                except psycopg.Error as exc:
                    log.warning("store: heartbeat failed: %s", one_line(exc))
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    def _beat_landed(self, sent: float) -> None:
        landed = time.monotonic()
        if landed >= self._alive_until:  # a lapse: others may have taken leases claimed before
            self._alive_since = landed
        self._alive_until = sent + self._options.takeover

    async def _closing_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        return self._closing.is_set()

    async def close(self) -> None:
        for budget in self._budgets:
            await budget.settle()
        self._closing.set()
        if self._heartbeat is not None:
            await self._heartbeat
        for task in [*self._tasks, self._probe]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        for gatherer in (self._adds, self._outcomes):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await gatherer.drain()
        if self._serving:
            with contextlib.suppress(StoreError):
                await self._db.execute("DELETE FROM instances WHERE id = %s", (self._instance,))
        await self._read_db.close()
        await self._db.close()
        self._opened = False

    @property
    def reader(self) -> PostgresReader:
        return self._reader

    def alive_until(self, claimed: float) -> float:
        return self._alive_until if claimed >= self._alive_since else -math.inf

    def budget(self, limit: int, window: float) -> PostgresBudget:
        holder = self._instance if self._serving else None
        budget = PostgresBudget(self._db, limit, window, holder, self._options.takeover)
        self._budgets.append(budget)
        return budget

    # Wake-ups

    def subscribe(self, wake: Callable[[Stage], None]) -> None:
        self._subscribers.append(wake)
        if self._opened and len(self._subscribers) == 1:
            self._listen()

    def _listen(self) -> None:
        self._tasks.append(asyncio.create_task(self._listener()))

    def _wake(self, stages: set[Stage]) -> None:
        for stage in sorted(stages):
            for wake in self._subscribers:
                try:
                    wake(stage)
                except Exception:  # never an add's 503 after its commit, nor the listener's end
                    log.exception("a wake-up subscriber failed")

    async def _listener(self) -> None:
        """Hear other instances' NOTIFYs; after a reconnect, wake both stages (some may have
        been missed)."""
        delay = 0.1
        while True:
            try:
                conn = await AsyncConnection.connect(self._options.conninfo, autocommit=True)
                async with conn:
                    await conn.execute("LISTEN " + CHANNEL)
                    self._wake({"score", "post"})
                    delay = 0.1
                    async for note in conn.notifies():
                        stage, _, sender = note.payload.partition(":")
                        if sender != self._instance and stage in ("score", "post"):
                            self._wake({"score" if stage == "score" else "post"})
            except psycopg.Error as exc:
                log.warning("store: listening for wake-ups failed: %s", one_line(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _notify(self, conn: Conn, stages: set[Stage]) -> None:
        """NOTIFY the other instances, in the caller's transaction."""
        for stage in sorted(stages):
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{stage}:{self._instance}"))

    # Adding webhooks

    async def add(
        self,
        request_id: str,
        body: bytes,
        origin: Origin = "live",
        logged_at: float | None = None,
    ) -> bool:
        # Gathered on the event loop: one INSERT for a burst (see .gather).
        (new,) = await self._adds.submit([(request_id, body, ORIGINS.index(origin), logged_at)])
        return new

    async def _flush_adds(self, rows: list[_Row]) -> list[bool]:
        failure = self._failure
        try:
            inserted = await self._insert_within(rows)
        except Exception as exc:
            self._failed(exc)
            raise StoreError(one_line(exc)) from exc
        self._succeeded(failure)
        new = []
        for rid, *_ in rows:
            new.append(rid in inserted)
            inserted.discard(rid)  # a second add of one id in one batch is a duplicate
        return new

    async def _insert_within(self, rows: list[_Row]) -> set[str]:
        """Insert, or fail once a pooled connection and the statement have had their time: a
        database that stopped answering, with no reset to tell (a hung path), fails the
        webhooks with 503 rather than holding them. A commit under way when it gives up may
        still land: those webhooks got 503 and are delivered all the same, never lost."""
        limit = self._options.connect_timeout + self._options.statement_timeout
        try:
            return await asyncio.wait_for(self._insert(rows), limit)
        except TimeoutError:
            raise StoreError(f"the database did not answer within {limit:g}s") from None

    async def _insert(self, rows: list[_Row]) -> set[str]:
        """Insert rows of (request id, body, origin code, logged_at)."""
        ids, bodies, origins, logged = (list(column) for column in zip(*rows, strict=True))
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO webhooks"
                " (request_id, body, received_at, available_at, origin, logged_at)"
                " SELECT rid, body, scorer_now(), scorer_now(), origin, logged"
                " FROM unnest(%s::text[], %s::bytea[], %s::smallint[], %s::float8[])"
                " WITH ORDINALITY AS t(rid, body, origin, logged, n)"
                " ORDER BY n ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                (ids, bodies, origins, logged),
            )
            inserted = {str(rid) for (rid,) in await cur.fetchall()}
            if inserted:
                await self._notify(conn, {"score"})
        if inserted:
            self._wake({"score"})
        return inserted

    def _failed(self, exc: BaseException) -> None:
        reason = one_line(exc)
        if self._failure is None or self._failure.reason != reason:
            log.error("store: a write failed: %s; webhooks get 503 until one succeeds", reason)
        self._failure = _Failure(time.time(), reason)

    def _succeeded(self, failure: _Failure | None) -> None:
        if failure is not None and self._failure is failure:
            self._failure = None
            log.info("store: writes succeed again")

    async def ping(self) -> None:
        failure = self._failure
        if failure is not None:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self._probe_write(failure))
            ago = time.time() - failure.at
            raise StoreError(f"the last write failed {ago:.1f}s ago: {failure.reason}")
        try:
            await self._heartbeat_write()
        except StoreError as exc:
            self._failed(exc)
            raise

    async def _heartbeat_write(self) -> None:
        await self._db.execute(
            "INSERT INTO scorer_meta (key, value) VALUES ('ping', scorer_now()::text)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (),
        )

    async def _probe_write(self, failure: _Failure) -> None:
        with contextlib.suppress(StoreError):
            await self._heartbeat_write()
            self._succeeded(failure)

    # Leases and outcomes

    async def claim(self, stage: Stage, limit: int, lease_seconds: float) -> list[Job]:
        rows = await self._db.fetch(
            CLAIM[stage],
            {
                "limit": limit,
                "lease": lease_seconds,
                "takeover": self._options.takeover,
                "holder": self._instance if self._serving else None,
            },
        )
        return sorted(map(_job, rows), key=lambda j: j.received_at)

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        if not leases:
            return []
        rows = await self._db.fetch(
            "UPDATE webhooks w SET available_at = scorer_now() + %s"
            " FROM unnest(%s::text[], %s::text[]) AS l(rid, token)"
            " WHERE w.request_id = l.rid AND w.lease = l.token AND w.state = 'leased'"
            " RETURNING w.request_id, w.lease",
            (lease_seconds, [x.request_id for x in leases], [x.token for x in leases]),
        )
        held = {(rid, token) for rid, token in rows}
        return [(x.request_id, x.token) in held for x in leases]

    async def record(self, outcomes: Sequence[Outcome]) -> list[bool]:
        # Concurrent records are gathered into one transaction (see .gather).
        return await self._outcomes.submit(outcomes) if outcomes else []

    async def _apply(self, outcomes: list[Outcome]) -> list[bool]:
        """Every outcome in one transaction, its statements pipelined: one round trip."""
        wake: set[Stage] = set()
        async with self._db.connection() as conn, conn.transaction():
            async with conn.pipeline():
                cursors = [
                    await conn.execute(OUTCOME[type(outcome)], _params(outcome))
                    for outcome in outcomes
                ]
            rows = [await cur.fetchone() for cur in cursors]
            for row in rows:
                if row is not None and row[0] is not None:
                    wake.add("score" if row[0] == "score" else "post")
            await self._notify(conn, wake)
        self._wake(wake)
        return [row is not None for row in rows]

    # Backfill and dead letters

    async def enqueue_scores(
        self, request_id: str, scores: dict[str, int], logged_at: float | None = None
    ) -> bool:
        params = {"rid": request_id, "scores": Jsonb(scores), "logged": logged_at}
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO webhooks"
                " (request_id, received_at, available_at, scores, origin, logged_at)"
                " VALUES (%(rid)s, scorer_now(), scorer_now(), %(scores)s, 2, %(logged)s)"
                " ON CONFLICT (request_id) DO NOTHING",
                params,
            )
            if cur.rowcount == 0:
                cur = await conn.execute(
                    "UPDATE webhooks SET state = 'pending', scores = %(scores)s, feedback = NULL,"
                    " posted_scores = false, posted_feedback = false, origin = 2, skipped = NULL,"
                    " received_at = scorer_now(), available_at = scorer_now(), attempts = 0,"
                    " last_status = NULL, last_error = NULL, finished_at = NULL,"
                    " logged_at = %(logged)s, "
                    + ENDS
                    + " WHERE request_id = %(rid)s AND state IN ('done', 'dead')"
                    " AND NOT (state = 'done' AND posted_scores AND scores = %(scores)s)",
                    params,
                )
            if cur.rowcount == 0:
                return False
            await self._notify(conn, {"post"})
        self._wake({"post"})
        return True

    # Reconciliation

    async def unseen(self, request_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return set()
        rows = await self._db.fetch(
            "SELECT request_id FROM webhooks WHERE request_id = ANY(%s)", (ids,)
        )
        return set(ids) - {str(rid) for (rid,) in rows}

    async def confirm(
        self, landed: Mapping[str, frozenset[str]], posted_before: float
    ) -> list[str]:
        if not landed:
            return []
        names = Jsonb({rid: sorted(shown) for rid, shown in landed.items()})
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE webhooks w SET state = 'pending', available_at = scorer_now(),"
                " attempts = 0, posted_scores = false, unconfirmed = true, last_status = NULL,"
                " last_error = NULL, finished_at = NULL, "
                + ENDS
                + " FROM jsonb_each(%(landed)s::jsonb) AS l(rid, names)"
                " WHERE w.request_id = l.rid AND w.state = 'done' AND w.skipped IS NULL"
                " AND w.posted_scores AND NOT w.unconfirmed AND w.finished_at < %(before)s"
                " AND EXISTS (SELECT 1 FROM jsonb_object_keys(w.scores) AS k(name)"
                "  WHERE NOT l.names @> jsonb_build_array(k.name))"
                " RETURNING w.request_id",
                {"landed": names, "before": posted_before},
            )
            reopened = [str(rid) for (rid,) in await cur.fetchall()]
            if reopened:
                await self._notify(conn, {"post"})
        if reopened:
            self._wake({"post"})
        return reopened

    async def claim_sweep(self, lease_seconds: float) -> SweepLease | None:
        # The sweep's lease is a meta row "token expires_at": taken when there is none, or it
        # expired, in one statement (the conflicting row is locked while it is decided).
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO scorer_meta (key, value) VALUES"
                " ('sweep_lease', gen_random_uuid()::text || ' ' || (scorer_now() + %s)::text)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                " WHERE split_part(scorer_meta.value, ' ', 2)::double precision <= scorer_now()"
                " RETURNING split_part(value, ' ', 1)",
                (lease_seconds,),
            )
            taken = await cur.fetchone()
            if taken is None:
                return None
            cur = await conn.execute(
                "SELECT key, value FROM scorer_meta WHERE key IN ('created', 'sweep_until')"
            )
            meta = {str(k): str(v) for k, v in await cur.fetchall()}
        until = meta.get("sweep_until")
        return SweepLease(
            str(taken[0]), None if until is None else float(until), float(meta["created"])
        )

    async def end_sweep(self, lease: SweepLease, until: float | None) -> bool:
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM scorer_meta WHERE key = 'sweep_lease'"
                " AND split_part(value, ' ', 1) = %s",
                (lease.token,),
            )
            if cur.rowcount != 1:
                return False
            if until is not None:
                await conn.execute(
                    "INSERT INTO scorer_meta (key, value) VALUES ('sweep_until', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (repr(float(until)),),
                )
        return True

    async def requeue_dead(self, request_ids: Sequence[str] | None) -> int:
        sql: LiteralString = (
            "UPDATE webhooks SET state = 'pending', available_at = scorer_now(), attempts = 0,"
            " finished_at = NULL, " + ENDS + " WHERE state = 'dead'"
        )
        ret: LiteralString = " RETURNING CASE WHEN scores IS NULL THEN 'score' ELSE 'post' END"
        async with self._db.connection() as conn, conn.transaction():
            if request_ids is None:
                cur = await conn.execute(sql + ret)
            else:
                cur = await conn.execute(
                    sql + " AND request_id = ANY(%s)" + ret, (list(request_ids),)
                )
            rows = await cur.fetchall()
            wake: set[Stage] = {"score" if s == "score" else "post" for (s,) in rows}
            await self._notify(conn, wake)
        self._wake(wake)
        return len(rows)

    async def retry_now(self) -> int:
        total = 0
        for origin in range(len(ORIGIN_CODES)):
            for part in (False, True):
                params = {"origin": origin, "part": part, "limit": RETRY_NOW_BATCH}
                count = RETRY_NOW_BATCH
                while count == RETRY_NOW_BATCH:
                    async with self._db.connection() as conn, conn.transaction():
                        count = (await conn.execute(RETRY_NOW, params)).rowcount
                        if count:
                            await self._notify(conn, {"post"})
                    if count:
                        total += count
                        self._wake({"post"})
        return total

    async def purge_dead(self) -> int:
        return await self._db.execute("DELETE FROM webhooks WHERE state = 'dead'", ())

    async def prune_done(self, before: float) -> int:
        return await self._db.execute(
            "DELETE FROM webhooks WHERE state = 'done' AND finished_at < %s", (before,)
        )
