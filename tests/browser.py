"""A real browser for the tests: Debian's chromium, driven by Playwright's sync API.

The browser is the system's ``chromium`` (``scripts/test-packages`` installs it), never
Playwright's own download (``playwright install`` is not run anywhere). One browser per test
module (``chromium``), a fresh context and page per test (``tab``: not ``page`` nor ``browser``,
which tests/test_status.py names fixtures of its own).

Its network is loopback only: every request goes through a proxy at a closed loopback port, and
Chromium bypasses a proxy for loopback addresses alone, so the pages, the scripts run in them
(axe) and Chromium's own background calls reach nothing but this machine. The ``tab`` fixture
also fails a test whose page asked for anything off loopback, or raised an uncaught script error.

While a browser is open, Playwright's sync API keeps its event loop marked as running on the
test's thread, and ``asyncio.run`` raises there (``Server.rows``, ``Server.wait_rows``, reading
the store): call such helpers through :func:`off_loop`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.packages import installed

T = TypeVar("T")

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Nothing listens on port 9 (discard): whatever Chromium does not send straight to a
    # loopback address (its implicit bypass) fails at once. Not Playwright's proxy option,
    # which sends loopback through the proxy too.
    "--proxy-server=http://127.0.0.1:9",
    # WebRTC could send UDP around the proxy.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def chromium_path() -> str:
    """The system's chromium; a skip without it, or a failure under CI (``CI`` set)."""
    return installed("chromium", "chromium")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    # Generous waits: a loaded CI machine (2 cores, several test workers, a browser each) is slow.
    context.set_default_timeout(30_000)
    off_loopback: list[str] = []
    errors: list[str] = []

    def check(url: str) -> None:
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and (
            urlsplit(url).hostname not in LOOPBACK
        ):
            off_loopback.append(url)

    context.on("request", lambda request: check(request.url))
    opened = context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert off_loopback == [], f"the page asked for more than loopback: {off_loopback}"
    assert errors == [], f"uncaught script errors: {errors}"


def off_loop(call: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``call(*args, **kwargs)`` on a thread of its own, away from Playwright's event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args, **kwargs).result()
