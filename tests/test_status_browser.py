"""The status page (``/status``) in a real browser: Debian's chromium through Playwright, against
a real server and the Helicone stand-in (see tests/browser.py for the browser's setup).

Every test here holds a browser open, so store reads go through the page, ``/status.json`` or
:func:`tests.browser.off_loop` (Playwright's sync API keeps an event loop running on this thread).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.server import SECRET, Server, payload, post_refused
from tests.standin import API_KEY, Injected, StandIn

# Generous waits: a loaded CI machine (2 cores, several test workers, a browser each) is slow.
expect.set_options(timeout=20_000)

TOKEN = "status-token-7f3a9c1e5b2d4f6a8c0e"
# The webhooks' response text: the page must never show a body.
WORDS = "Marmalade skies over a quiet harbour on Tuesday"
SECTIONS = ["Service", "Queue", "Delivery", "Reconciliation", "Scores", "Dead letters"]
AXE = (resources.files("axe_playwright_python") / "axe.min.js").read_text(encoding="utf-8")
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture
def status_server(make_server: ServerFactory) -> Server:
    return make_server(SCORER_STATUS_TOKEN=TOKEN)


def hold_timers(page: Page) -> None:
    """Stop the page's timers (its 15-second reload among them): the tests reload it themselves,
    and a reload of its own in the middle of a step would pull the page from under it."""
    page.clock.install()
    page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))


def sign_in(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/status")
    page.get_by_label("Status token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("helicone-scorer status")


def count(page: Page, state: str) -> int | None:
    """The count of ``state`` on the page; None when the page could not read the queue."""
    cell = page.get_by_test_id(f"count-{state}")
    return int(cell.inner_text().strip()) if cell.count() else None


def reload_until(page: Page, condition: Callable[[], object], what: str) -> None:
    """Reload the page until ``condition()`` holds on it, with a deadline."""

    def reloaded() -> object:
        page.reload()
        return condition()

    eventually(reloaded, 20.0, what=what, show=page.content, interval=0.2)


def dead_row(page: Page, request_id: str) -> Locator:
    return page.get_by_test_id("dead-letters").locator(f'tr[data-request-id="{request_id}"]')


def axe_violations(page: Page) -> list[str]:
    """axe-core's violations on the page as it is: each rule with the elements it names.

    axe's script comes from the axe-playwright-python wheel and runs in the page: it fetches
    nothing (the ``tab`` fixture fails a test whose page asks for anything off loopback). It
    waits on timers of its own: the page's clock runs while it does (see :func:`hold_timers`)."""
    page.clock.resume()
    try:
        page.evaluate(AXE)
        results: dict[str, Any] = page.evaluate("axe.run(document)")
    finally:
        page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 0.1)
    return [
        f"{v['id']} ({v['impact']}): {v['help']}: "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"])
        for v in results["violations"]
    ]


