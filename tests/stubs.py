"""Loopback stand-ins for the other services the scorers talk to.

- :class:`BodyStore`: S3 as Helicone uses it, serving gzip JSON ``{"request", "response"}`` at
  presigned-looking URLs, with ``Content-Encoding: gzip``; it records every hit.
- :class:`ChatStandIn`: an OpenAI-compatible ``POST /v1/chat/completions`` whose replies the
  test chooses (a JSON object, malformed text, an HTTP error, or a stall).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import orjson

Handler = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


class Loopback:
    """A threaded HTTP server on 127.0.0.1; ``handle`` answers every request."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str, bytes]] = []  # (method, path, body)
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.hits.append((self.command, self.path, body))
                status, headers, content = outer.handle(self, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def handle(
        self, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class BodyStore(Loopback):
    """Serves ``objects[path]`` gzip-encoded; 403 (S3's answer to a bad signature) otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}  # path -> Location

    def put(self, key: str, request: Any, response: Any, *, gzipped: bool = True) -> str:
        """Store the pair; return a presigned-looking URL for it."""
        raw = orjson.dumps({"request": request, "response": response})
        self.objects[f"/request-response-storage/{key}"] = gzip.compress(raw) if gzipped else raw
        return (
            f"{self.base_url}/request-response-storage/{key}?X-Amz-Expires=1800&X-Amz-Signature=x"
        )

    def handle(
        self, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path = request.path.split("?", 1)[0]
        if path in self.redirects:
            return 302, {"Location": self.redirects[path]}, b""
        content = self.objects.get(path)
        if content is None:
            return (
                403,
                {"Content-Type": "application/xml"},
                b"<Error><Code>AccessDenied</Code></Error>",
            )
        headers = {"Content-Type": "application/json"}
        if content[:2] == b"\x1f\x8b":
            headers["Content-Encoding"] = "gzip"
        return 200, headers, content


@dataclass
class Reply:
    content: str | None = None  # the assistant message's content
    status: int = 200
    raw: bytes | None = None  # the whole HTTP body, instead of a chat completion
    stall: float = 0.0


class ChatStandIn(Loopback):
    """An OpenAI-compatible chat-completions endpoint with scripted replies."""

    def __init__(self, api_key: str = "sk-judge") -> None:
        super().__init__()
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.default = Reply('{"accuracy": 90, "relevance": 80, "helpfulness": 70}')
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def handle(
        self, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if request.path != "/v1/chat/completions":
            return 404, {}, b"{}"
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {}, b'{"error": {"message": "bad key"}}'
        with self._lock:
            self.requests.append(orjson.loads(body))
            reply = self.replies.popleft() if self.replies else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.stall:
                time.sleep(reply.stall)
        finally:
            with self._lock:
                self.in_flight -= 1
        if reply.raw is not None:
            return reply.status, {"Content-Type": "application/json"}, reply.raw
        completion = {
            "id": "chatcmpl-judge",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}}],
        }
        return reply.status, {"Content-Type": "application/json"}, orjson.dumps(completion)
