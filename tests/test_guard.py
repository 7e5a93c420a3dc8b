"""Availability: what an unsigned client can hold before its signature is checked is bounded.

Headers (size and time), bodies (time, and bytes in flight across requests), connections, and
clients that leave mid-body. Raw sockets against the real server; memory read from /proc.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import select
import socket
import sys
import uuid
from pathlib import Path

import httpx2
import pytest

from tests.cli import run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.rawhttp import connect, memory, read_until_closed
from tests.server import Server, payload
from webhook.guard import limits_from
from webhook.settings import load_settings
from webhook.verify import sign

MiB = 1024 * 1024
RECEIVED = "helicone_scorer_webhooks_received_total"
HEAD = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def outcome(server: Server, name: str) -> float:
    text = httpx2.get(f"{server.url}/metrics", timeout=30).text  # not the test's kept-alive client
    return metric(text, RECEIVED, outcome=name)


def assert_clean_log(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Exception in ASGI application" not in log


def send_huge_header(port: int, size: int) -> None:
    """A header line of ``size`` bytes; the server may close (and reset) long before the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(HEAD + b"X-Big: ")
            block = b"a" * MiB
            for _ in range(size // MiB):
                sock.sendall(block)
        except (BrokenPipeError, ConnectionResetError):
            return


def test_huge_headers_get_431_without_being_buffered(server: Server) -> None:
    rss_before, _ = memory(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: send_huge_header(server.port, 64 * MiB), range(4)))
    _, peak = memory(server)
    # Four 64 MiB headers read whole would be 256 MB and more; the bound is 64 KiB each.
    assert peak - rss_before < 40 * MiB, (rss_before, peak)
    # One that stops after 100 KiB of header reads its answer: 431, then the server closes.
    with connect(server, HEAD + b"X-Big: " + b"a" * 100 * 1024) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b'{"error":"request headers are too large"}')
    assert b"connection: close" in answer
    # Headers just under the bound still pass, and the server is healthy.
    body = payload()
    fill = {f"X-Fill-{i}": "b" * 1000 for i in range(50)}
    assert server.post(body, **fill).status_code == 202
    assert outcome(server, "headers_too_large") >= 5
    assert_clean_log(server)


def test_a_connection_that_stalls_mid_headers_is_closed(make_server: ServerFactory) -> None:
    server = make_server(SCORER_HEADER_TIMEOUT="1")
    half = connect(server, b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Ty")
    silent = connect(server)
    for sock in (half, silent):
        with sock:
            answer = read_until_closed(sock, timeout=15)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert answer.endswith(b'{"error":"request headers took too long"}')
    # A kept-alive connection's next request gets the same deadline.
    with connect(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /heal") as sock:
        answer = read_until_closed(sock, timeout=15)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"error":"request headers took too long"}')
    assert outcome(server, "headers_timeout") == 3
    assert server.post(payload()).status_code == 202
    assert_clean_log(server)


def test_a_body_announced_but_not_sent_is_cut_off(make_server: ServerFactory) -> None:
    server = make_server(SCORER_BODY_TIMEOUT="1")
    with connect(server, HEAD + b"Content-Length: 5000\r\n\r\n" + b'{"request_id": "x", ') as sock:
        answer = read_until_closed(sock, timeout=15)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"error":"request body took too long"}')
    # A trickle is no better than silence: the deadline is for the whole body.
    with connect(server, HEAD + b"Content-Length: 5000\r\n\r\n") as sock:
        trickle(sock, timeout=15)  # the server does not keep reading a trickle
    eventually(lambda: outcome(server, "client_disconnect") == 2, 15, what="2 disconnects counted")
    # Answered early (413 by its length), the rest of the body is still cut off, without a 408.
    with connect(server, HEAD + b"Content-Length: 99999999\r\n\r\n" + b"x" * 1000) as sock:
        answer = read_until_closed(sock, timeout=15)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.count(b"HTTP/1.1") == 1, answer
    assert server.post(payload()).status_code == 202
    assert_clean_log(server)


def trickle(sock: socket.socket, timeout: float) -> None:
    """Send a byte every 0.1 s until the server closes the connection; fails past ``timeout``."""

    def closed_after_a_byte() -> bool:
        try:
            sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            return True
        return False

    eventually(
        closed_after_a_byte,
        timeout,
        what="the server closed the trickle's connection",
        interval=0.1,
    )


def test_a_client_that_leaves_mid_body_is_counted_without_a_traceback(server: Server) -> None:
    for _ in range(5):
        sock = connect(server, HEAD + b"Content-Length: 100000\r\n\r\n" + b"{" * 5000)
        sock.close()
    eventually(lambda: outcome(server, "client_disconnect") == 5, 15, what="5 disconnects counted")
    assert server.post(payload()).status_code == 202
    assert_clean_log(server)


