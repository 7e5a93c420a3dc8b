"""Run the selected scorers on one context and keep only valid integer scores.

Policy:

- Isolation. A scorer that raises, overruns its timeout (``SCORER_TIMEOUT_SECONDS``, 5 s by
  default; a scorer may carry its own), or returns something other than an int, a bool, None or
  a mapping of those, loses only its own score. The failure is logged with the scorer's name
  and reported in ``Outcome.errors``; how long each scorer took is in ``Outcome.durations``.
- Helicone stores Int64 and silently drops floats, so a float is refused here rather than sent.
  A bool becomes 1 or 0. A score name produced twice keeps the first scorer's value.
- The event loop that serves webhooks never runs a synchronous scorer. A webhook's sync scorers
  run one after another on a thread of a small daemon pool (one hand-off per webhook, not one
  per scorer), while the loop watches the clock. Async scorers run on the loop, concurrently,
  each under ``asyncio.wait_for``: they must not do heavy CPU work themselves.
- A thread cannot be killed, so a sync scorer that overruns keeps running until it returns.
  Its result is then thrown away, the rest of that webhook's scorers continue on another thread,
  the pool starts a replacement thread, and until the late call ends, further calls of that
  scorer are skipped (reported as errors), so one stuck scorer holds at most one thread.
- The server runs sync scorers in worker processes instead (:mod:`scorers.processes`, the
  runner's ``processes``), off the loop's GIL, under the same policy; there a scorer that
  overruns has its process killed and replaced, which a thread cannot be. Sync scorers a process
  cannot run, and the command line's, stay on the threads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scorers.context import Context
from scorers.pool import Pool
from scorers.registry import Scorer

if TYPE_CHECKING:
    from scorers.processes import Processes

__all__ = [
    "DEFAULT_TIMEOUT",
    "INT64_MAX",
    "INT64_MIN",
    "Foreign",
    "Outcome",
    "Runner",
    "as_score",
    "is_async",
    "run_scorers",
]

log = logging.getLogger("scorers")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_TIMEOUT = 5.0

# What one scorer gave: (raised?, value or exception, seconds)
_Raw = tuple[bool, Any, float]


@dataclass(slots=True)
class Outcome:
    scores: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # scorer name -> what went wrong
    durations: dict[str, float] = field(default_factory=dict)  # scorer name -> seconds


def as_score(value: object) -> int | None:
    """The value Helicone will store, or None when it must not be sent."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def is_async(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine to await (asked once per hashable scorer)."""
    try:
        return _is_async_cached(func)
    except TypeError:  # an unhashable callable object
        return _check_async(func)


@functools.cache
def _is_async_cached(func: object) -> bool:
    return _check_async(func)


def _check_async(func: object) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004  (an object with an async __call__)
    )


class _Batch:
    """A webhook's sync scorers, run in order on one pool thread; the loop may abandon it."""

    def __init__(self, ctx: Context, todo: Sequence[Scorer]) -> None:
        self.ctx = ctx
        self.todo = deque(todo)
        self.lock = threading.Lock()
        self.begun = False
        self.current: Scorer | None = None
        self.started = 0.0
        self.results: dict[str, _Raw] = {}
        self.abandoned = False
        self.on_late_end: Callable[[], None] | None = None

    def __call__(self) -> None:
        while True:
            with self.lock:
                self.begun = True
                if self.abandoned or not self.todo:
                    self.current = None
                    return
                s = self.current = self.todo.popleft()
                self.started = time.monotonic()
            t0 = time.perf_counter()
            try:
                raw: _Raw = (False, s.func(self.ctx), 0.0)
            except BaseException as exc:  # even SystemExit: it would only end this thread
                raw = (True, exc, 0.0)
            raw = (raw[0], raw[1], time.perf_counter() - t0)
            with self.lock:
                if self.abandoned:  # s overran and was reported; this thread was replaced
                    if self.on_late_end is not None:
                        self.on_late_end()
                    return
                self.results[s.name] = raw
                self.current = None


