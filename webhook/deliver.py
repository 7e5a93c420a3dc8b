"""Delivery: post a scored webhook's calls to Helicone, and decide what a failure means.

The relay (:mod:`webhook.relay`) claims the webhooks; this module makes their API calls inside
the posting budget, says what counts as posted, and records each outcome in the store, under the
lease it was claimed with.

Retry policy, all of it in :class:`RetryPolicy`:

- A 2xx answer delivers. All of a request's scores go in one call; a feedback rating, if a rule
  gave one, in a second. A call that already succeeded is not repeated: every outcome carries
  the calls made (:data:`webhook.store.Posted`), and the store keeps them. Until an outcome is
  recorded, :class:`Delivery` remembers them itself: when recording fails (the database is
  locked), the webhook claimed again here skips them, and a release at shutdown carries them.
- Each call takes its place in the budget with its class (:func:`priority`): a live webhook's
  scores first, its feedback next, then reconciled webhooks, then backfill.
- No call waits for the budget while its webhook is leased: a wait can outlast the lease (a
  429's ``Retry-After`` may be longer), and the webhook would be claimed and posted twice. A
  webhook whose call finds no room is released, with what it posted, due when room is expected.
- No call starts with less than ``CALL_NEEDS`` seconds (a quarter of a shorter lease) of its
  lease surely left (its :class:`~webhook.store.Tenure`): the store slow to answer (a take, an
  extend) must never let the webhook be claimed again while its call is still to be made. Such
  a webhook is given back, not posted. With leases extended every third of one, a live store
  never gets near this. A call under way is not cut off when its lease runs short (its lease is
  extended while it runs; and what was sent may have been applied all the same).
- No answer (connection error, timeout), 408, 429 and 5xx are retried with exponential backoff
  and equal jitter: attempt *n* waits a random time between half and all of
  ``base * 2**(n-1)``, capped at ``cap``; a ``Retry-After`` that asks for longer wins. A 429
  also pauses *all* calls until then. Half the delay is certain so that ``max_attempts`` spans
  a known time: with the defaults, at least 18 minutes from the first failure to a dead letter
  (with full jitter, a 10-minute outage made 1 or 2 dead letters in 300 webhooks).
- When the API answers again after trouble (a success after failures the client counts as
  the API's own: :class:`webhook.helicone.Heard`), the next post made here makes every post
  waiting out a retry after no answer, a 408 or a 5xx due at once
  (:meth:`webhook.store.Store.retry_now`), attempts unchanged: the delays grown during an
  outage would hold the backlog back for up to ``cap`` once the API is back; the budget sets
  the pace instead.
- Any other 4xx is permanent: the webhook goes to the dead letters at once, with its status and
  error. So does one that used up ``max_attempts`` or is older than ``max_age``.
- A request Helicone logged more than 30 days ago (:data:`webhook.helicone.SCORING_WINDOW`;
  :attr:`webhook.store.Job.logged`) is not posted: Helicone would answer success and drop the
  scores. It is finished as skipped, with that reason, not a dead letter (a backfilled or
  reconciled one that waited in a backlog, or a live one with ``SCORER_MAX_AGE`` past 30 days).
- An outcome whose lease no longer held (it ran out and the webhook was claimed again) is
  dropped, with a line at INFO: the webhook is someone else's now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter

from webhook import metrics
from webhook.flow import Sample
from webhook.helicone import SCORING_WINDOW, Answer, Helicone, spend
from webhook.logs import event
from webhook.store import (
    Call,
    Dead,
    Delivered,
    Job,
    Outcome,
    PostBudget,
    Posted,
    Priority,
    Released,
    Retry,
    Skipped,
    Store,
    Tenure,
)

__all__ = ["Delivery", "RetryPolicy", "priority", "record"]

log = logging.getLogger("webhook.deliver")

CALL_NEEDS = 2.0
"""Seconds of its lease a webhook must surely have left for an API call to start (at most)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 12
    base: float = 2.0
    cap: float = 600.0
    max_age: float = 24 * 3600.0
    lease: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        backoff = random.uniform(ceiling / 2, ceiling)
        return max(backoff, retry_after or 0.0)

    @staticmethod
    def permanent(status: int | None) -> bool:
        return status is not None and 400 <= status < 500 and status not in (408, 429)

    def gives_up(self, job: Job, now: float) -> bool:
        return job.attempts >= self.max_attempts or now - job.received_at >= self.max_age


