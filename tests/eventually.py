"""Wait for a condition with a deadline: the one polling loop of the tests.

Every test that waits for something the server, the stand-in or a child process does in its own
time calls :func:`eventually`, so each wait has a deadline, a short poll, and a failure that says
what was awaited and what was last seen, instead of a bare "timed out". A condition may raise to
give up at once (a server that exited will never become healthy). Tests on the event loop (the
store contract) await :func:`eventually_async`, the same loop for an awaitable condition, which
leaves the loop running between polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    condition: Callable[[], T | None],
    timeout: float = 20.0,
    *,
    what: str | None = None,
    show: Callable[[], object] | None = None,
    interval: float = 0.05,
) -> T:
    """Call ``condition`` until it returns a true value, and return that value.

    Past ``timeout`` seconds it fails with an AssertionError naming ``what`` was awaited (the
    condition's name by default) and the last value, or ``show()`` when given (a log, the rows).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _not_met(condition, timeout, what, show() if show is not None else value)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def eventually_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    *,
    what: str | None = None,
    interval: float = 0.05,
) -> T:
    """:func:`eventually` for a condition to await; the last value is what it shows."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _not_met(condition, timeout, what, value)
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _not_met(condition: object, timeout: float, what: str | None, seen: object) -> AssertionError:
    awaited = what or getattr(condition, "__qualname__", repr(condition))
    return AssertionError(f"not met in {timeout:g}s: {awaited}; last seen: {seen!r}")