def assert_fits(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"scrolls sideways: {widths[0]} px wide in {widths[1]}"


def assert_nothing_secret(html: str) -> None:
    for secret in (WORDS, API_KEY, TOKEN, SECRET):
        assert secret not in html, f"the page shows {secret!r}"


def test_the_browser_reaches_loopback_only(server: Server, chromium: Browser, tab: Page) -> None:
    answer = tab.goto(f"{server.url}/healthz")
    assert answer is not None
    assert answer.status == 200
    context = chromium.new_context()  # not the tab's, which fails a test that asks off loopback
    try:
        other = context.new_page()
        for url in ("http://example.com/", "https://192.0.2.1/"):
            with pytest.raises(PlaywrightError, match="ERR_PROXY_CONNECTION_FAILED"):
                other.goto(url, timeout=10_000)
    finally:
        context.close()


def test_without_the_token_the_page_is_refused(
    make_server: ServerFactory, status_server: Server, tab: Page
) -> None:
    server = status_server
    hold_timers(tab)
    refused = tab.goto(f"{server.url}/status")
    assert refused is not None
    assert refused.status == 401
    expect(tab.get_by_role("heading", level=1)).to_have_text("Sign in")
    field = tab.get_by_label("Status token")
    expect(field).to_have_attribute("type", "password")
    expect(field).to_have_attribute("name", "token")
    form = tab.locator("form", has=field)
    expect(form).to_have_attribute("method", "post")
    expect(form).to_have_attribute("action", "/status/login")
    expect(tab.get_by_role("alert")).to_have_count(0)
    assert_nothing_secret(tab.content())

    field.fill("not-the-token")
    with tab.expect_response(lambda r: r.url.endswith("/status/login")) as wrong:
        tab.get_by_role("button", name="Sign in").click()
    assert wrong.value.status == 401
    expect(tab.get_by_role("alert")).to_be_visible()
    expect(tab.get_by_label("Status token")).to_be_visible()
    assert tab.context.cookies() == []
    assert_nothing_secret(tab.content())

    assert server.client.get("/status").status_code == 401
    unsigned = server.client.get("/status.json")
    assert unsigned.status_code == 401
    assert unsigned.headers["content-type"].startswith("application/json")
    bad = {"Authorization": "Bearer not-the-token"}
    assert server.client.get("/status.json", headers=bad).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert server.client.get("/status.json", headers=good).status_code == 200
    bearer = server.client.get("/status", headers=good)
    assert bearer.status_code == 200
    assert "helicone-scorer status" in bearer.text

    # Off unless a token is set.
    off = make_server()
    for path in ("/status", "/status.json"):
        answer = httpx2.get(f"{off.url}{path}")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/json")


def test_signed_in_the_page_shows_the_queue_and_retries_dead_letters(
    status_server: Server, standin: StandIn, tab: Page
) -> None:
    server = status_server
    hold_timers(tab)
    sign_in(tab, server)
    session = {c["name"]: c for c in tab.context.cookies()}
    assert session, "signing in set no cookie"
    for cookie in session.values():
        assert cookie["httpOnly"], cookie
        assert cookie["sameSite"] == "Strict", cookie
    headings = tab.get_by_role("heading", level=2).all_inner_texts()
    assert [h for h in headings if h in SECTIONS] == SECTIONS, headings
    counts = {state: count(tab, state) for state in ("pending", "leased", "done", "dead")}
    assert counts == {"pending": 0, "leased": 0, "done": 0, "dead": 0}  # a fresh server
    done = 0

    sent = [str(uuid.uuid4()) for _ in range(3)]
    for rid in sent:
        assert server.post(payload(rid, WORDS)).status_code == 202
    reload_until(tab, lambda: count(tab, "done") == done + 3, "three more done")
    assert set(sent) <= standin.posted_ids()
    expect(tab.get_by_test_id("dead-letters").locator("tr[data-request-id]")).to_have_count(0)

    # A 400 for its scores: a dead letter at once. Retried from its row, the stand-in takes it.
    rid = post_refused(server, standin, WORDS)
    reload_until(tab, lambda: dead_row(tab, rid).count() == 1, "its dead letter's row")
    assert count(tab, "dead") == 1
    assert_nothing_secret(tab.content())
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert_nothing_secret(server.client.get("/status.json", headers=bearer).text)
    retry = tab.get_by_role("button", name=f"Retry {rid}", exact=True)
    expect(retry).to_have_text("Retry")
    retry.click()
    expect(tab.get_by_role("status")).to_have_text("Re-queued 1 dead letter.")
    assert tab.url == f"{server.url}/status?retried=1"
    standin.wait_for(lambda: rid in standin.posted_ids())
    reload_until(
        tab,
        lambda: dead_row(tab, rid).count() == 0 and count(tab, "done") == done + 4,
        "the retried webhook done, its row gone",
    )
    assert count(tab, "dead") == 0

    # Two more, retried together.
    standin.fail_next(*[Injected(400, {"data": None, "error": "bad scores"})] * 2)
    both = [str(uuid.uuid4()) for _ in range(2)]
    for rid in both:
        assert server.post(payload(rid, WORDS)).status_code == 202
    reload_until(tab, lambda: count(tab, "dead") == 2, "two dead letters")
    expect(tab.get_by_test_id("dead-letters").locator("tr[data-request-id]")).to_have_count(2)
    tab.get_by_role("button", name="Retry all dead letters").click()
    expect(tab.get_by_role("status")).to_have_text("Re-queued 2 dead letters.")
    standin.wait_for(lambda: set(both) <= standin.posted_ids())
    reload_until(tab, lambda: count(tab, "done") == done + 6, "both retried webhooks done")
    assert_nothing_secret(tab.content())

    tab.get_by_role("button", name="Sign out").click()
    expect(tab.get_by_role("heading", level=1)).to_have_text("Sign in")
    refused = tab.reload()
    assert refused is not None
    assert refused.status == 401


def test_a_retry_without_its_csrf_field_is_refused(
    status_server: Server, standin: StandIn, tab: Page
) -> None:
    server = status_server
    rid = post_refused(server, standin, WORDS)
    hold_timers(tab)
    sign_in(tab, server)
    reload_until(tab, lambda: dead_row(tab, rid).count() == 1, "its dead letter's row")

    # The session's cookie goes with it, but not the form's CSRF field.
    forged = tab.request.post(
        f"{server.url}/status/retry", form={"request_id": rid}, max_redirects=0
    )
    assert forged.status == 403, forged.status
    tab.reload()
    expect(dead_row(tab, rid)).to_have_count(1)
    assert count(tab, "dead") == 1


def test_the_pages_pass_axe_and_fit_a_phone(
    status_server: Server, standin: StandIn, tab: Page
) -> None:
    server = status_server
    hold_timers(tab)
    tab.goto(f"{server.url}/status")
    assert axe_violations(tab) == []
    tab.get_by_label("Status token").fill("not-the-token")
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("alert")).to_be_visible()
    assert axe_violations(tab) == []
    tab.set_viewport_size(PHONE)
    assert_fits(tab)

    tab.set_viewport_size(DESKTOP)
    sign_in(tab, server)
    first = str(uuid.uuid4())
    assert server.post(payload(first, WORDS)).status_code == 202
    standin.wait_for(lambda: first in standin.posted_ids())  # before the 400 is in place
    rid = post_refused(server, standin, WORDS)
    reload_until(tab, lambda: dead_row(tab, rid).count() == 1, "its dead letter's row")
    assert axe_violations(tab) == []
    tab.set_viewport_size(PHONE)
    assert_fits(tab)
    assert axe_violations(tab) == []

    tab.get_by_role("button", name=f"Retry {rid}", exact=True).click()
    expect(tab.get_by_role("status")).to_have_text("Re-queued 1 dead letter.")
    assert_fits(tab)
    assert axe_violations(tab) == []
    assert_nothing_secret(tab.content())


def test_the_page_reloads_itself(status_server: Server, tab: Page) -> None:
    hold_timers(tab)
    sign_in(tab, status_server)
    with tab.expect_navigation():
        tab.clock.fast_forward(16_000)
    expect(tab.get_by_role("heading", level=1)).to_have_text("helicone-scorer status")


def test_the_page_works_without_javascript(
    status_server: Server, standin: StandIn, chromium: Browser
) -> None:
    server = status_server
    rid = post_refused(server, standin, WORDS)
    context = chromium.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, server)
        reload_until(page, lambda: dead_row(page, rid).count() == 1, "its dead letter's row")
        page.get_by_role("button", name=f"Retry {rid}", exact=True).click()
        expect(page.get_by_role("status")).to_have_text("Re-queued 1 dead letter.")
        standin.wait_for(lambda: rid in standin.posted_ids())
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    finally:
        context.close()
