"""SIGTERM drains: everything accepted is answered, and new connections are refused at once.

On Linux, closing a listening socket resets the connections still in its listen backlog, and
closing an idle connection resets a request already on its way; a proxy that retries only
refused connections (as Fly's does) passes either on as a failure. These tests hold connections
in each of those states at SIGTERM and check that every one is answered (202, then
``Connection: close``), and that a connection attempted meanwhile is refused, not reset.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import uuid

import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.rawhttp import connect, read_response, read_until_closed, signed_post
from tests.server import Server, payload
from webhook.drain import refuse_new_handshakes, take_backlog

BACKLOG = 40


def _answered_and_closed(answer: bytes, *, after_sigterm: bool = True) -> None:
    """One 202 (read until the server closed); one that began after SIGTERM says it closes."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.lower().startswith(b"http/1.1 202 accepted\r\n"), answer
    assert body.count(b'"status":"queued"') == 1, answer
    if after_sigterm:
        assert b"\r\nconnection: close" in head.lower(), answer


def _refused(server: Server) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=10).close()


def _exited_cleanly(server: Server) -> None:
    assert server.proc is not None
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()


def test_the_listen_backlog_at_sigterm_is_answered_and_new_connections_are_refused(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    assert server.proc is not None
    pid = server.proc.pid
    rids = [str(uuid.uuid4()) for _ in range(BACKLOG + 1)]
    # Stopped, the server accepts nothing, but the kernel completes every handshake and queues
    # it in the listen backlog; SIGTERM is handled first thing when it continues.
    os.kill(pid, signal.SIGSTOP)
    try:
        waiting = [connect(server, signed_post(payload(rid))) for rid in rids[:BACKLOG]]
        # One more whose body is still to come: the server must still answer it once the
        # listening socket is closed.
        last_body = payload(rids[-1])
        last = connect(server, signed_post(last_body, body_too=False))
        os.kill(pid, signal.SIGTERM)
    finally:
        os.kill(pid, signal.SIGCONT)
    server.wait_for_log("connection(s) taken from the listen backlog")
    _refused(server)
    last.sendall(last_body)
    for sock in waiting:  # the loop may have answered some before it saw the signal
        with sock:
            _answered_and_closed(read_until_closed(sock), after_sigterm=False)
    with last:
        _answered_and_closed(read_until_closed(last))
    _exited_cleanly(server)
    assert set(rids) <= set(server.rows())


def test_connections_open_at_sigterm_are_answered_before_they_close(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    assert server.proc is not None
    first, fresh_rid, kept_rid = (str(uuid.uuid4()) for _ in range(3))
    with connect(server) as fresh, connect(server, signed_post(payload(first))) as kept:
        # Answered, so accepted; ``fresh`` connected before it, so it is accepted too (the
        # backlog is first in, first out), but it has sent nothing yet.
        answer = read_response(kept)
        assert answer.startswith(b"HTTP/1.1 202 "), answer
        assert b"connection: close" not in answer.lower()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("stopped accepting; 0 connection(s) taken")
        _refused(server)  # while two connections are still open
        # Requests sent on either after SIGTERM, as a proxy's may already be on their way.
        fresh.sendall(signed_post(payload(fresh_rid)))
        kept.sendall(signed_post(payload(kept_rid)))
        _answered_and_closed(read_until_closed(fresh))
        _answered_and_closed(read_until_closed(kept))
    _exited_cleanly(server)
    assert {first, fresh_rid, kept_rid} <= set(server.rows())


def test_an_idle_connection_gets_a_last_call_then_is_closed_quietly(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    assert server.proc is not None
    with connect(server) as idle, connect(server, b"GET /healthz HTTP/1.1\r\n\r\n") as probe:
        read_response(probe)  # answered, so ``idle``, queued before it, is accepted
        server.proc.send_signal(signal.SIGTERM)
        # No request ever comes: closed after the last call, with no answer, and the server
        # then finishes its shutdown.
        assert read_until_closed(idle) == b""
    _exited_cleanly(server)


# -- the two halves of the drain, on plain sockets ---------------------------------------------

TCP_SYN_SENT = 2


def _listener() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    listener.setblocking(False)
    return listener


def test_take_backlog_accepts_every_queued_connection_and_leaves_the_socket_open() -> None:
    with _listener() as listener:
        clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
        taken = take_backlog(listener)
        assert sorted(t.getpeername() for t in taken) == sorted(c.getsockname() for c in clients)
        assert all(not t.getblocking() for t in taken)
        late = socket.create_connection(listener.getsockname())
        again = take_backlog(listener)
        assert [t.getpeername() for t in again] == [late.getsockname()]
        for sock in [*clients, *taken, late, *again]:
            sock.close()


def test_the_filter_drops_new_handshakes_keeps_queued_ones_and_the_close_refuses() -> None:
    with _listener() as listener:
        queued = socket.create_connection(listener.getsockname())
        assert refuse_new_handshakes(listener)
        late = socket.socket()
        late.setblocking(False)
        assert late.connect_ex(listener.getsockname()) == errno.EINPROGRESS

        def syn_retransmitted() -> bool:
            info = late.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            assert info[0] == TCP_SYN_SENT, "the handshake completed"
            return info[2] >= 1  # tcpi_retransmits: the first SYN got no answer

        eventually(syn_retransmitted, 10, what="the new SYN dropped and sent again")
        # What was queued before the filter is still there to accept; the new one is not.
        taken = take_backlog(listener)
        assert [t.getpeername() for t in taken] == [queued.getsockname()]
        taken[0].close()
    # Closed: the next SYN is answered with a reset, i.e. the connection is refused.
    _, writable, _ = select.select([], [late], [], 15)
    assert writable == [late]
    assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    late.close()
    queued.close()
