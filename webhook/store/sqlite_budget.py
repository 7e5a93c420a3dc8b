"""The posting budget of a SQLite store, kept in its file so every process on it shares it.

Each place is a row of ``post_log``, written by :meth:`SQLiteBudget.take` with the time it was
taken and moved to the call's end by :meth:`SQLiteBudget.spent`; so a call whose process died
before its end counts as ended when taken, and frees on its own. A 429's pause is kept in
``meta``. The arithmetic is :class:`webhook.limit.SlidingWindow`'s, over those rows.

- A call of a :data:`~webhook.store.Priority` sees a window of ``limit`` minus its
  :func:`~webhook.store.reserve`: the places reserved for the classes above it are never free
  to it. A pause stops every class.
- ``take`` decides in the writer's transaction (``BEGIN IMMEDIATE``), so two processes never
  both take the last place.
- ``room`` and ``wait_time`` read on the read path, never waiting for the writer.
- For ``room`` and ``wait_time``, this process's places in flight are also counted in memory from
  the moment ``take`` is asked until ``spent``, so a place is never missed while its row is being
  written, nor counted twice once it is there. ``take`` itself counts the rows only: in the
  writer's transaction every place already taken is one.
- A record of a call's end or of a pause that fails is logged and the budget goes on: the call
  was made, and its outcome matters more than the record of its time (the place then frees a
  window after it was taken; a pause still holds in this process).
- Counting the window costs a read of every place in it (rate x window rows: 120,000 at 2,000
  calls a second), so it is done only when it matters. ``post_bound`` holds the places counted
  at the last count, plus every place added or moved since (triggers on ``post_log``, whichever
  process or build wrote it): places only leave a window as time passes, so that sum is never
  below the places held now. (A count over a shorter window, another process's setting, bounds
  nothing here: the window is counted.) While it is under a class's limit, a place is free without
  counting; when it reaches it, the window is counted again, exactly, and the bound reset. Far
  below the limit (a lifted one) a take is a few point reads and one insert; at the limit, it
  is what it always was.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

from webhook.limit import SlidingWindow
from webhook.store import Priority, Slot, reserve

__all__ = ["SQLiteBudget"]

log = logging.getLogger("webhook.store")

T = TypeVar("T")


class Run(Protocol):
    """Runs a function of a connection: the writer's, or the read path's."""

    def __call__(self, op: Callable[[sqlite3.Connection], T], /) -> Awaitable[T]: ...


KEEP = 3600.0  # seconds of post_log kept: far more than any window
PAUSE_KEY = "paused_until"

Places = tuple[list[tuple[int, float]], float]  # (rowid, end time) of recent places; pause end


def _places(window: float, now: float, conn: sqlite3.Connection) -> Places:
    rows = conn.execute(
        "SELECT rowid, ended_at FROM post_log WHERE ended_at > ?", (now - window,)
    ).fetchall()
    pause = conn.execute("SELECT value FROM meta WHERE key = ?", (PAUSE_KEY,)).fetchone()
    return rows, float(pause[0]) if pause is not None and pause[0] is not None else 0.0


class SQLiteBudget:
    """:class:`webhook.store.PostBudget` over one SQLite file."""

    def __init__(self, write: Run, read: Run, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._write, self._read = write, read
        self._held: dict[str, int | None] = {}  # places in flight here: token -> post_log row
        self._ending: dict[str, asyncio.Future[None]] = {}  # ends being written, by token
        self._paused_until = 0.0  # this process's latest pause, in case it could not be stored

    def _window(
        self, places: Places, now: float, held: dict[str, int | None], priority: Priority
    ) -> SlidingWindow:
        """The window a call of ``priority`` sees, as ``places`` (read at ``now``) and this
        process's places ``held`` say."""
        rows, paused_until = places
        mine = {row for row in held.values() if row is not None}
        limit = self.limit - reserve(priority, self.limit)
        window = SlidingWindow(limit, self.window, clock=lambda: now)
        window.seed(ended for row, ended in rows if row not in mine)
        window.hold(len(held))
        window.pause(max(paused_until, self._paused_until) - now)
        return window

    async def _now(self, priority: Priority) -> SlidingWindow:
        now = time.time()
        places = await self._read(partial(_places, self.window, now))
        return self._window(places, now, dict(self._held), priority)

    async def _surely_free(self, priority: Priority) -> int:
        """Places surely free now by the bound (0: the window must be counted to tell)."""
        bound, paused_until = await self._read(partial(_bound, self.window))
        if bound is None or max(paused_until, self._paused_until) > time.time():
            return 0
        unwritten = sum(row is None for row in self._held.values())  # not in the bound yet
        return max(0, self.limit - reserve(priority, self.limit) - bound - unwritten)

    async def room(self, priority: Priority = "live") -> int:
        return await self._surely_free(priority) or (await self._now(priority)).free()

    async def wait_time(self, priority: Priority = "live") -> float:
        if await self._surely_free(priority):
            return 0.0
        return (await self._now(priority)).wait_time()

    async def take(self, priority: Priority = "live") -> Slot | None:
        token = secrets.token_hex(8)
        self._held[token] = None

        def op(conn: sqlite3.Connection) -> int | None:
            now = time.time()
            limit = self.limit - reserve(priority, self.limit)
            bound, paused_until = _bound(self.window, conn)
            if max(paused_until, self._paused_until) > now:
                return None
            if bound is not None and bound < limit:  # surely free: no need to count
                return _insert_place(now, conn)
            # Every place taken, here or elsewhere, is a row by now: the writer took them in
            # turn, so none is counted from memory (that would count this process's twice).
            places = _places(self.window, now, conn)
            free = self._window(places, now, {}, priority).free() > 0
            row = _insert_place(now, conn) if free else None
            held = len(places[0]) + free  # the rows read are the window's
            conn.execute(
                "UPDATE post_bound SET counted = ?, added = 0, window = ?", (held, self.window)
            )
            return row

        try:
            row = await self._write(op)
        except BaseException:
            del self._held[token]
            raise
        if row is None:
            del self._held[token]
            return None
        self._held[token] = row
        return Slot(token)

    async def spent(self, slot: Slot) -> None:
        """Record the call's end without waiting for it: the place stays held here, in
        memory, until its end is written (so it is never counted short), and the caller goes on
        to record its outcome in the same group commit rather than one after it."""
        if slot.token not in self._held or slot.token in self._ending:
            return
        ending = asyncio.ensure_future(self._write_end(slot.token, time.time()))
        self._ending[slot.token] = ending

    async def settle(self) -> None:
        """Wait for the ends being written (the store's close)."""
        await asyncio.gather(*self._ending.values())

    async def _write_end(self, token: str, ended: float) -> None:
        try:
            await self._write(partial(_log_end, self._held[token], ended))
        except Exception as exc:
            log.warning("could not record the time of an API call: %s", exc)
        finally:
            del self._held[token], self._ending[token]

    async def pause(self, seconds: float) -> None:
        until = time.time() + seconds
        self._paused_until = max(self._paused_until, until)
        try:
            await self._write(partial(_log_pause, until))
        except Exception as exc:
            log.warning("could not record a pause of the API calls: %s", exc)


def _bound(window: float, conn: sqlite3.Connection) -> tuple[int | None, float]:
    """The bound on the places held in ``window`` (None: unknown), and the stored pause's end.

    Unknown also when the last count was over a shorter window (a process with another
    ``SCORER_RATE_WINDOW_SECONDS``): places that ended before it are not in it."""
    counted, added, counted_over = conn.execute(
        "SELECT counted, added, window FROM post_bound"
    ).fetchone()
    if counted_over is None or counted_over < window:
        counted = None
    pause = conn.execute("SELECT value FROM meta WHERE key = ?", (PAUSE_KEY,)).fetchone()
    paused_until = float(pause[0]) if pause is not None and pause[0] is not None else 0.0
    return (None if counted is None else counted + added), paused_until


def _insert_place(now: float, conn: sqlite3.Connection) -> int | None:
    conn.execute("DELETE FROM post_log WHERE ended_at < ?", (now - KEEP,))
    return conn.execute("INSERT INTO post_log (ended_at) VALUES (?)", (now,)).lastrowid


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
