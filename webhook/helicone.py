"""A typed client for Helicone's REST API: the one HTTP path to Helicone.

It never raises for HTTP or network failures: every call returns an :class:`Answer`, and the
caller's policy decides what to retry. See ``../shared/helicone-facts.md`` for the API's
behaviour (201 on success, ints only, 200 requests per minute, 429 with ``Retry-After``).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
import orjson

__all__ = ["Answer", "Helicone", "retry_after_seconds"]

USER_AGENT = "helicone-scorer/0.1"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the API said. ``status`` is None when no answer came (network error or timeout)."""

    status: int | None
    data: Any = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_after_seconds(headers: httpx2.Headers, now: float | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or HTTP date) or ``RateLimit-Reset``."""
    for name in ("retry-after", "ratelimit-reset"):
        value = headers.get(name)
        if not value:
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            continue
        return max(0.0, when - (time.time() if now is None else now))
    return None


class Helicone:
    """One pooled async client for the whole process."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx2.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout,
            limits=httpx2.Limits(max_connections=64, max_keepalive_connections=16),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_scores(self, request_id: str, scores: dict[str, int]) -> Answer:
        return await self._post(
            f"/v1/request/{quote(request_id, safe='')}/score", {"scores": scores}
        )

    async def post_feedback(self, request_id: str, rating: bool) -> Answer:
        return await self._post(
            f"/v1/request/{quote(request_id, safe='')}/feedback", {"rating": rating}
        )

    async def _post(self, path: str, body: dict[str, Any]) -> Answer:
        try:
            response = await self._client.post(path, content=orjson.dumps(body))
        except httpx2.HTTPError as exc:
            return Answer(None, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        data: Any = None
        error: str | None = None
        try:
            parsed = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            parsed = None
            error = response.text[:200] or None
        if isinstance(parsed, dict):
            data = parsed.get("data")
            err = parsed.get("error")
            error = None if err is None else (err if isinstance(err, str) else str(err))
        if not (200 <= response.status_code < 300) and error is None:
            error = response.reason_phrase or f"HTTP {response.status_code}"
        return Answer(
            response.status_code,
            data=data,
            error=error,
            retry_after=retry_after_seconds(response.headers),
        )