class Runner:
    """Runs scorers with per-scorer timeouts: sync ones in ``processes`` when it serves them
    (see :mod:`scorers.processes`), else on a shared daemon thread pool."""

    def __init__(self, pool: Pool | None = None, processes: Processes | None = None) -> None:
        self.pool = pool or Pool()
        self.processes = processes
        self._lock = threading.Lock()
        self._overdue: dict[str, int] = {}  # scorer name -> late calls still running

    async def run(
        self, scorers: Sequence[Scorer], ctx: Context, scorer_timeout: float = DEFAULT_TIMEOUT
    ) -> Outcome:
        timeout = scorer_timeout
        outcome = Outcome()
        raws: dict[str, _Raw] = {}
        sync = [s for s in scorers if not is_async(s.func)]
        jobs = []
        if self.processes is not None:
            remote = [s for s in sync if self.processes.serves(s.name)]
            if remote:
                sync = [s for s in sync if not self.processes.serves(s.name)]
                jobs.append(self._run_remote(remote, ctx, timeout, raws))
        with self._lock:
            late = {s.name for s in sync if self._overdue.get(s.name)}
        for name in late:
            self._fail(outcome, ctx, name, "skipped: an earlier call is still running late")
        sync = [s for s in sync if s.name not in late]
        jobs += [self._run_async(s, ctx, timeout, raws) for s in scorers if is_async(s.func)]
        if sync:
            jobs.append(self._run_sync(sync, ctx, timeout, raws))
        await asyncio.gather(*jobs)
        keys: dict[str, str] = {}
        for s in scorers:
            raw = raws.get(s.name)
            if raw is None:
                continue
            failed, value, seconds = raw
            if not failed and inspect.isawaitable(value):  # a sync callable returned a coroutine
                failed, value, extra = await self._await(value, self._limit(s, timeout))
                seconds += extra
            outcome.durations[s.name] = seconds
            if failed:
                self._fail(outcome, ctx, s.name, value)
            else:
                _collect(s.name, value, outcome, keys)
        return outcome

    @staticmethod
    def _limit(s: Scorer, timeout: float) -> float:
        return s.timeout if s.timeout is not None else timeout

    @staticmethod
    def _fail(outcome: Outcome, ctx: Context, name: str, why: object) -> None:
        text = f"{type(why).__name__}: {why}" if isinstance(why, BaseException) else str(why)
        text = " ".join(text.split())
        log.warning("scorer %s failed (request_id=%s): %s", name, ctx.request_id, text)
        outcome.errors[name] = text

    async def _await(self, awaitable: Any, limit: float) -> _Raw:
        t0 = time.perf_counter()
        try:
            value = await asyncio.wait_for(awaitable, limit)
        except TimeoutError:
            return (True, f"timed out after {limit:g}s", time.perf_counter() - t0)
        except Exception as exc:
            return (True, exc, time.perf_counter() - t0)
        return (False, value, time.perf_counter() - t0)

    async def _run_async(
        self, s: Scorer, ctx: Context, default: float, raws: dict[str, _Raw]
    ) -> None:
        try:
            awaitable = s.func(ctx)
        except Exception as exc:
            raws[s.name] = (True, exc, 0.0)
            return
        raws[s.name] = await self._await(awaitable, self._limit(s, default))

    async def _run_remote(
        self, todo: Sequence[Scorer], ctx: Context, default: float, raws: dict[str, _Raw]
    ) -> None:
        assert self.processes is not None
        limits = {s.name: self._limit(s, default) for s in todo}
        raws.update(await self.processes.run(ctx, todo, limits))

    async def _run_sync(
        self,
        todo: Sequence[Scorer],
        ctx: Context,
        default: float,
        raws: dict[str, _Raw],
    ) -> None:
        limits = {s.name: self._limit(s, default) for s in todo}
        while todo:
            batch = _Batch(ctx, todo)
            fut = asyncio.wrap_future(self.pool.submit(batch))
            queued = time.monotonic()
            todo = []
            while True:
                with batch.lock:
                    current, started, begun = batch.current, batch.started, batch.begun
                now = time.monotonic()
                if current is not None:
                    deadline = started + limits[current.name]
                elif not begun:
                    deadline = queued + max(limits.values())
                else:
                    deadline = now + min(limits.values())
                done, _ = await asyncio.wait({fut}, timeout=max(0.0, deadline - now))
                if done:
                    break
                with batch.lock:
                    if batch.current is not None and batch.current is current:
                        if time.monotonic() < deadline:
                            continue
                        batch.abandoned = True
                        todo = list(batch.todo)
                        batch.on_late_end = self._write_off(current.name)
                        raws[current.name] = (
                            True,
                            f"timed out after {limits[current.name]:g}s",
                            limits[current.name],
                        )
                        break
                    if not batch.begun and time.monotonic() >= deadline:
                        batch.abandoned = True
                        for s in batch.todo:
                            raws[s.name] = (True, "timed out waiting for a free scorer thread", 0.0)
                        break
            with batch.lock:
                raws.update(batch.results)
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    log.error("scorer batch crashed: %r", fut.exception())

    def _write_off(self, name: str) -> Callable[[], None]:
        with self._lock:
            self._overdue[name] = self._overdue.get(name, 0) + 1
        settled = self.pool.replace()

        def late_end() -> None:
            with self._lock:
                self._overdue[name] -= 1
            settled()
            log.info("scorer %s: a call that overran its timeout has ended", name)

        return late_end


_default_runner = Runner()


async def run_scorers(
    scorers: Sequence[Scorer],
    ctx: Context,
    *,
    scorer_timeout: float = DEFAULT_TIMEOUT,
    runner: Runner | None = None,
) -> Outcome:
    """Run ``scorers`` on ``ctx``, each within ``scorer_timeout`` seconds unless it carries its
    own; never raises (bar cancellation)."""
    return await (runner or _default_runner).run(scorers, ctx, scorer_timeout)


@dataclass(frozen=True, slots=True)
class Foreign:
    """Stands for a value a scorer process could not send back (it would not pickle): only its
    type's name crosses, so the value is refused with the same words as on a thread."""

    kind: str

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _kind(value: object) -> str:
    return value.kind if isinstance(value, Foreign) else type(value).__name__


def _collect(name: str, result: Any, outcome: Outcome, keys: dict[str, str]) -> None:
    if result is None:
        return
    items = result.items() if isinstance(result, Mapping) else [(name, result)]
    for key, value in items:
        score = as_score(value)
        if score is None or not isinstance(key, str) or not key:
            log.warning(
                "scorer %s returned %s for %r; only ints and bools are sent",
                name,
                _kind(value),
                key,
            )
            outcome.errors[name] = f"not an int: {_kind(value)} for {key!r}"
            continue
        if key in keys:
            log.warning("scorer %s: score %r already given by %s; dropped", name, key, keys[key])
            outcome.errors[name] = f"duplicate score name {key!r}"
            continue
        keys[key] = name
        outcome.scores[key] = score
