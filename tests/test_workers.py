"""``serve --workers N``: several processes on one socket, sharing the store.

Each test starts the real ``helicone-scorer serve --workers 2`` (tests/server.py) on SQLite and
on PostgreSQL: webhooks are spread over both workers and posted once each, the counters of
``/metrics`` add up across them, a SIGTERM to the parent under steady traffic loses nothing, a
SIGKILLed worker is replaced and every acknowledged webhook is still posted, and a bad value or
a worker that cannot start stops the start with one line.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.cli import one_line_error, run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.proxy import Proxy
from tests.rawhttp import connect, read_until_closed, signed_post
from tests.server import Server, payload, wait_done
from tests.standin import StandIn
from tests.stores import BACKENDS
from tests.traffic import Traffic

BACKLOG = 40


def _store(request: pytest.FixtureRequest, store: str) -> dict[str, str | None]:
    """Both backends. A dead worker's work is taken over on SQLite when its leases run out
    (another worker holds the file's lock: shortened here), on PostgreSQL when its heartbeat
    is older than the takeover time (10 s)."""
    if store == "sqlite":
        return {"SCORER_LEASE_SECONDS": "3"}
    return {"SCORER_DATABASE_URL": request.getfixturevalue("postgres_url")}


def _post_many(server: Server, count: int) -> set[str]:
    """``count`` webhooks at once, each on a connection of its own; their ids (all acknowledged)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda rid: server.post(payload(rid)).status_code, ids))
    assert statuses == [202] * count
    return set(ids)


@pytest.mark.parametrize("store", BACKENDS)
def test_webhooks_spread_over_the_workers_and_each_is_posted_once(
    make_server: ServerFactory, standin: StandIn, store: str, request: pytest.FixtureRequest
) -> None:
    server = make_server(workers=2, log_level="debug", **_store(request, store))
    workers = server.wait_workers(2)
    sent = _post_many(server, 120)

    accepted_by = Counter(
        int(pid) for pid in re.findall(r"\[(\d+)\]: accepted request_id=", server.log())
    )
    assert set(accepted_by) == set(workers), accepted_by
    assert sum(accepted_by.values()) == len(sent)
    wait_done(server.store_url, sent, 60)
    assert standin.posted_ids() == sent
    assert {rid: n for rid, n in standin.posts().items() if n != 1} == {}
    # Each scrape is answered by one worker, and shows what both counted.
    for _ in range(4):
        text = server.client.get("/metrics").text
        assert metric(text, "helicone_scorer_webhooks_received_total", outcome="accepted") == 120
        assert metric(text, "helicone_scorer_queue_depth", state="done") == 120
    assert metric(text, "helicone_scorer_scores_posted_total") == 120


def _refused_more(proxy: Proxy, than: int) -> bool:
    return proxy.counts.refused > than


@pytest.mark.parametrize("store", BACKENDS)
def test_a_sigterm_to_the_parent_under_traffic_loses_nothing(
    make_server: ServerFactory, standin: StandIn, store: str, request: pytest.FixtureRequest
) -> None:
    """A rolling restart of two servers of two workers each, as tests/test_deploy.py does with
    single processes: every webhook is acknowledged and posted exactly once."""
    env = _store(request, store) | {
        "SCORER_RATE_LIMIT_PER_MINUTE": "100000",
        "SCORER_SHUTDOWN_GRACE": "5",
    }
    first, second = make_server(workers=2, **env), make_server(workers=2, **env)
    first.wait_workers(2)
    second.wait_workers(2)
    proxy = Proxy([first.port, second.port]).start()
    traffic = Traffic(proxy.url).start()
    try:
        traffic.wait_for_more()
        for server in (first, second):
            began = time.monotonic()
            assert server.terminate(60), server.log()
            assert "every worker has stopped" in server.log()
            refused = proxy.counts.refused
            eventually(partial(_refused_more, proxy, refused), 30, what="a connection refused")
            server.start()
            server.wait_workers(4)
            assert sum(began <= s.at for s in traffic.sent.values()) >= 10
            traffic.wait_for_more()
    finally:
        traffic.stop()
        proxy.stop()

    sent = traffic.sent
    assert {rid: s.outcome for rid, s in sent.items() if s.outcome != 202} == {}
    assert proxy.counts.failed == []
    wait_done(first.store_url, set(sent), 120)
    assert set(sent) <= standin.posted_ids()
    assert {rid: n for rid, n in standin.posts().items() if n != 1} == {}