def server_sockets(server: Server) -> int:
    assert server.proc is not None
    fds = Path(f"/proc/{server.proc.pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            continue
    return count


def is_closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        sock.setblocking(False)
        data = sock.recv(65536)
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
    assert not data or data.startswith(b"HTTP/1.1 503 "), data
    return True


def test_connections_past_the_cap_make_room_by_closing_the_oldest_idle(
    make_server: ServerFactory,
) -> None:
    server = make_server(SCORER_MAX_CONNECTIONS="20")
    server.client.close()  # its kept-alive connection would be one of the idle ones
    with contextlib.ExitStack() as stack:
        kept = stack.enter_context(connect(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        first = b""
        while not first.endswith(b"}"):
            first += kept.recv(1000)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = stack.enter_context(connect(server, b"POST /webhook HTTP/1.1\r\nHo"))
        idle = [kept, started] + [stack.enter_context(connect(server)) for _ in range(28)]
        # Between requests a connection is closed quietly; one that began a request is told why.
        assert read_until_closed(kept) == b""
        answer = read_until_closed(started)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert answer.endswith(b'{"error":"too many connections"}')
        check_room_is_made(server, idle)


def check_room_is_made(server: Server, idle: list[socket.socket]) -> None:
    eventually(lambda: sum(is_closed(s) for s in idle[:10]) == 10, 15, what="10 idle ones closed")
    # A real webhook on a fresh connection is served at once, not after the idle ones time out.
    body = payload()
    request = HEAD + b"Helicone-Signature: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    with connect(server, request % (sign_body(body), len(body)) + body) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    eventually(lambda: all(is_closed(s) for s in idle[:11]), 15, what="the 11 idle closed")
    assert not any(is_closed(s) for s in idle[12:])  # the newest are still served
    assert server_sockets(server) <= 20 + 3  # the listener and the relay's own


def sign_body(body: bytes) -> bytes:
    from tests.server import SECRET

    return sign(SECRET, body).encode()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(
    make_server: ServerFactory,
) -> None:
    server = make_server(SCORER_MAX_CONNECTIONS="2")
    server.client.close()
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            busy = stack.enter_context(
                connect(server, HEAD + b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
            )
            # The app asks for the body: this request is in progress.
            assert busy.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        with connect(server) as extra:
            answer = read_until_closed(extra)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"retry-after: 1\r\n" in answer
    assert outcome(server, "too_many_connections") == 1


def unsigned_body(port: int, size: int) -> int:
    """POST ``size`` unsigned bytes; the answer's status, or 0 if the server hung up first."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % size)
            sock.sendall(b"x" * size)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = read_until_closed(sock, timeout=60)
        except ConnectionResetError:
            return 0
    return int(answer.split(b" ", 2)[1]) if answer else 0


def test_forty_large_unsigned_bodies_stay_within_the_in_flight_budget(server: Server) -> None:
    rss_before, _ = memory(server)
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: unsigned_body(server.port, 15 * MiB), range(40)))
    _, peak = memory(server)
    assert set(statuses) <= {401, 503}, statuses
    assert statuses.count(401) >= 4  # the budget lets them through a few at a time
    # 64 MiB of bodies in flight (plus a copy while each is checked), not 600 MB; and the memory
    # goes back to the OS afterwards.
    assert peak - rss_before < 150 * MiB, (rss_before, peak)
    eventually(
        lambda: memory(server)[0] - rss_before < 20 * MiB,
        15,
        what="the resident set back within 20 MiB",
        show=lambda: memory(server),
    )
    busy = outcome(server, "busy")
    assert busy == statuses.count(503)
    assert server.post(payload()).status_code == 202
    assert_clean_log(server)


def test_post_webhook_with_a_trailing_slash_is_never_a_redirect(server: Server) -> None:
    rid = str(uuid.uuid4())
    response = server.post(payload(rid), path="/webhook/", Host="evil.example")
    assert response.status_code == 202, response.text
    assert "location" not in response.headers
    for method, path in (("GET", "/healthz/"), ("POST", "/metrics/"), ("GET", "/readyz/")):
        response = server.client.request(method, path, headers={"Host": "evil.example"})
        assert response.status_code == 404, (method, path, response.status_code)
        assert "location" not in response.headers


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SCORER_MAX_CONNECTIONS": "1000000"}, "SCORER_MAX_CONNECTIONS"),
        ({"SCORER_MAX_CONNECTIONS": "0"}, "SCORER_MAX_CONNECTIONS"),
        ({"SCORER_MAX_INFLIGHT_BYTES": "1000"}, "SCORER_MAX_INFLIGHT_BYTES"),
        ({"SCORER_HEADER_TIMEOUT": "0"}, "SCORER_HEADER_TIMEOUT"),
        ({"SCORER_BODY_TIMEOUT": "soon"}, "SCORER_BODY_TIMEOUT"),
        ({"SCORER_MAX_HEADER_BYTES": "10"}, "SCORER_MAX_HEADER_BYTES"),
    ],
)
def test_bad_guard_settings_stop_the_start(tmp_path: Path, env: dict[str, str], name: str) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", **env}, "serve", timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"helicone-scorer: invalid setting {name}:"), line


def test_the_default_connection_cap_leaves_headroom_below_the_file_limit() -> None:
    settings = load_settings(HELICONE_WEBHOOK_SECRET="k")
    assert limits_from(settings, 1024).max_connections == 1024 - 128
    assert limits_from(settings, 1_048_576).max_connections == 16384  # memory bounds it too
    assert limits_from(load_settings(SCORER_MAX_CONNECTIONS="1023"), 1024).max_connections == 1023
    # No file limit at all: the ceiling alone.
    assert limits_from(settings, sys.maxsize).max_connections == 16384
