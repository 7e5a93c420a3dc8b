"""Backfill: score past traffic with the enabled scorers, and queue the scores for the relay.

Policy:

- Requests are read from ``POST /v1/request/query``, oldest first, ``page_size`` at a time with
  ``offset``, and at most ``limit`` in all. Helicone refuses offsets past 10,000, so a longer
  backfill moves its start to the last ``created_at`` it read and starts counting again, skipping
  the requests it already read at that instant.
- A query answered 429, 5xx or not at all is tried again up to ``retries`` times, after
  ``Retry-After`` or else ``backoff·2ⁿ`` seconds (at most a minute); then, or on any other
  failure, :class:`QueryFailed` stops the backfill.
- Each request becomes a webhook-shaped payload, so the same scorers run as on live traffic. That
  query answers with placeholder bodies and a ``signed_body_url``: the bodies are fetched from it.
  A request whose bodies cannot be had is counted and skipped, never scored on a placeholder.
- Scores go to the store with :meth:`Store.enqueue_scores`; the relay (of a running server, or the
  next ``serve``) posts them under the same retries and rate limit as live scores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook.helicone import Answer, id_problem
from webhook.offline.query import HeliconeQuery
from webhook.offline.types import RequestRow, iso
from webhook.score import Scoring
from webhook.store import Store

__all__ = ["QueryFailed", "Tally", "backfill", "created_filter", "pages", "to_payload"]

MAX_OFFSET = 10_000  # jawn's getRequests: "unsupport offset value" past this
PLACEHOLDER_KEY = "helicone_message"  # jawn's stand-in body: "fetching body from signed_url..."


class QueryFailed(Exception):
    """The request query failed for good; ``answer`` says how."""

    def __init__(self, answer: Answer, offset: int) -> None:
        super().__init__(answer.error or "no answer")
        self.answer = answer
        self.offset = offset


@dataclass(slots=True)
class Tally:
    read: int = 0
    queued: int = 0
    skipped: int = 0  # already queued, or these scores were already posted
    no_scores: int = 0
    no_body: int = 0
    body_errors: list[str] = field(default_factory=list)


def created_filter(since: datetime | str, until: datetime | str) -> dict[str, Any]:
    """``since <= request.created_at < until``, as Helicone's filter tree."""
    start = since if isinstance(since, str) else iso(since)
    end = until if isinstance(until, str) else iso(until)
    return {
        "left": {"request": {"created_at": {"gte": start}}},
        "operator": "and",
        "right": {"request": {"created_at": {"lt": end}}},
    }


def _real(body: Any) -> Any:
    """None for a missing body or jawn's placeholder."""
    if isinstance(body, dict) and set(body) == {PLACEHOLDER_KEY}:
        return None
    return body


def to_payload(row: RequestRow, request_body: Any, response_body: Any) -> dict[str, Any]:
    """The webhook payload Helicone would have sent for this request (absent fields left out)."""
    payload: dict[str, Any] = {"request_id": row.request_id}
    if request_body is not None:
        payload["request_body"] = request_body
    if response_body is not None:
        payload["response_body"] = response_body
    if row.request_user_id:
        payload["user_id"] = row.request_user_id
    model = row.model_override or row.request_model or row.response_model
    if model:
        payload["model"] = model
    if row.provider:
        payload["provider"] = row.provider
    cost = row.cost_usd if row.cost_usd is not None else row.cost
    metadata = {
        "cost": cost,
        "promptTokens": row.prompt_tokens,
        "completionTokens": row.completion_tokens,
        "totalTokens": row.total_tokens,
        "latencyMs": row.delay_ms,
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if metadata:
        payload["metadata"] = metadata
    return payload


OnRetry = Callable[[Answer, int, int, float], None]  # (answer, retry number, retries, wait)


def _no_report(answer: Answer, retry: int, retries: int, wait: float) -> None:
    return None


async def _query(
    client: HeliconeQuery,
    filter_: dict[str, Any],
    offset: int,
    limit: int,
    retries: int,
    backoff: float,
    on_retry: OnRetry,
) -> list[RequestRow]:
    for attempt in range(retries + 1):
        answer = await client.request_query(filter_, offset=offset, limit=limit)
        if answer.ok and answer.data is not None:
            return answer.data
        transient = answer.status is None or answer.status == 429 or answer.status >= 500
        if not transient or attempt == retries:
            raise QueryFailed(answer, offset)
        wait = answer.retry_after if answer.retry_after is not None else backoff * 2**attempt
        wait = min(60.0, wait)
        on_retry(answer, attempt + 1, retries, wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def pages(
    client: HeliconeQuery,
    since: datetime,
    until: datetime,
    *,
    limit: int | None = None,
    page_size: int = 100,
    max_offset: int = MAX_OFFSET,
    retries: int = 4,
    backoff: float = 2.0,
    on_retry: OnRetry = _no_report,
) -> AsyncIterator[list[RequestRow]]:
    """Pages of requests created in ``[since, until)``, oldest first, ``limit`` rows at most.
    ``on_retry`` is told of each failed query before the wait for its retry."""
    start, offset, read = iso(since), 0, 0
    tail_at: str | None = None  # created_at of the last row read...
    tail_ids: set[str] = set()  # ...and the ids read at that instant
    skip: set[str] = set()
    while limit is None or read < limit:
        size = page_size if limit is None else min(page_size, limit - read)
        if offset > max_offset:
            if tail_at is None or tail_at == start:
                raise QueryFailed(
                    Answer(None, error=f"more than {max_offset} requests at {start}"), offset
                )
            start, offset, skip = tail_at, 0, set(tail_ids)
        window = created_filter(start, until)
        rows = await _query(client, window, offset, size, retries, backoff, on_retry)
        offset += len(rows)
        fresh = [r for r in rows if r.request_id not in skip]
        for r in fresh:
            if r.request_created_at != tail_at:
                tail_at, tail_ids = r.request_created_at, set()
            tail_ids.add(r.request_id)
        if fresh:
            read += len(fresh)
            yield fresh
        if len(rows) < size:
            return


async def _bodies(client: HeliconeQuery, row: RequestRow) -> tuple[Any, Any] | str:
    """The request and response bodies, or why they cannot be had."""
    request_body, response_body = _real(row.request_body), _real(row.response_body)
    if response_body is not None:
        return request_body, response_body
    if not row.signed_body_url:
        return "no body and no signed_body_url"
    answer = await client.fetch_signed_body(row.signed_body_url)
    if answer.data is None:
        return answer.error or "no body"
    return answer.data.request, answer.data.response


async def backfill(
    client: HeliconeQuery,
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
    """Score every request in the window and queue the scores. Raises :class:`QueryFailed`."""
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)

    async def one(row: RequestRow) -> None:
        async with gate:
            problem = id_problem(row.request_id)
            bodies = await _bodies(client, row) if problem is None else problem
            if isinstance(bodies, str):
                tally.no_body += 1
                if len(tally.body_errors) < 3:
                    tally.body_errors.append(f"{row.request_id!r}: {bodies}")
            else:
                payload = to_payload(row, *bodies)
                outcome = await scoring.score_payload(row.request_id, payload)
                if not outcome.scores:
                    tally.no_scores += 1
                elif await store.enqueue_scores(row.request_id, outcome.scores):
                    tally.queued += 1
                else:
                    tally.skipped += 1
            tally.read += 1
            on_row(tally)

    async for page in pages(client, since, until, limit=limit, **paging):
        await asyncio.gather(*(one(row) for row in page))
    return tally
