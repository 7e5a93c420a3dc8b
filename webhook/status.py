"""The status page: ``GET /status`` for people, ``GET /status.json`` for scripts.

Policy:

- Off unless ``SCORER_STATUS_TOKEN`` is set: the paths are not routed at all (404).
- Access: the token as ``Authorization: Bearer``, or through the sign-in form, which sets a
  session cookie (HttpOnly, SameSite=Strict, Secure over https or behind a proxy that says so
  in ``X-Forwarded-Proto``, 12 hours; path ``/``, for
  ``/status.json`` is not under ``/status``).
  The cookie holds its expiry and an HMAC of it keyed by the token, never the token itself, so
  a new token ends every session. Every comparison is constant time. Anything else gets 401.
- The retry buttons are POST forms that carry a CSRF token, an HMAC of the session: a page of
  another site cannot forge it, nor send the cookie (SameSite). A POST whose ``Origin`` or
  ``Sec-Fetch-Site`` names another site is refused (403) before anything else. A Bearer
  request needs no CSRF token: a browser never adds that header by itself.
- Forms are read up to :data:`FORM_BYTES`; a larger one gets 413.
- What it shows (:mod:`webhook.status_view`) never holds a payload's body, a score's inputs, a
  secret or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from webhook.flow import duration
from webhook.receive import error
from webhook.status_view import View, ago, bars

__all__ = ["StatusPage"]

COOKIE = "scorer_status"
SESSION_SECONDS = 12 * 3600
FORM_BYTES = 4096
REFRESH_SECONDS = 15

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["ago"] = ago
_templates.filters["dur"] = duration
_templates.filters["when"] = lambda epoch: datetime.fromtimestamp(epoch, UTC).strftime(
    "%Y-%m-%d %H:%M:%S UTC"
)
_templates.globals["bars"] = bars


class Access:
    """Who may see the page: the token, or a session the sign-in form made from it."""

    def __init__(self, token: str) -> None:
        self._token = _digest(token)
        self._key = token.encode()

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given), self._token)

    def bearer_ok(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(given.strip())

    def new_session(self) -> str:
        expires = int(time.time()) + SESSION_SECONDS
        return f"{expires}.{self._mac(f'session:{expires}')}"

    def session_ok(self, value: str | None) -> bool:
        shape = _SESSION.fullmatch(value or "")
        if shape is None or int(shape[1]) < time.time():
            return False
        return hmac.compare_digest(shape[2].encode(), self._mac(f"session:{shape[1]}").encode())

    def csrf(self, session: str) -> str:
        return self._mac(f"csrf:{session}")

    def csrf_ok(self, session: str, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf(session).encode())

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


_SESSION = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")  # expiry (epoch s) . HMAC-SHA256
_COUNT = re.compile(r"[0-9]{1,9}")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class StatusPage:
    """The routes of the page, over a :class:`~webhook.status_view.View` of the service."""

    def __init__(self, token: str, view: View) -> None:
        self.access, self.view = Access(token), view

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/status", self.page, methods=["GET"]),
            Route("/status.json", self.json, methods=["GET"]),
            Route("/status/login", self.login, methods=["POST"]),
            Route("/status/logout", self.logout, methods=["POST"]),
            Route("/status/retry", self.retry, methods=["POST"]),
        ]

    # -- pages ----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        if not self._signed_in(request):
            return _html("login.html", 401)
        session = request.cookies.get(COOKIE)
        retried = request.query_params.get("retried", "")
        shown = int(retried) if _COUNT.fullmatch(retried) else None
        figures = await self.view.figures()
        return _html(
            "status.html",
            200,
            s=figures,
            csrf=self.access.csrf(session) if session else "",
            retried=shown,
            refresh=REFRESH_SECONDS,
        )

    async def json(self, request: Request) -> Response:
        if not self._signed_in(request):
            answer = error(401, "needs the status token: Authorization: Bearer <token>")
            answer.headers["WWW-Authenticate"] = 'Bearer realm="status"'
            return _secured(answer)
        figures = await self.view.figures()
        return _secured(
            Response(
                orjson.dumps(figures, option=orjson.OPT_NON_STR_KEYS),
                media_type="application/json",
            )
        )

    # -- forms ----------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        if isinstance(form, Response):
            return form
        if not self.access.token_ok(form.get("token", "")):
            return _html("login.html", 401, wrong=True)
        answer = _see_status()
        answer.set_cookie(
            COOKIE,
            self.access.new_session(),
            max_age=SESSION_SECONDS,
            path="/",
            secure=_over_https(request),
            httponly=True,
            samesite="strict",
        )
        return answer

    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        if isinstance(form, Response):
            return form
        answer = _see_status()
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    async def retry(self, request: Request) -> Response:
        """Re-queue one dead letter (``request_id``), or all of them (none given)."""
        form = await _form(request)
        if isinstance(form, Response):
            return form
        if not self.access.bearer_ok(request.headers.get("authorization")):
            session = request.cookies.get(COOKIE)
            if not self.access.session_ok(session):
                return _secured(error(401, "sign in first"))
            assert session is not None
            if not self.access.csrf_ok(session, form.get("csrf", "")):
                return _secured(error(403, "the form is stale or forged: reload the page"))
        rid = form.get("request_id")
        if rid is not None and not rid:
            return _secured(error(400, "request_id is empty: leave it out to retry them all"))
        retried = await self.view.store.requeue_dead(None if rid is None else [rid])
        return _see_status(f"?retried={retried}")

    def _signed_in(self, request: Request) -> bool:
        return self.access.bearer_ok(
            request.headers.get("authorization")
        ) or self.access.session_ok(request.cookies.get(COOKIE))


async def _form(request: Request) -> dict[str, str] | Response:
    """A small urlencoded form from this site, or the answer refusing it."""
    if not _same_site(request):
        return _secured(error(403, "cross-site requests are refused"))
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return _secured(error(415, "send an application/x-www-form-urlencoded form"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_BYTES:
            return _secured(error(413, f"the form is larger than {FORM_BYTES} bytes"))
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _same_site(request: Request) -> bool:
    """Whether a form came from this site's own page. The browser's ``Sec-Fetch-Site`` says so
    where it is sent (every current browser); else ``Origin``, by host only, as the server or
    its proxy names it (a proxy that ends TLS makes the page https and the server see http; one
    may rewrite ``Host``, and then says ``X-Forwarded-Host``)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site form: those carry one or the other
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    try:
        return urlsplit(origin).netloc in hosts - {None}
    except ValueError:  # not a URL ("http://["): not this site's page
        return False


def _over_https(request: Request) -> bool:
    """Whether the browser reached the page over https, itself or through a proxy that ended TLS
    (the proxy's header can only make the cookie stricter, so it is believed)."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def _see_status(query: str = "") -> Response:
    return _secured(RedirectResponse(f"/status{query}", status_code=303))


def _html(template: str, status: int, **context: Any) -> Response:
    nonce = secrets.token_urlsafe(16)
    text = _templates.get_template(template).render(nonce=nonce, **context)
    answer = HTMLResponse(text, status_code=status)
    answer.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return _secured(answer)


def _secured(answer: Response) -> Response:
    answer.headers["Cache-Control"] = "no-store"
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["X-Frame-Options"] = "DENY"
    # Not no-referrer: under it a browser sends "Origin: null" with the page's own forms,
    # which _form refuses as another site's (the sign-in form could never sign in).
    answer.headers["Referrer-Policy"] = "same-origin"
    return answer
