"""'Body too large': fetching the full bodies from an allowed origin, and only from there."""

from __future__ import annotations

import asyncio
import gzip
import os
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from scorers import Context, fill_bodies, parse_origins
from scorers.fetch import HELICONE_BODY_HOSTS, allowed
from tests.conftest import ServerFactory
from tests.standin import StandIn
from tests.stubs import BodyStore

TOO_LARGE = "Body too large for webhook, please fetch the full request and response from Helicone"
REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Tell me a long story."}]}
RESPONSE = {"choices": [{"message": {"content": "Once upon a time, " * 800}}]}


@pytest.fixture
def store() -> Iterator[BodyStore]:
    s = BodyStore().start()
    yield s
    s.stop()


def big_payload(url: str, rid: str | None = None) -> dict[str, Any]:
    return {
        "request_id": rid or str(uuid.uuid4()),
        "request_body": TOO_LARGE,
        "response_body": TOO_LARGE,
        "request_response_url": url,
        "model": "gpt-4o",
        "metadata": {"latencyMs": 900},
    }


def fill(payload: dict[str, Any], allow: list[str], **kw: Any) -> Any:
    return asyncio.run(fill_bodies(payload, parse_origins(allow), **kw))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://s3.amazonaws.com/bucket/key?sig=1", True),
        ("https://S3.AmazonAWS.com./bucket/key", True),
        ("https://s3.amazonaws.com:443/bucket", True),
        ("https://s3.amazonaws.com.evil.com/bucket/key", False),
        ("https://evil.com/s3.amazonaws.com/key", False),
        ("https://s3.amazonaws.com@evil.com/key", False),
        ("https://user@s3.amazonaws.com/key", False),
        ("http://s3.amazonaws.com/bucket", False),
        ("https://s3.amazonaws.com:8443/bucket", False),
        ("https://evils3.amazonaws.com/bucket", False),
        ("ftp://s3.amazonaws.com/bucket", False),
        ("not a url", False),
        ("https://[::1", False),
    ],
)
def test_origin_matching_is_exact(url: str, ok: bool) -> None:
    assert allowed(url, parse_origins(["https://s3.amazonaws.com"])) is ok


def test_origin_list_parsing() -> None:
    assert [str(o) for o in parse_origins(["http://127.0.0.1:9000", "https://x.io/"])] == [
        "http://127.0.0.1:9000",
        "https://x.io:443",
    ]
    for bad in ("s3.amazonaws.com", "https://x.io/bucket", "ftp://x.io", "https://x.io?a=1"):
        with pytest.raises(ValueError, match="scheme://host"):
            parse_origins([bad])
    # The default: Helicone's S3 hosts, https only.
    assert all(o.scheme == "https" for o in parse_origins(HELICONE_BODY_HOSTS))
    assert allowed(
        "https://s3.us-west-2.amazonaws.com/request-response-storage/organizations/o/requests/r/"
        "request_response_body?X-Amz-Signature=x",
        parse_origins(HELICONE_BODY_HOSTS),
    )


def test_fetches_gzip_json_from_an_allowed_origin(store: BodyStore) -> None:
    url = store.put("organizations/o/requests/r1/request_response_body", REQUEST, RESPONSE)
    filled = fill(big_payload(url), [store.base_url])
    assert filled["request_body"] == REQUEST
    assert filled["response_body"] == RESPONSE
    ctx = Context.from_payload(filled)
    assert ctx.request_text == "Tell me a long story."
    assert ctx.text is not None
    assert ctx.text.startswith("Once upon a time")
    assert [h[:2] for h in store.hits] == [("GET", url.removeprefix(store.base_url))]


def test_plain_json_and_string_bodies_work_too(store: BodyStore) -> None:
    url = store.put("k2", orjson.dumps(REQUEST).decode(), RESPONSE, gzipped=False)
    filled = fill(big_payload(url), [store.base_url])
    assert Context.from_payload(filled).request_text == "Tell me a long story."


def test_only_the_too_large_side_is_replaced(store: BodyStore) -> None:
    url = store.put("k3", {"other": 1}, RESPONSE)
    payload = big_payload(url) | {"request_body": REQUEST}
    filled = fill(payload, [store.base_url])
    assert filled["request_body"] == REQUEST
    assert filled["response_body"] == RESPONSE


