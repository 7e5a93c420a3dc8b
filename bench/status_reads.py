"""The status page's reads on a day of traffic: ``Reader.score_counts`` (capped at the page's
``SCORES_READ``, and uncapped: ``--most``) over ``--live`` (300,000) scored live webhooks
received in the last day, beside ``--old`` (300,000) live ones from the six days before,
``--other`` (30,000) reconciled and backfilled ones and ``--waiting`` (10,000) live ones not yet
scored (1 KiB bodies), and ``dead_letters(50, newest=True)`` and
``sweep_mark`` beside it.

Each scored webhook has ``--scorers`` scores (default 17, the built-ins but the judge): the
bounded ones 0/1 or 0-100, the unbounded ones (word_count, latency_ms, cost_micro_usd,
completion_tokens) from a wide range, so the day holds many distinct (name, value) pairs, as a
real one does. The rows are written in bulk, one statement per chunk, with the columns a scored
and delivered webhook has (done, scores posted, no body). PostgreSQL gets ``VACUUM ANALYZE``
after the fill, as autovacuum would give it within a minute.

Prints, per cap, the median and the spread of ``--rounds`` reads on a reader opened as the
page's process would (``open_reader``), the webhooks read and the (name, value) groups they
hold; and the query plan at the first cap.

    .venv/bin/python -m bench.status_reads [--store sqlite|postgres] [--live 300000]
        [--scorers 17] [--rounds 7] [--most 10000,1000000000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator

import orjson
import psycopg

from bench.postgres import add_postgres_url, store_url
from webhook.status_view import SCORES_READ
from webhook.store import ScoreCounts, open_reader, open_store, sqlite_path
from webhook.store.postgres_reader import SCORE_COUNTS as PG_SCORE_COUNTS
from webhook.store.sqlite_reader import SCORE_COUNTS as SQLITE_SCORE_COUNTS

DAY = 86_400.0
CHUNK = 50_000
# The built-in scorers (the judge aside) and the values each gives: a range to draw from.
SCORERS: list[tuple[str, int]] = [
    ("vocabulary_diversity", 100),
    ("word_count", 2_000),
    ("has_citations", 1),
    ("has_code_examples", 1),
    ("starts_with_greeting", 1),
    ("exceeds_min_length", 1),
    ("contains_markdown", 1),
    ("readability", 100),
    ("lexical_diversity", 100),
    ("query_overlap", 100),
    ("refusal", 1),
    ("pii_detected", 1),
    ("valid_json", 1),
    ("truncated", 1),
    ("latency_ms", 30_000),
    ("cost_micro_usd", 50_000),
    ("completion_tokens", 4_000),
]


def scores(rng: random.Random, n: int) -> str:
    return orjson.dumps({name: rng.randint(0, top) for name, top in SCORERS[:n]}).decode()


def rows(
    rng: random.Random, count: int, start: float, span: float, n: int, origin: int
) -> Iterator[tuple[object, ...]]:
    """Done, delivered webhooks received in [start, start + span)."""
    for _ in range(count):
        at = start + rng.random() * span
        yield (str(uuid.uuid4()), "done", at, at, scores(rng, n), 1, origin, at + 30)


INSERT_SQLITE = (
    "INSERT INTO webhooks (request_id, state, received_at, available_at, scores, posted, origin,"
    " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def fill(url: str, args: argparse.Namespace, now: float) -> float:
    rng = random.Random(7)
    batches = [
        (args.live, now - DAY + 60, DAY - 120, 0),  # the day, clear of the window's edges
        (args.old, now - 7 * DAY, 6 * DAY - 60, 0),
        (args.other // 2, now - DAY + 60, DAY - 120, 1),
        (args.other - args.other // 2, now - DAY + 60, DAY - 120, 2),
    ]
    started = time.monotonic()
    path = sqlite_path(url)
    waiting = [(str(uuid.uuid4()), b"x" * 1024, now, now) for _ in range(args.waiting)]
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for count, start, span, origin in batches:
                made = rows(rng, count, start, span, args.scorers, origin)
                for _ in range(0, count, CHUNK):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(INSERT_SQLITE, itertools.islice(made, CHUNK))
                    conn.execute("COMMIT")
            conn.executemany(
                "INSERT INTO webhooks (request_id, body, received_at, available_at)"
                " VALUES (?, ?, ?, ?)",
                waiting,
            )
            conn.execute("PRAGMA optimize")
        finally:
            conn.close()
        return time.monotonic() - started
    # On PostgreSQL the rows are made by the server (a client's inserts take minutes).
    values = ", ".join(
        f"'{name}', floor(random() * {top + 1})::int" for name, top in SCORERS[: args.scorers]
    )
    insert = (
        "INSERT INTO webhooks (request_id, state, received_at, available_at, scores,"  # noqa: S608
        " posted_scores, origin, finished_at)"
        f" SELECT gen_random_uuid()::text, 'done', t, t, jsonb_build_object({values}), true, %s,"
        " t + 30 FROM (SELECT %s + random() * %s AS t FROM generate_series(1, %s)) g"
    )
    with psycopg.connect(url, autocommit=True) as pg:
        for count, start, span, origin in batches:
            for at in range(0, count, CHUNK):
                pg.execute(insert, (origin, start, span, min(CHUNK, count - at)))
        with pg.cursor() as cur, pg.transaction():
            cur.executemany(
                "INSERT INTO webhooks (request_id, body, received_at, available_at)"
                " VALUES (%s, %s, %s, %s)",
                waiting,
            )
        pg.execute("VACUUM ANALYZE webhooks")
    return time.monotonic() - started


async def create(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def plan(url: str, since: float, most: int) -> str:
    path = sqlite_path(url)
    if path is not None:
        sql = SQLITE_SCORE_COUNTS.format(index="INDEXED BY webhooks_arrived", origin="origin")
        with sqlite3.connect(path) as conn:
            return "\n".join(
                str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (since, most))
            )
    with psycopg.connect(url) as pg:
        cur = pg.execute("EXPLAIN (ANALYZE, BUFFERS) " + PG_SCORE_COUNTS, (since, most))
        return "\n".join(str(r[0]) for r in cur.fetchall())


async def reads(url: str, rounds: int, since: float, mosts: list[int]) -> None:
    reader = await open_reader(url)
    try:
        for most in mosts:
            times: list[float] = []
            read = ScoreCounts({}, 0)
            for _ in range(rounds):
                started = time.perf_counter()
                read = await reader.score_counts(since, most)
                times.append(time.perf_counter() - started)
            groups = sum(len(values) for values in read.counts.values())
            print(
                f"score_counts(a day ago, {most}): median {statistics.median(times):.3f} s, min"
                f" {min(times):.3f}, max {max(times):.3f} ({rounds} rounds); {read.webhooks}"
                f" webhooks read, {len(read.counts)} scorers, {groups} (name, value) groups"
            )
        for name, call in (
            ("dead_letters(50, newest=True)", lambda: reader.dead_letters(50, newest=True)),
            ("sweep_mark", reader.sweep_mark),
        ):
            started = time.perf_counter()
            await call()
            print(f"{name}: {time.perf_counter() - started:.4f} s")
    finally:
        await reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    add_postgres_url(parser)
    parser.add_argument("--live", type=int, default=300_000)
    parser.add_argument("--old", type=int, default=300_000)
    parser.add_argument("--other", type=int, default=30_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--scorers", type=int, default=len(SCORERS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--most",
        default=f"{SCORES_READ},1000000000",
        help="comma-separated caps to read with (default: the status page's, and none)",
    )
    args = parser.parse_args()
    with store_url(args.store, args.postgres_url) as (url, _):
        asyncio.run(create(url))
        now = time.time()
        print(f"store: {args.store}; filled in {fill(url, args, now):.1f} s: {vars(args)}")
        mosts = [int(m) for m in args.most.split(",")]
        asyncio.run(reads(url, args.rounds, now - DAY, mosts))
        print(plan(url, now - DAY, mosts[0]))


if __name__ == "__main__":
    main()
