"""Bound what an unsigned client can hold before its signature is checked: bytes, time, sockets.

The signature covers the body, so it is checked only after the whole request is read; everything
before that point must be bounded, or one client can exhaust memory or file descriptors and a real
webhook (sent once, never retried) is lost. uvicorn's httptools protocol bounds none of it, so
:func:`protocol` returns a subclass that adds, per connection:

- **Header size**: bytes received while a request's head (request line and headers) is incomplete
  are counted; past ``max_header_bytes`` the answer is 431 and the connection is closed, so at most
  the bound plus two reads are ever buffered (nginx allows 4 x 8 KiB by default).
- **Header time**: the head must be complete within ``header_timeout`` seconds of the connection
  (or of the request's first byte on a kept-alive one), else 408 and close. uvicorn sets no timer
  on a fresh connection that sends nothing.
- **Body time**: the body must be complete within ``body_timeout`` seconds of the head, else the
  connection is closed (the app sees a disconnect). A total deadline, not an idle timeout: a client
  trickling one byte a second is as stuck as one that sends nothing.
- **Connections**: at most ``max_connections`` at once, below the process's file limit. At the
  cap, the connection that has waited longest without a request in progress (still sending its
  head: answered 503; or idle between requests: closed quietly) is closed to make room, since a
  real sender finishes its head in milliseconds; only if every connection has a request in
  progress is the new one refused with 503 and ``Retry-After``. Refusing the newest instead (a
  plain accept cap) would let a few thousand silent sockets turn every real webhook away until
  they time out.

At shutdown (see :mod:`webhook.drain`) every open connection, and every one taken from the listen
backlog after, is shut down without losing what its client sent or is about to send: a request
in progress, or one that begins later, is answered with ``Connection: close``; a connection with
no request begun gets a last call of uvicorn's keep-alive timeout (5 s) to begin one, then is
closed quietly, as an idle keep-alive is in normal running. Closing an idle connection at once,
as uvicorn does, resets one whose request is already on its way (or in the socket, unread from a
connection just accepted), and a proxy retrying only refused connections would not retry it.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from webhook.metrics import RECEIVED_BY
from webhook.settings import Settings, SettingsError

__all__ = ["Limits", "limits_from", "protocol", "raise_file_limit"]

# File descriptors kept out of the connection cap: the store, logs, the relay's sockets to
# Helicone, body fetches and the judge.
HEADROOM = 128
# The default cap's ceiling: file limits are often 1M or more once raised, and each open
# connection costs memory (a few KiB here, more in the kernel), so a flood is bounded by this too.
DEFAULT_CAP = 16384


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_connections: int


def raise_file_limit() -> int:
    """Raise the soft file limit to the hard one (allowed without privilege); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def limits_from(settings: Settings, file_limit: int) -> Limits:
    """The guard's limits; the connection cap defaults to the file limit minus the headroom."""
    cap = settings.max_connections
    if cap is None:
        cap = max(1, min(DEFAULT_CAP, file_limit - HEADROOM))
    elif cap >= file_limit:
        raise SettingsError(
            f"invalid setting SCORER_MAX_CONNECTIONS: {cap} is not below the file limit"
            f" ({file_limit}); leave room for the store and outgoing calls"
        )
    return Limits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=cap,
    )


def _response(status: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + b"connection: close\r\ncontent-length: %d\r\n\r\n"
    )


def _canned(status: bytes, message: bytes, extra: bytes = b"") -> bytes:
    body = b'{"error":"' + message + b'"}'
    return _response(status, extra) % len(body) + body


HEADERS_TOO_LARGE = _canned(
    b"431 Request Header Fields Too Large", b"request headers are too large"
)
HEADERS_TIMEOUT = _canned(b"408 Request Timeout", b"request headers took too long")
BODY_TIMEOUT = _canned(b"408 Request Timeout", b"request body took too long")
TOO_MANY = _canned(b"503 Service Unavailable", b"too many connections", b"retry-after: 1\r\n")


def protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, guarded by ``limits``; for ``uvicorn.run(http=...)``."""
    # Connections with no request in progress, oldest first: the ones to close at the cap.
    idle: dict[GuardedProtocol, None] = {}

    class GuardedProtocol(HttpToolsProtocol):
        # Set by the first shutdown: from then on every connection is shut down as it is made.
        draining = False

        def __init__(
            self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kw: Any
        ) -> None:
            super().__init__(config, server_state, app_state, **kw)
            self._in_head = True  # the current request's head is incomplete
            self._begun = False  # a byte of the current request has arrived
            self._head_bytes = 0
            self._phase = 0  # bumped when a head completes or a message ends
            self._timer: asyncio.TimerHandle | None = None
            self._last_call = False  # shut down while idle: closed unless a request begins
            self._shut = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            full = len(self.connections) >= limits.max_connections
            super().connection_made(transport)
            if full and not self._evict_one():
                RECEIVED_BY["too_many_connections"].inc()
                transport.write(TOO_MANY)
                transport.close()
                return
            idle[self] = None
            self._arm(limits.header_timeout, HEADERS_TIMEOUT)
            if GuardedProtocol.draining:
                self.shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            idle.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            phase = self._phase
            super().data_received(data)
            # Whole reads are counted only while no head completed and no message ended in them,
            # so a small head and a large body arriving in one read never count as header bytes.
            if self._in_head and phase == self._phase and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_header_bytes:
                    RECEIVED_BY["headers_too_large"].inc()
                    self._close_with(HEADERS_TOO_LARGE)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            # A new request on a kept-alive connection, or one that came at the last call.
            if self._timer is None or self._last_call:
                self._last_call = False
                self._arm(limits.header_timeout, HEADERS_TIMEOUT)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._phase += 1
            idle.pop(self, None)
            self._arm(limits.body_timeout, BODY_TIMEOUT)
            super().on_headers_complete()
            if GuardedProtocol.draining and self.cycle is not None:
                self.cycle.keep_alive = False  # answered with Connection: close

        def on_message_complete(self) -> None:
            self._in_head = True
            self._begun = False
            self._phase += 1
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._in_head and not self.pipeline:
                idle.pop(self, None)
                idle[self] = None  # now the newest idle connection

        def shutdown(self) -> None:
            """Called by the server as it shuts down (maybe more than once, only the first call
            counts): the policy is in the module docstring."""
            GuardedProtocol.draining = True
            if self._shut or self.transport.is_closing():
                return
            self._shut = True
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # the newest request, pipelined ones before it first
            elif not self._begun:
                self._last_call = True
                self._arm(self.timeout_keep_alive, b"")
            # else a head is arriving: on_headers_complete answers it with Connection: close.

        def _evict_one(self) -> bool:
            victim = next(iter(idle), None)
            if victim is None:
                return False
            RECEIVED_BY["too_many_connections"].inc()
            # Between requests, close quietly as an idle keep-alive is closed: a client reusing
            # the connection that very moment must not read a 503 as its request's answer.
            victim._close_with(TOO_MANY if victim._begun else b"")
            return True

        def _arm(self, delay: float, answer: bytes) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay, self._expire, answer)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, answer: bytes) -> None:
            if answer is HEADERS_TIMEOUT:
                RECEIVED_BY["headers_timeout"].inc()
            self._close_with(answer)

        def _close_with(self, answer: bytes) -> None:
            """Answer (unless a response has started) and close; the app sees a disconnect."""
            idle.pop(self, None)
            self._disarm()
            if self.transport.is_closing():
                return
            cycle = self.cycle
            # Answered already: this request's response has started (the app may have answered
            # early, e.g. 413, while the body still comes). A finished one before a new head is not.
            answered = (
                cycle is not None
                and cycle.response_started
                and not (self._in_head and cycle.response_complete)
            )
            if not answered:
                self.transport.write(answer)
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # as connection_lost will: the app writes no more
                cycle.message_event.set()
            self.transport.close()

    return GuardedProtocol
