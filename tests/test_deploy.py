"""A rolling restart under steady traffic loses no webhook.

Two servers share one store behind :class:`tests.proxy.Proxy`, which retries a connection only
when it is refused, as Fly's proxy does. Client threads send unique signed webhooks through it at
a steady rate while the first server is restarted (SIGTERM, exit, start again on its port), then
the second. Every webhook must be acknowledged (202), none may fail at the client, and every one
must be delivered to the stand-in of Helicone's API exactly once.

The store is the ``store_env`` fixture's parameter: the SQLite file both servers share, or one
PostgreSQL database (a schema of the test's own). The rows are read through the store's read
path at the URL the servers were given, whichever it is.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx2
import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.proxy import Proxy
from tests.server import SECRET, Server, payload, wait_done
from tests.standin import StandIn
from webhook.verify import sign

RATE = 30.0  # webhooks a second, per client thread
# One client keeps its connection alive between webhooks (closing it well before the server's
# keep-alive timeout, as a proxy's pool does); the other opens a connection for each.
KEEP_ALIVE = (True, False)
BETWEEN = 60  # webhooks sent between two steps of the deploy


@dataclass
class Sent:
    at: float
    outcome: int | str  # the status, or the error the client saw


@dataclass
class Traffic:
    """Client threads sending signed webhooks at a steady rate; every outcome is kept."""

    url: str
    sent: dict[str, Sent] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for keep_alive in KEEP_ALIVE:
            thread = threading.Thread(target=self._send, args=(keep_alive,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self) -> int:
        return len(self.sent)

    def wait_for_more(self, n: int = BETWEEN) -> None:
        target = self.count() + n
        eventually(lambda: self.count() >= target, 30, what=f"{target} webhooks sent")

    def _send(self, keep_alive: bool) -> None:
        limits = httpx2.Limits(max_keepalive_connections=int(keep_alive), keepalive_expiry=1.0)
        with httpx2.Client(base_url=self.url, timeout=60, limits=limits, trust_env=False) as c:
            next_at = time.monotonic()
            while not self._stop.is_set():
                rid = str(uuid.uuid4())
                body = payload(rid)
                headers = {"Content-Type": "application/json"}
                headers["Helicone-Signature"] = sign(SECRET, body)
                at = time.monotonic()
                outcome: int | str
                try:
                    outcome = c.post("/webhook", content=body, headers=headers).status_code
                except httpx2.HTTPError as exc:
                    outcome = repr(exc)
                self.sent[rid] = Sent(at, outcome)
                next_at += 1 / RATE
                self._stop.wait(max(0.0, next_at - time.monotonic()))


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """Settings that put both servers on one store. SQLite: the factory's file, shared as is;
    PostgreSQL: one database."""
    if request.param == "sqlite":
        return {}
    return {"SCORER_DATABASE_URL": request.getfixturevalue("postgres_url")}


def _restart(server: Server, proxy: Proxy) -> tuple[float, float]:
    """SIGTERM, a clean exit, a start on the same port; when it began and when it was back.

    It starts again only once the proxy has had a connection refused (and sent it to the other
    server), as happens while a machine is down, however fast this one restarts.
    """
    began = time.monotonic()
    assert server.terminate(60), server.log()
    refused = proxy.counts.refused
    eventually(lambda: proxy.counts.refused > refused, 30, what="a connection refused")
    server.start()
    return began, time.monotonic()


def test_a_rolling_restart_under_steady_traffic_loses_no_webhook(
    make_server: ServerFactory, store_env: dict[str, str | None], standin: StandIn
) -> None:
    env = store_env | {"SCORER_RATE_LIMIT_PER_MINUTE": "100000", "SCORER_SHUTDOWN_GRACE": "5"}
    first, second = make_server(**env), make_server(**env)
    proxy = Proxy([first.port, second.port]).start()
    traffic = Traffic(proxy.url).start()
    try:
        traffic.wait_for_more()
        windows = [_restart(first, proxy)]
        traffic.wait_for_more()
        windows.append(_restart(second, proxy))
        traffic.wait_for_more()
    finally:
        traffic.stop()
        proxy.stop()

    sent = traffic.sent
    failed = {rid: s.outcome for rid, s in sent.items() if s.outcome != 202}
    assert failed == {}, proxy.counts.failed
    assert proxy.counts.failed == []
    # The deploy really happened under traffic: webhooks were sent while each server was
    # stopping, down, and starting again.
    for began, back in windows:
        assert sum(began <= s.at <= back for s in sent.values()) >= 10, windows

    acked = set(sent)
    standin.wait_for(lambda: acked <= standin.posted_ids(), timeout=120)
    posts = Counter(c.request_id for c in standin.ok_calls("score"))
    assert {rid: n for rid, n in posts.items() if n != 1} == {}
    wait_done(first.env["SCORER_DATABASE_URL"], acked)
