"""Helicone's REST API, the posting half: scores, feedback, the transport, id checks.

It is the one HTTP path to Helicone. It never raises for HTTP or network failures: every call
returns an :class:`Answer`, and the caller's policy decides what to retry. See
``../shared/helicone-facts.md`` for the API's behaviour (201 on success, ints only, 200 requests
per minute, 429 with ``Retry-After``). Listing logged requests and fetching their bodies is
:mod:`webhook.logged`'s (the sweep and ``backfill``); the score statistics, which only the offline
tools read, are :mod:`webhook.offline.query`'s.
"""

from __future__ import annotations

import email.utils
import re
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic
from urllib.parse import quote, urlsplit

import orjson
from typing_extensions import TypeVar

if TYPE_CHECKING:
    import aiohttp

    from webhook.store import PostBudget, Slot

__all__ = [
    "SCORING_WINDOW",
    "Answer",
    "Heard",
    "Helicone",
    "id_problem",
    "request_path",
    "retry_after_seconds",
    "spend",
]

USER_AGENT = "helicone-scorer/0.1"

SCORING_WINDOW = 30 * 86400.0
"""Helicone applies scores only to requests created in the last 30 days (older ones are dropped
after a success answer): nothing older is posted, listed or backfilled."""

T = TypeVar("T", default=Any)

# Characters an id may not hold: path separators, and control characters (C0, DEL, C1 and the
# Unicode line and paragraph separators), which could also forge log lines.
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """What the API said. ``status`` is None when no usable answer came (network error, timeout,
    or a body that is not what the API promises)."""

    status: int | None
    data: T | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
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


async def spend(
    budget: PostBudget, slot: Slot, send: Callable[[], Awaitable[Answer[T]]]
) -> Answer[T]:
    """Make one call on a place taken in the shared budget (every call to the API, posts and
    queries alike): the place ends when the call does, and a 429 pauses every call of every
    process, for its ``Retry-After`` (else a minute)."""
    try:
        answer = await send()
        if answer.status == 429:  # first: no other call of this process starts meanwhile
            await budget.pause(answer.retry_after if answer.retry_after is not None else 60.0)
    finally:
        await budget.spent(slot)
    return answer


def id_problem(request_id: str) -> str | None:
    """Why ``request_id`` may not name a request in an API path, or None when it may.

    The id becomes one path segment of ``/v1/request/{id}/score``. ``.`` and ``..`` would be
    resolved by the HTTP client (``..`` posts to ``/v1/score``, with the API key), and ``/`` or
    ``\\`` would make more segments, so they are refused; so are control characters. Every way an
    id reaches the API (webhooks, backfill, the CLI) is checked by this one function.
    """
    if request_id in (".", ".."):
        return "request_id may not be . or .."
    if _UNSAFE_ID.search(request_id):
        return "request_id may not hold /, \\ or control characters"
    return None


def request_path(request_id: str, action: str) -> str:
    """``/v1/request/{id}/{action}``, the id percent-encoded as one segment that no client or
    server can resolve: everything outside the unreserved characters is encoded, and an id
    :func:`id_problem` refuses raises ``ValueError``."""
    problem = id_problem(request_id)
    if problem is not None:
        raise ValueError(problem)
    return f"/v1/request/{quote(request_id, safe='')}/{action}"


@dataclass(frozen=True, slots=True)
class Said:
    """One answer, as the status page shows it: never a body, a key or a request id."""

    at: float  # epoch s
    call: str  # "score", "feedback" or "query"
    status: int | None  # None: no answer
    error: str | None


