"""Helicone's logged requests: list them by time, fetch their bodies, rebuild the webhook payload.

The reconciliation sweep (:mod:`webhook.reconcile`, in the server) and ``backfill`` (offline) both
read what Helicone logged, so that reading is here, once, on the server's side; the offline tools
import it. The score statistics (``evals``) stay offline (:mod:`webhook.offline.query`).

Policy:

- ``POST /v1/request/query`` is paged oldest first. jawn refuses an ``offset`` past 10,000, so a
  longer listing moves its start to the last ``created_at`` it read and starts counting again,
  skipping the requests it already read at that instant (:func:`pages`).
- A query answered 429, 5xx or not at all is tried again up to ``retries`` times, after
  ``Retry-After`` or else ``backoff·2ⁿ`` seconds (at most a minute); then, or on any other
  failure, :class:`QueryFailed`. With a :class:`Spending`, each query first takes a place in the
  shared API budget (none free: :class:`NoRoom`, without waiting), and a 429 pauses every call.
- The rows carry placeholder bodies; the real ones are behind ``signed_body_url``, fetched only
  from a trusted host (https, or the API's own origin) without the API key, and refused past
  :data:`MAX_SIGNED_BODY` bytes. A request whose bodies cannot be had is never scored on a
  placeholder: the caller is told why.
- Helicone's answers are validated leniently (its rows come from Postgres or ClickHouse, where
  64-bit numbers may arrive as strings, and its evals are built in JavaScript, where Infinity
  and NaN become null): an answer whose body is not what the API promises counts as no usable
  answer, ``status`` None with the reason in ``error``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx2
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from scorers.fetch import FetchError, fetch_json
from webhook.helicone import USER_AGENT, Answer, Helicone, spend
from webhook.store import PostBudget, Priority

__all__ = [
    "MAX_OFFSET",
    "MAX_SIGNED_BODY",
    "PLACEHOLDER_KEY",
    "HeliconeRequests",
    "Lenient",
    "NoRoom",
    "Number",
    "QueryFailed",
    "RequestRow",
    "SignedBody",
    "Spending",
    "Text",
    "bodies",
    "created_filter",
    "instant",
    "iso",
    "pages",
    "real_body",
    "to_payload",
    "typed",
]

MAX_SIGNED_BODY = 64 * 1024 * 1024  # decoded bytes; a larger body is refused
MAX_OFFSET = 10_000  # jawn's getRequests: "unsupport offset value" past this
PLACEHOLDER_KEY = "helicone_message"  # jawn's stand-in body: "fetching body from signed_url..."


def iso(when: datetime) -> str:
    """UTC with milliseconds and ``Z``, as JavaScript's ``toISOString`` writes it."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def instant(text: str) -> datetime | None:
    """An ISO time Helicone wrote (UTC unless it says otherwise), or None if it is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


# -- Helicone's shapes, validated leniently --------------------------------------------------


def _number(value: object) -> int | float | None:
    """A finite number (an int stays an int), or None for null, NaN, infinities and the rest."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _properties(value: object) -> dict[str, str]:
    """Custom properties are strings; anything else in their place is not one."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _mapping(value: object) -> dict[str, Any]:
    return {k: v for k, v in value.items() if isinstance(k, str)} if isinstance(value, dict) else {}


def _mapping_or_none(value: object) -> dict[str, Any] | None:
    return None if value is None else _mapping(value)


Number = Annotated[int | float | None, BeforeValidator(_number)]
Text = Annotated[str | None, BeforeValidator(_text)]


class Lenient(BaseModel):
    """A shape of Helicone's answers: unknown fields ignored, frozen."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class RequestRow(Lenient):
    """One logged request, as ``/v1/request/query`` lists it (the fields scoring and the sweep
    need)."""

    request_id: str
    request_created_at: Text = None
    request_body: Any = None
    response_body: Any = None
    signed_body_url: Text = None
    request_model: Text = None
    response_model: Text = None
    model_override: Text = None
    provider: Text = None
    request_user_id: Text = None
    response_status: Number = None
    delay_ms: Number = None
    prompt_tokens: Number = None
    completion_tokens: Number = None
    total_tokens: Number = None
    cost_usd: Number = Field(default=None, alias="costUSD")
    cost: Number = None
    request_properties: Annotated[dict[str, str], BeforeValidator(_properties)] = Field(
        default_factory=dict
    )
    # None when the row says nothing of scores (not even {}): nothing can be confirmed from it.
    scores: Annotated[dict[str, Any] | None, BeforeValidator(_mapping_or_none)] = None

    @property
    def created(self) -> float | None:
        """When Helicone logged it, in epoch seconds (None when the row does not say)."""
        when = instant(self.request_created_at) if self.request_created_at else None
        return None if when is None else when.timestamp()


