"""The relay: claim stored webhooks, score them, and post the scores to Helicone.

It runs as a background task in the server's process, started and stopped by the app's lifespan.

Retry policy (all of it is in :class:`RetryPolicy`):

- A 2xx answer delivers the webhook. A webhook with no scores, or a dry run (no API key), is
  finished without posting.
- No answer (connection error, timeout), 408, 429 and 5xx are retried, with exponential backoff
  and full jitter: attempt *n* waits a random time up to ``base * 2**(n-1)``, capped at ``cap``.
  A ``Retry-After`` from the API is honoured when it asks for longer.
- Any other 4xx is permanent: the webhook goes to the dead letters at once, with its status and
  error. So does a webhook that used up ``max_attempts`` or is older than ``max_age``.
- At shutdown, work in flight gets ``grace`` seconds to finish; what is left is released to the
  store, so it is claimed again at once after a restart. A crash releases nothing, but leases
  expire, so the work is claimed again ``lease`` seconds later.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from scorers import DEFAULT_TIMEOUT, Context, Origin, Scorer, fill_bodies, run_scorers
from webhook.helicone import Answer, Helicone
from webhook.store import Job, Store

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


class Relay:
    def __init__(
        self,
        store: Store,
        scorers: Sequence[Scorer],
        client: Helicone | None,
        *,
        concurrency: int = 8,
        policy: RetryPolicy | None = None,
        poll_interval: float = 1.0,
        scorer_timeout: float = DEFAULT_TIMEOUT,
        body_allow: Sequence[Origin] = (),
        body_fetch_timeout: float = 10.0,
        body_fetch_max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.scorers = list(scorers)
        self.client = client
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.poll_interval = poll_interval
        self.scorer_timeout = scorer_timeout
        self.body_allow = tuple(body_allow)
        self.body_fetch_timeout = body_fetch_timeout
        self.body_fetch_max_bytes = body_fetch_max_bytes
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], str] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self._stopping = False

    def wake(self) -> None:
        """New work was stored: look for it now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="relay")

    async def stop(self, grace: float) -> None:
        # The loop is never cancelled mid-claim: a claim that commits after its caller is gone
        # would hold leases nobody works on. It is asked to stop, and stops between claims.
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if not self._inflight:
            return
        _, pending = await asyncio.wait(list(self._inflight), timeout=grace)
        left = [self._inflight[t] for t in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.store.release(left)
        if left:
            log.info("released %d unfinished webhook(s) for the next start", len(left))

    async def _run(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._wake.clear()
                await self._idle(list(self._inflight), None)
                continue
            self._wake.clear()
            try:
                jobs = await self.store.claim(free, self.policy.lease)
            except Exception:
                log.exception("claiming work failed; retrying")
                await self._idle([], self.poll_interval)
                continue
            for job in jobs:
                task = asyncio.create_task(self._guarded(job))
                self._inflight[task] = job.request_id
                task.add_done_callback(self._inflight.pop)
            if not jobs:
                await self._idle([], self.poll_interval)

    async def _idle(self, tasks: list[asyncio.Task[None]], seconds: float | None) -> None:
        """Wait until a task ends, new work is announced, stop is asked, or the timeout passes."""
        waker = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                [*tasks, waker], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def _guarded(self, job: Job) -> None:
        try:
            await self._handle(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease will expire and the webhook will be tried again.
            log.exception("request_id=%s: unexpected error; will retry", job.request_id)

    async def _handle(self, job: Job) -> None:
        rid = job.request_id
        scores = job.scores if job.scores is not None else await self._score(job)
        if not scores:
            await self.store.complete(rid, {}, None)
            log.info("request_id=%s outcome=no_scores", rid)
            return
        if self.client is None:
            await self.store.complete(rid, scores, None)
            log.info("request_id=%s outcome=dry_run scores=%s", rid, _fmt(scores))
            return
        await self._respect_pause()
        answer = await self.client.post_scores(rid, scores)
        await self._settle(job, scores, answer)

    async def _score(self, job: Job) -> dict[str, int]:
        payload = orjson.loads(job.body)
        # "Body too large": fetch the full bodies now, while the presigned URL is valid.
        payload = await fill_bodies(
            payload,
            self.body_allow,
            fetch_timeout=self.body_fetch_timeout,
            max_bytes=self.body_fetch_max_bytes,
        )
        # Extraction can be long on big bodies: keep it off the loop that serves webhooks.
        ctx = await asyncio.to_thread(Context.from_payload, payload)
        outcome = await run_scorers(self.scorers, ctx, scorer_timeout=self.scorer_timeout)
        return outcome.scores

    async def _settle(self, job: Job, scores: dict[str, int], answer: Answer) -> None:
        rid = job.request_id
        if answer.ok:
            await self.store.complete(rid, scores, answer.status)
            log.info("request_id=%s outcome=posted status=%s", rid, answer.status)
            return
        error = answer.error or "no answer"
        if answer.status == 429:
            self._pause(answer.retry_after)
        if self.policy.permanent(answer.status) or self.policy.gives_up(job, time.time()):
            await self.store.bury(rid, scores, answer.status, error)
            log.warning("request_id=%s outcome=dead status=%s error=%s", rid, answer.status, error)
            return
        delay = self.policy.delay(job.attempts, answer.retry_after)
        await self.store.retry(rid, scores, delay, answer.status, error)
        log.info(
            "request_id=%s outcome=retry status=%s delay=%.1fs error=%s",
            rid,
            answer.status,
            delay,
            error,
        )

    def _pause(self, seconds: float | None) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + (seconds or 60.0))

    async def _respect_pause(self) -> None:
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


def _fmt(scores: dict[str, int]) -> str:
    return orjson.dumps(scores, option=orjson.OPT_SORT_KEYS).decode()
