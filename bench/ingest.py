"""Ingest benchmark: wrk against the real server, on each store, and against bare Starlette.

Each request is a unique, correctly signed webhook (a realistic ~700-byte OpenAI payload), so the
server verifies, parses and durably commits every one. Rounds alternate between the servers so
the shared machine's noise hits all alike; the report is the ratio of medians (with each
figure's spread). The server runs dry (no API key) so the relay scores but posts nowhere.

``--workers N`` also measures each store with ``serve --workers N`` (``sqlite*N``), against the
same store with one process in the same rounds.

``--stores sqlite,postgres`` measures both stores in one run: SQLite in a fresh file per round,
PostgreSQL in a fresh schema per round of a database the run creates on ``--postgres-url`` and
drops at its end.

    .venv/bin/python bench/ingest.py [--seconds 10] [--rounds 3] [--connections 32] [--threads 1]
        [--workers 1] [--stores sqlite,postgres]
        [--postgres-url postgresql://root@127.0.0.1:5432/test]

Each server's 99th percentile latency (wrk's) is reported too. ``--workers N`` (N > 1) adds, in
the same rounds, N processes of each server: ours (``serve --workers``) and bare Starlette
(uvicorn's ``--workers``), shown as ``sqlite*N``, ``bare*N``.

Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx2
import orjson
import psycopg
from psycopg import sql

from bench.postgres import add_postgres_url, postgres_database
from webhook.verify import sign

SECRET = "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123"
HERE = Path(__file__).resolve().parent
SETTLE = 3.0  # seconds between a server's first answer and its measurement


def webhook(request_id: str, answers: list[str]) -> bytes:
    """A ~700-byte OpenAI chat webhook, as Helicone sends it, with one choice per answer."""
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        for i, text in enumerate(answers)
    ]
    return orjson.dumps(
        {
            "request_id": request_id,
            "request_body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Summarise the report please."}],
            },
            "response_body": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": choices,
                "usage": {"prompt_tokens": 12, "completion_tokens": 24},
            },
            "model": "gpt-4o-mini",
            "provider": "OPENAI",
            "metadata": {
                "cost": 1.2e-05,
                "promptTokens": 12,
                "completionTokens": 24,
                "totalTokens": 36,
                "latencyMs": 812,
            },
        }
    )


ANSWER = "The report finds revenue grew 12% while costs fell; the outlook is cautious but positive"
ANSWER += " for next year."


def bodies(path: Path, count: int) -> None:
    with path.open("w") as out:
        for _ in range(count):
            body = webhook(str(uuid.uuid4()), [ANSWER])
            out.write(f"{sign(SECRET, body)}\t{body.decode()}\n")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            httpx2.post(f"http://127.0.0.1:{port}/webhook", content=b"{}", timeout=1)
            return proc
        except httpx2.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def wrk(
    port: int, lines: Path, seconds: int, connections: int, threads: int
) -> tuple[float, int, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "ingest.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(lines),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} non-2xx answers:\n{out}")
    return rps, total, _millis(re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out))


def _millis(match: re.Match[str] | None) -> float:
    """wrk's 99th percentile latency, in milliseconds."""
    assert match is not None, "wrk printed no latency distribution"
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Place:
    """Where one round of a store keeps its webhooks: a fresh SQLite file, or a fresh schema in
    the run's own PostgreSQL database (its ``search_path``), so no round sees another's rows."""

    def __init__(self, store: str, work: Path, database: str | None, round_: str) -> None:
        self.store = store
        if store == "sqlite":
            self.path = work / f"round{round_}.db"
            self.url = f"sqlite:///{self.path}"
            return
        assert database is not None
        self.database = database
        self.schema = f"round{round_}"
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self.url = with_query(database, options=f"-csearch_path={self.schema}")

    def stored(self) -> int:
        if self.store == "sqlite":
            with sqlite3.connect(self.path) as conn:
                (count,) = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()
            return int(count)
        with psycopg.connect(self.database) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.webhooks").format(sql.Identifier(self.schema))
            row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def with_query(url: str, **options: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
    return url + ("&" if "?" in url else "?") + query


def server_command(name: str, port: int) -> list[str]:
    """``name`` is a server, with ``*N`` for N processes (``sqlite*2``)."""
    server, _, workers = name.partition("*")
    quiet = ["--port", str(port), "--log-level", "warning"]
    quiet += ["--workers", workers] if workers else []
    if server == "bare":
        return [sys.executable, "-m", "uvicorn", "bench.bare:app", "--no-access-log", *quiet]
    return [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", *quiet]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} req/s ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bodies", type=int, default=150_000)
    ap.add_argument(
        "--stores",
        default="sqlite",
        help="comma-separated stores to measure: sqlite, postgres (default: sqlite)",
    )
    add_postgres_url(ap)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also measure N processes of each server, ours (serve --workers) and bare"
        " Starlette (uvicorn --workers), shown as store*N and bare*N",
    )
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting"
    )
    args = ap.parse_args()
    stores = list(dict.fromkeys(s.strip() for s in args.stores.split(",") if s.strip()))
    if not stores or set(stores) - {"sqlite", "postgres"}:
        sys.exit(f"--stores takes sqlite and/or postgres, not {args.stores!r}")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        with contextlib.ExitStack() as stack:
            database = (
                stack.enter_context(postgres_database(args.postgres_url))
                if "postgres" in stores
                else None
            )
            run(args, stores, work, database)
    finally:
        shutil.rmtree(work)


