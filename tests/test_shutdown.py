"""SIGTERM with a webhook request in flight: it completes, and its work survives the restart.

tests/test_deliver.py covers the relay's side (work in flight is released, a restart finishes it)
and a burst cut by SIGTERM. Here the request is *provably* in flight: its headers are read (the
server has asked for the body with ``100 Continue``) and the server has logged that it waits for
open connections, and only then is the body sent.
"""

from __future__ import annotations

import signal
import socket
import uuid

from tests.conftest import ServerFactory
from tests.server import SECRET, payload
from tests.standin import Injected, StandIn
from webhook.verify import sign


def _read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_request_in_flight_at_sigterm_is_answered_and_delivered_after_restart(
    make_server: ServerFactory, standin: StandIn
) -> None:
    # A stalled score post keeps the relay from finishing within the grace period, so the
    # webhook is still undelivered when the process exits, and only the restart can deliver it.
    server = make_server(SCORER_SHUTDOWN_GRACE="0.5", SCORER_LEASE_SECONDS="600")
    standin.fail_next(Injected(201, stall=5.0))
    rid = str(uuid.uuid4())
    body = payload(rid)
    head = (
        "POST /webhook HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Helicone-Signature: {sign(SECRET, body)}\r\n"
        "Expect: 100-continue\r\n"
        "\r\n"
    ).encode()
    assert server.proc is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        # The app is reading this request's body: the request is in flight.
        early = _read_until(sock, b"\r\n\r\n")
        assert early.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("Waiting for connections to close", 10)
        sock.sendall(body)
        answer = _read_to_end(sock)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 202 Accepted", answer
    assert b'"status":"queued"' in answer

    code = server.proc.wait(30)
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()
    # Acknowledged, stored, not delivered, and not left leased for 10 minutes.
    assert server.rows()[rid]["state"] == "pending"

    server.start()
    standin.wait_for(lambda: rid in standin.posted_ids(), timeout=20)
    assert standin.scores_for(rid)[-1]["vocabulary_diversity"] == 100
