from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser import chromium, tab  # noqa: F401 (fixtures, made known to every test here)
from tests.link import link  # noqa: F401 (a fixture, as above)
from tests.server import Server, with_api
from tests.standin import StandIn
from tests.stores import (  # noqa: F401 (fixtures, made known to every test here)
    backend,
    postgres_database,
    postgres_server,
    postgres_url,
    throwaway_postgres,
)

ServerFactory = Callable[..., Server]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn().start()
    yield s
    s.stop()
    assert s.violations == [], s.violations


@pytest.fixture
def make_server(
    tmp_path: Path, standin: StandIn, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Start servers on one store, talking to the stand-in unless told otherwise.

    ``store``: ``"sqlite"`` (the default), one SQLite file in ``tmp_path``; ``"postgres"``, a
    schema of this test's own (the ``postgres_url`` fixture). Every server of a test shares it.
    ``workers``: ``serve --workers``; ``log_level``: ``serve --log-level``.
    A test runs on both with ``@pytest.mark.parametrize("store", BACKENDS)`` and
    ``make_server(store=store)``; ``Server.rows()`` reads whichever it is.
    """
    servers: list[Server] = []

    def make(
        start: bool = True,
        api: bool = True,
        store: str = "sqlite",
        workers: int = 1,
        log_level: str = "info",
        **env: str | None,
    ) -> Server:
        if store == "postgres":
            env = {"SCORER_DATABASE_URL": request.getfixturevalue("postgres_url")} | env
        elif store != "sqlite":
            raise ValueError(f"no such store for a test server: {store!r}")
        server = Server(
            tmp_path,
            (with_api(standin.base_url) if api else {}) | env,
            workers=workers,
            log_level=log_level,
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    return make_server()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as the server does."""
    return "asyncio"
