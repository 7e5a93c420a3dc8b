"""The reconciliation sweep: score what Helicone logged and never sent us; confirm scores landed.

Helicone sends each webhook once and never retries, so whatever never reached the store (a deploy,
an outage, a 5xx, the network) would never be scored. Every ``SCORER_RECONCILE_INTERVAL`` seconds
the server lists the requests Helicone logged (:mod:`webhook.logged`) and queues those the store
has never seen, as webhooks would have been: the relay scores and posts them with the same scorers
and rules. It runs in the server (started and stopped by the app's lifespan, only with an API
key), and by hand with ``helicone-scorer reconcile``, with this same code.

Policy:

- Window: from the end mark of the last sweep minus a *look-back*, or, the very first time, from
  the store's creation (older traffic is ``backfill``'s job); never before the store's creation,
  and never before :data:`~webhook.helicone.SCORING_WINDOW` ago (Helicone drops scores of
  older requests). It ends ``SCORER_RECONCILE_SETTLE`` seconds ago: Helicone sends a webhook
  about 30 s after logging, so a younger request may still arrive.
- The look-back is ``SCORER_RECONCILE_CONFIRM_AFTER`` plus one interval. A request logged at *t*
  and posted within about an interval of it is listed again by some sweep that runs once its
  post is ``CONFIRM_AFTER`` old: that sweep starts at most an interval after, and its window
  starts at most an interval plus the look-back before it, so it still holds *t*. That second
  listing is what confirms its scores (below), so the confirmation costs no extra query.
- One instance sweeps at a time: a sweep holds the store's sweep lease (a few intervals long) and
  stops, recording how far it got, when a quarter of it is left. An instance whose last sweep
  ran less than half an interval ago (another instance swept) skips its turn; a process's first
  sweep always runs, so a restart resumes at once.
- The listing is paged oldest first (by time past Helicone's offset cap). Each query takes a place
  in the API budget at priority ``"query"`` (after live posts, feedback and reconciled requests):
  no place, or a failed query, stops the sweep, which ends at the last row fully handled and
  resumes from there next time. A 429 pauses every call, as any call's does.
- A row is considered only if its ``request_properties`` hold every ``SCORER_RECONCILE_PROPERTIES``
  pair exactly and its id is in the ``SCORER_RECONCILE_SAMPLE`` (:func:`webhook.sample.in_sample`),
  as the webhook's own property filters and sample rate decide what Helicone sends; these must
  match the webhook's settings, or the sweep queues requests the webhook was meant to skip.
- A considered row the store has never seen is *missing*: its bodies are fetched from its signed
  URL (a trusted host only), rebuilt into the payload the webhook would have carried, and stored
  with origin ``"reconciled"``. One whose bodies cannot be had is counted as failed, logged, and
  not queued. When the sweep got to its end, the end mark stays at the oldest such row, so the
  next sweeps list it again and try again, for ``HOLD_FAILED_FOR`` (an hour) at most: so a
  body that never comes (an expired URL) costs each sweep at most an hour of listing more, and
  a sweep that stopped early (no room) moves the mark on all the same, or it would list the
  same pages and stop at the same place every time.
- A row is missing only once *settled*: ``SETTLE`` seconds after its call ended (created_at
  plus its ``delay_ms``), since Helicone sends the webhook when the call is done; a younger one
  is left to the next sweep's look-back.
- Never past the retention (``SCORER_RETENTION_DAYS``): the store forgets delivered webhooks
  after it, and would take them for missing.
- Confirmation: for each listed row the store has seen (within the filters or not: we posted
  it), Helicone's ``scores`` (a boolean shows as ``<name>-hcone-bool``) are the names it
  applied. The store re-opens, once ever, a webhook that posted its scores more than
  ``CONFIRM_AFTER`` seconds ago (well after Helicone's 10-minute delay) and whose names are not
  all there; it is posted again, and counted as unconfirmed. A row with no ``scores`` field at
  all confirms nothing (it is not taken for "none applied").
- The end mark never moves backwards (a ``--since`` run widens its own window only), and a sweep
  cancelled at shutdown records how far it got: the shutdown never waits for a sweep.
- Each sweep is one log line (its window and counts) and moves the ``reconcile`` metrics; a
  sweep with nothing to list yet (the store is younger than the settle time) logs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook import metrics
from webhook.helicone import SCORING_WINDOW, id_problem
from webhook.logged import (
    HeliconeRequests,
    NoRoom,
    QueryFailed,
    RequestRow,
    Spending,
    bodies,
    iso,
    pages,
    to_payload,
)
from webhook.logs import event
from webhook.sample import in_sample
from webhook.store import PostBudget, Store, StoreError, SweepLease

__all__ = ["Policy", "Sweeper", "Tally", "landed_names"]

log = logging.getLogger("webhook.reconcile")

PAGE_SIZE = 1000  # jawn's largest page
BODY_FETCHES = 8  # signed bodies fetched at once
BOOL_SUFFIX = "-hcone-bool"
END_TIMEOUT = 10.0  # seconds to record where a sweep ended, even at shutdown
HOLD_FAILED_FOR = 3600.0  # a request whose bodies fail holds the end mark this long at most


@dataclass(frozen=True, slots=True)
class Policy:
    """The sweep's settings (``SCORER_RECONCILE_*``)."""

    interval: float
    settle: float = 120.0
    properties: Mapping[str, str] = field(default_factory=dict)
    sample: float = 100.0
    confirm_after: float = 900.0
    retention: float = 0.0  # SCORER_RETENTION_DAYS in seconds; 0: delivered ones are kept

    @property
    def lookback(self) -> float:
        return self.confirm_after + self.interval

    @property
    def lease(self) -> float:
        return max(3 * self.interval, 60.0)

    def settled(self, row: RequestRow, now: float) -> bool:
        """Old enough that its webhook, if any, has arrived: SETTLE after the call *ended*
        (Helicone logs it with the time it was made, and sends the webhook once it is done)."""
        created = row.created
        took = (row.delay_ms or 0) / 1000
        return created is None or created + took + self.settle <= now

    def considers(self, row: RequestRow) -> bool:
        """Within the webhook's property filters and sample."""
        props = row.request_properties
        if any(props.get(k) != v for k, v in self.properties.items()):
            return False
        return in_sample(row.request_id, self.sample)


