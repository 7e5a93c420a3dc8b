"""A large backlog: how fast ``queue`` answers on it, what a claim costs, and the server's memory
while it drains.

``--count`` webhooks (default 1,000,000) wait to be posted, as backfilled scores, in a fresh
store: a SQLite file in a temporary directory, or a PostgreSQL database this run creates on
``--postgres-url`` and drops. Then:

1. ``claim``: ``store.claim("post", 8, 120)`` and the outcomes of the 8 jobs recorded
   (``Delivered``), ``--claims`` times, at a backlog of ``--small`` (10,000) and again at
   ``--count``: the median of each and their ratio (the issue: about 1, the claim cost does not
   grow with the backlog).
2. ``queue``: ``helicone-scorer queue`` run as an operator would, ``--rounds`` times: the wall
   time of each run (the whole command: interpreter start, read, print), beside the same
   interpreter's ``helicone-scorer --version`` (the start alone) and the reads it makes timed
   in this process, and the output of the last.
3. ``drain``: a real ``helicone-scorer serve`` on the store for ``--drain`` seconds (0: skip),
   posting to the loopback stand-in of Helicone's API with the rate limit lifted: its RSS
   every second, its peak (``VmHWM``), and the webhooks it finished a second.

The fill: the first ``API_ROWS`` webhooks go through the store's own ``enqueue_scores``; the
rest in bulk, one statement per chunk, writing the very columns ``enqueue_scores`` writes for a
new request id (id, received and due now, the scores, origin backfill, no ``logged_at``), the
others left to their defaults as it leaves them. The run checks that a bulk row reads back
through ``open_reader(url).entries`` as an API row does (every field but the id and the times).
Why bulk: ``enqueue_scores`` is one transaction per webhook (it reads the row, then inserts or
re-opens it), so a million of them is a million commits on PostgreSQL (each an fsync: the
previous run of this bench timed out taking pool connections at about 10,000) and about 150 s on
SQLite; the bulk fill takes seconds. PostgreSQL gets ``VACUUM ANALYZE`` after the fill, as
autovacuum would give it within a minute of so many inserts, so every run starts the same.

    .venv/bin/python -m bench.backlog [--store sqlite|postgres] [--count 1000000]
        [--rounds 5] [--claims 200] [--drain 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import orjson
import psycopg

from bench.postgres import add_postgres_url, store_url
from tests.server import Server, with_api
from tests.standin import StandIn
from webhook.store import Call, Delivered, Entry, Store, open_reader, open_store, sqlite_path

SCORES = {"word_count": 7}
API_ROWS = 1_000  # queued through enqueue_scores; the rest in bulk
CHUNK = 100_000  # bulk rows per statement (PostgreSQL) or per executemany (SQLite)


async def enqueue(store: Store, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    done = await asyncio.gather(*(store.enqueue_scores(rid, SCORES) for rid in ids))
    assert all(done)
    return ids


def bulk(url: str, count: int) -> None:
    """``count`` more rows, as ``enqueue_scores`` writes a new request id (see the module)."""
    scores = orjson.dumps(SCORES).decode()
    path = sqlite_path(url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            for start in range(0, count, CHUNK):
                now = time.time()
                n = min(CHUNK, count - start)
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO webhooks"
                    " (request_id, received_at, available_at, scores, origin, logged_at)"
                    " VALUES (?, ?, ?, ?, 2, ?)",
                    ((str(uuid.uuid4()), now, now, scores, None) for _ in range(n)),
                )
                conn.execute("COMMIT")
        finally:
            conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        for start in range(0, count, CHUNK):
            pg.execute(
                "INSERT INTO webhooks"
                " (request_id, received_at, available_at, scores, origin, logged_at)"
                " SELECT gen_random_uuid()::text, scorer_now(), scorer_now(), %s::jsonb, 2, NULL"
                " FROM generate_series(1, %s)",
                (scores, min(CHUNK, count - start)),
            )


async def check_identical(url: str, api_id: str) -> None:
    """A bulk row reads back as an API row does, but for the id and the times."""
    bulk_id = await a_bulk_id(url, api_id)
    reader = await open_reader(url)
    try:
        got = await reader.entries([api_id, bulk_id])
    finally:
        await reader.close()

    def fields(entry: Entry) -> dict[str, object]:
        d = asdict(entry)
        for key in ("request_id", "received_at", "available_at"):
            d.pop(key)
        return d

    assert fields(got[api_id]) == fields(got[bulk_id]), got


async def a_bulk_id(url: str, not_this: str) -> str:
    path = sqlite_path(url)
    if path is not None:
        conn = sqlite3.connect(path)
        try:
            (rid,) = conn.execute(
                "SELECT request_id FROM webhooks WHERE request_id != ? ORDER BY received_at DESC"
                " LIMIT 1",
                (not_this,),
            ).fetchone()
        finally:
            conn.close()
        return str(rid)
    with psycopg.connect(url) as pg:
        row = pg.execute("SELECT request_id FROM webhooks ORDER BY seq DESC LIMIT 1").fetchone()
        assert row is not None
        return str(row[0])


async def fill(url: str, have: int, want: int) -> float:
    """Bring the store from ``have`` to ``want`` webhooks waiting to be posted; seconds."""
    started = time.monotonic()
    api_id = None
    if have < API_ROWS:
        store = open_store(url)
        await store.open()
        try:
            api_id = (await enqueue(store, min(API_ROWS, want) - have))[0]
        finally:
            await store.close()
        have = min(API_ROWS, want)
    if want > have:
        await asyncio.to_thread(bulk, url, want - have)
    if sqlite_path(url) is None:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE webhooks")
    took = time.monotonic() - started
    if api_id is not None and want > API_ROWS:
        await check_identical(url, api_id)
    return took


async def claims(url: str, rounds: int) -> list[float]:
    """Seconds of each of ``rounds`` claims of 8, with their outcomes recorded."""
    store = open_store(url)
    await store.open()
    times = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            jobs = await store.claim("post", 8, 120)
            posted: frozenset[Call] = frozenset({"scores"})
            held = await store.record([Delivered(j.lease, 201, posted) for j in jobs])
            times.append(time.perf_counter() - started)
            assert len(jobs) == 8, len(jobs)
            assert all(held), held
    finally:
        await store.close()
    return times


def command(args: list[str], url: str, workdir: Path) -> tuple[float, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "SCORER_DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started, done.stdout


async def reads(url: str, rounds: int) -> list[float]:
    """Seconds of each of ``rounds`` reads of what ``queue`` shows (``stats`` and ``flow``),
    in this process: the command without the interpreter's start."""
    reader = await open_reader(url)
    times = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            await reader.stats()
            await reader.flow(600)
            times.append(time.perf_counter() - started)
    finally:
        await reader.close()
    return times


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def finished(url: str) -> int:
    reader = await open_reader(url)
    try:
        counts = (await reader.stats()).counts
    finally:
        await reader.close()
    return counts["done"] + counts["dead"]


