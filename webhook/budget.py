"""A process-wide budget of request-body bytes in memory at once: ``SCORER_MAX_INFLIGHT_BYTES``.

Each request's size limit alone does not bound memory: forty unsigned 15 MiB bodies at once are
600 MB, and the signature that would reject them can only be checked once they are read. So a
request reserves its bytes before reading them (the declared ``Content-Length`` up front, or a
chunked body's bytes as they arrive) and holds them until its answer. A request that finds no room
waits its turn, first come first served, for up to ``wait`` seconds, then gets 503 with
``Retry-After``. Reserving the declared length up front, rather than bytes as they arrive, lets a
burst of large bodies through a few at a time instead of all stalling half-read; a client that
declares a body and never sends it is cut off by ``SCORER_BODY_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["Budget", "Hold", "keep_large_buffers_mapped"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def keep_large_buffers_mapped() -> None:
    """Make freed request bodies go back to the OS, so RSS returns to its baseline after a burst.

    glibc serves blocks of 128 KiB and more with mmap and unmaps them when freed, but each time
    one is freed it raises that threshold to the block's size (up to 32 MiB): after one burst of
    15 MiB bodies, the next ones come from the heap, which seldom shrinks (RSS stayed at 274 MB
    after a burst that peaked at 344 MB). Setting the threshold once fixes it at 128 KiB, as
    ``MALLOC_MMAP_THRESHOLD_`` would; an explicit ``MALLOC_MMAP_THRESHOLD_`` is left alone. Other C
    libraries are left alone too.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


class Budget:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, n: int, wait: float) -> bool:
        """Reserve ``n`` bytes (at most the capacity), waiting up to ``wait`` s; False: no room."""
        if not self._waiters and n <= self.free:
            self.free -= n
            return True
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(wait):
                await entry[1]
            return True
        except TimeoutError:
            return entry[1].done() and not entry[1].cancelled()  # granted as time ran out
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self.release(n)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._wake()

    def release(self, n: int) -> None:
        self.free += n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
            elif n <= self.free:
                self._waiters.popleft()
                self.free -= n
                future.set_result(None)
            else:
                break

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Hold]:
        """A request's share of the budget, released when the block ends, however it ends."""
        hold = Hold(self)
        try:
            yield hold
        finally:
            self.release(hold.held)


class Hold:
    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.held = 0

    async def cover(self, size: int, wait: float) -> bool:
        """Make sure ``size`` bytes in all are reserved; False if there was no room in time."""
        need = size - self.held
        if need <= 0:
            return True
        if not await self.budget.take(need, wait):
            return False
        self.held += need
        return True
