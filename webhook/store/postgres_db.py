"""The PostgreSQL store's connections: URL options, and a pool that reports one-line failures.

URL options (query string, taken off before connecting; the rest goes to libpq):
``pool_min`` (1), ``pool_max`` (10), ``connect_timeout`` (5 s: connecting, and waiting for a
pooled connection), ``statement_timeout`` (30 s), ``heartbeat`` (3 s), ``takeover`` (10 s).
The settings ``SCORER_DATABASE_*`` arrive as these options (see
:func:`webhook.store.with_connection_settings`).

Every pooled connection is in autocommit (a transaction is always explicit) with
``synchronous_commit`` on, and is checked at checkout, so the pool replaces broken ones by
itself after the database comes back. ``statement_timeout`` bounds a statement on both sides:
the server cancels one that runs longer, and the connection's ``tcp_user_timeout`` (unless the
URL sets its own) gives up on a database that stopped answering (a partition: no reset ever
comes) after as long, so a webhook gets its 503 in seconds rather than when the kernel gives up;
the store also gives an add no more than ``connect_timeout + statement_timeout`` in all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, LiteralString
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from webhook.store import StoreError

__all__ = ["Conn", "Database", "Options", "one_line"]

Conn = AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class Options:
    conninfo: str
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout: float = 5.0
    statement_timeout: float = 30.0
    heartbeat: float = 3.0
    takeover: float = 10.0

    @classmethod
    def parse(cls, url: str) -> Options:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        ours = {k: query.pop(k) for k in OURS if k in query}
        try:
            timeout = float(query.get("connect_timeout", 5))
            options = cls(
                "",
                pool_min=int(ours.get("pool_min", 1)),
                pool_max=int(ours.get("pool_max", 10)),
                connect_timeout=timeout,
                statement_timeout=float(ours.get("statement_timeout", 30.0)),
                heartbeat=float(ours.get("heartbeat", 3.0)),
                takeover=float(ours.get("takeover", 10.0)),
            )
            if min(options.pool_min, options.pool_max) < 1:
                raise ValueError("pool_min and pool_max must be at least 1")
            if min(timeout, options.statement_timeout, options.heartbeat) <= 0:
                raise ValueError(
                    "connect_timeout, statement_timeout and heartbeat must be positive"
                )
            if options.takeover <= 2 * options.heartbeat:
                # One late beat must never make a live instance look stopped.
                raise ValueError("takeover must be more than twice the heartbeat")
        except ValueError as exc:
            raise StoreError(f"bad option in the database URL: {exc}") from None
        query["connect_timeout"] = str(max(1, round(timeout)))  # libpq takes whole seconds
        query.setdefault("tcp_user_timeout", str(round(options.statement_timeout * 1000)))
        return replace(options, conninfo=urlunsplit(parts._replace(query=urlencode(query))))


# The store's own options; the rest of the query is libpq's.
OURS = ("pool_min", "pool_max", "statement_timeout", "heartbeat", "takeover")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Driver failures become :class:`StoreError` with one line."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(one_line(exc)) from exc


class Database:
    """A pool of autocommit connections with ``synchronous_commit`` on."""

    def __init__(self, options: Options, max_size: int | None = None) -> None:
        self.options = options
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            options.conninfo,
            min_size=min(options.pool_min, max_size or options.pool_max),
            max_size=max_size or options.pool_max,
            open=False,
            timeout=options.connect_timeout,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            name="helicone-scorer",
        )

    async def open(self) -> None:
        """Connect once first, so a failure says why (the pool would only time out)."""
        conn = await AsyncConnection.connect(self.options.conninfo, autocommit=True)
        await conn.close()
        try:
            await self.pool.open(wait=True, timeout=self.options.connect_timeout)
        except BaseException:
            await self.pool.close()
            raise

    async def close(self) -> None:
        await self.pool.close()

    async def _configure(self, conn: Conn) -> None:
        """Acknowledge only what is durable; no statement runs past ``statement_timeout``; and
        a process frozen inside one of our (short) transactions does not hold its row locks,
        which other instances' outcomes wait on, for more than a minute."""
        timeout_ms = round(self.options.statement_timeout * 1000)
        await conn.execute("SET synchronous_commit = on")
        await conn.execute(f"SET statement_timeout = {timeout_ms:d}".encode())
        await conn.execute("SET idle_in_transaction_session_timeout = '60s'")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        with reported():
            async with self.pool.connection() as conn:
                yield conn

    async def execute(self, sql: LiteralString, params: Sequence[Any] | dict[str, Any]) -> int:
        """Run one statement; its row count."""
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def fetch(
        self, sql: LiteralString, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[TupleRow]:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
