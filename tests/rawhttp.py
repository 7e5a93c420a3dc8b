"""Raw-socket HTTP for the tests that must misbehave as no HTTP client library would."""

from __future__ import annotations

import socket
import time

from tests.server import SECRET, Server
from webhook.verify import sign

__all__ = ["connect", "memory", "read_response", "read_until_closed", "signed_post"]


def signed_post(body: bytes, *, body_too: bool = True) -> bytes:
    """A signed ``POST /webhook`` of ``body``, as bytes; with ``body_too=False`` the head only."""
    head = (
        "POST /webhook HTTP/1.1\r\n"
        "Host: scorer\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Helicone-Signature: {sign(SECRET, body)}\r\n"
        "\r\n"
    ).encode()
    return head + body if body_too else head


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


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.partition(b":")[2])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole body: {data + body!r}"
        body += chunk
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


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
