"""Sync scorers in worker processes, so their CPU does not compete with the event loop's GIL.

Policy (that of :mod:`scorers.run`, bar what a process allows better than a thread):

- Workers start from the ``forkserver`` context (a fork of the threaded server would be
  unsafe), run at a lower CPU priority (``os.nice``, +10) so a burst of scoring never slows the
  loop that acknowledges webhooks, and die with the server: on Linux the kernel kills a worker
  when its parent, the forkserver, goes (``PR_SET_PDEATHSIG``), and the forkserver exits when
  the server does; an idle worker also exits when its pipe to the server closes.
- A worker gets the same scorers as the server, by name: it asks the registry for them
  (:func:`scorers.registry.named`: built-ins, and only the selected plugins imported), and the
  server checks each resolved to the same callable. A sync scorer that cannot be resolved there
  (not registered, a plugin that fails to import in a process, another callable) keeps running
  on the server's daemon threads, with one warning at the start naming it and why: a scorer that
  worked before keeps its score, and the log says which one still shares the GIL.
- The workers start in the background, so the server answers webhooks at once; until the first
  is ready (about a second), sync scorers run on the threads.
- One hand-off per webhook: the context and the names of its scorers go once; the worker runs
  them in order and sends back each one's raw result in picklable form (an exception as
  ``Type: message`` text, a value that would not pickle as its type's name) and its duration.
  Refusing floats and junk stays with the runner.
- A scorer that overruns its timeout has its process killed (a thread could not be), and is
  reported as timed out; a fresh process is started in its place at once. A kill loses the
  results the worker held, so the webhook's other scorers that had not finished, or had run
  before the overrunning one, run again on another worker: scorers are pure functions of the
  context. A worker that dies by itself (a crash, ``os._exit``, the OOM killer) fails only the
  scorer it was running, and is replaced the same way.
- A webhook waits for a free worker at most its longest scorer timeout, then its sync scorers
  fail with "timed out waiting for a free scorer process"; while a worker is being started (at
  the server's start, or to replace one), it waits for it, up to the start's own limit (60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from scorers.context import Context
from scorers.registry import Scorer, ScorerError, named
from scorers.run import Foreign, is_async

__all__ = ["NICENESS", "Processes"]

log = logging.getLogger("scorers")

NICENESS = 10
START_TIMEOUT = 60.0  # seconds for a worker to start and resolve its scorers

Raw = tuple[bool, Any, float]
_PLAIN = (type(None), bool, int, float, str, bytes)
_context = multiprocessing.get_context("forkserver")


def _ref(func: object) -> str:
    """Where a callable is defined: how the server tells the worker resolved the same one."""
    while isinstance(func, functools.partial):
        func = func.func
    target = func if hasattr(func, "__qualname__") else type(func)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', '?')}"


def _text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class _Died(Exception):
    def __init__(self, how: str, current: str | None, started: float) -> None:
        super().__init__(how)
        self.how, self.current, self.started = how, current, started


# -- the worker's side ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Die with the forkserver, which ends when the server does: the forkserver waits for every
    holder of its "alive" pipe, which a worker inherits; so a worker lets go of it, or a busy one
    would keep the forkserver, and itself, alive after the server was killed."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _resolve(names: Sequence[str]) -> tuple[dict[str, Scorer], dict[str, str]]:
    problems: dict[str, str] = {}
    try:
        found = named(names)
    except Exception:  # one plugin failed: find which, keep the others
        found = {}
        for name in names:
            try:
                found.update(named([name]))
            except Exception as exc:
                problems[name] = str(exc) if isinstance(exc, ScorerError) else _text(exc)
    for name in names:
        if name in found and is_async(found[name].func):
            problems[name] = "it is async there"
            del found[name]
        elif name not in found:
            problems.setdefault(name, "it is not registered there")
    return found, problems


def _plainly(value: Any) -> Any:
    """As :func:`_portable`, but exact types only (a subclass may not pickle)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Mapping):
        return {_plainly(k): _plainly(v) for k, v in value.items()}
    return Foreign(type(value).__name__)