def priority(job: Job, call: Call) -> Priority:
    """The budget class of one call: any call of a reconciled or backfilled webhook is of its
    origin's class; a live webhook's scores are "live", its feedback "feedback"."""
    if job.origin != "live":
        return job.origin
    return "live" if call == "scores" else "feedback"


async def record(store: Store, outcome: Outcome) -> bool:
    """Record one outcome; False, with a line at INFO, when its lease no longer held."""
    (held,) = await store.record([outcome])
    if not held:
        event(
            log,
            "lease lost: outcome dropped",
            request_id=outcome.lease.request_id,
            outcome="fenced",
            dropped=type(outcome).__name__.lower(),
        )
    return held


class Delivery:
    """Posts scored webhooks and records each outcome; what a failed attempt leads to."""

    def __init__(
        self,
        store: Store,
        client: Helicone | None,
        budget: PostBudget,
        policy: RetryPolicy,
        sample: Sample | None = None,
    ) -> None:
        self.store, self.client, self.budget, self.policy = store, client, budget, policy
        self.sample = sample or Sample()
        # Calls made here that no recorded outcome carries yet: request id -> calls.
        self._posted: dict[str, Posted] = {}
        self._recoveries = 0  # the client's recoveries from trouble acted on
        self._retrying: asyncio.Task[None] | None = None  # making the retries due now

    def posted(self, job: Job) -> Posted:
        """What this webhook has posted, as far as this process knows."""
        return job.posted | self._posted.get(job.request_id, frozenset())

    async def _record(self, outcome: Outcome) -> bool:
        held = await record(self.store, outcome)
        self._posted.pop(outcome.lease.request_id, None)  # recorded, or someone else's now
        return held

    async def release(self, jobs: list[Job]) -> int:
        """Give unfinished work back (at shutdown), with what it posted; not an attempt.
        Returns how many were released (an outcome recorded just before overtakes its release)."""
        held = await self.store.record([Released(job.lease, self.posted(job)) for job in jobs])
        for job in jobs:
            self._posted.pop(job.request_id, None)
        return sum(held)

    async def unexpected(self, job: Job, exc: BaseException) -> None:
        """A stage failed in a way no policy foresaw: back off like any failure, never loop."""
        answer = Answer(None, error=" ".join(f"unexpected {type(exc).__name__}: {exc}".split()))
        await self.failed(job, answer, self.posted(job))

    async def post(self, job: Job, tenure: Tenure) -> None:
        """Make the calls this webhook still needs; record delivered, retry, dead or deferred."""
        assert self.client is not None
        client, rid = self.client, job.request_id
        if time.time() - job.logged >= SCORING_WINDOW:
            reason = "older than Helicone's 30-day scoring window: it would drop the scores"
            if await self._record(Skipped(job.lease, reason)):
                metrics.SKIPPED.labels("too_old").inc()
                event(log, "not posted: too old", request_id=rid, outcome="too_old")
            return
        posted = self.posted(job)
        scores, rating = job.scores, job.feedback
        calls: list[tuple[Call, Counter, Callable[[], Awaitable[Answer]]]] = []
        if scores and "scores" not in posted:
            calls.append(("scores", metrics.SCORES_POSTED, lambda: client.post_scores(rid, scores)))
        if rating is not None and "feedback" not in posted:
            calls.append(
                ("feedback", metrics.FEEDBACK_POSTED, lambda: client.post_feedback(rid, rating))
            )
        answer: Answer | None = None
        for call, counter, send in calls:  # a call that succeeded before is not repeated
            made = await self._call(send, tenure, priority(job, call))
            if not isinstance(made, Answer):
                await self._defer(job, posted, made, priority(job, call))
                return
            answer = made
            if not answer.ok:
                await self.failed(job, answer, posted)
                return
            posted |= {call}
            self._posted[rid] = posted
            counter.inc()
        status = answer.status if answer else None
        if await self._record(Delivered(job.lease, status, posted)):
            event(
                log,
                "delivered",
                request_id=rid,
                outcome="posted",
                status=status,
                attempts=job.attempts,
                feedback=job.feedback,
                **self.sample.fields(),
            )

    async def _call(
        self, send: Callable[[], Awaitable[Answer]], tenure: Tenure, priority: Priority
    ) -> Answer | Literal["budget", "lease"]:
        """One API call inside the budget, started inside the lease; a 429 pauses every call.

        Without calling, why not: no room in the budget now (never wait holding a lease), or
        too little of the lease surely left.
        """
        needs = min(CALL_NEEDS, self.policy.lease / 4)
        if tenure.left() < needs:
            return "lease"
        slot = await self.budget.take(priority)
        if slot is None:
            return "budget"
        if tenure.left() < needs:  # the take may have waited on a slow store
            await self.budget.spent(slot)
            return "lease"
        answer = await spend(self.budget, slot, send)
        if not answer.ok:
            metrics.POST_FAILURES.labels(str(answer.status or "none")).inc()
        assert self.client is not None
        if self.client.heard.recoveries > self._recoveries:  # the API answers again
            self._recoveries = self.client.heard.recoveries
            if self._retrying is None or self._retrying.done():
                self._retrying = asyncio.create_task(self._retry_now(), name="retry-now")
        return answer

    async def _retry_now(self) -> None:
        """The API answers again: the posts waiting out a retry are due now."""
        try:
            count = await self.store.retry_now()
        except Exception as exc:  # they wait out their delays, as before
            log.warning("could not make the waiting retries due now: %s", exc)
            return
        if count:
            event(
                log,
                f"the API answers again: {count} webhook(s) waiting out a retry are due now",
                outcome="retry_now",
                count=count,
            )

    async def close(self, grace: float = 5.0) -> None:
        """Let the retries being made due finish (``grace`` seconds at most)."""
        if self._retrying is None:
            return
        await asyncio.wait({self._retrying}, timeout=grace)
        self._retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._retrying

    async def _defer(
        self, job: Job, posted: Posted, why: Literal["budget", "lease"], priority: Priority
    ) -> None:
        """Give the webhook back, not as an attempt: until the budget should have room for its
        call's class, or at once when its lease is ending (most often already claimed again:
        then dropped)."""
        delay = await self.budget.wait_time(priority) if why == "budget" else 0.0
        if not await self._record(Released(job.lease, posted, delay)):
            return
        if why == "lease":
            event(log, "lease ending: given back", request_id=job.request_id, outcome="released")
            return
        event(
            log,
            "waiting for the rate limit",
            level=logging.DEBUG,
            request_id=job.request_id,
            outcome="deferred",
            delay=round(delay, 2),
        )

    async def failed(self, job: Job, answer: Answer, posted: Posted) -> None:
        """A failed attempt: a retry after a backoff, or a dead letter."""
        rid, error = job.request_id, answer.error or "no answer"
        fields: dict[str, Any] = {"request_id": rid, "status": answer.status, "error": error}
        if self.policy.permanent(answer.status) or self.policy.gives_up(job, time.time()):
            if await self._record(Dead(job.lease, answer.status, error, posted)):
                metrics.DEAD_LETTERS.inc()
                event(log, "dead letter", level=logging.WARNING, outcome="dead", **fields)
            return
        delay = self.policy.delay(job.attempts, answer.retry_after)
        if await self._record(Retry(job.lease, delay, answer.status, error, posted)):
            metrics.RETRIES.inc()
            event(log, "will retry", outcome="retry", delay=round(delay, 2), **fields)
