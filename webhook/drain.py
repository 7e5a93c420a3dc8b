"""On SIGTERM, stop accepting at once without resetting what the kernel already accepted.

uvicorn closes its listening sockets when it shuts down. On Linux, closing a listening socket
resets every connection still in its accept queue (the listen backlog: handshake complete, not
yet ``accept()``-ed). Its client saw the connection succeed and sent its webhook, then reads a
reset, which a proxy that retries only *refused* connections (as Fly's does) passes on as a
failure; Helicone never retries, so the webhook is lost.

:class:`DrainingServer` stops accepting at once and empties the backlog before closing:

1. When SIGTERM (or SIGINT) arrives, a socket filter on each listening socket makes the kernel
   drop every new SYN (Linux), so no new connection joins the backlog. Such a client retransmits
   its SYN a second later and, the socket closed by then, is refused: the proxy tries another
   instance. Handshakes already under way still complete (the filter drops SYNs only, not their
   final ACK), and the event loop goes on accepting what is queued.
2. ``SETTLE`` seconds later (a round trip is far shorter), whatever is still queued
   is accepted with non-blocking ``accept()`` until EAGAIN and handed to the HTTP protocol as the
   loop's own accept would; the socket is closed right after, with nothing left to reset.
3. Every open connection is shut down at the signal, and every one taken from the backlog once
   made: requests are answered with ``Connection: close`` (the policy is the protocol's
   ``shutdown``, in :mod:`webhook.guard`). uvicorn's shutdown then waits until every connection
   is answered and closed, and the lifespan stops the relay, which hands its leases back.

Without the filter (another OS, or the kernel refuses it) the backlog is still drained, and new
connections are accepted and answered until the close; only a handshake completing in the
instant between the last ``accept()`` and the close could be reset.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import sys
from types import FrameType

import uvicorn

__all__ = ["DrainingServer", "answer_timeout", "longest_shutdown"]

log = logging.getLogger("webhook")

# Seconds between the filter and the close, for handshakes whose SYN came before the filter to
# complete (one round trip: microseconds on loopback, well under a millisecond to a local proxy).
# New SYNs meanwhile wait for their retransmission, a second later, and are refused then.
SETTLE = 0.05
# Seconds beyond SCORER_SHUTDOWN_GRACE that open connections get to be answered.
ANSWER_EXTRA = 5


def answer_timeout(shutdown_grace: float) -> int:
    """Seconds uvicorn waits for open connections to be answered and closed before it cancels
    what is left: a request in flight may itself wait for the store, so the grace plus a margin.
    """
    return int(shutdown_grace) + ANSWER_EXTRA


def longest_shutdown(shutdown_grace: float) -> float:
    """Seconds from SIGTERM to exit at worst: the settling, the answering, then the relay's grace
    (deliveries in flight finish or are released). A platform's kill timeout must be longer.
    """
    return SETTLE + answer_timeout(shutdown_grace) + shutdown_grace


# SO_ATTACH_FILTER from <asm-generic/socket.h> (Python has no constant for it).
SO_ATTACH_FILTER = 26
# A classic BPF socket filter: on a listening TCP socket the packet starts at the TCP header, so
# byte 13 holds the flags. Drop (keep 0 bytes) when SYN is set; keep everything else.
DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x45, 0, 1, 0x02),  # jset #SYN: next, else skip one
    (0x06, 0, 0, 0),  # ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1
)


def refuse_new_handshakes(sock: socket.socket) -> bool:
    """Make the kernel drop new SYNs to the listening ``sock``; False if it cannot (not Linux).

    ``sock`` may be any object with ``setsockopt`` (asyncio's and uvloop's server sockets are).
    """
    if sys.platform != "linux":
        return False
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in DROP_SYN))
    fprog = struct.pack("HP", len(DROP_SYN), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it
    except OSError as exc:
        log.warning("cannot filter new connections during shutdown: %s", exc)
        return False
    return True


def take_backlog(listener: socket.socket) -> list[socket.socket]:
    """Every connection waiting in ``listener``'s accept queue, without blocking."""
    accepted: list[socket.socket] = []
    # A duplicate descriptor of the same socket: asyncio keeps (and later closes) the original.
    with socket.socket(fileno=os.dup(listener.fileno())) as sock:
        sock.setblocking(False)
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return accepted
            except OSError as exc:  # out of file descriptors: the rest cannot be saved
                log.error("cannot accept from the listen backlog during shutdown: %s", exc)
                return accepted
            conn.setblocking(False)
            accepted.append(conn)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, stopping at a signal as the module says: nothing accepted is dropped."""

    def __init__(self, config: uvicorn.Config, *, filter_handshakes: bool = True) -> None:
        """``filter_handshakes``: False for a worker of ``serve --workers``, whose listening
        socket is shared: the parent filters it when every worker stops (one worker stopping
        alone, the others go on accepting)."""
        super().__init__(config)
        self.filter_handshakes = filter_handshakes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Python runs this handler between two bytecodes of the main thread, maybe inside the
        # event loop's own code: the loop begins closing, first thing in its next iteration
        # (uvicorn's shutdown would begin only at its next tick, up to 0.1 s later).
        if self._loop is not None and not self._loop.is_closed():  # closed: it has all stopped
            self._loop.call_soon_threadsafe(self._begin_closing)

    def _begin_closing(self) -> None:
        if self._closing is not None or not self.started:
            return  # begun, or the servers are not made yet (shutdown calls this again)
        if self.filter_handshakes:
            for server in self.servers:
                for sock in server.sockets:
                    refuse_new_handshakes(sock)
        self._shut_connections_down()
        self._closing = asyncio.create_task(self._close_listeners())

    def _shut_connections_down(self) -> None:
        """From the signal on, the open connections drain: their protocol's ``shutdown`` (which
        uvicorn calls again later, so it must count once) answers what they send, then closes.
        """
        for connection in list(self.server_state.connections):
            connection.shutdown()

    async def _close_listeners(self) -> None:
        await asyncio.sleep(SETTLE)
        # The loop may still be accepting from the backlog (uvloop's libuv does it its own way,
        # with no pause): whatever it has not taken yet is taken here, and each socket closed
        # right after its last accept(), before the loop runs again.
        backlog: list[socket.socket] = []
        for server in self.servers:
            for sock in server.sockets:
                backlog += take_backlog(sock)
            server.close()
        assert self._loop is not None
        made = await asyncio.gather(
            *(self._loop.connect_accepted_socket(self._protocol, conn) for conn in backlog),
            return_exceptions=True,
        )
        for outcome in made:
            if isinstance(outcome, BaseException):  # reset by its client meanwhile, say
                log.warning("a connection from the listen backlog failed: %s", outcome)
        self._shut_connections_down()  # the ones just made, and any the loop accepted meanwhile
        log.info("stopped accepting; %d connection(s) taken from the listen backlog", len(backlog))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_closing()
        assert self._closing is not None
        await self._closing
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        """A connection's protocol, made as uvicorn's startup makes it for accepted ones."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