def _portable(value: Any) -> Any:
    """A scorer's value in a form that pickles: what cannot is sent as :class:`Foreign`."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {_portable(k): _portable(v) for k, v in value.items()}
    return Foreign(type(value).__name__)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _serve(
    jobs: Connection, results: Connection, progress: Any, names: Sequence[str], niceness: int
) -> None:
    """A worker's life: resolve the scorers, then run webhooks' batches until told to stop."""
    # ^C, and a SIGTERM sent to the server's whole group, are the server's to handle: it
    # stops its scorer processes itself, once it has drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    table, problems = _resolve(names)
    try:
        results.send(({n: _ref(s.func) for n, s in table.items()}, problems))
    except OSError:  # the server stopped while this worker started
        return
    with contextlib.suppress(OSError):  # after the start: imports at full speed
        os.nice(niceness)
    while True:
        try:
            job = jobs.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        seq, ctx, todo = job
        out: dict[str, Raw] = {}
        for i, name in enumerate(todo):
            progress[2] = time.monotonic()
            progress[1] = i
            if i == 0:
                progress[0] = seq
            s = table.get(name)
            if s is None:
                out[name] = (True, f"not in this scorer process: {problems.get(name)}", 0.0)
                continue
            t0 = time.perf_counter()
            value: Any
            try:
                value = s.func(ctx)
                if inspect.isawaitable(value):  # a sync callable returned a coroutine
                    value = asyncio.run(_await(value))
                failed, value = False, _portable(value)
            except BaseException as exc:  # even SystemExit: it fails only this scorer
                failed, value = True, _text(exc)
            out[name] = (failed, value, time.perf_counter() - t0)
        try:
            results.send(out)
        except (EOFError, OSError):
            return
        except Exception:  # a value of a plain type's subclass that would not pickle
            results.send({n: (f, _plainly(v), d) for n, (f, v, d) in out.items()})


# -- the server's side ---------------------------------------------------------------------------


class _Worker:
    """One worker process and its pipe; :meth:`ready` waits until it has resolved its scorers."""

    def __init__(self, names: Sequence[str], niceness: int) -> None:
        self.progress: Any = _context.RawArray("d", 3)  # job seq, scorer index, its start
        # Two one-way pipes, not a socket pair: the server's sockets are its connections'.
        self.inbox, results = _context.Pipe(duplex=False)
        jobs, self.outbox = _context.Pipe(duplex=False)
        self.proc = _context.Process(
            target=_serve,
            args=(jobs, results, self.progress, tuple(names), niceness),
            name="scorer-process",
            daemon=True,
        )
        self.proc.start()
        jobs.close()
        results.close()
        self.killed = False
        self.refs: dict[str, str] = {}
        self.problems: dict[str, str] = {}

    def ready(self) -> None:
        """Wait for the worker's scorers (raises :class:`ScorerError` if it does not start)."""
        if not self.inbox.poll(START_TIMEOUT):
            self.proc.kill()
            raise ScorerError(f"a scorer process did not start within {START_TIMEOUT:g}s")
        try:
            self.refs, self.problems = self.inbox.recv()
        except (EOFError, OSError):
            raise ScorerError(f"a scorer process ended as it started ({self.end()})") from None

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()

    def end(self) -> str:
        """Wait for the process to end (killing it if it will not); how it ended."""
        self.proc.join(5)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(5)
        code = self.proc.exitcode
        self.inbox.close()
        self.outbox.close()
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"


@dataclass(eq=False)
class _Job:
    ctx: Context
    names: list[str]
    future: Future[dict[str, Raw]] = field(default_factory=Future)
    lock: threading.Lock = field(default_factory=threading.Lock)
    worker: _Worker | None = None
    seq: int = 0
    sent: float = 0.0
    done: bool = False  # its results are in: its worker may be running another job now
    resent: bool = False  # sent again once, its first worker having died before it began

    def state(self) -> tuple[str | None, float]:
        """The scorer running and when it started; (None, 0) while the job waits for a worker."""
        with self.lock:
            worker, seq, sent = self.worker, self.seq, self.sent
        if worker is None:
            return None, 0.0
        p = worker.progress
        if p[0] == seq:
            index, started = int(p[1]), p[2]
            return self.names[min(index, len(self.names) - 1)], started
        return self.names[0], sent  # sent, not yet begun: the worker is reading it


