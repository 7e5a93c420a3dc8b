"""Helicone's REST API, the query half: score statistics, logged requests, their bodies.

Only the offline tools (``evals``, ``backfill``) query Helicone; the server only posts. So the
queries live here, on :class:`HeliconeQuery`, a :class:`webhook.helicone.Helicone` that can
also read, and the server never imports this module (nor pydantic's models of the answers).

The queries return typed data (:mod:`webhook.offline.types`). An answer whose body is not what
the API promises counts as no usable answer: ``status`` None, with the reason in ``error``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
from pydantic import TypeAdapter, ValidationError

from scorers.fetch import FetchError, fetch_json
from webhook.helicone import USER_AGENT, Answer, Helicone
from webhook.offline.types import Eval, RequestRow, SignedBody, iso

__all__ = ["MAX_SIGNED_BODY", "HeliconeQuery"]

MAX_SIGNED_BODY = 64 * 1024 * 1024  # decoded bytes; a larger body is refused

_EVALS = TypeAdapter(list[Eval])
_ROWS = TypeAdapter(list[RequestRow])
_SIGNED = TypeAdapter(SignedBody)


class HeliconeQuery(Helicone):
    """The API client with the queries the offline tools need."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        super().__init__(base_url, api_key, timeout=timeout)
        self._bodies: httpx2.AsyncClient | None = None  # no API key: signed URLs carry their own

    async def aclose(self) -> None:
        await super().aclose()
        if self._bodies is not None:
            await self._bodies.aclose()

    async def evals_query(
        self,
        start: datetime,
        end: datetime,
        *,
        filter: Any = "all",
        offset: int | None = None,
        limit: int | None = None,
    ) -> Answer[list[Eval]]:
        """``POST /v1/evals/query``: per score name, count, min, max, average, and hourly series.

        Shape from Helicone's docs (shared/seeds/004) and jawn's ``EvalController`` /
        ``EvalManager.getEvals`` (valhalla/jawn/src/managers/eval/EvalManager.ts).
        """
        body: dict[str, Any] = {
            "filter": filter,
            "timeFilter": {"start": iso(start), "end": iso(end)},
            "timeZoneDifference": 0,
        }
        if offset is not None:
            body["offset"] = offset
        if limit is not None:
            body["limit"] = limit
        return _typed(await self.post("/v1/evals/query", body), _EVALS)

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
        return _typed(await self.post("/v1/request/query", body), _ROWS)

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


def _typed(answer: Answer, adapter: TypeAdapter[Any]) -> Answer[Any]:
    if not answer.ok:
        return answer
    try:
        return Answer(answer.status, data=adapter.validate_python(answer.data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "data"
        return Answer(None, error=f"unexpected answer from Helicone: {where}: {first['msg']}")