class SignedBody(Lenient):
    """What a signed body URL holds."""

    request: Any = None
    response: Any = None


_ROWS = TypeAdapter(list[RequestRow])
_SIGNED = TypeAdapter(SignedBody)


def typed(answer: Answer, adapter: TypeAdapter[Any]) -> Answer[Any]:
    """The answer with its data validated by ``adapter``; not usable (status None) if it fails."""
    if not answer.ok:
        return answer
    try:
        return Answer(answer.status, data=adapter.validate_python(answer.data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "data"
        return Answer(None, error=f"unexpected answer from Helicone: {where}: {first['msg']}")


# -- the client -------------------------------------------------------------------------------


class HeliconeRequests(Helicone):
    """The API client that can also list logged requests and fetch their bodies."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, api_key, timeout=timeout)
        self._bodies: httpx2.AsyncClient | None = None  # no API key: signed URLs carry their own

    async def aclose(self) -> None:
        await super().aclose()
        if self._bodies is not None:
            await self._bodies.aclose()

    async def request_query(
        self,
        filter: Any = "all",
        *,
        offset: int = 0,
        limit: int = 100,
        sort: dict[str, str] | None = None,
    ) -> Answer[list[RequestRow]]:
        """``POST /v1/request/query``: logged requests, one page.

        Body and answer from jawn's ``RequestController.getRequests`` (valhalla/jawn/src/
        controllers/public/requestController.ts), which serves it from Postgres through
        ``getRequests`` in valhalla/jawn/src/lib/stores/request/request.ts: ``offset`` at most
        10,000, ``limit`` at most 1,000 (the docs say 100), and bodies replaced by a placeholder,
        with the real ones behind ``signed_body_url``.
        """
        body = {
            "filter": filter,
            "offset": offset,
            "limit": limit,
            "sort": sort or {"created_at": "asc"},
            "isCached": False,
        }
        return typed(await self.post("/v1/request/query", body), _ROWS)

    def trusts(self, url: str) -> bool:
        """Signed URLs are fetched over https, or from the API's own origin (a local API)."""
        parts, base = urlsplit(url), urlsplit(self.base_url)
        if parts.scheme == "https" and parts.netloc:
            return True
        return (parts.scheme, parts.netloc) == (base.scheme, base.netloc)

    async def fetch_signed_body(self, url: str) -> Answer[SignedBody]:
        """GET a signed body URL: JSON ``{"request": ..., "response": ...}``, maybe gzipped.

        The object Helicone stores (the webhook's ``request_response_url`` and the query API's
        ``signed_body_url`` point at the same kind) is gzip-encoded JSON. It is fetched without
        the API key, and refused past :data:`MAX_SIGNED_BODY` bytes.
        """
        if not self.trusts(url):
            host = urlsplit(url).netloc or "?"
            return Answer(None, error=f"not fetching a body URL from an untrusted host ({host})")
        if self._bodies is None:
            self._bodies = httpx2.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                timeout=self.timeout,
                follow_redirects=False,
            )
        try:
            data = await fetch_json(
                url, seconds=self.timeout, max_bytes=MAX_SIGNED_BODY, client=self._bodies
            )
            return Answer(200, data=_SIGNED.validate_python(data))
        except FetchError as exc:
            return Answer(exc.status, error=f"body URL {exc}")
        except ValidationError as exc:
            return Answer(None, error=f"unreadable body: {type(exc).__name__}")


