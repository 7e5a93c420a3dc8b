"""Backfill: score past traffic with the enabled scorers, and queue the scores for the relay.

Policy:

- Requests are listed with :func:`webhook.logged.pages` (oldest first, ``page_size`` at a time,
  at most ``limit`` in all; its paging and retries are described there); a query that fails
  for good (:class:`webhook.logged.QueryFailed`) stops the backfill.
- Each request becomes a webhook-shaped payload, so the same scorers run as on live traffic,
  with its bodies fetched from its signed URL (:func:`webhook.logged.bodies`). A request whose
  bodies cannot be had is counted and skipped, never scored on a placeholder.
- Requests created more than 30 days ago are counted and left out: Helicone would drop their
  scores (:data:`webhook.helicone.SCORING_WINDOW`).
- Scores go to the store with :meth:`Store.enqueue_scores`; the relay (of a running server, or the
  next ``serve``) posts them under the same retries and rate limit as live scores, after live
  and reconciled ones. The queries take their places in the same budget, last of all
  (``Spending(budget, "backfill")``, given by the command): a backfill never delays live scores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook.helicone import SCORING_WINDOW, id_problem
from webhook.logged import HeliconeRequests, RequestRow, bodies, pages, to_payload
from webhook.score import Scoring
from webhook.store import Store

__all__ = ["Tally", "backfill"]


@dataclass(slots=True)
class Tally:
    read: int = 0
    queued: int = 0
    skipped: int = 0  # already queued, or these scores were already posted
    no_scores: int = 0
    no_body: int = 0
    too_old: int = 0  # created before Helicone's 30-day scoring window
    body_errors: list[str] = field(default_factory=list)


async def backfill(
    client: HeliconeRequests,
    store: Store,
    scoring: Scoring,
    since: datetime,
    until: datetime,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    on_row: Callable[[Tally], None] = lambda tally: None,
    **paging: Any,
) -> Tally:
    """Score every request in the window and queue the scores. Raises
    :class:`webhook.logged.QueryFailed`."""
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)

    async def handle(row: RequestRow) -> None:
        created = row.created
        if created is not None and time.time() - created > SCORING_WINDOW:
            tally.too_old += 1
            return
        problem = id_problem(row.request_id)
        got = await bodies(client, row) if problem is None else problem
        if isinstance(got, str):
            tally.no_body += 1
            if len(tally.body_errors) < 3:
                tally.body_errors.append(f"{row.request_id!r}: {got}")
            return
        outcome = await scoring.score_payload(row.request_id, to_payload(row, *got))
        if not outcome.scores:
            tally.no_scores += 1
        elif await store.enqueue_scores(row.request_id, outcome.scores, created):
            tally.queued += 1
        else:
            tally.skipped += 1

    async def one(row: RequestRow) -> None:
        async with gate:
            await handle(row)
            tally.read += 1
            on_row(tally)

    async for page in pages(client, since, until, limit=limit, **paging):
        await asyncio.gather(*(one(row) for row in page))
    return tally
