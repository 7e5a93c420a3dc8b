"""The relay: score stored webhooks promptly, then post their scores at the allowed pace.

It runs as background tasks in the server's process, started and stopped by the app's lifespan.
Two stages claim work from the store: *score* (as fast as webhooks come, so large bodies are
fetched while their URLs are valid) and *post* (only when the rate limit has room, so the backlog
waits on disk). In a dry run (no API key) only the first stage runs.

Retry policy, all of it in :class:`RetryPolicy`:

- A 2xx answer delivers. All of a request's scores go in one call; a feedback rating, if a rule
  gave one, in a second. A call that already succeeded is not repeated: on a retry, after a
  release at shutdown, nor when recording the outcome failed (the relay remembers what it
  posted until the store has it, so the webhook claimed again here skips those calls).
- No call waits for the rate limit while its webhook is leased: a wait can outlast the lease
  (a 429's ``Retry-After`` may be longer), and the webhook would be claimed and posted twice.
  A webhook whose call finds no room is given back, with what it posted, due when room is
  expected.
- No answer (connection error, timeout), 408, 429 and 5xx are retried with exponential backoff
  and full jitter: attempt *n* waits a random time up to ``base * 2**(n-1)``, capped at ``cap``;
  a ``Retry-After`` that asks for longer wins. A 429 also pauses *all* calls until then.
- Any other 4xx is permanent: the webhook goes to the dead letters at once, with its status and
  error. So does one that used up ``max_attempts`` or is older than ``max_age``.
- A stage that fails in a way nothing foresaw (a bug, or a plugin raising even ``SystemExit``)
  counts as a failed attempt of that stage, with the same backoff and the same dead letters, so
  one poisonous webhook never loops and never takes the server down.
- At shutdown, work in flight gets ``grace`` seconds to finish; what is left is released to the
  store and claimed again at once after a restart. A crash releases nothing; the restart takes
  the dead process's leases back at once (see :meth:`webhook.store.Store.open`).
"""

from __future__ import annotations

import asyncio
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
from webhook.score import Scoring
from webhook.store import FEEDBACK_POSTED, SCORES_POSTED, Job, Stage, Store

__all__ = ["Relay", "RetryPolicy"]

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


