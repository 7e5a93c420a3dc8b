"""Raw-socket HTTP for the tests that must misbehave as no HTTP client library would."""

from __future__ import annotations

import socket
import time

from tests.server import Server

__all__ = ["connect", "memory", "read_until_closed"]


def connect(server: Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the server sends until it closes the connection; fails past ``timeout``."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the server did not close the connection in {timeout} s: {received!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def memory(server: Server) -> tuple[int, int]:
    """The server process's resident set and its peak (VmRSS, VmHWM), in bytes."""
    assert server.proc is not None
    fields: dict[str, int] = {}
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]
