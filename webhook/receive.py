"""Receive Helicone's webhook: bound the body, verify it, validate it, store it, then answer.

The answer is the only point of durability, because Helicone never retries: 202 is sent only
after the webhook is committed to the store. Every rejection is a short JSON ``{"error": ...}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from webhook.budget import Budget, Hold
from webhook.helicone import id_problem
from webhook.logs import event
from webhook.metrics import RECEIVED_BY
from webhook.store import Store
from webhook.verify import HEADER, Verifier

__all__ = ["Ingest", "error", "json_response", "receive"]

log = logging.getLogger("webhook.receive")

MAX_REQUEST_ID = 512
BUDGET_WAIT = 10.0  # seconds a body waits for room in the in-flight budget before a 503


@dataclass(slots=True)
class Ingest:
    """What the receiver needs, built once by the app."""

    store: Store
    verifier: Verifier | None  # None only when unsigned webhooks are explicitly allowed
    max_body_bytes: int
    budget: Budget


def json_response(status: int, content: dict[str, object]) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


async def _read_body(request: Request, ingest: Ingest, hold: Hold) -> bytes | Response:
    """The body, or the answer: too large, no room in the in-flight budget, or the client left.

    Past ``max_body_bytes`` it stops at once (by the declared length, else while reading). Its
    bytes are reserved in the budget before they are read; see :mod:`webhook.budget`.
    """
    limit = ingest.max_body_bytes
    declared = request.headers.get("content-length")
    size = (
        int(declared)
        if declared is not None and declared.isascii() and declared.isdigit()
        else None
    )
    if size is not None and size > limit:
        return _reject("too_large", 413, f"body is larger than {limit} bytes")
    if size is not None and not await hold.cover(size, BUDGET_WAIT):
        return _busy()
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                return _reject("too_large", 413, f"body is larger than {limit} bytes")
            if not await hold.cover(len(body) + len(chunk), BUDGET_WAIT):
                return _busy()
            body += chunk
    except ClientDisconnect:
        # Nobody is left to answer: not a warning, but counted (Stripe, Svix and GitHub retry
        # these; Helicone does not, so a rising count is worth a look).
        RECEIVED_BY["client_disconnect"].inc()
        event(log, "client disconnected mid-body", level=logging.DEBUG, outcome="client_disconnect")
        return error(400, "client disconnected before the body was complete")
    return bytes(body)


def _busy() -> Response:
    response = _reject("busy", 503, "too many request bytes in flight; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def _reject(outcome: str, status: int, message: str, request_id: str | None = None) -> Response:
    RECEIVED_BY[outcome].inc()
    event(
        log, message, level=logging.WARNING, outcome=outcome, status=status, request_id=request_id
    )
    return error(status, message)


async def receive(request: Request) -> Response:
    ingest: Ingest = request.app.state.ingest
    async with ingest.budget.hold() as hold:  # the body's bytes, held until the answer
        return await _receive(request, ingest, hold)


async def _receive(request: Request, ingest: Ingest, hold: Hold) -> Response:
    body = await _read_body(request, ingest, hold)
    if isinstance(body, Response):
        return body
    if ingest.verifier is not None and not ingest.verifier.verify(
        body, request.headers.get(HEADER)
    ):
        return _reject("bad_signature", 401, "missing or invalid Helicone-Signature")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _reject("bad_json", 400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return _reject("bad_payload", 422, "body must be a JSON object")
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return _reject("bad_payload", 422, "request_id must be a non-empty string")
    if len(request_id) > MAX_REQUEST_ID:
        return _reject("bad_payload", 422, f"request_id is longer than {MAX_REQUEST_ID} characters")
    if (problem := id_problem(request_id)) is not None:
        return _reject("bad_payload", 422, problem, request_id)
    try:
        new = await ingest.store.add(request_id, body)
    except Exception as exc:
        # A warning per webhook: the store logs the failure itself once, at ERROR.
        RECEIVED_BY["store_error"].inc()
        log.warning(
            "could not store the webhook: %s",
            exc,
            extra={"request_id": request_id, "outcome": "store_error", "status": 503},
        )
        return error(503, "could not store the webhook; it was not accepted")
    if not new:
        RECEIVED_BY["duplicate"].inc()
        event(log, "duplicate", request_id=request_id, outcome="duplicate", status=200)
        return json_response(200, {"request_id": request_id, "status": "duplicate"})
    RECEIVED_BY["accepted"].inc()
    # Its outcome line comes from the relay (posted, dry_run, dead...): one line per webhook.
    event(log, "accepted", level=logging.DEBUG, request_id=request_id, outcome="accepted")
    return json_response(202, {"request_id": request_id, "status": "queued"})
