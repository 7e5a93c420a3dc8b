"""The stores' group commit (webhook.store.gather): bursts share a flush, failures are shared."""

from __future__ import annotations

import asyncio

import pytest

from webhook.store.gather import Gatherer

pytestmark = pytest.mark.anyio


async def test_a_burst_shares_one_flush_and_each_caller_gets_its_own_results() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    gatherer: Gatherer[int, int] = Gatherer(flush)
    results = await asyncio.gather(*(gatherer.submit([i, i + 100]) for i in range(20)))
    assert results == [[i * 10, (i + 100) * 10] for i in range(20)]
    # The first caller flushes alone at once; everyone who came meanwhile shares the next.
    assert len(flushes) <= 2
    assert sorted(x for f in flushes for x in f) == sorted([*range(20), *range(100, 120)])


async def test_a_refused_value_fails_only_its_caller_and_an_outage_fails_all_at_once() -> None:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(items)
        await asyncio.sleep(0)
        if -1 in items:
            raise RuntimeError("value refused")
        if -2 in items:
            raise RuntimeError("database away")
        return items

    gatherer: Gatherer[int, int] = Gatherer(flush, alone=lambda exc: "refused" in str(exc))
    outcomes = await asyncio.gather(
        gatherer.submit([-1]), gatherer.submit([2]), return_exceptions=True
    )
    # A refused value fails its own caller only: the others are flushed again, alone.
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] == [2]
    assert await gatherer.submit([3, 4]) == [3, 4]
    # Any other failure (the database away) fails them all at once, not once per caller.
    flushes.clear()
    outcomes = await asyncio.gather(
        gatherer.submit([-2]), gatherer.submit([5]), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError]
    assert flushes == [[-2, 5]]


async def test_a_cancelled_flush_leaves_nobody_waiting() -> None:
    started = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(3600)
        return items

    gatherer: Gatherer[int, int] = Gatherer(flush)
    first = asyncio.create_task(gatherer.submit([1]))
    await started.wait()
    second = asyncio.create_task(gatherer.submit([2]))
    await asyncio.sleep(0)
    assert gatherer._flusher is not None
    gatherer._flusher.cancel()
    for waiter in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5)
