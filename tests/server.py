"""Run the real ``helicone-scorer serve`` as a child process on loopback, and talk to it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import httpx2
import orjson

from tests.eventually import eventually
from tests.standin import API_KEY, Injected, StandIn, free_port
from webhook.store import Entry, open_reader, sqlite_path
from webhook.verify import sign

Rows = dict[str, dict[str, Any]]
SECRET = "4b1f0c3e9d2a7b6c5e8f1a0d3c2b4e6f7a9c8b1d2e3f4a5b6c7d8e9f0a1b2c3d"


def payload(request_id: str | None = None, text: str = "Hello there, general Kenobi.") -> bytes:
    """A compact OpenAI chat payload, as Helicone would send it."""
    return orjson.dumps(
        {
            "request_id": request_id or str(uuid.uuid4()),
            "request_body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
            "response_body": {"choices": [{"message": {"role": "assistant", "content": text}}]},
            "model": "gpt-4o",
            "provider": "OPENAI",
            "metadata": {"cost": 0.0001, "latencyMs": 321, "completionTokens": 6},
        }
    )


def post_refused(server: Server, standin: StandIn, text: str = "Hello there.") -> str:
    """Send a webhook whose score post the stand-in answers 400 (its next answer): a dead letter
    at once. Its request id."""
    rid = str(uuid.uuid4())
    standin.fail_next(Injected(400, {"data": None, "error": "scores refused by the stand-in"}))
    assert server.post(payload(rid, text)).status_code == 202
    return rid


def entries(url: str) -> dict[str, Entry]:
    """The webhooks stored at the store URL ``url`` (any backend), read through its read path."""

    async def read() -> dict[str, Entry]:
        reader = await open_reader(url)
        try:
            return await reader.entries()
        finally:
            await reader.close()

    return asyncio.run(read())


def wait_done(url: str, ids: Iterable[str], timeout: float = 20.0) -> dict[str, Entry]:
    """Wait until every one of ``ids`` is stored at ``url`` and done; the entries then."""
    wanted = set(ids)

    def done() -> dict[str, Entry] | None:
        stored = entries(url)
        finished = all(rid in stored and stored[rid].state == "done" for rid in wanted)
        return stored if finished else None

    what = f"{len(wanted)} webhook(s) done in the store"
    return eventually(done, timeout, what=what, show=lambda: entries(url))


def read_rows(db: Path | str) -> Rows:
    """The webhooks stored in the SQLite file ``db`` (a path), or at the store URL ``db`` (a
    str): request id -> the fields of its :class:`webhook.store.Entry`."""
    url = f"sqlite:///{db}" if isinstance(db, Path) else db
    return {rid: dataclasses.asdict(entry) for rid, entry in entries(url).items()}


class Server:
    """One server process. Its store is its own SQLite file in ``workdir`` unless ``env`` names
    another ``SCORER_DATABASE_URL`` (a PostgreSQL one, say: see ``make_server(store=...)``);
    ``env`` overrides the defaults."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str | None],
        python: str = sys.executable,
        *,
        workers: int = 1,
        log_level: str = "info",
    ) -> None:
        self.workdir = workdir
        self.python = python  # another checkout's interpreter runs that checkout's server
        # serve --workers: more than one, and the log's lines name their process.
        self.workers = workers
        self.log_level = log_level
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "scorer.db"
        self.log_path = workdir / f"server-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "SCORER_"))}
        base |= {
            "HELICONE_WEBHOOK_SECRET": SECRET,
            "SCORER_DATABASE_URL": f"sqlite:///{self.db}",
            "SCORER_RETRY_BASE": "0.2",
            "SCORER_POLL_INTERVAL": "0.2",
            "PYTHONUNBUFFERED": "1",
            # Scorers on threads, unless a test asks for processes (tests/test_processes.py):
            # a forkserver and two scorer processes per server, hundreds of servers a run,
            # loaded CI enough to stretch the timings other tests wait on.
            "SCORER_SCORING_PROCESSES": "0",
        }
        for key, value in env.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        self.env = base
        url = base["SCORER_DATABASE_URL"]
        path = sqlite_path(url)
        if path is not None and not Path(path).is_absolute():  # the server runs in workdir
            url = f"sqlite:///{workdir / path}"
        self.store_url = url
        """The server's store, as a URL the tests can open from anywhere."""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        # A connection per request, as a webhook sender opens: an idle kept-alive one would hold
        # a shutdown for its last call (see webhook/guard.py), which the tests of SIGTERM time.
        self.client = httpx2.Client(
            base_url=self.url, timeout=30, limits=httpx2.Limits(max_keepalive_connections=0)
        )

    def start(self, wait: bool = True) -> Server:
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *(self.python, "-m", "webhook", "serve", "--host", "127.0.0.1"),
                *("--log-level", self.log_level),
                *(("--workers", str(self.workers)) if self.workers > 1 else ()),
            ],
            env=self.env | {"PORT": str(self.port)},
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            # Workers start after the parent's checks, each importing it all again.
            self.wait_healthy(20.0 if self.workers == 1 else 60.0)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        eventually(self._healthy, timeout, what="/healthz answered 200", show=self.log)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx2.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """With ``workers``: the process of every worker that has started serving, in order
        (those that have ended too)."""
        return [
            int(pid) for pid in re.findall(r"\[(\d+)\]: Application startup complete", self.log())
        ]

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until ``count`` workers have started serving, in all; their processes."""

        def serving() -> list[int] | None:
            pids = self.worker_pids()
            return pids[:count] if len(pids) >= count else None

        return eventually(serving, timeout, what=f"{count} workers serving", show=self.log)

    def wait_for_log(self, fragment: str, timeout: float = 20.0) -> str:
        """Wait until ``fragment`` is in the log; the whole log then."""

        def logged() -> str | None:
            log = self.log()
            return log if fragment in log else None

        return eventually(logged, timeout, what=f"{fragment!r} logged", show=self.log)

    def post(
        self, body: bytes, *, path: str = "/webhook", secret: str | None = SECRET, **headers: str
    ) -> httpx2.Response:
        hdrs = {"Content-Type": "application/json", **headers}
        if secret is not None:
            hdrs["Helicone-Signature"] = sign(secret, body)
        return self.client.post(path, content=body, headers=hdrs)

    def terminate(self, timeout: float = 30.0) -> bool:
        """SIGTERM; True when the process finished its graceful shutdown."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too.
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.log()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        """End the server: SIGTERM, and SIGKILL if it has not stopped within two seconds."""
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a measured run saves its coverage on SIGTERM
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()

    def rows(self) -> Rows:
        """The stored webhooks, read through the read path of the server's store (see
        :func:`read_rows`), whichever backend it is."""
        return read_rows(self.store_url)

    def wait_rows(self, predicate: Callable[[Rows], object], timeout: float = 20.0) -> Rows:
        """Wait until the store's rows match ``predicate``; those rows. On failure, shows them."""

        def matching() -> Rows | None:
            rows = self.rows()
            return rows if predicate(rows) else None

        return eventually(matching, timeout, what="the rows matched", show=self.rows)


def with_api(standin_url: str) -> dict[str, str | None]:
    return {"HELICONE_API_KEY": API_KEY, "HELICONE_API_BASE": standin_url}
