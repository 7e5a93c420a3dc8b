"""The test proxy retries refused connections only, so a lost webhook reaches the client.

tests/test_deploy.py trusts it to: a proxy that hid a reset by retrying would let a rolling
restart that loses webhooks pass.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.eventually import eventually
from tests.proxy import Proxy
from tests.standin import free_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=8) as sock:
        yield sock


def _queued(listener: socket.socket) -> int:
    """Connections in ``listener``'s accept queue (a listening socket's ``tcpi_unacked``)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return int(struct.unpack_from("I", info, 24)[0])


def test_a_refused_connection_goes_to_the_next_backend(listener: socket.socket) -> None:
    proxy = Proxy([free_port(), listener.getsockname()[1]]).start()  # nothing on the first
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            client.sendall(b"ping")
            listener.settimeout(10)
            upstream, _ = listener.accept()
            with upstream:
                upstream.settimeout(10)
                assert upstream.recv(4) == b"ping"
                upstream.sendall(b"pong")
                assert client.recv(4) == b"pong"
    finally:
        proxy.stop()
    assert proxy.counts.refused == 1
    assert proxy.counts.failed == []


def test_a_reset_reaches_the_client_and_is_not_retried(listener: socket.socket) -> None:
    proxy = Proxy([listener.getsockname()[1], free_port()]).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            client.sendall(b"POST /webhook HTTP/1.1\r\n")
            eventually(lambda: _queued(listener) == 1, 10, what="the proxy's connection queued")
            listener.close()  # Linux resets what waited in the backlog
            with pytest.raises(ConnectionResetError):
                client.recv(1)
    finally:
        proxy.stop()
    # Passed on as it came: not retried on the other backend (which would have refused).
    assert len(proxy.counts.failed) == 1, proxy.counts
    assert proxy.counts.refused == 0
