"""A large backlog: how fast ``queue`` answers on it, and the drain time it shows.

``--count`` webhooks (default 100,000) are queued in a fresh store (a SQLite file in a temporary
directory, or a PostgreSQL database this run creates on ``--postgres-url`` and drops), as
backfilled scores waiting to be posted, through the store's own ``enqueue_scores``. Then
``helicone-scorer queue`` runs on it, as an operator would, ``--rounds`` times: the wall time of
each run (the whole command: start, read, print) and the output of the last.

    .venv/bin/python -m bench.backlog [--count 100000] [--store sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from webhook.store import open_store

CHUNK = 2_000


async def fill(url: str, count: int) -> float:
    """Queue ``count`` scored webhooks; seconds it took."""
    store = open_store(url)
    await store.open()
    gate = asyncio.Semaphore(4)  # well within the PostgreSQL pool; SQLite gathers them anyway

    async def one(rid: str) -> bool:
        async with gate:
            return await store.enqueue_scores(rid, {"word_count": 7})

    started = time.monotonic()
    try:
        for start in range(0, count, CHUNK):
            ids = [str(uuid.uuid4()) for _ in range(min(CHUNK, count - start))]
            done = await asyncio.gather(
                *(store.enqueue_scores(rid, {"word_count": 7}) for rid in ids)
            )
            assert all(done)
    finally:
        await store.close()
    return time.monotonic() - started


def queue(url: str, workdir: Path) -> tuple[float, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "SCORER_DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "queue"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dbname = f"bench_backlog_{uuid.uuid4().hex[:8]}"
        if args.store == "sqlite":
            url = f"sqlite:///{workdir / 'backlog.db'}"
        else:
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
            url = args.postgres_url.rsplit("/", 1)[0] + f"/{dbname}"
        try:
            seconds = asyncio.run(fill(url, args.count))
            print(f"queued {args.count} webhooks in {seconds:.1f} s ({args.store})")
            times = []
            for _ in range(args.rounds):
                took, output = queue(url, workdir)
                times.append(took)
            print(
                f"queue: median {statistics.median(times):.2f} s"
                f" (min {min(times):.2f}, max {max(times):.2f}, {args.rounds} runs)"
            )
            print(output, end="")
        finally:
            if args.store == "postgres":
                with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


if __name__ == "__main__":
    main()
