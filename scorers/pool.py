"""A small pool of daemon threads for synchronous scorers.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at interpreter exit,
so one scorer stuck in a loop would keep the process from ever exiting. These threads are
daemons. And a thread written off by the runner (its scorer overran its timeout) can be
replaced with :meth:`Pool.replace`, so a stuck scorer does not shrink the pool; the extra
thread retires once the pool is back to size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["Pool"]

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[[], Any]]


class Pool:
    def __init__(self, size: int = 4, max_size: int = 32, name: str = "scorer") -> None:
        self.size = size
        self.max_size = max(size, max_size)
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # alive
        self._written_off = 0  # alive, but busy with a job nobody waits for
        self._serial = 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._jobs.put((fut, fn))
        with self._lock:
            if self._threads - self._written_off < self.size:
                self._spawn()
        return fut

    def replace(self) -> Callable[[], None]:
        """Write off one busy thread and start another in its place (up to ``max_size``).

        Returns the callback to run when the written-off job finally ends.
        """
        with self._lock:
            self._written_off += 1
            if self._threads < self.max_size:
                self._spawn()

        def settled() -> None:
            with self._lock:
                self._written_off -= 1

        return settled

    def _spawn(self) -> None:
        self._threads += 1
        self._serial += 1
        threading.Thread(target=self._work, name=f"{self.name}-{self._serial}", daemon=True).start()

    def _work(self) -> None:
        while True:
            fut, fn = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
            with self._lock:
                if self._threads - self._written_off > self.size:
                    self._threads -= 1
                    return
