"""The HTTP contract of POST /webhook, against the real server over loopback."""

from __future__ import annotations

import socket
import uuid

import orjson
import pytest

from tests.conftest import ServerFactory
from tests.server import SECRET, Server, payload
from tests.standin import StandIn
from tests.stores import sqlite_writes_held
from webhook.verify import sign


def assert_error(response: object, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert fragment in body["error"]


def test_accepts_signed_webhook_and_posts_its_scores(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    response = server.post(payload(rid, "the cat saw the dog"))
    assert response.status_code == 202
    assert response.json() == {"request_id": rid, "status": "queued"}
    standin.wait_for(lambda: rid in standin.posted_ids())
    # 4 unique of 5 words -> 80, the Worker's number (beside the other built-ins' scores)
    [scores] = standin.scores_for(rid)
    assert scores["vocabulary_diversity"] == 80
    assert standin.violations == []
    # The stand-in answers before the server records the delivery: wait for the commit.
    server.wait_rows(lambda rows: rows[rid]["state"] == "done")


def test_root_path_is_the_workers_route(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    assert server.post(payload(rid), path="/").status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Helicone-Signature": "0" * 64},
        {"Helicone-Signature": "not hex at all \u00e9".encode("latin-1")},
    ],
    ids=["missing", "wrong", "garbage"],
)
def test_bad_signature_is_401(server: Server, headers: dict[str, str]) -> None:
    body = payload()
    response = server.client.post(
        "/webhook", content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert_error(response, 401, "Helicone-Signature")
    assert server.rows() == {}


def test_signature_under_another_key_is_401(server: Server) -> None:
    assert_error(server.post(payload(), secret="some-other-key"), 401, "Helicone-Signature")


def test_any_of_several_secrets_passes_while_rotating(make_server: ServerFactory) -> None:
    server = make_server(HELICONE_WEBHOOK_SECRET=f"old-key, {SECRET}")
    assert server.post(payload(), secret=SECRET).status_code == 202
    assert server.post(payload(), secret="old-key").status_code == 202
    assert_error(server.post(payload(), secret="neither"), 401, "Signature")


def test_signature_is_checked_on_raw_bytes_with_non_ascii(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    text = "Grüße — ça va? 日本語のテキスト 🎉"
    body = orjson.dumps(
        {"request_id": rid, "response_body": {"choices": [{"message": {"content": text}}]}}
    )
    assert "日本語".encode() in body  # compact and unescaped, as JSON.stringify sends it
    assert server.post(body).status_code == 202
    # The same JSON re-serialised with escapes has another signature: it must not pass.
    escaped = orjson.loads(body)
    import json

    other = json.dumps(escaped).encode()
    response = server.client.post(
        "/webhook",
        content=other,
        headers={"Helicone-Signature": sign(SECRET, body), "Content-Type": "application/json"},
    )
    assert response.status_code == 401
    standin.wait_for(lambda: rid in standin.posted_ids())


def test_body_over_limit_is_413_by_content_length(make_server: ServerFactory) -> None:
    server = make_server(SCORER_MAX_BODY_BYTES="1000")
    body = payload(text="x " * 600)
    assert len(body) > 1000
    assert_error(server.post(body), 413, "1000 bytes")
    assert server.post(payload()).status_code == 202  # a small one still passes


def test_body_over_limit_is_413_while_streaming(make_server: ServerFactory) -> None:
    """No Content-Length (chunked): counted while reading, rejected before the end arrives."""
    server = make_server(SCORER_MAX_BODY_BYTES="1000")
    chunk = b"x" * 512
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):  # 1536 bytes, and the body never ends
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.settimeout(10)
        answer = b""
        while b'"}' not in answer and (chunk_in := sock.recv(65536)):
            answer += chunk_in
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert b'{"error":' in answer


def test_invalid_json_is_400(server: Server) -> None:
    assert_error(server.post(b'{"request_id": "abc",'), 400, "JSON")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[1, 2]", "object"),
        (b'"a string"', "object"),
        (b"{}", "request_id"),
        (b'{"request_id": 42}', "request_id"),
        (b'{"request_id": ""}', "request_id"),
        (b'{"request_id": null}', "request_id"),
    ],
)
def test_wrong_shape_is_422(server: Server, body: bytes, fragment: str) -> None:
    assert_error(server.post(body), 422, fragment)
    assert server.rows() == {}


def test_other_methods_are_405(server: Server) -> None:
    assert_error(server.client.get("/webhook"), 405, "Method Not Allowed")
    assert_error(server.client.put("/", content=b"{}"), 405, "Method Not Allowed")


def test_unknown_path_is_json_404(server: Server) -> None:
    assert_error(server.client.get("/nope"), 404, "Not Found")


def test_duplicate_is_200_and_posted_once(server: Server, standin: StandIn) -> None:
    rid = str(uuid.uuid4())
    body = payload(rid)
    assert server.post(body).status_code == 202
    second = server.post(body)
    assert second.status_code == 200
    assert second.json() == {"request_id": rid, "status": "duplicate"}
    standin.wait_for(lambda: rid in standin.posted_ids())
    # A third copy after delivery is still a duplicate, and nothing is posted again.
    assert server.post(body).status_code == 200
    other = str(uuid.uuid4())
    assert server.post(payload(other)).status_code == 202
    standin.wait_for(lambda: other in standin.posted_ids())
    assert [c.request_id for c in standin.ok_calls()].count(rid) == 1


def test_health_and_readiness(server: Server) -> None:
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_store_failure_is_503_and_nothing_is_acknowledged(make_server: ServerFactory) -> None:
    """Another process holds the write lock past the busy timeout: refuse, never pretend."""
    server = make_server()
    server.env["SCORER_DATABASE_URL"] += "?busy_timeout_ms=200"
    server.terminate()
    server.start()
    with sqlite_writes_held(server.db):
        rid = str(uuid.uuid4())
        assert_error(server.post(payload(rid)), 503, "not accepted")
        assert server.client.get("/readyz").status_code == 503
    assert rid not in server.rows()
    assert server.post(payload(rid)).status_code == 202
    assert server.client.get("/readyz").status_code == 200
