"""Fuzz the real server over raw sockets: whatever arrives, no 5xx but 503, no traceback, healthy.

Random methods, paths, headers (lying or conflicting lengths, chunked, oversized), bodies (signed
payloads among them), truncations and pipelined requests, one connection each. Derandomized, with
a fixed number of examples, so CI runs the same requests every time, in under a minute.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerFactory
from tests.server import SECRET, payload
from webhook.verify import sign

EXAMPLES = 3000
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def mostly(
    valid: st.SearchStrategy[bytes], garbage: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """``valid`` nine times in ten, so most requests get past the parser to the app."""
    return st.integers(0, 9).flatmap(lambda n: garbage if n == 0 else valid)


methods = mostly(
    st.sampled_from([b"POST"] * 6 + [b"GET", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]),
    st.binary(min_size=1, max_size=12),
)
paths = mostly(
    st.sampled_from([b"/webhook"] * 4 + [b"/", b"/webhook/", b"/healthz", b"/metrics", b"//x"]),
    st.binary(max_size=60).map(lambda b: b"/" + b),
)
header_names = mostly(
    st.sampled_from(
        [
            b"Content-Length",
            b"Transfer-Encoding",
            b"Helicone-Signature",
            b"Content-Type",
            b"Host",
            b"Expect",
            b"Connection",
            b"Upgrade",
            b"X-Request-Id",
        ]
    ),
    st.binary(min_size=1, max_size=20),
)
header_values = mostly(
    st.sampled_from(
        [
            b"0",
            b"-1",
            b"99999999999999999999",
            b"chunked",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"websocket",
            b"application/json",
            b"gzip, chunked",
            b"a" * 2000,
        ]
    )
    | st.integers(0, 10_000).map(lambda n: b"%d" % n),
    st.binary(max_size=80),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4)
bodies = st.binary(max_size=3000) | st.builds(
    lambda text: payload(str(uuid.uuid4()), text), st.text(max_size=1000)
)
shapes = st.sampled_from(["exact"] * 4 + ["no-length", "chunked", "lie-short", "lie-long", "raw"])


@dataclass(frozen=True)
class Fuzzed:
    data: bytes
    complete: bool  # a whole, well-framed request: the server must answer it
    head: bool  # a HEAD request: its answer has no body


@st.composite
def requests(draw: st.DrawFn) -> Fuzzed:
    method, path, body = draw(methods), draw(paths), draw(bodies)
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: fuzz"]
    lines += [name + b": " + value for name, value in draw(headers)]
    if draw(st.booleans()):
        lines.append(b"Helicone-Signature: " + sign(SECRET, body).encode())
    shape = draw(shapes)
    if shape == "exact":
        lines.append(b"Content-Length: %d" % len(body))
    elif shape == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    elif shape == "lie-short":
        lines.append(b"Content-Length: %d" % max(0, len(body) - 1))
    elif shape == "lie-long":
        lines.append(b"Content-Length: %d" % (len(body) + 10))
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    if shape == "raw":
        data = draw(st.binary(max_size=500))
    complete = shape in ("exact", "chunked")
    if complete and draw(st.integers(0, 4)) == 0:  # pipelined: a second request in the same send
        data += b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\n\r\n"
    if draw(st.integers(0, 3)) == 0:  # truncated anywhere, the body's middle most often
        middle = len(data) - len(body) // 2
        cut = draw(st.sampled_from([middle, middle + 1]) | st.integers(0, len(data)))
        complete, data = complete and cut >= len(data), data[:cut]
    return Fuzzed(data, complete, method == b"HEAD")


def answered(answer: bytes, head: bool) -> bool:
    """The first response in ``answer`` is whole."""
    end = answer.find(b"\r\n\r\n")
    if end < 0:
        return False
    if head:
        return True
    length = re.search(rb"(?im)^content-length: *(\d+)\r$", answer[: end + 2])
    if length is None:
        return answer.endswith(b"0\r\n\r\n")
    return len(answer) - end - 4 >= int(length.group(1))


def exchange(port: int, request: Fuzzed) -> bytes:
    """Send; wait for the answer to a whole request, and hang up on anything else."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request.data)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        answer = b""
        deadline = time.monotonic() + (10 if request.complete else 0.05)
        while not answered(answer, request.head) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def test_fuzzed_requests_never_break_the_server(make_server: ServerFactory) -> None:
    server = make_server(
        SCORER_MAX_BODY_BYTES="2048",
        SCORER_MAX_INFLIGHT_BYTES="4096",
        SCORER_MAX_HEADER_BYTES="1024",
        SCORER_HEADER_TIMEOUT="2",
        SCORER_BODY_TIMEOUT="2",
    )
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def one(request: Fuzzed) -> None:
        answer = exchange(server.port, request)
        found = [int(code) for code in STATUS.findall(answer)]
        statuses.extend(found)
        assert all(code < 500 or code == 503 for code in found), (request, answer[:300])
        if request.complete:
            assert found, (request, answer[:300])  # a whole request always gets an answer

    started = time.monotonic()
    one()
    elapsed = time.monotonic() - started
    print(f"fuzz: {EXAMPLES} requests, {len(statuses)} answers in {elapsed:.0f} s")
    assert len(statuses) > EXAMPLES // 3  # many requests got an answer, so this tested something
    assert server.client.get("/healthz").status_code == 200
    assert server.post(payload()).status_code == 202
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Exception in ASGI application" not in log