# -- listing ----------------------------------------------------------------------------------


class QueryFailed(Exception):
    """The request query failed for good; ``answer`` says how."""

    def __init__(self, answer: Answer, offset: int) -> None:
        super().__init__(answer.error or "no answer")
        self.answer = answer
        self.offset = offset


class NoRoom(QueryFailed):
    """No place in the API budget for the next query: nothing was sent."""


@dataclass(frozen=True, slots=True)
class Spending:
    """Each query takes a place in the shared API budget, at ``priority``. With ``patience``, a
    query waits up to that many seconds for one (``backfill``, a command someone waits on);
    without, none free stops the listing at once (the sweep resumes at its next turn)."""

    budget: PostBudget
    priority: Priority
    patience: float = 0.0


def created_filter(since: datetime | str, until: datetime | str) -> dict[str, Any]:
    """``since <= request.created_at < until``, as Helicone's filter tree."""
    start = since if isinstance(since, str) else iso(since)
    end = until if isinstance(until, str) else iso(until)
    return {
        "left": {"request": {"created_at": {"gte": start}}},
        "operator": "and",
        "right": {"request": {"created_at": {"lt": end}}},
    }


OnRetry = Callable[[Answer, int, int, float], None]  # (answer, retry number, retries, wait)


def _no_report(answer: Answer, retry: int, retries: int, wait: float) -> None:
    return None


async def _ask(
    client: HeliconeRequests,
    filter_: dict[str, Any],
    offset: int,
    limit: int,
    spending: Spending | None,
) -> Answer[list[RequestRow]]:
    if spending is None:
        return await client.request_query(filter_, offset=offset, limit=limit)
    budget, priority = spending.budget, spending.priority
    deadline = time.monotonic() + spending.patience
    slot = await budget.take(priority)
    while slot is None and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, max(0.05, await budget.wait_time(priority))))
        slot = await budget.take(priority)
    if slot is None:
        raise NoRoom(Answer(None, error="no room in the API budget"), offset)
    return await spend(
        budget, slot, lambda: client.request_query(filter_, offset=offset, limit=limit)
    )


async def _query(
    client: HeliconeRequests,
    filter_: dict[str, Any],
    offset: int,
    limit: int,
    retries: int,
    backoff: float,
    on_retry: OnRetry,
    spending: Spending | None,
) -> list[RequestRow]:
    for attempt in range(retries + 1):
        answer = await _ask(client, filter_, offset, limit, spending)
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
    client: HeliconeRequests,
    since: datetime,
    until: datetime,
    *,
    limit: int | None = None,
    page_size: int = 100,
    max_offset: int = MAX_OFFSET,
    retries: int = 4,
    backoff: float = 2.0,
    on_retry: OnRetry = _no_report,
    spending: Spending | None = None,
) -> AsyncGenerator[list[RequestRow]]:
    """Pages of requests created in ``[since, until)``, oldest first, ``limit`` rows at most.
    ``on_retry`` is told of each failed query before the wait for its retry. Raises
    :class:`QueryFailed` (:class:`NoRoom` when ``spending`` finds no place in the budget)."""
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
        rows = await _query(client, window, offset, size, retries, backoff, on_retry, spending)
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


# -- bodies and payloads ------------------------------------------------------------------------


def real_body(body: Any) -> Any:
    """None for a missing body or jawn's placeholder."""
    if isinstance(body, dict) and set(body) == {PLACEHOLDER_KEY}:
        return None
    return body


async def bodies(client: HeliconeRequests, row: RequestRow) -> tuple[Any, Any] | str:
    """The request and response bodies, or why they cannot be had."""
    request_body, response_body = real_body(row.request_body), real_body(row.response_body)
    if response_body is not None:
        return request_body, response_body
    if not row.signed_body_url:
        return "no body and no signed_body_url"
    answer = await client.fetch_signed_body(row.signed_body_url)
    if answer.data is None:
        return answer.error or "no body"
    return answer.data.request, answer.data.response


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
