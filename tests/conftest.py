from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
def make_server(tmp_path: Path, standin: StandIn) -> Iterator[ServerFactory]:
    """Start servers on one SQLite file, talking to the stand-in unless told otherwise."""
    servers: list[Server] = []

    def make(start: bool = True, api: bool = True, **env: str | None) -> Server:
        server = Server(tmp_path, (with_api(standin.base_url) if api else {}) | env)
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
