"""The status page over HTTP, on a real server and the stand-in: who may see it, what it says, the
retry forms and their CSRF defence, and what it never shows. Its real-browser test is
tests/test_status_browser.py."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.link import LinkThread
from tests.rawhttp import connect, read_response
from tests.server import SECRET, Server, payload, post_refused
from tests.standin import API_KEY, Injected, StandIn
from tests.stores import with_query
from webhook.status_view import Bar, bars, where_stored

TOKEN = "status-token-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
VOCAB = {"SCORER_ENABLED": "vocabulary_diversity", "SCORER_STATUS_TOKEN": TOKEN}


@pytest.fixture
def page(make_server: ServerFactory) -> Server:
    return make_server(**VOCAB)


@pytest.fixture
def browser(page: Server) -> Iterator[httpx2.Client]:
    """A client that keeps cookies, as a browser would (no redirects followed)."""
    with httpx2.Client(base_url=page.url, timeout=30) as client:
        yield client


def figures(server: Server) -> dict[str, Any]:
    answer = server.client.get("/status.json", headers=BEARER)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def attention(seen: dict[str, Any]) -> list[str]:
    """What the page asks a person to look at, less a part that took longer than its deadline
    to read (a loaded machine's, not the subject of these tests)."""
    return [a for a in seen["attention"] if not a.startswith("Part of this page could not")]


def sign_in(client: httpx2.Client, token: str = TOKEN) -> httpx2.Response:
    return client.post("/status/login", content=f"token={token}", headers=FORM)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def dead_letter(server: Server, standin: StandIn) -> str:
    rid = post_refused(server, standin)
    server.wait_rows(lambda rows: rows.get(rid, {}).get("state") == "dead")
    return rid


def test_the_page_is_off_unless_a_token_is_set(make_server: ServerFactory) -> None:
    server = make_server()
    for path in ("/status", "/status.json"):
        assert server.client.get(path, headers=BEARER).status_code == 404
    assert server.client.post("/status/retry", headers=BEARER | FORM).status_code == 404


def test_without_the_token_the_page_and_its_figures_are_refused(
    page: Server, browser: httpx2.Client
) -> None:
    answer = browser.get("/status")
    assert answer.status_code == 401
    assert "<h1>Sign in</h1>" in answer.text
    assert 'name="token"' in answer.text
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        answer = browser.get("/status.json", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"error": "needs the status token: Authorization: Bearer <token>"}
        assert answer.headers["www-authenticate"].startswith("Bearer")
    wrong = sign_in(browser, "not-the-token-0123456789")
    assert wrong.status_code == 401
    assert 'role="alert"' in wrong.text
    assert "set-cookie" not in wrong.headers
    assert browser.post("/status/retry", content="", headers=FORM).status_code == 401


def test_signing_in_sets_a_strict_http_only_session_that_is_not_the_token(
    page: Server, browser: httpx2.Client
) -> None:
    answer = sign_in(browser)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/status"
    cookie = answer.headers["set-cookie"]
    (morsel,) = SimpleCookie(cookie).values()
    assert morsel.key == "scorer_status"
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == "43200"
    assert not morsel["secure"]  # plain http on loopback: a Secure cookie would not come back
    assert TOKEN not in cookie
    shown = browser.get("/status")
    assert shown.status_code == 200
    assert "<h1>helicone-scorer status</h1>" in shown.text
    assert browser.get("/status.json").status_code == 200
    # A forged or stretched session is refused: its HMAC is keyed by the token.
    session = browser.cookies["scorer_status"]
    expires, mac = session.split(".")
    for forged in (f"{int(expires) + 3600}.{mac}", f"{expires}.{'0' * len(mac)}", "1.x", ""):
        browser.cookies.clear()
        browser.cookies.set("scorer_status", forged)
        assert browser.get("/status").status_code == 401
    browser.cookies.clear()
    browser.cookies.set("scorer_status", session)
    assert browser.get("/status").status_code == 200
    out = browser.post("/status/logout", content="", headers=FORM)
    assert out.status_code == 303
    assert 'scorer_status=""' in out.headers["set-cookie"]


def test_the_page_shows_the_service_and_its_queue(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for rid in ids:
        assert page.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: standin.posted_ids() >= set(ids))
    seen = eventually(lambda: (f := figures(page))["queue"]["counts"]["done"] == 3 and f)
    service = seen["service"]
    assert service["ready"] == {"ready": True, "error": None}
    assert service["dry_run"] is False
    assert service["store"]["kind"] == "SQLite"
    assert [s["name"] for s in service["scorers"]] == ["vocabulary_diversity"]
    assert seen["queue"]["oldest_undelivered_seconds"] is None
    api = seen["delivery"]["api"]
    assert api["last"]["status"] == 201
    assert api["last"]["call"] == "score"
    assert api["throttled_last_hour"] == 0
    hour = seen["scores"]["hour"]["vocabulary_diversity"]
    assert hour["webhooks"] == 3
    assert sum(hour["counts"].values()) == 3
    assert attention(seen) == []
    sign_in(browser)
    html = browser.get("/status").text
    assert re.search(r'data-testid="count-done">3<', html)
    assert 'role="img" aria-label="vocabulary_diversity, last hour: 3 webhooks' in html
    for heading in ("Service", "Queue", "Delivery", "Reconciliation", "Scores", "Dead letters"):
        assert f">{heading}</h2>" in html


def test_a_dead_letter_is_listed_and_retried_from_the_page(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    rid = dead_letter(page, standin)
    seen = figures(page)
    assert [d["request_id"] for d in seen["dead_letters"]["latest"]] == [rid]
    assert seen["dead_letters"]["latest"][0]["last_status"] == 400
    assert "1 dead letter: see Dead letters below." in seen["attention"]
    sign_in(browser)
    html = browser.get("/status").text
    assert f'data-request-id="{rid}"' in html
    assert f'aria-label="Retry {rid}"' in html
    form = f"csrf={csrf_of(html)}&request_id={rid}"
    answer = browser.post("/status/retry", content=form, headers=FORM)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/status?retried=1"
    assert "Re-queued 1 dead letter." in browser.get(answer.headers["location"]).text
    standin.wait_for(lambda: standin.posts()[rid] == 1)
    page.wait_rows(lambda rows: rows[rid]["state"] == "done")


def test_retry_all_by_bearer_needs_no_csrf(page: Server, standin: StandIn) -> None:
    ids = {dead_letter(page, standin) for _ in range(2)}
    answer = page.client.post("/status/retry", content="", headers=BEARER | FORM)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/status?retried=2"
    standin.wait_for(lambda: standin.posted_ids() >= ids)


def test_cross_site_and_forged_forms_are_refused_and_retry_nothing(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    rid = dead_letter(page, standin)
    sign_in(browser)
    csrf = csrf_of(browser.get("/status").text)
    own = f"csrf={csrf}&request_id={rid}"
    refused = [
        ({}, f"request_id={rid}", 403),  # no CSRF token
        ({}, f"csrf={'0' * 64}&request_id={rid}", 403),  # a wrong one
        ({"Origin": "https://evil.example"}, own, 403),  # another site's page
        ({"Sec-Fetch-Site": "cross-site"}, own, 403),
        ({"Content-Type": "text/plain"}, own, 415),
        ({}, own + "&pad=" + "x" * 5000, 413),
    ]
    for headers, body, status in refused:
        answer = browser.post("/status/retry", content=body, headers=FORM | headers)
        assert answer.status_code == status, (headers, answer.text)
        assert "error" in answer.json()
    assert page.rows()[rid]["state"] == "dead"
    assert browser.post("/status/retry", content=own, headers=FORM).status_code == 303
    # The same form from a page of this very site passes.
    standin.wait_for(lambda: standin.posts()[rid] == 1)


def test_an_api_that_fails_is_named_in_the_pages_own_words(page: Server, standin: StandIn) -> None:
    """The API down: every call fails (here with 503s), webhooks wait and are retried."""
    standin.fail_next(*[Injected(503, {"error": "down for maintenance"})] * 50)
    rid = str(uuid.uuid4())
    assert page.post(payload(rid)).status_code == 202
    said = eventually(
        lambda: [a for a in figures(page)["attention"] if a.startswith("Helicone's API")]
    )
    assert said[0].startswith(
        "Helicone's API has not accepted a call from this process since it started: the last answer"
        " was 503 (down for maintenance)"
    )
    assert "Webhooks are still accepted and wait in the queue" in said[0]
    assert figures(page)["delivery"]["api"]["last_trouble"]["status"] == 503
    html = page.client.get("/status", headers=BEARER).text
    assert "once the API accepts calls again (its first success makes every webhook" in html


def test_429s_are_counted_and_named(page: Server, standin: StandIn) -> None:
    standin.fail_next(Injected(429, headers={"Retry-After": "1"}))
    rid = str(uuid.uuid4())
    assert page.post(payload(rid)).status_code == 202
    standin.wait_for(lambda: standin.posts()[rid] == 1)
    api = figures(page)["delivery"]["api"]
    assert api["throttled_last_hour"] == 1
    assert api["last_throttled_at"] <= time.time()
    said = figures(page)["attention"]
    assert any(a.startswith("Helicone answered 429") for a in said)
    assert not any(a.startswith("Helicone's API") for a in said)  # throttled, not in trouble


def test_the_page_never_shows_bodies_secrets_or_keys(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    text = "a-private-answer-that-only-the-body-holds"
    rid = str(uuid.uuid4())
    assert page.post(payload(rid, text)).status_code == 202
    standin.wait_for(lambda: standin.posts()[rid] == 1)
    dead_letter(page, standin)
    sign_in(browser)
    shown = browser.get("/status").text + browser.get("/status.json").text
    for secret in (text, "general Kenobi", API_KEY, SECRET, TOKEN):
        assert secret not in shown
    headers = browser.get("/status").headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("how", ["cut", "frozen"])
def test_the_page_answers_while_the_database_is_away(
    make_server: ServerFactory, link: LinkThread, how: str
) -> None:
    """Each part is read with a deadline: a database that refuses or hangs makes the page say
    so, not hang or fail."""
    url = with_query(link.url, connect_timeout="1")
    server = make_server(SCORER_DATABASE_URL=url, SCORER_DATABASE_STATEMENT_TIMEOUT="3", **VOCAB)
    assert figures(server)["service"]["ready"]["ready"] is True
    if how == "cut":
        link.cut()
    else:
        link.freeze()
    seen = eventually(lambda: (f := figures(server))["service"]["ready"]["error"] and f, 60)
    assert seen["attention"][0].startswith("The store does not accept writes (")
    assert "error" in seen["queue"]
    token = {"Authorization": f"Bearer {TOKEN}"}
    html = server.client.get("/status", headers=token)
    assert html.status_code == 200
    assert "Could not read this part" in html.text
    if how == "cut":
        link.start()
    else:
        link.freeze(False)
    eventually(lambda: attention(figures(server)) == [], 60)


def test_behind_a_proxy_that_ends_tls_the_cookie_is_secure_and_the_forms_pass(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    """As on Fly: the browser is on https, the server sees http from the proxy."""
    rid = dead_letter(page, standin)
    https = {"X-Forwarded-Proto": "https", "Origin": f"https://127.0.0.1:{page.port}"}
    answer = browser.post("/status/login", content=f"token={TOKEN}", headers=FORM | https)
    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]
    session = answer.cookies["scorer_status"]
    with httpx2.Client(base_url=page.url, timeout=30) as client:  # sends it over http anyway
        client.cookies.set("scorer_status", session)
        csrf = csrf_of(client.get("/status").text)
        form = f"csrf={csrf}&request_id={rid}"
        retried = client.post("/status/retry", content=form, headers=FORM | https)
        assert retried.status_code == 303
    standin.wait_for(lambda: standin.posts()[rid] == 1)


def test_crafted_cookies_fields_and_links_get_a_clear_answer_not_a_500(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    rid = dead_letter(page, standin)  # so the page has retry forms
    for cookie in ("9" * 5000 + ".x", "²." + "a" * 64, "4102444800." + "é" * 64, "." * 3):
        for request in (b"GET /status", b"POST /status/retry"):
            head = request + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close"
            head += b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            sock = connect(page, head + b"Cookie: scorer_status=" + cookie.encode() + b"\r\n\r\n")
            with sock:
                assert read_response(sock).startswith(b"HTTP/1.1 401 "), (request, cookie)
    sign_in(browser)
    for csrf, status in (("%C3%A9", 403), ("", 403), ("0" * 5000, 413)):
        answer = browser.post("/status/retry", content=f"csrf={csrf}", headers=FORM)
        assert answer.status_code == status, answer.text
    html = browser.get("/status").text
    answer = browser.post(
        "/status/retry", content=f"csrf={csrf_of(html)}&request_id=", headers=FORM
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "request_id is empty: leave it out to retry them all"}
    for origin in ("http://[", "http://[::1"):  # not URLs: another site's, not a 500
        for path in ("/status/login", "/status/retry"):
            answer = page.client.post(path, content="", headers=FORM | {"Origin": origin})
            assert answer.status_code == 403, (path, origin, answer.text)
    for link in ("?retried=²", "?retried=" + "9" * 5000, "?retried=-1"):
        shown = browser.get("/status" + link)
        assert shown.status_code == 200
        assert "Re-queued" not in shown.text
    assert page.rows()[rid]["state"] == "dead"  # nothing above retried it


def test_one_refused_call_is_a_dead_letter_not_an_api_in_trouble(
    page: Server, standin: StandIn
) -> None:
    dead_letter(page, standin)
    assert attention(figures(page)) == ["1 dead letter: see Dead letters below."]


def test_a_refused_api_key_is_named(page: Server, standin: StandIn) -> None:
    standin.fail_next(Injected(401, {"error": "invalid API key"}))
    dead_letter_id = str(uuid.uuid4())
    assert page.post(payload(dead_letter_id)).status_code == 202
    said = eventually(
        lambda: [a for a in figures(page)["attention"] if a.startswith("Helicone's API")]
    )
    assert "the last answer was 401 (invalid API key)" in said[0]
    assert "It refuses the API key: check HELICONE_API_KEY" in said[0]


def test_forms_pass_behind_a_proxy_that_rewrites_the_host(
    page: Server, standin: StandIn, browser: httpx2.Client
) -> None:
    """nginx's default: Host is the upstream's address, the browser's Origin the public one."""
    public = {"Origin": "https://scorer.example.com"}
    said_so = [{"Sec-Fetch-Site": "same-origin"}, {"X-Forwarded-Host": "scorer.example.com"}]
    for headers in said_so:
        answer = browser.post(
            "/status/login", content=f"token={TOKEN}", headers=FORM | public | headers
        )
        assert answer.status_code == 303, headers
    refused = browser.post("/status/login", content=f"token={TOKEN}", headers=FORM | public)
    assert refused.status_code == 403


def test_the_store_is_named_without_its_user_password_or_options() -> None:
    assert where_stored("postgresql://u:p@ss@h1:5432,h2:5433/db?password=x") == {
        "kind": "PostgreSQL",
        "where": "h1:5432,h2:5433/db",
    }
    assert where_stored("postgresql:///db")["where"] == "local/db"
    assert where_stored("sqlite:///data/s.db") == {"kind": "SQLite", "where": "data/s.db"}


def test_histogram_bars() -> None:
    assert bars({}) == []
    assert bars({0: 5, 1: 2}) == [Bar("0", 5), Bar("1", 2)]
    tens = bars({3: 1, 67: 2, 100: 4})
    assert [b.label for b in tens][::3] == ["0-9", "30-39", "60-69", "90-100"]
    assert sum(b.count for b in tens) == 7
    assert tens[-1] == Bar("90-100", 4)
    wide = bars({-50: 1, 950: 1})
    assert wide[0] == Bar("-50 to 50", 1)
    assert wide[-1].count == 1
    assert sum(b.count for b in wide) == 2


def test_the_service_part_names_rules_the_judge_and_a_dry_run_but_no_keys(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "rules.toml").write_text(
        '[vocabulary_diversity]\nsample = 0.5\nmodels = ["gpt-4o*"]\nusers = ["a", "b"]\n'
    )
    judge_key = "sk-judge-key-never-shown-0123"
    server = make_server(
        api=False,  # a dry run
        SCORER_STATUS_TOKEN=TOKEN,
        SCORER_ENABLED="vocabulary_diversity,judge",
        SCORER_RULES_FILE=str(tmp_path / "rules.toml"),
        SCORER_FEEDBACK_RULE="vocabulary_diversity >= 50",
        SCORER_JUDGE_BASE_URL="https://user:pw@judge.example.com:8443/v1?key=x",
        SCORER_JUDGE_MODEL="judge-1",
        SCORER_JUDGE_API_KEY=judge_key,
        SCORER_SAMPLE="50",
        SCORER_DATABASE_URL=f"sqlite:///{tmp_path / 'scorer.db'}",
    )
    seen = figures(server)
    service = seen["service"]
    assert service["dry_run"] is True
    assert service["api"] is None
    assert service["scorers"][0] == {
        "name": "vocabulary_diversity",
        "scores": ["vocabulary_diversity"],
        "rule": "sample 50%; models gpt-4o*; 2 user pattern(s)",
    }
    assert service["feedback_rule"] == "vocabulary_diversity >= 50"
    judge = service["judge"]
    assert judge["model"] == "judge-1"
    assert judge["host"] == "https://judge.example.com:8443"
    assert seen["delivery"]["api"] is None
    assert seen["delivery"]["sample_percent"] == 50
    assert seen["reconciliation"]["on"] is False
    html = server.client.get("/status", headers=BEARER).text
    assert "dry run" in html
    assert "a dry run: nothing is posted" in html
    assert "judge-1 at https://judge.example.com:8443" in html
    assert "50% of webhooks scored and posted" in html
    for secret in (judge_key, "user:pw", "key=x", TOKEN, SECRET):
        assert secret not in html + str(seen)
