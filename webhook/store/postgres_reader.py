"""The PostgreSQL store's read path: plain SELECTs, on a small pool of their own when opened by
:func:`webhook.store.open_reader` (or on the store's), never behind the add batcher. Opening one
creates nothing: a missing database, or one without a store, is :class:`NoStore`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import errors

from webhook.store import (
    ORIGINS,
    STATES,
    Call,
    DeadLetter,
    Entry,
    Flow,
    NoStore,
    Posted,
    QueueStats,
    ScoreCounts,
    StoreError,
    fold_score_counts,
    url_without_password,
)
from webhook.store.postgres_db import Database, Options, one_line
from webhook.store.postgres_schema import SCHEMA_VERSION, check_version, stored_version

__all__ = ["PostgresReader", "posted_set"]

# Dead letters by when each became one, then by arrival (over webhooks_state).
DEAD_LETTERS: LiteralString = (
    "SELECT request_id, attempts, last_status, last_error, received_at FROM webhooks"
    " WHERE state = 'dead'"
)
LONGEST_DEAD: LiteralString = " ORDER BY finished_at, seq LIMIT %s"
NEWEST_DEAD: LiteralString = " ORDER BY finished_at DESC, seq DESC LIMIT %s"
# The latest live webhooks' scores since a time, counted per (name, value) in SQL, read newest
# first over the live arrivals' index (webhooks_arrived, partial on origin = 0), then how many
# were read. Numbers only: a scorer gives integers (see scorers.run.as_score).
SCORE_COUNTS: LiteralString = (
    "WITH latest AS MATERIALIZED (SELECT scores FROM webhooks"
    " WHERE origin = 0 AND received_at >= %s AND scores IS NOT NULL"
    " ORDER BY received_at DESC LIMIT %s)"
    " SELECT s.key, s.value::bigint, count(*) FROM latest, jsonb_each(latest.scores) s"
    " WHERE jsonb_typeof(s.value) = 'number' GROUP BY 1, 2"
    " UNION ALL SELECT NULL, NULL, count(*) FROM latest"
)
# Where the last sweep ended, as the store's end_sweep records it.
SWEEP_MARK: LiteralString = "SELECT value FROM scorer_meta WHERE key = 'sweep_until'"


def posted_set(scores: bool, feedback: bool) -> Posted:
    calls: list[Call] = []
    if scores:
        calls.append("scores")
    if feedback:
        calls.append("feedback")
    return frozenset(calls)


class PostgresReader:
    """The read path: plain SELECTs on a pool of their own (or the store's), never the batcher."""

    def __init__(self, db: Database, owned: bool) -> None:
        self._db = db
        self._owned = owned

    @classmethod
    async def open(cls, url: str) -> PostgresReader:
        db = Database(Options.parse(url), max_size=2)
        try:
            await db.open()
        except psycopg.Error as exc:
            # A connection refused for a missing database carries no SQLSTATE: its message says.
            if isinstance(exc, errors.InvalidCatalogName) or (
                "database" in str(exc) and "does not exist" in str(exc)
            ):
                where = url_without_password(url)
                raise NoStore(f"no store: the database does not exist ({where})") from None
            raise StoreError(one_line(exc)) from None
        try:
            async with db.connection() as conn:
                version = await stored_version(conn)
            if version is None:
                raise NoStore(f"no store in the database ({url_without_password(url)})")
            check_version(version)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {version}; this build reads version"
                    f" {SCHEMA_VERSION}: start the server on it once to migrate it"
                )
        except BaseException:
            await db.close()
            raise
        return cls(db, owned=True)

    async def stats(self) -> QueueStats:
        # One statement, so one snapshot: the counters (summed over the sessions' rows, see
        # .postgres_schema) and the oldest unfinished webhook, over its partial index.
        ((pending, leased, done, dead, oldest),) = await self._db.fetch(
            "SELECT coalesce(sum(pending), 0)::bigint, coalesce(sum(leased), 0)::bigint,"
            " coalesce(sum(done), 0)::bigint, coalesce(sum(dead), 0)::bigint,"
            " (SELECT min(received_at) FROM webhooks WHERE state IN ('pending', 'leased'))"
            " FROM webhook_counts"
        )
        counts = dict(zip(STATES, (pending, leased, done, dead), strict=True))
        return QueueStats(counts, oldest)

    async def dead_letters(self, limit: int, *, newest: bool = False) -> list[DeadLetter]:
        order = NEWEST_DEAD if newest else LONGEST_DEAD
        rows = await self._db.fetch(DEAD_LETTERS + order, (limit,))
        return [DeadLetter(*row) for row in rows]

    async def entries(self, request_ids: Sequence[str] | None = None) -> dict[str, Entry]:
        sql: LiteralString = (
            "SELECT request_id, state, attempts, received_at, available_at, scores, feedback,"
            " posted_scores, posted_feedback, origin, last_status, last_error, finished_at,"
            " body IS NOT NULL, unconfirmed, skipped FROM webhooks"
        )
        if request_ids is None:
            rows = await self._db.fetch(sql + " ORDER BY seq")
        else:
            rows = await self._db.fetch(sql + " WHERE request_id = ANY(%s)", (list(request_ids),))
        return {row[0]: _entry(row) for row in rows}

    async def flow(self, window: float) -> Flow:
        # One statement, so one snapshot (and the database's clock): the recent arrivals and
        # calls over their indexes, the backlog from the counters.
        (
            (arrived, posted, pending, leased, to_score, scores_due, feedback_due, *rest),
        ) = await self._db.fetch(
            "SELECT"
            " (SELECT count(*) FROM webhooks"
            "  WHERE origin = 0 AND received_at > scorer_now() - %(window)s),"
            " (SELECT count(*) FROM post_slots WHERE ended_at > scorer_now() - %(window)s),"
            " coalesce(sum(pending), 0)::bigint, coalesce(sum(leased), 0)::bigint,"
            " coalesce(sum(to_score), 0)::bigint, coalesce(sum(scores_due), 0)::bigint,"
            " coalesce(sum(feedback_due), 0)::bigint, coalesce(sum(unconfirmed), 0)::bigint,"
            " coalesce(sum(skipped), 0)::bigint FROM webhook_counts",
            {"window": window},
        )
        unconfirmed, skipped = rest
        return Flow(
            window=window,
            arrived=arrived,
            posted=posted,
            backlog=pending + leased,
            backlog_calls=to_score + scores_due + feedback_due,
            unconfirmed=unconfirmed,
            skipped=skipped,
        )

    async def score_counts(self, since: float, most: int) -> ScoreCounts:
        return fold_score_counts(await self._db.fetch(SCORE_COUNTS, (since, most)))

    async def sweep_mark(self) -> float | None:
        rows = await self._db.fetch(SWEEP_MARK)
        return float(rows[0][0]) if rows else None

    async def close(self) -> None:
        if self._owned:
            await self._db.close()


def _entry(row: tuple[Any, ...]) -> Entry:
    """A row of ``entries``: its columns are Entry's fields, but two posted flags for one set
    and the origin's code."""
    rid, state, attempts, received, available, scores, feedback, ps, pf, origin, *rest = row
    last_status, last_error, finished_at, has_body, unconfirmed, skipped = rest
    return Entry(
        rid,
        state,
        attempts,
        received,
        available,
        scores,
        feedback,
        posted_set(ps, pf),
        ORIGINS[origin],
        last_status,
        last_error,
        finished_at,
        has_body,
        unconfirmed,
        skipped,
    )
