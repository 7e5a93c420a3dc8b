"""Ingest benchmark: wrk against the real server and against bare Starlette, in one run.

Each request is a unique, correctly signed webhook (a realistic ~700-byte OpenAI payload), so the
server verifies, parses and durably commits every one. Rounds alternate between the two servers
so the shared machine's noise hits both alike; the report is the ratio of medians. The server
runs dry (no API key) so the relay scores but posts nowhere.

    .venv/bin/python bench/ingest.py [--seconds 10] [--rounds 3] [--connections 64]

Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
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

import httpx2
import orjson

from webhook.verify import sign

SECRET = "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123"
HERE = Path(__file__).resolve().parent


def bodies(path: Path, count: int) -> None:
    with path.open("w") as out:
        for _ in range(count):
            body = orjson.dumps(
                {
                    "request_id": str(uuid.uuid4()),
                    "request_body": {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "Summarise the report please."}],
                    },
                    "response_body": {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": "The report finds revenue grew 12% while costs "
                                    "fell; the outlook is cautious but positive for next year.",
                                },
                                "finish_reason": "stop",
                            }
                        ],
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


def wrk(port: int, lines: Path, seconds: int, connections: int, threads: int) -> tuple[float, int]:
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
    return rps, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bodies", type=int, default=150_000)
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting"
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    lines = work / "bodies.txt"
    bodies(lines, args.bodies)
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "SCORER_"))}
    results: dict[str, list[float]] = {"bare": [], "scorer": []}
    for r in range(args.rounds):
        for name in ("bare", "scorer"):
            port = free_port()
            db = work / f"round{r}.db"
            if name == "bare":
                cmd = [
                    py,
                    "-m",
                    "uvicorn",
                    "bench.bare:app",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
                run_env = env | {"PYTHONPATH": str(HERE.parent)}
            else:
                cmd = [
                    py,
                    "-m",
                    "webhook",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
                run_env = env | {
                    "HELICONE_WEBHOOK_SECRET": SECRET,
                    "SCORER_DATABASE_URL": f"sqlite:///{db}",
                }
                run_env |= dict(item.split("=", 1) for item in args.env)
            proc = start(cmd, run_env, port, HERE.parent)
            try:
                rps, total = wrk(port, lines, args.seconds, args.connections, args.threads)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            results[name].append(rps)
            if name == "scorer":
                with sqlite3.connect(db) as conn:
                    (stored,) = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()
                # Every answered request was stored; those cut off at the end may be stored too.
                assert total <= stored <= total + args.connections, (stored, total)
            print(f"round {r + 1} {name:>6}: {rps:9.0f} req/s ({total} requests)", flush=True)
    bare, ours = statistics.median(results["bare"]), statistics.median(results["scorer"])
    print(
        f"median bare Starlette: {bare:.0f} req/s; helicone-scorer: {ours:.0f} req/s; "
        f"ratio {ours / bare:.2f}"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
