"""The posting budget of a SQLite store: the window in memory, its times on disk.

The arithmetic is :class:`webhook.limit.SlidingWindow`'s, in this process. What a restart must
not forget is written to the store: each place is a row of ``post_log`` from :meth:`take`, with
the time it was taken, moved to the call's end by :meth:`spent`; so a call whose process died
before its end counts as ended when taken, and frees on its own. A 429's pause is kept in
``meta``. The first use reads both back, so a restart does not grant a fresh budget.

A write that fails here is logged and the budget goes on in memory: the call was, or is about to
be, made, and its outcome matters more than the record of its time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from functools import partial

from webhook.limit import SlidingWindow
from webhook.store import Slot
from webhook.store.sqlite_writer import Writer

__all__ = ["SQLiteBudget"]

log = logging.getLogger("webhook.store")

KEEP = 3600.0  # seconds of post_log kept: far more than any window
PAUSE_KEY = "paused_until"


class SQLiteBudget:
    """:class:`webhook.store.PostBudget` for one SQLite store, shared by this process."""

    def __init__(self, writer: Writer, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._writer = writer
        self._window = SlidingWindow(limit, window)
        self._held: dict[str, int | None] = {}  # slot token -> its post_log row, if written
        self._lock = asyncio.Lock()
        self._seeded = False

    async def _ready(self) -> SlidingWindow:
        """The window, seeded from the store on first use."""
        if not self._seeded:
            async with self._lock:
                if not self._seeded:
                    ended, paused = await self._writer.run(partial(_recent, self.window))
                    self._window.seed(ended)
                    self._window.pause(paused - time.time())
                    self._seeded = True
        return self._window

    async def room(self) -> int:
        return (await self._ready()).free()

    async def wait_time(self) -> float:
        return (await self._ready()).wait_time()

    async def take(self) -> Slot | None:
        if not (await self._ready()).take():
            return None
        token = secrets.token_hex(8)
        self._held[token] = None
        try:
            self._held[token] = await self._writer.run(partial(_log_take, time.time()))
        except Exception as exc:
            log.warning("could not record the start of an API call: %s", exc)
        except BaseException:  # cancelled: no call is made; the place counts as spent now
            del self._held[token]
            self._window.end()
            raise
        return Slot(token)

    async def spent(self, slot: Slot) -> None:
        if slot.token not in self._held:
            return
        row = self._held.pop(slot.token)
        ended = self._window.end()
        try:
            await self._writer.run(partial(_log_end, row, ended))
        except Exception as exc:
            log.warning("could not record the time of an API call: %s", exc)

    async def pause(self, seconds: float) -> None:
        window = await self._ready()
        window.pause(seconds)
        try:
            await self._writer.run(partial(_log_pause, time.time() + seconds))
        except Exception as exc:
            log.warning("could not record a pause of the API calls: %s", exc)


def _recent(window: float, conn: sqlite3.Connection) -> tuple[list[float], float]:
    since = time.time() - window
    ended = [
        t for (t,) in conn.execute("SELECT ended_at FROM post_log WHERE ended_at > ?", (since,))
    ]
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (PAUSE_KEY,)).fetchone()
    return ended, float(row[0]) if row is not None and row[0] is not None else 0.0


def _log_take(at: float, conn: sqlite3.Connection) -> int:
    conn.execute("DELETE FROM post_log WHERE ended_at < ?", (at - KEEP,))
    cursor = conn.execute("INSERT INTO post_log (ended_at) VALUES (?)", (at,))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _log_end(row: int | None, at: float, conn: sqlite3.Connection) -> None:
    if row is None:
        conn.execute("INSERT INTO post_log (ended_at) VALUES (?)", (at,))
    else:
        conn.execute("UPDATE post_log SET ended_at = ? WHERE rowid = ?", (at, row))


def _log_pause(until: float, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE"
        " SET value = MAX(CAST(value AS REAL), CAST(excluded.value AS REAL))",
        (PAUSE_KEY, str(until)),
    )
