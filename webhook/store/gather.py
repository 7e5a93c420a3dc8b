"""Group commit on the event loop, for both stores.

Callers hand in items (webhooks to add, outcomes to record) and await their results. While one
flush is in flight, everything that arrives joins the next, so a burst costs one transaction
(one fsync, one round trip) instead of one each, and an idle store answers at once: nothing
waits for a timer. Each caller's items stay together in one flush, in order.

A flush that raises applied none of its items (callers share the transaction). When the
failure was a value that could not be sent (:func:`unsendable`: text the driver cannot encode,
an int too large for the column, on either store) or one the store says its database refused
(``alone``), each caller's items are flushed alone, so one caller's bad item fails only that
caller, as before they were gathered; any other failure (the database away) fails them all at
once, not once per caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Gatherer", "unsendable"]

T = TypeVar("T")
R = TypeVar("R")


def unsendable(exc: BaseException) -> bool:
    """A value the database driver could not send (raised, or wrapped as the cause)."""
    return any(isinstance(e, ValueError | OverflowError) for e in (exc, exc.__cause__))


class Gatherer(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        alone: Callable[[Exception], bool] = lambda exc: False,
    ) -> None:
        self._flush, self._alone_after = flush, alone
        self._waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of ``items``, in order, once a flush that holds them has ended."""
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run())
        return await fut

    async def _alone(self, items: Sequence[T], fut: asyncio.Future[list[R]]) -> None:
        try:
            results = await self._flush(list(items))
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(results)

    async def drain(self) -> None:
        """Wait until everything submitted so far is flushed (at close)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _run(self) -> None:
        batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._flush_batch(batch)
                batch = []
        except BaseException:  # cancelled, wherever: nobody may be left waiting for ever
            for _, fut in [*batch, *self._waiting]:
                fut.cancel()
            self._waiting = []
            raise
        finally:
            self._flusher = None

    async def _flush_batch(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        items = [item for part, _ in batch for item in part]
        try:
            results = await self._flush(items)
        except Exception as exc:
            if len(batch) > 1 and (unsendable(exc) or self._alone_after(exc)):
                for part, fut in batch:  # each alone: a bad item fails its caller only
                    await self._alone(part, fut)
                return
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for part, fut in batch:
            end = start + len(part)
            if not fut.done():
                fut.set_result(results[start:end])
            start = end
