"""The client-side rate limit: at most ``limit`` API calls in any ``window`` seconds.

Helicone allows 200 calls per minute per organisation, on a sliding window, and answers 429 past
it. To never cross it, each call holds its place in the window from the moment it is sent
(in flight: :meth:`SlidingWindow.hold`) until ``window`` seconds after its answer arrived (its
end time: :meth:`SlidingWindow.seed`): whatever the network delays, the server has seen it by
then, so no ``window`` of the server's clock can hold more than ``limit`` of our calls.

Score and feedback posts share the one window. A 429 pauses all calls until its ``Retry-After``
has passed, not only the call that got it. This is the arithmetic only: the store's posting
budget (:class:`webhook.store.PostBudget`) keeps the times where every process sees them, and
asks a window built from them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["SlidingWindow"]


class SlidingWindow:
    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._ended: deque[float] = deque()  # end times of recent calls, oldest first
        self._open = 0  # calls sent and not yet answered
        self._paused_until = 0.0

    def seed(self, ended_at: Iterable[float]) -> None:
        """Count calls made before this window existed (end times, any order)."""
        self._ended = deque(sorted([*self._ended, *ended_at]))
        self._prune(self._clock())

    def _prune(self, now: float) -> None:
        while self._ended and self._ended[0] <= now - self.window:
            self._ended.popleft()

    def free(self) -> int:
        """Calls that may start now."""
        now = self._clock()
        if now < self._paused_until:
            return 0
        self._prune(now)
        return max(0, self.limit - len(self._ended) - self._open)

    def wait_time(self) -> float:
        """Seconds until a call may start, as far as is known now (0 when one may)."""
        now = self._clock()
        self._prune(now)
        wait = max(0.0, self._paused_until - now)
        excess = len(self._ended) + self._open - self.limit + 1  # places that must free up
        if excess > 0:
            if excess <= len(self._ended):
                wait = max(wait, self._ended[excess - 1] + self.window - now)
            else:
                wait = max(wait, 1.0)  # calls in flight must end first: look again in a second
        return wait

    def pause(self, seconds: float) -> None:
        """No call until ``seconds`` from now (a longer pause already set wins)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def hold(self, calls: int = 1) -> None:
        """Count ``calls`` in flight: each holds its place until it ends."""
        self._open += calls
