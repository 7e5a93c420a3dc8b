"""The posting budget kept in PostgreSQL, shared by every instance on the database.

A ``post_slots`` row is a place: taken at ``taken_at`` by ``holder`` (a serving instance, or
None), ended at ``ended_at``. It is held until ``window`` seconds after its call ended. A call
still in flight ends no earlier than now while its holder is alive (its heartbeat is fresh); a
place whose holder is gone (killed, or closed before the call ended), or that no serving
instance holds, counts as ended when taken, so it frees on its own. The ``budget`` row holds
the 429 pause, and is the lock that makes ``take`` atomic across instances: a taker locks it,
then counts (a fresh snapshot, after the lock), then inserts. The process that got the 429
also keeps the pause itself, from the moment it is known: its own calls stop at once, not once
the write commits (as the SQLite budget does).

A call of a :data:`~webhook.store.Priority` may take a place only while more than its
:func:`~webhook.store.reserve` is free (counted under the same lock), so the classes above it
always find room; a pause stops every class. Ended places are kept ``KEEP`` seconds at least,
for the read path's flow (calls posted in the last minutes).

Counting the window reads every place in it (rate x window rows), so it is done only when it
matters: ``budget.counted`` holds the places counted at the last count, calls still open
included whatever their holder (an open place may count again once its holder's heartbeat
returns), and ``budget.added`` every place inserted since (a trigger, whichever build inserted
it). Places only leave a window as time passes, so their sum is never below the places held
now: while it is under a class's limit, a place is free without counting; when it reaches it,
the window is counted again, exactly, and the bound reset.

``spent`` never raises, as the SQLite budget's: the call it ends has been made, and its caller
must go on to record that. An end that cannot be written (the database is away) is kept and
written at this budget's next call: later than the call ended, so the place is held a little
longer, never shorter; meanwhile it counts as in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from webhook.store import Priority, Slot, StoreError, reserve

if TYPE_CHECKING:
    from webhook.store.postgres_db import Database

__all__ = ["PostgresBudget"]

log = logging.getLogger("webhook.store")

# When a place's call ended, as far as is known now.
ENDED = (
    "coalesce(ended_at, CASE WHEN EXISTS (SELECT 1 FROM instances i WHERE i.id = holder"
    " AND i.heartbeat_at > scorer_now() - %(takeover)s) THEN scorer_now() ELSE taken_at END)"
)
# Held: the same as ``ENDED > now - window``, written so the indexes on ended_at answer it.
HELD = (
    "(ended_at > scorer_now() - %(window)s"
    " OR (ended_at IS NULL AND " + ENDED + " > scorer_now() - %(window)s))"
)
KEEP = 900.0  # seconds an ended place is kept at least (Reader.flow counts them)
# Places no longer held and older than what is kept: ended ones through the index on ended_at.
GONE = (
    "ended_at < scorer_now() - %(keep)s"
    " OR (ended_at IS NULL AND taken_at < scorer_now() - %(keep)s AND NOT " + HELD + ")"
)


# The bound on the places held in this budget's window; NULL (unknown) when never counted, or
# last counted over a shorter window (another instance's setting), which misses places.
BOUND = "CASE WHEN counted_over >= %(window)s THEN counted + added END"
# A place, taken only while the bound says one is surely free and there is no pause; its token
# (None: none taken) and whether a pause holds (None: no budget row).
TAKE_SURELY_FREE = (
    "WITH b AS (SELECT paused_until > scorer_now() AS paused, " + BOUND + " AS bound"
    " FROM budget WHERE id = 1 FOR UPDATE),"
    " gone AS (DELETE FROM post_slots WHERE " + GONE + "),"
    " taken AS (INSERT INTO post_slots (token, taken_at, holder)"
    " SELECT gen_random_uuid()::text, scorer_now(), %(holder)s FROM b"
    " WHERE NOT b.paused AND b.bound < %(limit)s RETURNING token)"
    " SELECT (SELECT token FROM taken), (SELECT paused FROM b)"
)


class PostgresBudget:
    def __init__(
        self, db: Database, limit: int, window: float, holder: str | None, takeover: float
    ) -> None:
        self.limit = limit
        self.window = window
        self._db = db
        self._holder = holder
        self._params = {
            "window": window,
            "limit": limit,
            "takeover": takeover,
            "keep": max(window, KEEP),
        }
        self._unspent: set[str] = set()  # tokens of calls that ended, not yet written
        self._ender: asyncio.Future[None] | None = None  # writing them
        # (monotonic) This process's latest pause: it holds here from the moment the 429 is
        # known, before its write commits (a round trip, or never if the database is away).
        self._paused_until = 0.0
        # Takes under way here: places that may be held before the database says so. Counted
        # as held by room and wait_time (as the SQLite budget counts its unwritten places), so a
        # claim made while the last claim's jobs take their places does not count those free.
        self._taking = 0

    async def _state(self) -> tuple[float, list[float]]:
        """Seconds the pause still runs (<= 0: none), and when each held place ended, oldest
        first, as seconds ago."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                "SELECT paused_until - scorer_now(), ARRAY(SELECT scorer_now() - "
                + ENDED
                + " FROM post_slots WHERE "
                + HELD
                + " ORDER BY 1 DESC)"
                " FROM budget WHERE id = 1",
                self._params,
            )
            row = await cur.fetchone()
        assert row is not None
        paused, ages = row
        return float(paused), [float(a) for a in ages]

    def _paused_here(self) -> float:
        """Seconds this process's own latest pause still runs (<= 0: none)."""
        return self._paused_until - time.monotonic()

    def _limit(self, priority: Priority) -> int:
        """The places a call of ``priority`` may fill."""
        return self.limit - reserve(priority, self.limit)

    async def _surely_free(self, priority: Priority) -> int:
        """Places surely free now by the bound (0: the window must be counted to tell)."""
        row = await self._db.fetch(
            "SELECT paused_until > scorer_now(), " + BOUND + " FROM budget WHERE id = 1",
            self._params,
        )
        if not row or row[0][0] or row[0][1] is None:
            return 0
        return max(0, self._limit(priority) - int(row[0][1]) - self._taking)

    async def room(self, priority: Priority = "live") -> int:
        await self._write_ends()  # before a claim: the places this process freed, freed
        if self._paused_here() > 0:
            return 0
        if free := await self._surely_free(priority):
            return free
        paused, held = await self._state()
        return 0 if paused > 0 else max(0, self._limit(priority) - len(held) - self._taking)

    def _end_pending(self) -> None:
        """Write ends left unwritten (a failed write), in the background."""
        if self._unspent and (self._ender is None or self._ender.done()):
            self._ender = asyncio.ensure_future(self._write_all_ends())

    async def take(self, priority: Priority = "live") -> Slot | None:
        self._end_pending()
        if self._paused_here() > 0:
            return None
        self._taking += 1
        try:
            return await self._take(priority)
        finally:
            self._taking -= 1

    async def _take(self, priority: Priority) -> Slot | None:
        limit = self._limit(priority)
        params = self._params | {"holder": self._holder, "limit": limit}
        # Far from the limit: one statement, one round trip, the budget row locked only for it.
        rows = await self._db.fetch(TAKE_SURELY_FREE, params)
        token, paused = rows[0] if rows else (None, None)
        if token is not None:
            return Slot(str(token))
        if paused:
            return None
        async with self._db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT paused_until > scorer_now(), " + BOUND + " FROM budget WHERE id = 1"
                " FOR UPDATE",
                params,
            )
            row = await cur.fetchone()
            if row is None or row[0]:
                return None
            await conn.execute("DELETE FROM post_slots WHERE " + GONE, params)
            if row[1] is not None and row[1] < limit:  # surely free: no need to count
                cur = await conn.execute(
                    "INSERT INTO post_slots (token, taken_at, holder)"
                    " VALUES (gen_random_uuid()::text, scorer_now(), %(holder)s) RETURNING token",
                    params,
                )
                taken = await cur.fetchone()
                return None if taken is None else Slot(str(taken[0]))
            cur = await conn.execute(
                "INSERT INTO post_slots (token, taken_at, holder)"
                " SELECT gen_random_uuid()::text, scorer_now(), %(holder)s"
                " WHERE (SELECT count(*) FROM post_slots WHERE " + HELD + ") < %(limit)s"
                " RETURNING token",
                params,
            )
            taken = await cur.fetchone()
            await conn.execute(
                "UPDATE budget SET added = 0, counted_over = %(window)s,"
                " counted = (SELECT count(*) FROM post_slots"
                " WHERE ended_at IS NULL OR " + HELD + ") WHERE id = 1",
                params,
            )
        return None if taken is None else Slot(str(taken[0]))

    async def spent(self, slot: Slot) -> None:
        """Write the call's end now (a failed write is kept and tried again at the next call):
        the next claim's count, and the other instances', see the place freed as it was."""
        self._unspent.add(slot.token)
        await self._write_ends()

    async def _write_all_ends(self) -> None:
        """Write ends until none is left, or one write failed (the next call tries again)."""
        while self._unspent:
            if not await self._write_ends():
                return

    async def settle(self) -> None:
        """Wait for the ends being written (the store's close)."""
        if self._ender is not None:
            await self._ender
        await self._write_all_ends()  # once more for any a failed write left

    async def _write_ends(self) -> bool:
        """Write the end of every call that ended here and is not written yet, as now;
        False when it could not."""
        if not self._unspent:
            return True
        tokens = set(self._unspent)
        try:
            await self._db.execute(
                "UPDATE post_slots SET ended_at = scorer_now()"
                " WHERE token = ANY(%s) AND ended_at IS NULL",
                (list(tokens),),
            )
        except StoreError as exc:
            log.warning("could not record the end of %d API call(s): %s", len(tokens), exc)
            return False
        self._unspent -= tokens
        return True

    async def pause(self, seconds: float) -> None:
        # As ``spent``: the 429 was answered; a pause that cannot be stored is logged (it holds
        # in this process all the same), and the call's outcome is recorded.
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        try:
            await self._db.execute(
                "UPDATE budget SET paused_until = greatest(paused_until, scorer_now() + %s)"
                " WHERE id = 1",
                (seconds,),
            )
        except StoreError as exc:
            log.warning("could not record a pause of the API calls: %s", exc)

    async def wait_time(self, priority: Priority = "live") -> float:
        here = self._paused_here()
        if here <= 0 and await self._surely_free(priority):
            return 0.0
        paused, held = await self._state()
        held += [0.0] * self._taking  # a call about to start ends no earlier than now
        wait = max(0.0, paused, here)
        limit = self._limit(priority)
        if 0 < limit <= len(held):
            # The place that frees the one we need: the (len - limit + 1)-th oldest.
            wait = max(wait, self.window - held[len(held) - limit])
        return max(0.0, wait)
