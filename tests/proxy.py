"""A loopback TCP proxy in front of several servers, retrying as Fly's proxy does: refusals only.

Each client connection goes to the next backend in turn. A backend that *refuses* the connection
(nothing listens: it is restarting, or it has closed its listening socket) is safe to skip, since
it never saw a byte, so the proxy tries the next one (and goes round again, briefly, if all
refuse). Any other failure is the client's: a connect that times out, a reset, or a close before
the answer reaches the client as a reset or an early close, never hidden by a retry. So a webhook
lost by a backend shows up as a failed request at the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

from tests.eventually import eventually

__all__ = ["Proxy"]

CONNECT_TIMEOUT = 10.0
ROUNDS = 20  # times round every backend, while all refuse
ROUND_PAUSE = 0.1


@dataclass
class Counts:
    connections: int = 0
    refused: int = 0  # connects refused by a backend, and retried on the next
    failed: list[str] = field(default_factory=list)  # failures passed on to the client


class Proxy:
    def __init__(self, backend_ports: list[int]) -> None:
        self.backends = [("127.0.0.1", port) for port in backend_ports]
        self.counts = Counts()
        self.port = 0
        self.url = ""
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        eventually(lambda: self.port, 10, what="the proxy listens", interval=0.01)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            await self._stop.wait()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _backend_order(self) -> list[tuple[str, int]]:
        with self._lock:
            self.counts.connections += 1
            first = self._next
            self._next = (self._next + 1) % len(self.backends)
        return self.backends[first:] + self.backends[:first]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        order = self._backend_order()
        for _ in range(ROUNDS):
            for host, port in order:
                try:
                    return await asyncio.wait_for(
                        asyncio.open_connection(host, port), CONNECT_TIMEOUT
                    )
                except ConnectionRefusedError:
                    with self._lock:
                        self.counts.refused += 1
            await asyncio.sleep(ROUND_PAUSE)
        raise ConnectionRefusedError("every backend refused, every time")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await self._connect()
        except (OSError, TimeoutError) as exc:
            self._reset(f"connect: {exc!r}", writer)
            self._tasks.discard(task)
            return
        both = (writer, up_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, both), self._pipe(up_reader, writer, both)
            )
        finally:
            for side in both:
                side.close()
            self._tasks.discard(task)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        """Copy until EOF and pass the EOF on; a failure on either side resets both."""
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError as exc:
            self._reset(f"{exc!r}", *both)
            return
        with contextlib.suppress(OSError):
            if not sink.transport.is_closing() and sink.can_write_eof():
                sink.write_eof()

    def _reset(self, why: str, *writers: asyncio.StreamWriter) -> None:
        """Reset the connections (SO_LINGER 0), so a client reads a failure, not a clean end."""
        if all(w.transport.is_closing() for w in writers):
            return  # reset already, from the other direction
        with self._lock:
            self.counts.failed.append(why)
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
