"""A TCP hop to the database that a test can cut and restore: the database going away (every
connection reset, new ones refused) and coming back, on the same port.

Not :mod:`tests.proxy`, which stands for Fly's proxy in front of servers: it retries refusals.
:class:`Link` runs on the caller's event loop; :class:`LinkThread` runs one on a loop of its own,
for tests whose other end is a server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.standin import free_port

__all__ = ["Link", "LinkThread", "link", "through"]


def _upstream(url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))


def through(url: str, port: int) -> str:
    """The database URL ``url``, reached through a link on ``port`` instead."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Link:
    """A hop to the database of ``url``, listening on :attr:`port`."""

    def __init__(self, url: str) -> None:
        self.upstream = _upstream(url)
        self.port = free_port()
        self.url = through(url, self.port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def __aenter__(self) -> Link:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def cut(self) -> None:
        """Reset every connection through it, and refuse new ones until :meth:`start`."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        """Cut, and end every connection's task, so no socket is left for the garbage collector
        to find open (a ResourceWarning, an error under ``filterwarnings = error``, that fails
        whichever test is running then: seen in CI)."""
        self.freeze(False)
        if self.up:
            await self.cut()
        for writer in self._writers:  # those opened since a cut, if any
            writer.transport.abort()
        # Aborted, each connection's pipes end on their own; a task cancelled instead would
        # make asyncio's stream callback log a CancelledError.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    def freeze(self, frozen: bool = True) -> None:
        """Stop passing bytes on (or pass them again), closing nothing: a database that stopped
        answering, where no reset ever comes."""
        if frozen:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # Known to :meth:`cut` from the start: a connection accepted just before a cut, whose
        # upstream opened after it, would otherwise live on through the cut (a store's pool
        # then reached the database while the test had cut it: seen in CI).
        self._writers.add(writer)
        ends = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            ends.append(up_writer)
            if writer.transport.is_closing():  # cut meanwhile
                return
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            return
        finally:
            for end in ends:
                end.transport.abort()
            self._writers.difference_update(ends)
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


class LinkThread:
    """A :class:`Link` on an event loop of its own thread; the same calls, blocking."""

    def __init__(self, url: str) -> None:
        self.link = Link(url)
        self.url = self.link.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(30)

    def start(self) -> LinkThread:
        self._call(self.link.start())
        return self

    def cut(self) -> None:
        self._call(self.link.cut())

    async def _close(self) -> None:
        await self.link.close()
        for _ in range(3):  # the aborted transports' callbacks, which close their sockets
            await asyncio.sleep(0)

    def freeze(self, frozen: bool = True) -> None:
        self._loop.call_soon_threadsafe(self.link.freeze, frozen)

    def close(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def link(postgres_url: str) -> Iterator[LinkThread]:
    """A started :class:`LinkThread` to the test's database, closed after the test."""
    link = LinkThread(postgres_url).start()
    yield link
    link.close()