class Heard:
    """What the API said lately to this process, for the status page: the last answer, the
    last success, the last *trouble*, and the 429s of the last hour (at most ``keep``).

    Trouble is an answer that says the API itself is unwell or refuses us, whichever webhook
    asked: no answer, 401 or 403 (the key), 408, or a 5xx. A 429 is the rate limit, counted
    apart (:meth:`throttled`); another 4xx is about one webhook's call (a dead letter). A
    success after trouble counts a recovery (:attr:`recoveries`): delivery then makes the
    retries waiting since due at once.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self.last: Said | None = None
        self.last_ok: Said | None = None
        self.last_trouble: Said | None = None
        self.trouble_since: float | None = None  # the first trouble since the last success
        self.recoveries = 0  # successes that ended a spell of trouble
        self._throttled: deque[float] = deque(maxlen=keep)

    def note(self, path: str, answer: Answer) -> None:
        call = path.rsplit("/", 1)[-1]
        said = Said(
            time.time(),
            call if call in ("score", "feedback") else "query",
            answer.status,
            None if answer.error is None else answer.error[:200],
        )
        self.last = said
        status = answer.status
        if answer.ok:
            self.last_ok = said
            if self.trouble_since is not None:
                self.recoveries += 1
            self.trouble_since = None
        elif status is None or status in (401, 403, 408) or status >= 500:
            self.last_trouble = said
            if self.trouble_since is None:
                self.trouble_since = said.at
        if status == 429:
            self._throttled.append(said.at)

    @property
    def failing(self) -> bool:
        """Trouble since the last success (or since this process started)."""
        return self.trouble_since is not None

    def throttled(self, within: float = 3600.0) -> list[float]:
        """When the 429s of the last ``within`` seconds came, oldest first."""
        since = time.time() - within
        return [at for at in self._throttled if at >= since]


class Helicone:
    """One pooled async client for the whole process.

    Its transport is aiohttp: posting is the relay's hot path, and on loopback an httpx2 post
    cost about four times the CPU of an aiohttp one (``bench/http_client.py``). Connections are
    kept alive and reused; a call never follows a redirect (the API key would go with it); a
    proxy set in the environment is used, as httpx2 would. The session is made on the first
    call, inside the loop that uses it, and aiohttp is imported only then.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._session: aiohttp.ClientSession | None = None
        self.heard = Heard()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                proxy=_proxy_for(self.base_url),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- scores and feedback --------------------------------------------------------------------

    async def post_scores(self, request_id: str, scores: dict[str, int]) -> Answer:
        return await self._post_to(request_id, "score", {"scores": scores})

    async def post_feedback(self, request_id: str, rating: bool) -> Answer:
        return await self._post_to(request_id, "feedback", {"rating": rating})

    async def _post_to(self, request_id: str, action: str, body: dict[str, Any]) -> Answer:
        """A request's own call. An id no path may carry is never sent: the answer is a 400
        made here (a permanent failure, so the webhook becomes a dead letter at once)."""
        try:
            path = request_path(request_id, action)
        except ValueError as exc:
            return Answer(400, error=f"not sent: {exc}")
        return await self.post(path, body)

    # -- transport ------------------------------------------------------------------------------

    async def post(self, path: str, body: dict[str, Any]) -> Answer:
        """POST JSON to the API; the answer's ``data`` is the body's ``data``, untyped.

        ``path`` is sent exactly as given (already percent-encoded, never normalised)."""
        answer = await self._send(path, body)
        self.heard.note(path, answer)
        return answer

    async def _send(self, path: str, body: dict[str, Any]) -> Answer:
        import aiohttp
        from yarl import URL

        url = URL(self.base_url + path, encoded=True)
        try:
            async with self._open().post(
                url, data=orjson.dumps(body), allow_redirects=False
            ) as response:
                status, reason = response.status, response.reason
                content = await response.read()
                retry_after = retry_after_seconds(response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(None, error=_describe(exc))
        data: Any = None
        error: str | None = None
        try:
            parsed = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            parsed = None
            error = content[:200].decode(errors="replace") or None
        if isinstance(parsed, dict):
            data = parsed.get("data")
            err = parsed.get("error")
            error = None if err is None else (err if isinstance(err, str) else str(err))
        if not (200 <= status < 300) and error is None:
            error = reason or f"HTTP {status}"
        return Answer(status, data=data, error=error, retry_after=retry_after)


def _proxy_for(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY`` and ``NO_PROXY`` give for ``url``, read once: aiohttp's
    ``trust_env`` reads them again on every call, which doubled a post's CPU."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # aiohttp speaks to HTTP proxies only (a socks5:// one is not for it: none, as before).
    return proxy if proxy and urlsplit(proxy).scheme in ("http", "https") else None


def _describe(exc: BaseException) -> str:
    """One line for a call that got no answer, named as before the transport was aiohttp
    (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``), for logs and dead letters."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return "ReadTimeout: no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"ConnectError: cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return f"RemoteProtocolError: {exc}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
