"""Group commit for SQLite: one writer thread, one transaction and one fsync per batch.

Callers on an event loop hand the thread operations (functions of the connection) and await a
future. The thread takes every operation that is waiting, runs them in one transaction and
commits once, so one fsync covers a whole burst. If the batch fails, each operation is retried in
a transaction of its own, so one bad operation fails alone, and nothing is reported done that was
not committed.

The writer also remembers which file it opened (device and inode): :meth:`Writer.check_file`
tells whether the path still names it, since SQLite keeps writing into a deleted or replaced
file without a word, and nothing written there survives a restart.

A failed operation raises :class:`webhook.store.StoreError` with the driver's message (a database
locked, a disk full), so no caller needs to know SQLite's exception types; other exceptions (a
bug in an operation) are raised as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from webhook.store import StoreError

__all__ = ["FileGone", "Writer"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
Item = tuple[Op, asyncio.Future[Any], asyncio.AbstractEventLoop]

MAX_BATCH = 1024


class FileGone(StoreError):
    """The database path no longer names the file the writer has open."""


class Writer:
    def __init__(self, path: str, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._ops: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file

    def connect(self) -> sqlite3.Connection:
        """A connection in WAL mode whose commits are durable (``synchronous=FULL``)."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def start(self) -> None:
        """Open the connection here, so a bad path fails the caller at once, then hand it over."""
        conn = self.connect()
        if self.path != ":memory:":
            stat = os.stat(self.path)
            self._identity = (stat.st_dev, stat.st_ino)
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._thread.start()

    def check_file(self) -> None:
        """Raise :class:`FileGone` unless the path still names the open file (one ``stat``)."""
        if self._identity is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise FileGone(f"the database file {self.path} was deleted while open") from None
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise FileGone(f"the database file {self.path} was replaced while open")

    async def stop(self) -> None:
        """Finish every operation already submitted, then close."""
        if self._thread is None:
            return
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ops.put((op, fut, loop))
        return await fut

    def _run(self, conn: sqlite3.Connection) -> None:
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

    def _apply(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [op(conn) for op, _, _ in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(batch) == 1:
                _settle(batch, [_one_line(exc)], failed=True)
            else:
                for item in batch:
                    self._apply(conn, [item])
            return
        _settle(batch, results, failed=False)


def _one_line(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error | OSError):
        error = StoreError(str(exc) or type(exc).__name__)
        error.__cause__ = exc
        return error
    return exc


def _settle(batch: list[Item], results: list[Any], *, failed: bool) -> None:
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
