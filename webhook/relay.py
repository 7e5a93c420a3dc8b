"""The relay: claim stored work, with leases, and run it; score promptly, post at the allowed pace.

It runs as background tasks in the server's process, started and stopped by the app's lifespan.
Two stages claim work from the store: *score* (as fast as webhooks come, so large bodies are
fetched while their URLs are valid) and *post* (only when the rate limit has room, so the backlog
waits on disk). In a dry run (no API key) only the first stage runs.

Here are the claim loops and their lifecycle: each stage claims due webhooks with a lease, runs
up to ``concurrency`` at once, and is woken by the store (:meth:`webhook.store.Store.subscribe`)
when work may have become due. What a stage does with a webhook is not here: scoring is
:mod:`webhook.score`, posting and its retry policy :mod:`webhook.deliver`.

- Work that runs long keeps its lease: each stage extends the leases of its work in flight every
  third of a lease, so a slow scorer or a slow API never gets a webhook claimed twice while it
  is still being worked on. A lease found lost is logged; its outcome will be dropped (fenced).
- Each job knows, by this process's own clock, until when its lease surely holds (its
  :class:`Tenure`): no API call starts once it may have ended. So a job that waited on a
  database that stopped answering never posts once its lease may have gone to another claim.

- A stage that fails in a way nothing foresaw (a bug, or a plugin raising even ``SystemExit``)
  counts as a failed attempt of that stage, with the same backoff and the same dead letters, so
  one poisonous webhook never loops and never takes the server down. The store failing is not
  one: with nothing to record the failure in, the lease runs out and the webhook is tried again.
- At shutdown, work in flight gets ``grace`` seconds to finish; what is left is released to the
  store, with the calls it made, and claimed again at once after a restart. A crash releases
  nothing; the restart takes the dead process's leases back at once (see
  :meth:`webhook.store.Store.open`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from webhook import metrics
from webhook.deliver import Delivery, RetryPolicy, record
from webhook.flow import Sample
from webhook.helicone import Helicone
from webhook.logs import event
from webhook.score import Scoring
from webhook.store import Job, PostBudget, Scored, Skipped, Stage, Store, StoreError, Tenure

__all__ = ["Relay"]

BATCH_WAIT = 0.005
"""Seconds free places may wait for others to join their claim while work is in flight."""
# After waiting for room in the budget, claim a little later: the share of the wait, at most
# SETTLE_MAX seconds (see Stage._room).
SETTLE_SHARE, SETTLE_MAX = 0.1, 1.0

# The relay's lines keep the logger name they always had, which log filters may rely on.
log = logging.getLogger("webhook.deliver")


class _Stage:
    """Claims due work for one stage, runs up to ``concurrency`` jobs at once, and keeps their
    leases while they run."""

    def __init__(
        self,
        stage: Stage,
        store: Store,
        handle: Callable[[Job, Tenure], Awaitable[None]],
        *,
        concurrency: int,
        lease: float,
        poll: float,
        budget: PostBudget | None = None,
        on_error: Callable[[Job, BaseException], Awaitable[None]],
    ) -> None:
        self.stage, self.store, self.handle, self.on_error = stage, store, handle, on_error
        self.concurrency, self.lease, self.poll, self.budget = concurrency, lease, poll, budget
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], tuple[Job, Tenure]] = {}
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self._short_since: float | None = None  # since when free places wait for a batch
        self._no_claim_until = 0.0  # (monotonic) waiting for room in the budget, and a settle

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.stage}")
        self._heartbeat = asyncio.create_task(self._beat(), name=f"relay-{self.stage}-leases")

    async def stop(self, grace: float) -> list[Job]:
        """Stop claiming; wait ``grace`` for work in flight; return the jobs left unfinished."""
        # Never cancelled mid-claim: a claim committed after its caller is gone would hold
        # leases nobody works on. The loop is asked to stop, and stops between claims.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        left: list[Job] = []
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=grace)
            left = [self._inflight[t][0] for t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        return left

    async def _room(self) -> tuple[int, float | None]:
        """How many jobs to claim now, and how long to wait when none.

        Claims come in batches: while work is in flight, a claim waits until half the places
        are free, or ``BATCH_WAIT`` has passed, so a busy stage makes one claim per several
        jobs, not one each, and a stalled one still fills its places.
        """
        free = self.concurrency - len(self._inflight)
        if self._inflight and 0 < free < max(1, self.concurrency // 2):
            now = time.monotonic()
            if self._short_since is None:
                self._short_since = now
            if now - self._short_since < BATCH_WAIT:
                return 0, self._short_since + BATCH_WAIT - now
        self._short_since = None
        if self.budget is not None and free > 0:
            now = time.monotonic()
            if now < self._no_claim_until:
                return 0, self._no_claim_until - now
            free = min(free, await self.budget.room())
            if free <= 0:
                # Work given back for want of room is due again when room should free, each a
                # few ms apart (its own release's latency). Claiming a little after that sees
                # all of it, and takes it in priority order, live first, rather than whichever
                # happened to be due first (a reconciled webhook was posted before live ones
                # after a 429's pause, in CI).
                wait = await self.budget.wait_time()
                self._no_claim_until = now + wait + min(SETTLE_MAX, wait * SETTLE_SHARE)
                return 0, self._no_claim_until - now
        return free, None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                free, wait = await self._room()
                sent = time.monotonic()
                jobs = await self.store.claim(self.stage, free, self.lease) if free > 0 else []
            except Exception as exc:
                # The store away (a StoreError) is one line a poll, not a traceback each time.
                if isinstance(exc, StoreError):
                    log.warning("claiming %s work failed: %s; trying again", self.stage, exc)
                else:
                    log.exception("claiming %s work failed; trying again", self.stage)
                free, wait, jobs = 0, self.poll, []
            if free <= 0:
                await self._idle(list(self._inflight), wait)
                continue
            for job in jobs:
                tenure = Tenure(self.store, sent, self.lease)
                task = asyncio.create_task(self._guarded(job, tenure))
                self._inflight[task] = (job, tenure)
                task.add_done_callback(self._inflight.pop)
            # Let them start, so each takes its place in the budget before the next claim
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

    async def _beat(self) -> None:
        """Every third of a lease, extend the leases of the work in flight."""
        while True:
            await asyncio.sleep(self.lease / 3)
            jobs = list(self._inflight.values())
            if not jobs:
                continue
            sent = time.monotonic()
            try:
                held = await self.store.extend([job.lease for job, _ in jobs], self.lease)
            except Exception as exc:  # the next beat tries again, well before the leases end
                log.warning("could not extend %d %s lease(s): %s", len(jobs), self.stage, exc)
                continue
            working = {id(tenure) for _, tenure in self._inflight.values()}
            for (job, tenure), ok in zip(jobs, held, strict=True):
                if ok:
                    tenure.renew(sent, self.lease)
                    continue
                tenure.lose()
                if id(tenure) in working:
                    event(
                        log,
                        "lease lost while working; its outcome will be dropped",
                        request_id=job.request_id,
                        outcome="lease_lost",
                    )

    async def _guarded(self, job: Job, tenure: Tenure) -> None:
        try:
            await self.handle(job, tenure)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            # The store away: nothing to record the failure in either. The lease runs out and
            # the webhook is claimed again; the calls it made are remembered (see Delivery).
            log.warning(
                "%s: the store failed: %s; tried again when its lease runs out",
                self.stage,
                exc,
                extra=_rid(job),
            )
        except BaseException as exc:  # a bug, or a plugin raising even SystemExit: not the loop's
            log.exception("%s failed unexpectedly", self.stage, extra=_rid(job))
            try:
                await self.on_error(job, exc)
            except Exception:  # the lease will expire and the webhook will be tried again
                log.exception("could not record the failure", extra=_rid(job))


class Relay:
    """The two stages, score and post, over one store; started and stopped by the lifespan."""

    def __init__(
        self,
        store: Store,
        scoring: Scoring,
        client: Helicone | None,
        budget: PostBudget,
        *,
        concurrency: int = 8,
        policy: RetryPolicy | None = None,
        poll_interval: float = 1.0,
        sample: Sample | None = None,
    ) -> None:
        self.store, self.scoring, self.client, self.budget = store, scoring, client, budget
        self.policy = policy or RetryPolicy()
        self.sample = sample or Sample()
        self.delivery = Delivery(store, client, budget, self.policy, self.sample)

        def stage(name: Stage, handle: Callable[[Job, Tenure], Awaitable[None]]) -> _Stage:
            return _Stage(
                name,
                store,
                handle,
                concurrency=concurrency,
                lease=self.policy.lease,
                poll=poll_interval,
                budget=budget if name == "post" else None,
                on_error=self.delivery.unexpected,
            )

        self._stages = {
            "score": stage("score", self._score),
            "post": stage("post", self.delivery.post),
        }

    def _wake(self, stage: Stage) -> None:
        """Work for ``stage`` may be due: look for it now rather than at the next poll."""
        self._stages[stage].wake()

    async def start(self) -> None:
        self.store.subscribe(self._wake)
        self._stages["score"].start()
        if self.client is not None:
            self._stages["post"].start()

    async def stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        left = await self._stages["score"].stop(grace)
        left += await self._stages["post"].stop(max(0.0, deadline - time.monotonic()))
        await self.delivery.close(max(0.0, deadline - time.monotonic()))
        if not left:
            return
        try:
            released = await self.delivery.release(left)
        except Exception:  # their leases run out instead
            log.exception("could not release %d unfinished webhook(s)", len(left))
            return
        if released:
            event(log, f"released {released} unfinished webhook(s) for the next start")

    async def _score(self, job: Job, tenure: Tenure) -> None:
        if not self.sample.keeps(job.request_id):
            percent = self.sample.percent
            if await record(self.store, Skipped(job.lease, f"sampled out ({percent:g}% kept)")):
                metrics.SKIPPED.labels("sampled_out").inc()
                event(
                    log,
                    "sampled out",
                    request_id=job.request_id,
                    outcome="sampled_out",
                    sample=percent,
                )
            return
        scored = await self.scoring.score(job.request_id, job.body)
        for name, seconds in scored.durations.items():
            metrics.SCORER_DURATION.labels(name).observe(seconds)
        for name in scored.errors:
            metrics.SCORER_ERRORS.labels(name).inc()
        nothing = not scored.scores and scored.feedback is None
        finished = nothing or self.client is None
        outcome = Scored(job.lease, scored.scores, scored.feedback, finished)
        if not await record(self.store, outcome) or not finished:
            return  # the store wakes the post stage
        event(
            log,
            "scored, nothing posted" if nothing else "dry run: scored, not posted",
            request_id=job.request_id,
            outcome="no_scores" if nothing else "dry_run",
            scores=scored.scores,
            feedback=scored.feedback,
            **self.sample.fields(),
        )


def _rid(job: Job) -> dict[str, str]:
    return {"request_id": job.request_id}