@dataclass(slots=True)
class Tally:
    """What one sweep found. ``reached``: created_at (epoch s) of the last row fully handled."""

    since: float
    until: float
    listed: int = 0
    missing: int = 0
    reconciled: int = 0
    failed: int = 0
    unconfirmed: int = 0
    reached: float | None = None
    held_back: float | None = None  # created_at of the oldest row whose bodies failed
    stopped: str | None = None  # why it ended before ``until``; None: it got there
    errors: list[str] = field(default_factory=list)  # the first few bodies that failed
    ended: float | None = None  # when the sweep ended (epoch s)

    def summary(self) -> str:
        return (
            f"window {_when(self.since)} to {_when(self.until)}: listed {self.listed},"
            f" missing {self.missing}, reconciled {self.reconciled}, failed {self.failed},"
            f" unconfirmed {self.unconfirmed}"
        )


def _when(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


def landed_names(scores: Mapping[str, Any]) -> frozenset[str]:
    """The score names Helicone shows applied (a boolean's ``-hcone-bool`` suffix taken off)."""
    return frozenset(name.removesuffix(BOOL_SUFFIX) for name in scores)


class Sweeper:
    """Runs sweeps: one on demand (:meth:`sweep`), or every interval in the background."""

    def __init__(
        self, store: Store, client: HeliconeRequests, budget: PostBudget, policy: Policy
    ) -> None:
        self.store, self.client, self.budget, self.policy = store, client, budget, policy
        self._task: asyncio.Task[None] | None = None
        self.last: Tally | None = None  # this process's last sweep, for the status page

    # -- the background task ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="reconcile")

    async def stop(self) -> None:
        """Cancel the sweep wherever it is; it records how far it got."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _forever(self) -> None:
        first = True
        while True:
            try:
                tally = await self.sweep(skip_recent=not first)
            except StoreError as exc:
                log.warning("reconciliation sweep: the store failed: %s; trying again", exc)
            except Exception:
                log.exception("reconciliation sweep failed; trying again")
            else:
                first = first and tally is None
            await asyncio.sleep(self.policy.interval)

    # -- one sweep ----------------------------------------------------------------------------

    def window(
        self, lease: SweepLease, now: float, since: float | None = None
    ) -> tuple[float, float]:
        """``[start, end)`` in epoch seconds; ``since`` widens the start (never past 30 days)."""
        start = lease.created if lease.since is None else lease.since - self.policy.lookback
        start = max(start, lease.created)
        if since is not None:
            start = min(start, since)
        # Never past Helicone's scoring window; nor past the retention, whose delivered
        # webhooks the store has forgotten and would queue again.
        oldest = now - SCORING_WINDOW
        if self.policy.retention > 0:
            oldest = max(oldest, now - self.policy.retention)
        return max(start, oldest), now - self.policy.settle

    async def sweep(self, *, since: float | None = None, skip_recent: bool = False) -> Tally | None:
        """One sweep, if this process gets the sweep lease (None when another holds it, or, with
        ``skip_recent``, when another swept less than half an interval ago)."""
        lease = await self._claim()
        if lease is None:
            return None
        deadline = time.monotonic() + self.policy.lease * 0.75
        now = time.time()
        recent = lease.since is not None and now - self.policy.settle - lease.since < (
            self.policy.interval / 2
        )
        if skip_recent and recent:
            await self.store.end_sweep(lease, None)
            return None
        start, until = self.window(lease, now, since)
        tally = Tally(start, until)
        try:
            if start < until:
                await self._list(tally, deadline)
        except NoRoom:
            tally.stopped = "no room in the API budget"
        except QueryFailed as exc:
            tally.stopped = f"the request query failed: {exc.answer.error or 'no answer'}"
            if exc.answer.status is not None:
                tally.stopped += f" ({exc.answer.status})"
        except asyncio.CancelledError:
            tally.stopped = "cancelled"
            raise
        except BaseException as exc:
            tally.stopped = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            tally.ended = time.time()
            self.last = tally
            await self._end(lease, tally)
        return tally

    async def _claim(self) -> SweepLease | None:
        """The sweep lease; one taken as a shutdown cancels the claim is given back at once,
        not left to run out (a restart could not sweep until then)."""
        claim = asyncio.ensure_future(self.store.claim_sweep(self.policy.lease))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                lease = await asyncio.wait_for(claim, END_TIMEOUT)
                if lease is not None:
                    await asyncio.wait_for(self.store.end_sweep(lease, None), END_TIMEOUT)
            raise

    async def _list(self, tally: Tally, deadline: float) -> None:
        since = datetime.fromtimestamp(tally.since, UTC)
        until = datetime.fromtimestamp(tally.until, UTC)
        spending = Spending(self.budget, "query")
        listing = pages(
            self.client, since, until, page_size=PAGE_SIZE, retries=0, spending=spending
        )
        async with contextlib.aclosing(listing):
            async for page in listing:
                await self._page(page, tally)
                if (at := page[-1].created) is not None:
                    tally.reached = at
                if time.monotonic() > deadline:
                    tally.stopped = "its lease is ending"
                    return

    async def _page(self, page: list[RequestRow], tally: Tally) -> None:
        tally.listed += len(page)
        unseen = await self.store.unseen([row.request_id for row in page])
        now = time.time()
        missing = [
            row
            for row in page
            if row.request_id in unseen
            and self.policy.considers(row)
            and self.policy.settled(row, now)  # if not, the next sweep's look-back has it
        ]
        tally.missing += len(missing)
        gate = asyncio.Semaphore(BODY_FETCHES)

        async def queue(row: RequestRow) -> None:
            async with gate:
                await self._queue(row, tally)

        await asyncio.gather(*(queue(row) for row in missing))
        # Whatever the store has was posted by us, filters or not: confirm it landed.
        landed = {
            row.request_id: landed_names(row.scores)
            for row in page
            if row.request_id not in unseen and row.scores is not None
        }
        if landed:
            again = await self.store.confirm(landed, time.time() - self.policy.confirm_after)
            tally.unconfirmed += len(again)
            for rid in again:
                event(
                    log,
                    "scores not shown by Helicone: posting them again",
                    level=logging.WARNING,
                    request_id=rid,
                    outcome="unconfirmed",
                )

    async def _queue(self, row: RequestRow, tally: Tally) -> None:
        rid = row.request_id
        problem = id_problem(rid)
        got = await bodies(self.client, row) if problem is None else problem
        if isinstance(got, str):
            tally.failed += 1
            created = row.created
            if created is not None and (tally.held_back is None or created < tally.held_back):
                tally.held_back = created
            if len(tally.errors) < 3:
                tally.errors.append(f"{rid!r}: {got}")
            event(
                log,
                f"missed request not queued: {got}",
                level=logging.WARNING,
                request_id=rid,
                outcome="reconcile_failed",
            )
            return
        body = orjson.dumps(to_payload(row, *got))
        logged = row.created
        if await self.store.add(rid, body, origin="reconciled", logged_at=logged):
            tally.reconciled += 1
            event(log, "missed request queued", request_id=rid, outcome="reconciled")

    async def _end(self, lease: SweepLease, tally: Tally) -> None:
        """Record the end mark (never backwards) and free the lease; count and log the sweep."""
        mark = tally.until if tally.stopped is None and tally.since < tally.until else tally.reached
        if (
            mark is not None
            and tally.stopped is None
            and tally.held_back is not None
            and tally.held_back > time.time() - HOLD_FAILED_FOR
        ):
            mark = min(mark, tally.held_back)  # its bodies are tried again by the next sweeps
        if mark is not None and lease.since is not None and mark <= lease.since:
            mark = None
        try:
            held = await asyncio.wait_for(self.store.end_sweep(lease, mark), END_TIMEOUT)
        except Exception as exc:
            log.warning("could not record where the sweep ended: %s", exc)
        else:
            if not held:
                log.warning("the sweep's lease ran out before it ended; its end is not recorded")
        metrics.RECONCILE_LISTED.inc(tally.listed)
        metrics.RECONCILE_MISSING.inc(tally.missing)
        metrics.RECONCILE_RECONCILED.inc(tally.reconciled)
        metrics.RECONCILE_FAILED.inc(tally.failed)
        metrics.RECONCILE_UNCONFIRMED.inc(tally.unconfirmed)
        line = f"reconcile: {tally.summary()}"
        if tally.stopped is None:
            metrics.RECONCILE_LAST_COMPLETED.set(time.time())
            if tally.since >= tally.until:
                return  # nothing to list yet (a store younger than the settle time): no line
        else:
            at = _when(tally.reached) if tally.reached is not None else "its start"
            line += f"; stopped early at {at} ({tally.stopped}): the next sweep goes on from there"
        event(log, line, level=logging.INFO if tally.stopped is None else logging.WARNING)
