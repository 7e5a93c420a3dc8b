"""Fetch the full bodies of a webhook whose bodies were too large to send.

When a body is over 10 KB, Helicone sends the string "Body too large for webhook, please fetch
the full request and response from Helicone" instead, and the payload's
``request_response_url`` is an S3 presigned GET, valid 30 minutes after signing, of a
gzip-encoded JSON object ``{"request": ..., "response": ...}``.

Policy:

- The URL comes from the payload, so it is fetched only when its scheme, host and port equal
  one of the allowed origins (``SCORER_BODY_URL_ALLOW``). Hosts are compared whole, never as
  string prefixes: ``https://s3.amazonaws.com`` does not allow ``https://s3.amazonaws.com.evil``.
  Redirects are not followed.
- The download is bounded (compressed and decompressed), and has a timeout.
- Any failure returns the payload unchanged: the scorers then see no text for that side, and
  the metadata scorers still score. Nothing here raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx2
import orjson

from scorers.extract import is_too_large

__all__ = [
    "HELICONE_BODY_HOSTS",
    "FetchError",
    "Origin",
    "allowed",
    "fetch_json",
    "fill_bodies",
    "parse_origins",
]

log = logging.getLogger("scorers.fetch")

# Helicone's request/response storage: the bucket "request-response-storage" in us-west-2
# (US) and eu-west-1 (EU), signed path-style by jawn's S3 client, or virtual-hosted style.
HELICONE_BODY_HOSTS = (
    "https://s3.us-west-2.amazonaws.com",
    "https://request-response-storage.s3.us-west-2.amazonaws.com",
    "https://s3.eu-west-1.amazonaws.com",
    "https://request-response-storage.s3.eu-west-1.amazonaws.com",
)

_DEFAULT_PORTS = {"https": 443, "http": 80}
_CHUNK = 64 * 1024


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _origin(url: str) -> Origin | None:
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    return Origin(scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS[scheme])


def parse_origins(values: Iterable[str]) -> tuple[Origin, ...]:
    """Parse ``scheme://host[:port]`` entries; raises ValueError naming a bad one."""
    origins = []
    for value in values:
        origin = _origin(value)
        rest = urlsplit(value.strip())
        if origin is None or rest.path not in ("", "/") or rest.query or rest.fragment:
            raise ValueError(f"{value!r} is not scheme://host[:port] (http or https)")
        origins.append(origin)
    return tuple(origins)


def allowed(url: str, origins: Iterable[Origin]) -> bool:
    """True when ``url``'s scheme, host and port are exactly one of ``origins``."""
    origin = _origin(url)
    return origin is not None and origin in set(origins)


_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _ssl
    if _ssl is None:
        _ssl = httpx2.create_ssl_context()
    return _ssl


class FetchError(Exception):
    """A body could not be fetched; ``status`` is the HTTP status when one came back."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def _download(client: httpx2.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            reason = response.reason_phrase or f"HTTP {response.status_code}"
            raise FetchError(f"answered {reason}", response.status_code)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"larger than {max_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, max_bytes: int) -> Any:
    """Gunzip (if gzip) within ``max_bytes``, then parse the JSON."""
    if raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        raw = inflater.decompress(raw, max_bytes + 1)
        if len(raw) > max_bytes or inflater.unconsumed_tail:
            raise FetchError(f"larger than {max_bytes} bytes once decompressed")
        if not inflater.eof:
            raise FetchError("truncated gzip")
    return orjson.loads(raw)


async def fetch_json(
    url: str, *, seconds: float, max_bytes: int, client: httpx2.AsyncClient | None = None
) -> Any:
    """GET a JSON document, gzip-encoded or not, the way Helicone stores bodies.

    Redirects are not followed; the download is bounded by ``max_bytes`` (compressed and
    decompressed) and ``timeout`` seconds in all. Raises :class:`FetchError`, and only that.
    Pass a ``client`` (with ``follow_redirects=False``) to reuse its connections.
    """
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                verify: ssl.SSLContext | bool = _ssl_context() if url.startswith("https:") else True
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(timeout=seconds, follow_redirects=False, verify=verify)
                )
            raw = await asyncio.wait_for(_download(client, url, max_bytes), seconds)
        return await asyncio.to_thread(_decode, raw, max_bytes)
    except FetchError:
        raise
    except (httpx2.HTTPError, TimeoutError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(": ")
        raise FetchError(detail) from None
    except (ValueError, zlib.error) as exc:  # JSON or gzip that does not decode
        raise FetchError(f"unreadable body: {type(exc).__name__}") from None


async def fill_bodies(
    payload: Mapping[str, Any],
    allow: Iterable[Origin],
    *,
    fetch_timeout: float = 10.0,
    max_bytes: int = 32 * 1024 * 1024,
) -> Mapping[str, Any]:
    """The payload with its "Body too large…" bodies replaced by the fetched ones.

    Returns ``payload`` itself when no body is too large, the URL is missing or not allowed,
    or the fetch fails in any way.
    """
    try:
        sides = [k for k in ("request_body", "response_body") if is_too_large(payload.get(k))]
        if not sides:
            return payload
        rid = payload.get("request_id")
        url = payload.get("request_response_url")
        if not isinstance(url, str) or not allowed(url, allow):
            shown = _origin(url) if isinstance(url, str) else None
            log.warning(
                "request_id=%s: body too large, and its URL (%s) is not in SCORER_BODY_URL_ALLOW;"
                " scoring without it",
                rid,
                shown or "missing or invalid",
            )
            return payload
        data = await fetch_json(url, seconds=fetch_timeout, max_bytes=max_bytes)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        filled = dict(payload)
        for side, key in (("request_body", "request"), ("response_body", "response")):
            if side in sides and key in data:
                filled[side] = data[key]
        log.info("request_id=%s: fetched the full bodies", rid)
        return filled
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(": ")
        log.warning(
            "request_id=%s: could not fetch the full bodies: %s; scoring without them",
            payload.get("request_id") if isinstance(payload, Mapping) else None,
            detail,
        )
        return payload
