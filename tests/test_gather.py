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
    # All came before the flusher ran: one flush, the callers' items in their order.
    assert flushes == [[x for i in range(20) for x in (i, i + 100)]]


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


async def test_a_flush_cancelled_while_callers_are_flushed_alone_leaves_nobody_waiting() -> None:
    first_in = asyncio.Event()
    alone_started = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        if items == [0]:
            await first_in.wait()
            return items
        if len(items) > 1:
            raise RuntimeError("value refused")  # each caller is then flushed alone
        if items in ([1], [2]):
            alone_started.set()
            await asyncio.sleep(3600)
        return items

    gatherer: Gatherer[int, int] = Gatherer(flush, alone=lambda exc: True)
    first = asyncio.create_task(gatherer.submit([0]))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(gatherer.submit([n])) for n in (1, 2)]
    await asyncio.sleep(0)
    first_in.set()
    await asyncio.wait_for(alone_started.wait(), 5)
    late = asyncio.create_task(gatherer.submit([3]))  # waits for the next flush
    await asyncio.sleep(0)
    assert gatherer._flusher is not None
    gatherer._flusher.cancel()
    assert await first == [0]
    for waiter in (*waiters, late):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5)
    assert await asyncio.wait_for(gatherer.submit([4]), 5) == [4]  # a new flusher starts