class _Stage:
    """Claims due work for one stage and runs up to ``concurrency`` jobs at once."""

    def __init__(
        self,
        stage: Stage,
        store: Store,
        handle: Callable[[Job], Awaitable[None]],
        *,
        concurrency: int,
        lease: float,
        poll: float,
        limiter: SlidingWindow | None = None,
        on_error: Callable[[Job, BaseException], Awaitable[None]],
    ) -> None:
        self.stage, self.store, self.handle, self.on_error = stage, store, handle, on_error
        self.concurrency, self.lease, self.poll, self.limiter = concurrency, lease, poll, limiter
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], str] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.stage}")

    async def stop(self, grace: float) -> list[str]:
        """Stop claiming; wait ``grace`` for work in flight; return the ids left unfinished."""
        # Never cancelled mid-claim: a claim committed after its caller is gone would hold
        # leases nobody works on. The loop is asked to stop, and stops between claims.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if not self._inflight:
            return []
        _, pending = await asyncio.wait(list(self._inflight), timeout=grace)
        left = [self._inflight[t] for t in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return left

    def _room(self) -> tuple[int, float | None]:
        """How many jobs to claim now, and how long to wait when none."""
        free = self.concurrency - len(self._inflight)
        if self.limiter is not None:
            free = min(free, self.limiter.free())
            if free <= 0 and len(self._inflight) < self.concurrency:
                return 0, self.limiter.wait_time()
        return free, None

    async def _run(self) -> None:
        while not self._stopping:
            free, wait = self._room()
            self._wake.clear()
            if free <= 0:
                await self._idle(list(self._inflight), wait)
                continue
            try:
                jobs = await self.store.claim(self.stage, free, self.lease)
            except Exception:
                log.exception("claiming %s work failed; trying again", self.stage)
                jobs = []
            for job in jobs:
                task = asyncio.create_task(self._guarded(job))
                self._inflight[task] = job.request_id
                task.add_done_callback(self._inflight.pop)
            # Let them start, so each takes its place in the rate limit before the next claim
            # counts the room left (a job that finds none is given back, not kept waiting).
            await asyncio.sleep(0)
            if not jobs:
                await self._idle([], self.poll)

    async def _idle(self, tasks: list[asyncio.Task[None]], seconds: float | None) -> None:
        """Wait until a task ends, new work is announced, stop is asked, or time passes."""
        waker = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                [*tasks, waker], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def _guarded(self, job: Job) -> None:
        try:
            await self.handle(job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug, or a plugin raising even SystemExit: not the loop's
            log.exception("%s failed unexpectedly", self.stage, extra=_rid(job))
            try:
                await self.on_error(job, exc)
            except Exception:  # the lease will expire and the webhook will be tried again
                log.exception("could not record the failure", extra=_rid(job))


class Relay:
    def __init__(
        self,
        store: Store,
        scoring: Scoring,
        client: Helicone | None,
        limiter: SlidingWindow,
        *,
        concurrency: int = 8,
        policy: RetryPolicy | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.store, self.scoring, self.client, self.limiter = store, scoring, client, limiter
        self.policy = policy or RetryPolicy()
        # Calls posted here that the store has not recorded yet: request id -> ``posted`` bits.
        self._posted: dict[str, int] = {}

        def stage(name: Stage, handle: Callable[[Job], Awaitable[None]]) -> _Stage:
            return _Stage(
                name,
                store,
                handle,
                concurrency=concurrency,
                lease=self.policy.lease,
                poll=poll_interval,
                limiter=limiter if name == "post" else None,
                on_error=self._unexpected,
            )

        self._scorer = stage("score", self._score)
        self._poster = stage("post", self._post)

    def wake(self) -> None:
        """New work was stored: look for it now rather than at the next poll."""
        self._scorer.wake()

    async def start(self) -> None:
        now = time.time()
        self.limiter.seed(await self.store.recent_posts(now - self.limiter.window))
        self._scorer.start()
        if self.client is not None:
            self._poster.start()

    async def stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        left = await self._scorer.stop(grace)
        left += await self._poster.stop(max(0.0, deadline - time.monotonic()))
        await self.store.release({rid: self._posted.get(rid, 0) for rid in left})
        if left:
            event(log, f"released {len(left)} unfinished webhook(s) for the next start")

    async def _unexpected(self, job: Job, exc: BaseException) -> None:
        """A stage failed in a way no policy foresaw: back off like any failure, never loop."""
        answer = Answer(None, error=" ".join(f"unexpected {type(exc).__name__}: {exc}".split()))
        await self._failed(job, answer, job.posted | self._posted.get(job.request_id, 0))

    # -- the score stage --------------------------------------------------------------------

    async def _score(self, job: Job) -> None:
        scored = await self.scoring.score(job.request_id, job.body)
        nothing = not scored.scores and scored.feedback is None
        finished = nothing or self.client is None
        await self.store.scored(job.request_id, scored.scores, scored.feedback, finished)
        if not finished:
            self._poster.wake()
            return
        outcome = "no_scores" if nothing else "dry_run"
        event(
            log,
            "scored, nothing posted" if nothing else "dry run: scored, not posted",
            request_id=job.request_id,
            outcome=outcome,
            scores=scored.scores,
            feedback=scored.feedback,
        )

    # -- the post stage ---------------------------------------------------------------------

    async def _post(self, job: Job) -> None:
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
                await self._failed(job, answer, posted)
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

    async def _failed(self, job: Job, answer: Answer, posted: int) -> None:
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


def _rid(job: Job) -> dict[str, str]:
    return {"request_id": job.request_id}