def drain(url: str, workdir: Path, seconds: float) -> None:
    standin = StandIn().start()
    env = with_api(standin.base_url) | {
        "SCORER_DATABASE_URL": url,
        "SCORER_RATE_LIMIT_PER_MINUTE": "10000000",
        "SCORER_RECONCILE_INTERVAL": "0",
        "SCORER_RETRY_BASE": None,
        "SCORER_POLL_INTERVAL": None,
    }
    server = Server(workdir, env)
    try:
        before = asyncio.run(finished(url))
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        started = time.monotonic()
        samples = []
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((elapsed, status(pid)["VmRSS"]))
            time.sleep(1.0)
        peak = status(pid)["VmHWM"]
        rss = status(pid)["VmRSS"]
        elapsed = time.monotonic() - started
        posted = len(standin.ok_calls())
    finally:
        server.close()
        standin.stop()
    after = asyncio.run(finished(url))
    mib = [kib / 1024 for _, kib in samples]
    print(
        f"drain: {after - before} webhooks finished in {elapsed:.0f} s"
        f" ({(after - before) / elapsed:.0f}/s; {posted} scores posted), with the server's start"
    )
    print(
        f"drain: RSS {rss / 1024:.0f} MiB at the end, peak (VmHWM) {peak / 1024:.0f} MiB;"
        f" samples every ~1 s, MiB: min {min(mib):.0f}, median {statistics.median(mib):.0f},"
        f" max {max(mib):.0f}"
    )
    print("drain: RSS by 10 s, MiB: " + ", ".join(f"{m:.0f}" for m in mib[::10]))


def summary(name: str, times: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(times):.3f} s"
        f" (min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    add_postgres_url(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--drain", type=float, default=60.0)
    args = parser.parse_args()
    assert args.claims * 8 < args.small <= args.count, "the claims would empty the small backlog"
    with store_url(args.store, args.postgres_url) as (url, workdir):
        print(f"store: {args.store}, python {sys.version.split()[0]}, pid {os.getpid()}")
        took = asyncio.run(fill(url, 0, args.small))
        print(f"filled {args.small} in {took:.1f} s")
        small = asyncio.run(claims(url, args.claims))
        print(summary(f"claim+record at {args.small}", small))
        took = asyncio.run(fill(url, args.small - 8 * args.claims, args.count))
        print(f"filled to {args.count} in {took:.1f} s (bulk rows checked against an API row)")
        large = asyncio.run(claims(url, args.claims))
        print(summary(f"claim+record at {args.count}", large))
        ratio = statistics.median(large) / statistics.median(small)
        print(f"claim cost, {args.count} / {args.small}: {ratio:.2f}")
        read = asyncio.run(reads(url, 3 * args.rounds))
        print(summary("read (stats + flow, in process)", read))
        start = [command(["--version"], url, workdir)[0] for _ in range(args.rounds)]
        print(summary("start (--version)", start))
        times = []
        output = ""
        for _ in range(args.rounds):
            took, output = command(["queue"], url, workdir)
            times.append(took)
        print(summary("queue", times))
        print(output, end="")
        if args.drain > 0:
            drain(url, workdir, args.drain)


if __name__ == "__main__":
    main()
