"""What ``serve`` runs: one server, or with ``--workers N``, N processes on one listening socket.

The parent checks the settings and the store once (a bad setting is one line, once), binds the
socket (it listens once the first worker serves: until then a connection is refused, as while one
server starts), and starts N workers, spawned (fresh interpreters: they inherit the socket and the
environment, nothing else). Each worker is a whole server, as ``serve`` alone runs: its app,
relay, sweep, store connections and :class:`webhook.drain.DrainingServer`. The store is what
they share: on SQLite one file, one writer at a time (each waits up to the busy timeout); on
PostgreSQL each worker is an instance, with its own id and heartbeat.

- SIGTERM or SIGINT to the parent: it makes the kernel drop new SYNs on the shared socket (the
  filter of :mod:`webhook.drain`), closes its own copy, and sends SIGTERM to every worker. Each
  drains as one server does, and the last to close the socket closes it for good. The parent
  exits when all have: 0 if every one stopped cleanly, else 1.
- A worker that ends otherwise (killed, out of memory, or stopped alone by SIGTERM) is replaced,
  at once, or a second later if it lived less than a second. One that ends before it served
  (``STARTUP_FAILURE``: the store away, say) stops them all, and the parent exits with that code.
- Metrics: before the workers start, the parent names a directory of its own in
  ``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`webhook.metrics`), and removes it at the end.

uvicorn's ``Multiprocess`` supervisor is not used: it runs uvicorn's plain ``Server`` (not the
draining one), and its SIGHUP and SIGTTOU stop one worker alone, which here would filter the
shared socket for all; its health pings are left out too (a worker's event loop may be busy, and
a process that has died is seen at once by its sentinel).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from scorers import UnknownScorerError
from webhook.app import create_app
from webhook.budget import keep_large_buffers_mapped
from webhook.drain import DrainingServer, answer_timeout, refuse_new_handshakes
from webhook.guard import limits_from, protocol, raise_file_limit
from webhook.logs import setup_logging
from webhook.settings import Settings, SettingsError, load_settings

__all__ = ["Listen", "Supervisor", "server_config"]

log = logging.getLogger("webhook")

# Sockets travel to spawned workers as they do for uvicorn's own workers.
multiprocessing.allow_connection_pickling()
SPAWN = multiprocessing.get_context("spawn")
# A worker that lived less than this many seconds is replaced only once they have passed.
RESTART_PAUSE = 1.0
CLEAN = (0, -signal.SIGTERM, -signal.SIGINT)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class Listen:
    """Where and how ``serve`` listens and logs: its command-line options."""

    host: str
    port: int
    log_level: str


def server_config(settings: Settings, listen: Listen) -> uvicorn.Config:
    """uvicorn's config for the app: the guard's protocol, the drain's answer timeout.

    Raises :class:`SettingsError`, :class:`scorers.UnknownScorerError` or ``ValueError`` (one
    line each) for a bad setting.
    """
    application = create_app(settings)
    limits = limits_from(settings, raise_file_limit())
    return uvicorn.Config(
        application,
        host=listen.host,
        port=listen.port,
        log_level=listen.log_level,
        log_config=None,
        http=protocol(limits),
        access_log=False,
        timeout_graceful_shutdown=answer_timeout(settings.shutdown_grace),
        server_header=False,
    )


def _worker(listen: Listen, sockets: list[socket.socket], parent: int) -> None:
    """A worker's body: a whole server on the parent's sockets. The parent checked the
    settings; whatever fails here fails before serving, which stops the parent."""
    _stop_with_parent(parent)
    try:
        settings = load_settings()
        setup_logging(listen.log_level, settings.log_format, pid=True)
        config = server_config(settings, listen)
    except (SettingsError, UnknownScorerError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(STARTUP_FAILURE)
    keep_large_buffers_mapped()
    server = DrainingServer(config, filter_handshakes=False)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT, raised again once shut down
        server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this worker when the parent dies (Linux), even by SIGKILL: it drains, rather
    than serving on as an orphan that keeps the port from the next start."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot ask to be stopped with the parent: %s", os.strerror(ctypes.get_errno()))
    elif os.getppid() != parent:  # it died before the request
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Slot:
    process: SpawnProcess
    started: float


class Supervisor:
    """The parent of ``serve --workers N``: starts, replaces and stops the workers."""

    def __init__(self, listen: Listen, sockets: list[socket.socket], count: int) -> None:
        self.listen, self.sockets, self.count = listen, sockets, count
        self._slots: dict[int, _Slot] = {}
        self._due: dict[int, float] = {}  # slots waiting to be started again, and when
        self._pauses: dict[int, float] = {}  # slots started again: the pause before the next
        self._signals: list[int] = []
        self._stopping = False
        self._failed = False
        self._unclean = 0

    def run(self) -> int:
        """Serve until a signal stops every worker; the exit code."""
        waker, wakeup = socket.socketpair()
        waker.setblocking(False)
        wakeup.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wakeup.fileno())
        handlers = {s: signal.signal(s, self._signalled) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with tempfile.TemporaryDirectory(prefix="helicone-scorer-metrics-") as metrics:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics
                log.info("starting %d workers", self.count)
                for slot in range(self.count):
                    self._start(slot)
                while self._slots or self._due:
                    self._wait(waker)
                    self._handle_signals()
                    self._reap()
                    self._start_due()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            waker.close()
            wakeup.close()
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self._failed:
            return STARTUP_FAILURE
        log.info("every worker has stopped")
        return 1 if self._unclean else 0

    def _signalled(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _wait(self, waker: socket.socket) -> None:
        timeout = None
        if self._due:
            timeout = max(0.0, min(self._due.values()) - time.monotonic())
        sentinels = [s.process.sentinel for s in self._slots.values()]
        if waker in wait([waker, *sentinels], timeout):
            with contextlib.suppress(BlockingIOError):
                while waker.recv(4096):
                    pass

    def _start(self, slot: int) -> None:
        process = SPAWN.Process(
            target=_worker, args=(self.listen, self.sockets, os.getpid()), name=f"worker-{slot}"
        )
        process.start()
        self._slots[slot] = _Slot(process, time.monotonic())

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._due.items()):
            if self._stopping:
                del self._due[slot]
            elif due <= now:
                del self._due[slot]
                self._start(slot)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self._stopping:
                log.info("%s: stopping the workers", signal.Signals(sig).name)
                self._stop()
            else:  # a second one: passed on (a second SIGINT makes uvicorn stop at once)
                self._kill_all(sig)

    def _stop(self) -> None:
        """Every worker drains: no new connection joins the shared backlog from here on, and
        the parent's copy of the socket is closed so the last worker's close is the socket's."""
        self._stopping = True
        self._due.clear()
        for sock in self.sockets:
            refuse_new_handshakes(sock)
            sock.close()
        self._kill_all(signal.SIGTERM)

    def _kill_all(self, sig: int) -> None:
        for slot in self._slots.values():
            if slot.process.pid is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    def _reap(self) -> None:
        now = time.monotonic()
        for index, slot in list(self._slots.items()):
            code, pid = slot.process.exitcode, slot.process.pid
            if code is None:
                continue
            del self._slots[index]
            slot.process.close()
            if self._stopping:
                if code not in CLEAN:
                    self._unclean += 1
                    log.warning("worker [%s] ended with exit code %s while stopping", pid, code)
            elif code == STARTUP_FAILURE and index not in self._pauses:
                # A first start that fails is a setting or a store that is not there: stop.
                log.error("worker [%s] could not start: stopping", pid)
                self._failed = True
                self._stop()
            else:
                # A replacement that could not start (the database failing over, say) is tried
                # again, each time after twice the pause, up to a minute; the others serve.
                log.warning("worker [%s] ended with exit code %s: starting another", pid, code)
                lived = now - slot.started
                pause = self._pauses.get(index, RESTART_PAUSE / 2)
                pause = min(60.0, pause * 2) if code == STARTUP_FAILURE else RESTART_PAUSE
                self._pauses[index] = pause
                self._due[index] = now if lived >= pause else now + pause