def test_a_host_not_allowed_is_never_contacted(store: BodyStore) -> None:
    url = store.put("k4", REQUEST, RESPONSE)
    payload = big_payload(url)
    assert fill(payload, list(HELICONE_BODY_HOSTS)) is payload
    assert fill(payload, []) is payload
    # Same host, other port; same port, other scheme.
    assert fill(payload, ["http://127.0.0.1:1"]) is payload
    assert fill(payload, [store.base_url.replace("http:", "https:")]) is payload
    assert store.hits == []


def test_failures_leave_the_payload_unchanged(store: BodyStore) -> None:
    forbidden = big_payload(f"{store.base_url}/request-response-storage/missing?sig=x")
    assert fill(forbidden, [store.base_url]) is forbidden  # 403, like an expired signature
    big = big_payload(store.put("k5", REQUEST, RESPONSE))
    assert fill(big, [store.base_url], max_bytes=1000) is big  # too big once inflated
    store.objects["/request-response-storage/noise"] = os.urandom(50_000)
    noise = big_payload(f"{store.base_url}/request-response-storage/noise")
    assert fill(noise, [store.base_url], max_bytes=10_000) is noise  # too big to download
    store.objects["/request-response-storage/bomb"] = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    bomb = big_payload(f"{store.base_url}/request-response-storage/bomb")
    assert (
        fill(bomb, [store.base_url], max_bytes=1_000_000) is bomb
    )  # small compressed, huge inflated
    store.objects["/request-response-storage/junk"] = gzip.compress(b"not json")
    junk = big_payload(f"{store.base_url}/request-response-storage/junk")
    assert fill(junk, [store.base_url]) is junk
    no_url = big_payload("x")
    del no_url["request_response_url"]
    assert fill(no_url, [store.base_url]) is no_url


def test_redirects_are_not_followed(store: BodyStore) -> None:
    elsewhere = BodyStore().start()
    try:
        target = elsewhere.put("k7", REQUEST, RESPONSE)
        store.redirects["/request-response-storage/moved"] = target
        payload = big_payload(f"{store.base_url}/request-response-storage/moved")
        assert fill(payload, [store.base_url]) is payload
        assert len(store.hits) == 1
        assert elsewhere.hits == []
    finally:
        elsewhere.stop()


def test_nothing_is_fetched_when_the_bodies_are_there(store: BodyStore) -> None:
    payload = big_payload(store.put("k6", REQUEST, RESPONSE)) | {
        "request_body": REQUEST,
        "response_body": RESPONSE,
    }
    assert fill(payload, [store.base_url]) is payload
    assert store.hits == []


def test_the_server_fetches_and_scores_the_full_answer(
    make_server: ServerFactory, standin: StandIn, store: BodyStore
) -> None:
    server = make_server(SCORER_BODY_URL_ALLOW=f"https://s3.amazonaws.com, {store.base_url}")
    rid = str(uuid.uuid4())
    url = store.put(f"organizations/o/requests/{rid}/request_response_body", REQUEST, RESPONSE)
    assert server.post(orjson.dumps(big_payload(url, rid))).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    [scores] = standin.scores_for(rid)
    assert scores["word_count"] == 3200  # "Once upon a time," x 800
    assert scores["latency_ms"] == 900
    assert len(store.hits) == 1


def test_the_server_never_contacts_a_host_outside_the_default_list(
    make_server: ServerFactory, standin: StandIn, store: BodyStore
) -> None:
    server = make_server()  # default SCORER_BODY_URL_ALLOW: Helicone's S3 hosts, https only
    rid = str(uuid.uuid4())
    url = store.put(f"organizations/o/requests/{rid}/request_response_body", REQUEST, RESPONSE)
    assert server.post(orjson.dumps(big_payload(url, rid))).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    assert standin.scores_for(rid) == [{"latency_ms": 900}]  # no text: only the metadata scores
    assert store.hits == []
    assert "is not in SCORER_BODY_URL_ALLOW" in server.log()
