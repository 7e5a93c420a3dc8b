"""CPU per API post of each HTTP client we could post with, on loopback.

The relay's posting cost is mostly its HTTP client's. Each client posts ``--count`` score calls
(``POST /v1/request/{id}/score``, a small JSON body, 8 at a time, connections kept alive) to one
bare server (Hypercorn, which speaks HTTP/1.1 and cleartext HTTP/2, so both protocols meet the
same server), in a process of its own; the figure is that process's CPU time per post
(user + system: the kernel's loopback work is part of a post's cost). Rounds alternate the
clients; the report is the median of the rounds and each client's ratio to ours.

- ``ours``: :class:`webhook.helicone.Helicone`, the server's transport (aiohttp, HTTP/1.1);
- ``httpx2-h1``, ``httpx2-h2``: httpx2's AsyncClient (the HTTP/2 one with prior knowledge);
- ``aiohttp``: a bare aiohttp session, to show what ours adds to it.

    .venv/bin/python -m bench.http_client [--count 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENTS = ("ours", "httpx2-h1", "httpx2-h2", "aiohttp")
CONCURRENCY = 8


async def _score(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """The stand-in's success answer, with nothing else to cost CPU (an ASGI app)."""
    if scope["type"] != "http":
        return
    while True:
        message = await receive()  # type: ignore[operator]
        if not message.get("more_body"):
            break
    await send(  # type: ignore[operator]
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"data":null,"error":null}'})  # type: ignore[operator]


app = _score
keep_alive_max_requests = 10**9  # Hypercorn's setting, read by --config python:bench.http_client


async def _client(kind: str, base: str, count: int) -> float:
    """Post ``count`` scores; the CPU seconds this process spent doing it."""
    import orjson

    ids = [str(uuid.uuid4()) for _ in range(count)]
    if kind == "ours":
        from webhook.helicone import Helicone

        ours = Helicone(base, "sk-bench")

        async def post(rid: str) -> int:
            return (await ours.post_scores(rid, {"vocabulary_diversity": 42})).status or 0

        close = ours.aclose
    elif kind.startswith("httpx2"):
        import httpx2

        h2 = kind == "httpx2-h2"
        client = httpx2.AsyncClient(
            base_url=base,
            http1=not h2,
            http2=h2,
            headers={"Authorization": "Bearer sk-bench", "Content-Type": "application/json"},
        )

        async def post(rid: str) -> int:
            body = orjson.dumps({"scores": {"vocabulary_diversity": 42}})
            response = await client.post(f"/v1/request/{rid}/score", content=body)
            return response.status_code

        close = client.aclose
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            base, headers={"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
        )

        async def post(rid: str) -> int:
            body = orjson.dumps({"scores": {"vocabulary_diversity": 42}})
            async with session.post(f"/v1/request/{rid}/score", data=body) as response:
                await response.read()
                return response.status

        close = session.close
    assert await post("warm-up") == 201
    todo = iter(ids)

    async def worker() -> None:
        for rid in todo:
            status = await post(rid)
            assert status == 201, status

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    spent = time.process_time() - start
    await close()
    return spent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # one client's run, in its own process
        import uvloop

        print(uvloop.run(_client(args.client, args.base, args.count)))
        return
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--bind",
            f"127.0.0.1:{port}",
            # Never close a kept-alive connection (by default after 1,000 requests)
            "--config",
            "python:bench.http_client",
            "bench.http_client:app",
        ],
        env=env,
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        per_post: dict[str, list[float]] = {kind: [] for kind in CLIENTS}
        for r in range(args.rounds):
            for kind in CLIENTS:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.http_client", "--client", kind, "--count",
                     str(args.count), "--base", f"http://127.0.0.1:{port}"],
                    env=env, cwd=HERE.parent, capture_output=True, text=True, check=True,
                )  # fmt: skip
                per_post[kind].append(float(out.stdout.split()[-1]) / args.count * 1e6)
                print(f"round {r + 1} {kind:>10}: {per_post[kind][-1]:6.0f} us CPU per post")
    finally:
        server.terminate()
        server.wait(10)
    ours = statistics.median(per_post["ours"])
    print(f"median over {args.rounds} rounds of {args.count} posts, 8 at a time:")
    for kind in CLIENTS:
        median = statistics.median(per_post[kind])
        spread = f"{min(per_post[kind]):.0f}-{max(per_post[kind]):.0f}"
        print(f"  {kind:>10}: {median:6.0f} us CPU per post ({spread}), {median / ours:.2f}x ours")


if __name__ == "__main__":
    main()
