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

import time

import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.proxy import Proxy
from tests.server import Server, wait_done
from tests.standin import StandIn
from tests.traffic import Traffic


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
    wait_done(first.store_url, acked, 120)  # then count: a repeat comes before the last record
    assert acked <= standin.posted_ids()
    assert {rid: n for rid, n in standin.posts().items() if n != 1} == {}