@pytest.mark.parametrize("store", BACKENDS)
def test_a_killed_worker_is_replaced_and_every_acknowledged_webhook_is_posted(
    make_server: ServerFactory, standin: StandIn, store: str, request: pytest.FixtureRequest
) -> None:
    server = make_server(workers=2, **_store(request, store))
    victim, survivor = server.wait_workers(2)
    traffic = Traffic(server.url).start()
    try:
        traffic.wait_for_more()
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(f"worker [{victim}] ended with exit code -9: starting another")
        replacement = server.wait_workers(3)[2]
        # Not at the kill: a kept-alive connection the killed worker held fails the next request
        # sent on it, after the kill (the client's to send again: nothing was acknowledged).
        killed = time.monotonic()
        traffic.wait_for_more()
    finally:
        traffic.stop()
    assert replacement not in (victim, survivor)
    assert server.proc is not None
    assert server.proc.poll() is None

    sent = traffic.sent
    acked = {rid for rid, s in sent.items() if s.outcome == 202}
    # Only what the killed worker was reading could fail, never what came after.
    failed = {rid: s.outcome for rid, s in sent.items() if s.outcome != 202}
    assert len(failed) <= 4, failed
    assert all(sent[rid].at < killed for rid in failed), failed
    wait_done(server.store_url, acked, 60)
    assert acked <= standin.posted_ids()
    # On SQLite the replacement did not take the killed worker's leases back when it opened
    # the file: the other worker held its lock, so they waited until they ran out.
    assert "a stopped server had claimed" not in server.log()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--workers", "0"), {}, "invalid --workers: must be a whole number from 1 to 64"),
        (("--workers", "two"), {}, "invalid --workers: must be a whole number from 1 to 64"),
        ((), {"SCORER_WORKERS": "65"}, "invalid setting SCORER_WORKERS: must be a whole number"),
        # A bad setting with several workers: one line, from the parent, once.
        (
            ("--workers", "3"),
            {"SCORER_MAX_INFLIGHT_BYTES": "1"},
            "invalid setting SCORER_MAX_INFLIGHT_BYTES: must be at least",
        ),
    ],
)
def test_a_bad_workers_value_or_setting_is_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", **env}, "serve", *args)
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"helicone-scorer: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_workers_that_cannot_start_stop_the_parent_with_a_failure(
    make_server: ServerFactory,
) -> None:
    """The store opens for the parent's check, but a serving open (the workers') cannot take
    the file's lock: every worker fails its startup, and the parent exits with uvicorn's
    STARTUP_FAILURE."""
    server = make_server(start=False, workers=2)
    Path(f"{server.db}.lock").mkdir()
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(60) == 3, server.log()
    assert "could not start: stopping" in server.log()


def test_the_shared_backlog_at_sigterm_is_answered_and_new_connections_are_refused(
    make_server: ServerFactory,
) -> None:
    """tests/test_drain.py's first test, with two workers: while they are stopped, connections
    queue in the shared socket's backlog; SIGTERM to the parent, and every one is answered."""
    server = make_server(workers=2)
    workers = server.wait_workers(2)
    assert server.proc is not None
    rids = [str(uuid.uuid4()) for _ in range(BACKLOG + 1)]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        waiting = [connect(server, signed_post(payload(rid))) for rid in rids[:BACKLOG]]
        last_body = payload(rids[-1])
        last = connect(server, signed_post(last_body, body_too=False))
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("SIGTERM: stopping the workers")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    eventually(
        lambda: server.log().count("connection(s) taken from the listen backlog") == 2,
        30,
        what="both workers stopped accepting",
        show=server.log,
    )
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    last.sendall(last_body)
    for sock in [*waiting, last]:
        with sock:
            answer = read_until_closed(sock)
            assert answer.lower().startswith(b"http/1.1 202 accepted\r\n"), answer
    assert server.proc.wait(60) == 0, server.log()
    assert server.log().count("Application shutdown complete") == 2
    assert set(rids) <= set(server.rows())


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_workers_stop_when_the_parent_is_killed_and_free_the_port(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(workers=2)
    workers = server.wait_workers(2)
    sent = _post_many(server, 10)
    server.kill()  # SIGKILL: the parent forwards nothing
    eventually(lambda: not any(map(_running, workers)), 60, what="the workers stopped")
    assert server.log().count("Application shutdown complete") == 2  # they drained
    server.start()  # the port is free again, and what was acknowledged is posted
    wait_done(server.store_url, sent, 60)
    assert sent <= standin.posted_ids()