class Processes:
    """A fixed number of worker processes for the sync scorers among ``scorers``.

    :meth:`start` and :meth:`stop` belong to the server's lifespan; :meth:`run` is the runner's.
    """

    def __init__(self, scorers: Sequence[Scorer], size: int, niceness: int = NICENESS) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one process")
        self.size = size
        self.niceness = niceness
        self._scorers = [s for s in scorers if not is_async(s.func)]
        self._names = tuple(s.name for s in self._scorers)
        self.served: frozenset[str] = frozenset()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: dict[int, _Worker] = {}  # slot -> its current worker
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._closed = False
        self._starting = 0  # workers being started (a webhook waits longer for those)
        self._learnt = False  # whether a worker has said which scorers it can run
        self._threads: list[threading.Thread] = []

    def serves(self, name: str) -> bool:
        return name in self.served

    def pids(self) -> list[int]:
        """The workers' process ids (for measurements)."""
        with self._lock:
            return [w.pid for w in self._workers.values() if w.pid is not None]

    async def start(self) -> None:
        """Start the workers, in the background: until the first is ready (a second or so),
        sync scorers run on the threads, so the server answers webhooks at once."""
        if not self._names:
            return
        _context.set_forkserver_preload(
            ["scorers._forkserver", "scorers.processes", "scorers.builtin"]
        )
        for slot in range(self.size):
            thread = threading.Thread(
                target=self._slot, args=(slot,), name=f"scorer-process-{slot}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    @property
    def ready(self) -> bool:
        """Whether a worker has said which scorers the workers serve (until then: threads)."""
        return self._learnt

    def _learn(self, worker: _Worker) -> None:
        """From the first ready worker: which scorers the workers serve (the rest: threads)."""
        served = set()
        for s in self._scorers:
            why = worker.problems.get(s.name)
            if why is None and worker.refs.get(s.name) != _ref(s.func):
                why = f"it resolves to {worker.refs.get(s.name)} there, not {_ref(s.func)}"
            if why is None:
                served.add(s.name)
            else:
                log.warning(
                    "scorer %s runs on the server's threads, not in a scorer process: %s",
                    s.name,
                    why,
                )
        self.served = frozenset(served)
        log.info(
            "scoring in %d process(es) at nice +%d: %s",
            self.size,
            self.niceness,
            ", ".join(sorted(self.served)) or "(none)",
        )

    async def stop(self) -> None:
        """Stop every worker (a batch in flight is dropped: the relay has stopped by now)."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
        for _ in self._threads:
            self._jobs.put(None)
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.proc.kill()  # it ignores SIGTERM (see _serve)
        await asyncio.to_thread(self._join, self._threads)
        with self._lock:
            self._workers.clear()

    @staticmethod
    def _join(threads: Iterable[threading.Thread]) -> None:
        for thread in threads:
            thread.join(10)

    def _slot(self, slot: int) -> None:
        """One worker after another: start it, feed it jobs, replace it when it ends."""
        worker: _Worker | None = None
        failures = 0.0  # seconds waited after the last failed start (doubling, up to 30)
        while not self._closed:
            with self._lock:
                self._starting += 1
            try:
                worker = _Worker(self._names, self.niceness)
                with self._lock:
                    self._workers[slot] = worker  # so that stop() ends it even while starting
                worker.ready()
            except Exception as exc:
                with self._lock:
                    self._starting -= 1  # not while it waits to try again: webhooks go on
                if not self._closed:
                    log.error("could not start a scorer process (will try again): %s", exc)
                    time.sleep(failures := min(30.0, 2.0 * (failures or 0.5)))
                worker = None
                continue
            failures = 0.0
            with self._lock:
                self._starting -= 1
            with self._lock:
                if self._closed:
                    break
                if not self._learnt:
                    self._learnt = True
                    self._learn(worker)
            how = self._feed(worker)
            if how is None:  # closing
                break
            if not worker.killed and not self._closed:
                log.warning("scorer process %s ended (%s); starting another", worker.pid, how)
            worker = None
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.outbox.send(None)
            worker.end()

    def _feed(self, worker: _Worker) -> str | None:
        """Run jobs on ``worker`` until it ends (how it ended) or the pool closes (None)."""
        while True:
            job = self._jobs.get()
            if job is None:
                return None
            if not job.future.running() and not job.future.set_running_or_notify_cancel():
                continue  # the webhook stopped waiting before a worker was free
            with job.lock:
                job.worker, job.seq, job.sent = worker, next(self._seq), time.monotonic()
            try:
                worker.outbox.send((job.seq, replace(job.ctx, _memo={}), job.names))
            except (EOFError, OSError):
                pass  # it died: recv says so
            except Exception as exc:  # the context would not pickle: nothing was written
                job.future.set_exception(exc)
                continue
            try:
                results = worker.inbox.recv()
            except (EOFError, OSError):
                current, started = job.state()
                how = worker.end()
                if worker.progress[0] != job.seq and not job.resent:
                    # It died before it began this job (killed for another's overrun as it
                    # finished, or between jobs): none of its scorers ran, so send it again.
                    with job.lock:
                        job.worker, job.resent = None, True
                    self._jobs.put(job)
                    return how
                if worker.progress[0] != job.seq:
                    current = None
                job.future.set_exception(_Died(how, current, started))
                return how
            with job.lock:
                job.done = True
            job.future.set_result(results)

    async def run(
        self, ctx: Context, todo: Sequence[Scorer], limits: Mapping[str, float]
    ) -> dict[str, Raw]:
        """Run ``todo`` (served scorers) on ``ctx`` in a worker, each within its limit."""
        raws: dict[str, Raw] = {}
        names = [s.name for s in todo]
        while names:
            job = _Job(ctx, names)
            self._jobs.put(job)
            fut = asyncio.wrap_future(job.future)
            fut.add_done_callback(_retrieve)  # a batch given up on may end later, unread
            queued = time.monotonic()
            names = []
            try:
                current = await self._watch(job, fut, queued, limits, raws)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            if current is not None:
                names = [n for n in job.names if n != current]
            if not fut.done() or fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                raws.update(fut.result())
            elif isinstance(exc, _Died):
                if exc.current is None:
                    for n in job.names:
                        raws[n] = (True, f"the scorer process died ({exc.how})", 0.0)
                elif exc.current not in raws:
                    seconds = time.monotonic() - exc.started
                    raws[exc.current] = (True, f"the scorer process died ({exc.how})", seconds)
                    names = [n for n in job.names if n != exc.current]
            else:
                for n in job.names:
                    raws[n] = (True, f"could not be sent to a scorer process: {_text(exc)}", 0.0)
        return raws

    async def _watch(
        self,
        job: _Job,
        fut: asyncio.Future[dict[str, Raw]],
        queued: float,
        limits: Mapping[str, float],
        raws: dict[str, Raw],
    ) -> str | None:
        """Wait for ``job``; on an overrun, kill its worker and return the scorer that overran."""
        longest = max(limits[n] for n in job.names)
        while True:
            current, started = job.state()
            now = time.monotonic()
            if current is not None:
                deadline = started + limits[current]
            elif self._starting and now >= queued + longest:
                deadline = min(now + 0.1, queued + START_TIMEOUT)  # a worker is on its way
            else:
                deadline = queued + longest
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, deadline - now))
            if done:
                return None
            now = time.monotonic()
            if now < deadline or job.state() != (current, started):
                continue
            if current is None:
                if self._starting and now < queued + START_TIMEOUT:
                    continue
                if job.future.cancel():  # still queued: no worker took it
                    for n in job.names:
                        raws[n] = (True, "timed out waiting for a free scorer process", 0.0)
                    return None
                await asyncio.sleep(0.05)  # queued again, its first worker gone: wait for one
                continue
            with job.lock:  # never the worker of a job whose results are in: it moved on
                if job.done or job.worker is None:
                    continue
                job.worker.kill()
            log.info("scorer %s overran its timeout: its process was killed", current)
            raws[current] = (True, f"timed out after {limits[current]:g}s", limits[current])
            return current


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
