"""A loopback stand-in of Helicone's REST API, behaving as ``shared/helicone-facts.md`` says.

- It checks ``Authorization: Bearer <key>`` (401 without it) and that scores are ints or bools
  (the real API accepts floats and silently drops them; the stand-in records them as violations).
- Success is 201 ``{"data": null, "error": null}``.
- Failures are injected with :meth:`StandIn.fail_next` (any status, optional ``Retry-After``,
  optional stall, cut short by :meth:`StandIn.stop`, optional callback run just before the
  answer goes out), and a sliding 60-second window limit answers 429 like the real one.
- ``POST /v1/evals/query`` answers :attr:`StandIn.evals` once the body has a ``filter`` and ISO
  ``timeFilter`` bounds.
- ``POST /v1/request/query`` lists :meth:`StandIn.log_request` rows as jawn's Postgres path does:
  the ``request.created_at`` filter tree, sort, ``offset`` <= :attr:`StandIn.max_offset` and
  ``limit`` <= 1000, bodies replaced by a placeholder, and the real ones behind a
  ``signed_body_url`` serving gzip JSON ``{"request", "response"}``, like S3 (which refuses a
  request carrying an ``Authorization`` header). Each row carries its ``request_properties`` and
  the ``scores`` Helicone "applied": every score posted to it and answered 2xx, except those
  :meth:`StandIn.drop_scores` made it drop (a boolean shows as ``<name>-hcone-bool``, as 1 or 0).
  :attr:`StandIn.query_stall` holds each query that long (cut short by :meth:`StandIn.stop`);
  :attr:`StandIn.most_queries_at_once` says how many were ever in flight together.
- Every call's raw request path (``scope["raw_path"]``, before any decoding) is recorded in
  :attr:`StandIn.raw_paths`. A path not of the exact forms above (one percent-encoded id
  segment that is not ``.`` or ``..``) is recorded in :attr:`StandIn.violations` and answered
  404: the ``standin`` fixture fails a test that leaves any violation.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.eventually import eventually

API_KEY = "sk-helicone-test"
PLACEHOLDER = {
    "helicone_message": "fetching body from signed_url... contact engineering@helicone.ai for"
    " more information"
}


# The only paths the API is called on. An id is one percent-encoded segment (unreserved
# characters and %XX escapes) that does not decode to "." or "..", which would be resolved.
_SEGMENT = r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+"
_PATHS = re.compile(
    rf"/v1/evals/query|/v1/request/query|/v1/request/(?P<rid>{_SEGMENT})/(?:score|feedback)"
    rf"|/bodies/(?P<body>{_SEGMENT})"
)


def expected_path(raw: str) -> bool:
    match = _PATHS.fullmatch(raw)
    if match is None:
        return False
    segment = match["rid"] or match["body"]
    return segment is None or unquote(segment) not in (".", "..")


# Ports handed out by free_port: each test process counts up through a range of its own, below
# the kernel's ephemeral ports (32768 and up, by Linux's default), which outgoing connections
# and other programs' binds to port 0 take. A port from bind(("", 0)) was free only when asked:
# another xdist worker could be handed it too before the server bound it (seen in CI).
_PORTS_FROM, _PORTS_EACH = 20000, 1500
_next_port: list[int] = []


def free_port() -> int:
    if not _next_port:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
        _next_port.append(int(worker) % 8 if worker.isdigit() else 0)
        _next_port.append(0)
    slot, _ = _next_port
    for _ in range(_PORTS_EACH):
        port = _PORTS_FROM + slot * _PORTS_EACH + _next_port[1]
        _next_port[1] = (_next_port[1] + 1) % _PORTS_EACH
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (a server still running, or another program's)
        return port
    raise RuntimeError("no free port in this test process's range")


@dataclass
class Injected:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    then: Callable[[], object] | None = None  # runs after the stall, before the answer is sent


@dataclass
class Call:
    kind: str  # "score" or "feedback" or "evals" ...
    request_id: str | None
    body: Any
    at: float  # when answered (after any injected stall)
    status: int
    arrived: float  # when it reached the stand-in, before any stall


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


class StandIn:
    def __init__(self, *, window_limit: int | None = None, window: float = 60.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.raw_paths: list[str] = []
        self.window_limit = window_limit
        self.window = window
        self._window_hits: deque[float] = deque()
        self._injected: deque[Injected] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.evals: list[dict[str, Any]] = []
        self.logged: list[dict[str, Any]] = []
        self.bodies: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.max_offset = 10_000
        self.applied: dict[str, dict[str, int]] = {}  # request id -> the scores it shows
        self._drops: Counter[str] = Counter()  # request id -> score posts still to drop
        self.query_stall = 0.0
        self.most_queries_at_once = 0
        self._queries_now = 0
        self.app = Starlette(
            routes=[
                Route("/v1/evals/query", self._evals, methods=["POST"]),
                Route("/v1/request/query", self._request_query, methods=["POST"]),
                Route("/v1/request/{rid:path}/score", self._score, methods=["POST"]),
                Route("/v1/request/{rid:path}/feedback", self._feedback, methods=["POST"]),
                Route("/bodies/{rid}", self._body, methods=["GET"]),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def fail_next(self, *answers: Injected) -> None:
        with self._lock:
            self._injected.extend(answers)

    def drop_scores(self, request_id: str, times: int = 1) -> None:
        """Answer the next ``times`` score posts for ``request_id`` 201, and apply none of them,
        as Helicone may (the row never shows those scores)."""
        with self._lock:
            self._drops[request_id] += times

    def injected_left(self) -> int:
        """How many injected answers no call has taken yet: 0 once every one is being answered."""
        with self._lock:
            return len(self._injected)

    def ok_calls(self, kind: str = "score") -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.kind == kind and 200 <= c.status < 300]

    def scores_for(self, request_id: str) -> list[dict[str, Any]]:
        return [c.body["scores"] for c in self.ok_calls() if c.request_id == request_id]

    def posts(self) -> Counter[str | None]:
        """How many times each request id's scores were posted (answered 2xx)."""
        return Counter(c.request_id for c in self.ok_calls())

    def posted_ids(self) -> set[str]:
        return {c.request_id for c in self.ok_calls() if c.request_id is not None}

    def log_request(
        self,
        request_id: str,
        request_body: Any,
        response_body: Any,
        *,
        created_at: str,
        body: str = "gzip",
        **fields: Any,
    ) -> None:
        """Log one request. ``body``: where its bodies are: ``gzip`` (signed URL,
        ``Content-Encoding: gzip``), ``raw-gzip`` (signed URL, gzip bytes without that header),
        ``plain`` (signed URL, plain JSON), ``expired`` (signed URL answering 403), ``inline``
        (in the row, as ClickHouse-stored requests are), or ``none``."""
        row: dict[str, Any] = {
            "response_id": str(uuid.uuid4()),
            "request_id": request_id,
            "request_created_at": created_at,
            "request_body": PLACEHOLDER,
            "response_body": PLACEHOLDER,
            "request_model": "gpt-4o",
            "provider": "OPENAI",
            "request_user_id": None,
            "delay_ms": 321,
            "prompt_tokens": 7,
            "completion_tokens": 5,
            "total_tokens": 12,
            "costUSD": 0.0001,
            "response_status": 200,
            "request_properties": {},
            **fields,
        }
        content = orjson.dumps({"request": request_body, "response": response_body})
        if body == "inline":
            row["request_body"], row["response_body"] = request_body, response_body
        elif body != "none":
            row["signed_body_url"] = f"{self.base_url}/bodies/{request_id}?X-Amz-Signature=ok"
            if body == "gzip":
                self.bodies[request_id] = (gzip.compress(content), {"Content-Encoding": "gzip"})
            elif body == "raw-gzip":
                self.bodies[request_id] = (gzip.compress(content), {})
            elif body == "plain":
                self.bodies[request_id] = (content, {})
        with self._lock:
            self.logged.append(row)

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        """Wait until ``predicate()`` holds; on failure show the calls the stand-in saw."""
        eventually(predicate, timeout, show=lambda: [(c.kind, c.status) for c in self.calls])

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the raw path of every call; refuse (404) and record any unexpected one."""
        if scope["type"] == "http":
            raw = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
            with self._lock:
                self.raw_paths.append(raw)
                if not expected_path(raw):
                    self.violations.append(f"unexpected path: {scope['method']} {raw}")
                    response = _json(404, {"error": "Not Found"})
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def start(self) -> StandIn:
        config = uvicorn.Config(
            self._checked,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        server = self._server
        eventually(lambda: server.started, 10, what="the stand-in started", interval=0.01)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    # -- the API ------------------------------------------------------------------------------

    async def _answer(self, request: Request, kind: str, check: Any) -> Response:
        rid = request.path_params.get("rid")
        arrived = time.monotonic()
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return self._record(kind, rid, None, _json(401, {"error": "Unauthorized"}), arrived)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return self._record(kind, rid, None, _json(400, {"error": "invalid json"}), arrived)
        with self._lock:
            injected = self._injected.popleft() if self._injected else None
            limited = self._over_window()
        if injected is not None:
            deadline = time.monotonic() + injected.stall
            while time.monotonic() < deadline and not self._stopping.is_set():
                await asyncio.sleep(min(0.05, deadline - time.monotonic()))
            if injected.then is not None:
                injected.then()
            content = injected.body or {"data": None, "error": f"injected {injected.status}"}
            return self._record(
                kind, rid, body, _json(injected.status, content, injected.headers), arrived
            )
        if limited is not None:
            content = {"error": "Too many requests, please try again later."}
            headers = {"Retry-After": str(limited), "RateLimit-Reset": str(limited)}
            return self._record(kind, rid, body, _json(429, content, headers), arrived)
        outcome = check(rid, body)
        if isinstance(outcome, str):
            return self._record(
                kind, rid, body, _json(500, {"data": None, "error": outcome}), arrived
            )
        if isinstance(outcome, list):  # a query's rows
            return self._record(
                kind, rid, body, _json(200, {"data": outcome, "error": None}), arrived
            )
        return self._record(kind, rid, body, _json(201, {"data": None, "error": None}), arrived)

    def _over_window(self) -> int | None:
        if self.window_limit is None:
            return None
        now = time.monotonic()
        while self._window_hits and now - self._window_hits[0] >= self.window:
            self._window_hits.popleft()
        if len(self._window_hits) >= self.window_limit:
            return max(1, int(self.window - (now - self._window_hits[0])) + 1)
        self._window_hits.append(now)
        return None

    def _record(
        self,
        kind: str,
        rid: str | None,
        body: Any,
        response: Response,
        arrived: float,
    ) -> Response:
        call = Call(kind, rid, body, time.monotonic(), response.status_code, arrived)
        with self._lock:
            self.calls.append(call)
        return response

    async def _score(self, request: Request) -> Response:
        def check(rid: str, body: Any) -> str | None:
            scores = body.get("scores") if isinstance(body, dict) else None
            if not isinstance(scores, dict):
                return "scores must be an object"
            for name, value in scores.items():
                if not isinstance(value, int):  # bool is an int subclass, and allowed
                    self.violations.append(f"{rid}: {name}={value!r}")
            with self._lock:
                if self._drops[rid] > 0:
                    self._drops[rid] -= 1
                    return None
                shown = self.applied.setdefault(rid, {})
                for name, value in scores.items():
                    if isinstance(value, bool):
                        shown[f"{name}-hcone-bool"] = int(value)
                    elif isinstance(value, int):
                        shown[name] = value
            return None

        return await self._answer(request, "score", check)

    async def _feedback(self, request: Request) -> Response:
        def check(rid: str, body: Any) -> str | None:
            try:
                uuid.UUID(rid)
            except ValueError:
                return "Invalid requestId: must be a valid UUID"
            if not isinstance(body, dict) or not isinstance(body.get("rating"), bool):
                return "rating must be a boolean"
            return None

        return await self._answer(request, "feedback", check)

    async def _evals(self, request: Request) -> Response:
        def check(rid: str | None, body: Any) -> str | list[dict[str, Any]]:
            if not isinstance(body, dict) or "filter" not in body:
                return "filter is required"
            window = body.get("timeFilter")
            if not isinstance(window, dict):
                return "timeFilter is required"
            try:
                start, end = _instant(window["start"]), _instant(window["end"])
            except (KeyError, TypeError, ValueError):
                return "timeFilter.start and timeFilter.end must be ISO strings"
            if start >= end:
                return "timeFilter.start must be before timeFilter.end"
            return list(self.evals)

        return await self._answer(request, "evals", check)

    async def _request_query(self, request: Request) -> Response:
        with self._lock:
            self._queries_now += 1
            self.most_queries_at_once = max(self.most_queries_at_once, self._queries_now)
        try:
            deadline = time.monotonic() + self.query_stall
            while time.monotonic() < deadline and not self._stopping.is_set():
                await asyncio.sleep(min(0.05, deadline - time.monotonic()))
            return await self._answer_query(request)
        finally:
            with self._lock:
                self._queries_now -= 1

    async def _answer_query(self, request: Request) -> Response:
        def check(rid: str | None, body: Any) -> str | list[dict[str, Any]]:
            if not isinstance(body, dict) or "filter" not in body:
                return "filter is required"
            offset, limit = body.get("offset", 0), body.get("limit", 10)
            if not isinstance(offset, int) or not isinstance(limit, int):
                return "Invalid offset or limit"
            if offset > self.max_offset or offset < 0:
                return "unsupport offset value"
            if limit < 0 or limit > 1_000:
                return "invalid limit"
            try:
                with self._lock:
                    rows = [
                        r | {"scores": dict(self.applied.get(r["request_id"], {}))}
                        for r in self.logged
                        if _matches(body["filter"], r)
                    ]
            except (KeyError, TypeError, ValueError) as exc:
                return f"unsupported filter: {exc}"
            descending = (body.get("sort") or {"created_at": "desc"}).get("created_at") != "asc"
            rows.sort(key=lambda r: _instant(r["request_created_at"]), reverse=descending)
            return rows[offset : offset + limit]

        return await self._answer(request, "request_query", check)

    async def _body(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        if request.headers.get("authorization"):
            return Response(b"<Error>Only one auth mechanism allowed</Error>", 400)
        stored = self.bodies.get(rid)
        if stored is None or request.query_params.get("X-Amz-Signature") != "ok":
            return Response(b"<Error><Code>AccessDenied</Code></Error>", 403)
        content, headers = stored
        return Response(content, 200, headers, media_type="application/json")


def _instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("a time must be a string")
    return datetime.fromisoformat(value)


def _matches(node: Any, row: dict[str, Any]) -> bool:
    """Evaluate jawn's filter tree for the ``request.created_at`` leaves the scorer sends."""
    if node == "all" or node == {}:
        return True
    if "operator" in node:
        left, right = _matches(node["left"], row), _matches(node["right"], row)
        return left and right if node["operator"] == "and" else left or right
    ops = node["request"]["created_at"]
    at = _instant(row["request_created_at"])
    tests = {
        "gte": lambda v: at >= v,
        "gt": lambda v: at > v,
        "lte": lambda v: at <= v,
        "lt": lambda v: at < v,
        "equals": lambda v: at == v,
    }
    return all(tests[op](_instant(value)) for op, value in ops.items())
