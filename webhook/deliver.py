"""Delivery: post a scored webhook's calls to Helicone, and decide what a failure means.

The relay (:mod:`webhook.relay`) claims the webhooks; this module makes their API calls inside
the rate limit, says what counts as posted, and records each outcome in the store.

Retry policy, all of it in :class:`RetryPolicy`:

- A 2xx answer delivers. All of a request's scores go in one call; a feedback rating, if a rule
  gave one, in a second. A call that already succeeded is not repeated: on a retry, after a
  release at shutdown, nor when recording the outcome failed (:class:`Delivery` remembers what
  it posted until the store has it, so the webhook claimed again here skips those calls).
- No call waits for the rate limit while its webhook is leased: a wait can outlast the lease
  (a 429's ``Retry-After`` may be longer), and the webhook would be claimed and posted twice.
  A webhook whose call finds no room is given back, with what it posted, due when room is
  expected.
- No answer (connection error, timeout), 408, 429 and 5xx are retried with exponential backoff
  and full jitter: attempt *n* waits a random time up to ``base * 2**(n-1)``, capped at ``cap``;
  a ``Retry-After`` that asks for longer wins. A 429 also pauses *all* calls until then.
- Any other 4xx is permanent: the webhook goes to the dead letters at once, with its status and
  error. So does one that used up ``max_attempts`` or is older than ``max_age``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from webhook import metrics
from webhook.helicone import Answer, Helicone
from webhook.limit import SlidingWindow
from webhook.logs import event
from webhook.store import FEEDBACK_POSTED, SCORES_POSTED, Job, Store

__all__ = ["Delivery", "RetryPolicy"]

log = logging.getLogger("webhook.deliver")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 12
    base: float = 2.0
    cap: float = 600.0
    max_age: float = 24 * 3600.0
    lease: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)

    @staticmethod
    def permanent(status: int | None) -> bool:
        return status is not None and 400 <= status < 500 and status not in (408, 429)

    def gives_up(self, job: Job, now: float) -> bool:
        return job.attempts >= self.max_attempts or now - job.received_at >= self.max_age


class Delivery:
    """Posts scored webhooks and records each outcome; what a failed attempt leads to."""

    def __init__(
        self,
        store: Store,
        client: Helicone | None,
        limiter: SlidingWindow,
        policy: RetryPolicy,
    ) -> None:
        self.store, self.client, self.limiter, self.policy = store, client, limiter, policy
        # Calls posted here that the store has not recorded yet: request id -> ``posted`` bits.
        self._posted: dict[str, int] = {}

    def posted(self, request_id: str) -> int:
        """What was posted for this webhook that the store may not know yet."""
        return self._posted.get(request_id, 0)

    async def unexpected(self, job: Job, exc: BaseException) -> None:
        """A stage failed in a way no policy foresaw: back off like any failure, never loop."""
        answer = Answer(None, error=" ".join(f"unexpected {type(exc).__name__}: {exc}".split()))
        await self.failed(job, answer, job.posted | self.posted(job.request_id))

    async def post(self, job: Job) -> None:
        """Make the calls this webhook still needs; record delivered, retry, dead or deferred."""
        assert self.client is not None
        client, rid = self.client, job.request_id
        posted = job.posted | self._posted.get(rid, 0)
        scores, rating = job.scores, job.feedback
        calls: list[tuple[int, Counter, Callable[[], Awaitable[Answer]]]] = []
        if scores and not posted & SCORES_POSTED:
            calls.append(
                (SCORES_POSTED, metrics.SCORES_POSTED, lambda: client.post_scores(rid, scores))
            )
        if rating is not None and not posted & FEEDBACK_POSTED:
            calls.append(
                (
                    FEEDBACK_POSTED,
                    metrics.FEEDBACK_POSTED,
                    lambda: client.post_feedback(rid, rating),
                )
            )
        answer: Answer | None = None
        for done, counter, send in calls:  # a call that succeeded before is not repeated
            answer = await self._call(send)
            if answer is None:
                await self._defer(job, posted)
                return
            if not answer.ok:
                await self.failed(job, answer, posted)
                return
            posted |= done
            self._posted[rid] = posted
            counter.inc()
        status = answer.status if answer else None
        await self.store.complete(rid, status)
        self._posted.pop(rid, None)
        event(
            log,
            "delivered",
            request_id=rid,
            outcome="posted",
            status=status,
            attempts=job.attempts,
            feedback=job.feedback,
        )

    async def _call(self, send: Callable[[], Awaitable[Answer]]) -> Answer | None:
        """One API call inside the rate limit; a 429 pauses every call.

        None, without calling, when the limit has no room now: never wait holding a lease.
        """
        if self.limiter.free() <= 0:
            return None
        async with self.limiter.slot():  # there is room: takes it without waiting
            answer = await send()
        try:
            await self.store.log_posts([time.time()])
        except Exception as exc:  # the call was made: its outcome matters more than its time
            log.warning("could not record the time of an API call: %s", exc)
        if answer.status == 429:
            self.limiter.pause(answer.retry_after if answer.retry_after is not None else 60.0)
        if not answer.ok:
            metrics.POST_FAILURES.labels(str(answer.status or "none")).inc()
        return answer

    async def _defer(self, job: Job, posted: int) -> None:
        """Give the webhook back until the rate limit should have room; not an attempt."""
        delay = self.limiter.wait_time()
        await self.store.release({job.request_id: posted}, delay)
        self._posted.pop(job.request_id, None)
        event(
            log,
            "waiting for the rate limit",
            level=logging.DEBUG,
            request_id=job.request_id,
            outcome="deferred",
            delay=round(delay, 2),
        )

    async def failed(self, job: Job, answer: Answer, posted: int) -> None:
        """A failed attempt: a retry after a backoff, or a dead letter."""
        rid, error = job.request_id, answer.error or "no answer"
        fields: dict[str, Any] = {"request_id": rid, "status": answer.status, "error": error}
        if self.policy.permanent(answer.status) or self.policy.gives_up(job, time.time()):
            await self.store.bury(rid, answer.status, error, posted)
            self._posted.pop(rid, None)
            metrics.DEAD_LETTERS.inc()
            event(log, "dead letter", level=logging.WARNING, outcome="dead", **fields)
            return
        delay = self.policy.delay(job.attempts, answer.retry_after)
        await self.store.retry(rid, delay, answer.status, error, posted)
        self._posted.pop(rid, None)
        metrics.RETRIES.inc()
        event(log, "will retry", outcome="retry", delay=round(delay, 2), **fields)