def run(args: argparse.Namespace, stores: list[str], work: Path, database: str | None) -> None:
    lines = work / "bodies.txt"
    bodies(lines, args.bodies)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "SCORER_"))}
    several = [f"{name}*{args.workers}" for name in ("bare", *stores)] if args.workers > 1 else []
    names = ["bare", *stores, *several]
    results: dict[str, list[float]] = {name: [] for name in names}
    p99: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        # Each round runs every server in turn, so the shared machine's noise hits all alike.
        for name in names:
            port = free_port()
            store, _, workers = name.partition("*")
            tag = f"{r}_{workers or 1}"  # a place of its own for each server of each round
            place = None if store == "bare" else Place(store, work, database, tag)
            run_env = env | {"PYTHONPATH": str(HERE.parent)}
            if place is not None:
                run_env |= {"HELICONE_WEBHOOK_SECRET": SECRET, "SCORER_DATABASE_URL": place.url}
                run_env |= dict(item.split("=", 1) for item in args.env)
            proc = start(server_command(name, port), run_env, port, HERE.parent)
            # The first process answers; with --workers the others start alongside it. Every
            # server gets the same pause, so all are measured once fully started.
            time.sleep(SETTLE)
            try:
                rps, total, late = wrk(port, lines, args.seconds, args.connections, args.threads)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            results[name].append(rps)
            p99[name].append(late)
            if place is not None:
                stored = place.stored()
                # Every answered request was stored; those cut off at the end may be stored too.
                assert total <= stored <= total + args.connections, (name, stored, total)
            print(
                f"round {r + 1} {name:>8}: {rps:9.0f} req/s ({total} requests), p99 {late:.1f} ms",
                flush=True,
            )
    print("median (min-max) over", args.rounds, "rounds:")
    for name in names:
        late = statistics.median(p99[name])
        print(f"  {name:>8}: {spread(results[name])}, p99 {late:.1f} ms (median of rounds)")
    median = {name: statistics.median(values) for name, values in results.items()}
    for store in stores:
        print(f"  {store}/bare: {median[store] / median['bare']:.2f}")
        if several:
            many, bare = f"{store}*{args.workers}", f"bare*{args.workers}"
            print(f"  {many}/{bare}: {median[many] / median[bare]:.2f}")
    for store, many in zip(stores, several[1:], strict=True) if several else ():
        per_round = [m / o for m, o in zip(results[many], results[store], strict=True)]
        print(
            f"  {many}/{store}: {median[many] / median[store]:.2f}"
            f" (per round {min(per_round):.2f}-{max(per_round):.2f})"
        )
    if {"sqlite", "postgres"} <= set(stores):
        # Per round too: the rounds' ratios show how much the noise moved the figure.
        per_round = [p / s for p, s in zip(results["postgres"], results["sqlite"], strict=True)]
        print(
            f"  postgres/sqlite: {median['postgres'] / median['sqlite']:.2f}"
            f" (per round {min(per_round):.2f}-{max(per_round):.2f})"
        )


if __name__ == "__main__":
    main()
