"""The one place that knows how to make each store backend for the tests.

``backend`` (parametrized: sqlite, postgres) gives a test a fresh, empty place for a store, a
URL where there is none, and a way to hold the database's write lock from outside (to show that
reads never wait for a writer). The contract suite uses only that and :mod:`webhook.store`.

PostgreSQL: ``SCORER_TEST_POSTGRES_URL`` names a server (default
``postgresql://root@127.0.0.1:5432/test``, trust auth). Each run creates a database of its own,
with a unique name, and drops it at the end; each test gets a schema of its own in it (the URL's
``search_path``), so tests never see each other's rows. Where no server answers but PostgreSQL's
programs are installed (``pg_ctl`` on PATH), a throwaway cluster is started in a temp dir
(pytest-postgresql); otherwise the run fails with one line saying how to provide one, never a
silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories

from webhook.store import (
    Dead,
    Delivered,
    Scored,
    Skipped,
    Store,
    open_store,
    postgres_schema,
)
from webhook.store.sqlite_schema import COUNT_ALL, COUNTED

T = TypeVar("T")

BACKENDS = ["sqlite", "postgres"]
DEFAULT_POSTGRES = "postgresql://root@127.0.0.1:5432/test"

# Started only when no server answers (requested by name below); not as root: initdb refuses.
throwaway_postgres = factories.postgresql_proc(executable=shutil.which("pg_ctl") or "pg_ctl")


@dataclass(frozen=True)
class Backend:
    name: str
    url: str  # a fresh, empty place: the store is created on first open
    missing_url: str  # where there is no store, and none may be created
    hold_writes: Callable[[], AbstractAsyncContextManager[None]]
    """Hold the database's write lock from another connection while the block runs."""


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def with_query(url: str, **options: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    return url + ("&" if "?" in url else "?") + query


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> str:
    """A URL of a PostgreSQL server's maintenance database, where databases can be created."""
    url = os.environ.get("SCORER_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    if _answers(url):
        return url
    how = (
        "start one, or set SCORER_TEST_POSTGRES_URL to a server where this user may create"
        " databases"
    )
    if not (shutil.which("pg_ctl") and shutil.which("initdb")):
        pytest.fail(
            f"no PostgreSQL answers at {url} and pg_ctl/initdb are not on PATH: {how}",
            pytrace=False,
        )
    if os.geteuid() == 0:
        pytest.fail(
            f"no PostgreSQL answers at {url}, and initdb refuses to run as root: {how}",
            pytrace=False,
        )
    try:
        proc = request.getfixturevalue("throwaway_postgres")
    except Exception as exc:
        pytest.fail(
            f"no PostgreSQL answers at {url}, and a throwaway one failed ({exc}): {how}",
            pytrace=False,
        )
    return f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"  # its maintenance db


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A database of this run's own, dropped at its end."""
    name = f"scorer_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(postgres_server, name)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A schema of this test's own in the run's database, as a store URL."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield with_query(postgres_database, options=f"-csearch_path={schema}")
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def sqlite_writes_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold an SQLite file's write lock from a connection of its own, as another process would,
    until the block ends (its writes, if any, rolled back). The one place tests take it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "store.db"

    @contextlib.asynccontextmanager
    async def hold_writes() -> AsyncIterator[None]:
        with sqlite_writes_held(path):
            yield

    return Backend("sqlite", f"sqlite:///{path}", f"sqlite:///{tmp_path / 'none.db'}", hold_writes)


def _postgres_backend(url: str) -> Backend:
    @contextlib.asynccontextmanager
    async def hold_writes() -> AsyncIterator[None]:
        # EXCLUSIVE blocks every writer of the table and no reader.
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("LOCK TABLE webhooks IN EXCLUSIVE MODE")
            yield
            await conn.rollback()

    missing = with_database(url.partition("?")[0], f"scorer_none_{uuid.uuid4().hex[:8]}")
    return Backend("postgres", url, missing, hold_writes)


def sqlite_counts_agree(path: Path) -> None:
    """The counters of a version 4 SQLite file (kept by triggers) are its rows' counts."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        if conn.execute("PRAGMA user_version").fetchone()[0] < 4:
            return
        kept = conn.execute(f"SELECT {', '.join(COUNTED)} FROM counts").fetchall()  # noqa: S608
        recount = COUNT_ALL.partition(" SELECT 1, ")[2]
        counted = conn.execute(f"SELECT {recount}").fetchall()
    assert kept == counted, dict(zip(COUNTED, zip(kept[0], counted[0], strict=True), strict=True))


def postgres_counts_agree(url: str) -> None:
    """The counters of a version 4 store (kept by triggers, summed over the sessions' rows) are
    its rows' counts."""
    names = list(postgres_schema.COUNTED)
    recount = postgres_schema.COUNT_ALL.partition(" SELECT 0, ")[2]
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('webhook_counts')").fetchone() == (None,):
            return
        sums = ", ".join(f"coalesce(sum({name}), 0)::bigint" for name in names)
        kept = conn.execute(f"SELECT {sums} FROM webhook_counts").fetchone()  # noqa: S608
        counted = conn.execute(f"SELECT {recount}").fetchone()
    assert kept == counted, (names, kept, counted)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = _sqlite_backend(tmp_path)
        yield made
        if (path := tmp_path / "store.db").exists():
            sqlite_counts_agree(path)  # whatever the test did to it
        return
    url = request.getfixturevalue("postgres_url")
    yield _postgres_backend(url)
    postgres_counts_agree(url)  # whatever the test did to it


@contextlib.asynccontextmanager
async def opened(url: str, *, serving: bool = False) -> AsyncIterator[Store]:
    """The store at ``url``, open for the block."""
    store = open_store(url)
    await store.open(serving=serving)
    try:
        yield store
    finally:
        await store.close()


def with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on the store at ``url``, opened for it, from synchronous test code."""

    async def go() -> T:
        async with opened(url) as store:
            return await work(store)

    return asyncio.run(go())


async def every_kind(store: Store) -> dict[str, int]:
    """Webhooks of every kind a counter counts, through the store; the counts they make."""
    for rid in ("a1", "a2", "a3"):
        assert await store.add(rid, b"{}")
    assert await store.enqueue_scores("b1", {"x": 1})
    assert await store.enqueue_scores("b2", {"x": 2})
    (a1,) = await store.claim("score", 1, 60)
    (a2,) = await store.claim("score", 1, 60)
    assert await store.record(
        [Scored(a1.lease, {"x": 3}, True, False), Skipped(a2.lease, "sampled out")]
    ) == [True, True]
    (a1,) = await store.claim("post", 1, 60)  # live first: its scores and feedback are due
    assert await store.record([Dead(a1.lease, 500, "boom", frozenset({"scores"}))]) == [True]
    b1, b2 = await store.claim("post", 1, 60) + await store.claim("post", 1, 60)
    assert (a1.request_id, b1.request_id, b2.request_id) == ("a1", "b1", "b2")
    assert await store.record([Delivered(b2.lease, 201, frozenset({"scores"}))]) == [True]
    assert await store.confirm({"b2": frozenset()}, time.time() + 60) == ["b2"]
    # a3 to score; b1 leased, b2 re-opened (unconfirmed): both with scores due; a2 skipped.
    return {
        "pending": 2,
        "leased": 1,
        "done": 1,
        "dead": 1,
        "to_score": 1,
        "scores_due": 2,
        "feedback_due": 0,
        "unconfirmed": 1,
        "skipped": 1,
    }
