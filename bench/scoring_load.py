"""Ingest latency under a burst of scoring: sync scorers on threads vs in scorer processes.

A real server (dry run: it scores and stores, posts nothing) gets a burst of webhooks with long
answers (``--size`` bytes each, about 1 ms of scorer CPU per 10 KB), sent by ``--senders`` clients
at once, while one probe client posts a small webhook every 20 ms and times the answer. Rounds
alternate between the ``--compare`` values of ``SCORER_SCORING_PROCESSES`` (by default ``0``,
threads, and the default, processes), so the shared machine's noise hits all alike; the report is
each one's median and 95th percentile of the probes' latency (medians over rounds) and their
ratio to the first.

    .venv/bin/python -m bench.scoring_load [--rounds 3] [--burst 120] [--size 200000]
        [--compare 0,default]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2

from bench.scorer_cpu import answer
from tests.server import SECRET, Server, payload
from webhook.verify import sign


def post(client: httpx2.Client, body: bytes) -> float:
    headers = {"Content-Type": "application/json", "Helicone-Signature": sign(SECRET, body)}
    t0 = time.perf_counter()
    response = client.post("/webhook", content=body, headers=headers)
    assert response.status_code == 202, response.text
    return time.perf_counter() - t0


def one_round(mode: str | None, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """The probes' median and 95th percentile latency, in ms, for one server in ``mode``."""
    workdir = Path(tempfile.mkdtemp(dir=work))
    env = {"SCORER_SCORING_PROCESSES": mode, "HELICONE_API_KEY": None}
    server = Server(workdir, env).start()
    if mode != "0":
        server.wait_for_log("scoring in", 60)  # the workers start in the background
    heavy = [payload(str(uuid.uuid4()), answer(args.size, seed=i)) for i in range(args.burst)]
    latencies: list[float] = []
    done = threading.Event()
    try:
        with httpx2.Client(base_url=server.url, timeout=60) as client:
            for _ in range(5):  # warm up
                post(client, payload())

            def probe() -> None:
                with httpx2.Client(base_url=server.url, timeout=60) as probe_client:
                    while not done.is_set():
                        latencies.append(post(probe_client, payload()))
                        time.sleep(0.02)

            prober = threading.Thread(target=probe)
            prober.start()
            clients = [httpx2.Client(base_url=server.url, timeout=60) for _ in range(args.senders)]
            with ThreadPoolExecutor(args.senders) as pool:
                list(
                    pool.map(lambda i: post(clients[i % args.senders], heavy[i]), range(args.burst))
                )
            time.sleep(args.after)  # the scoring of the burst goes on after its last answer
            done.set()
            prober.join()
            for c in clients:
                c.close()
    finally:
        server.close()
    ms = sorted(x * 1000 for x in latencies)
    return statistics.median(ms), ms[int(len(ms) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=120)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument("--compare", default="0,default", help="SCORER_SCORING_PROCESSES values")
    args = parser.parse_args()
    modes = {m: None if m == "default" else m for m in args.compare.split(",")}
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in list(modes) if r % 2 == 0 else reversed(modes):
                results[mode].append(one_round(modes[mode], args, Path(tmp)))
                print(
                    f"round {r + 1} {mode:9s} p50 {results[mode][-1][0]:7.1f} ms"
                    f"  p95 {results[mode][-1][1]:7.1f} ms",
                    flush=True,
                )
    summary = {
        m: (statistics.median(p[0] for p in v), statistics.median(p[1] for p in v))
        for m, v in results.items()
    }
    for mode, (p50, p95) in summary.items():
        print(
            f"SCORER_SCORING_PROCESSES={mode:8s}: probe latency p50 {p50:7.1f} ms,"
            f" p95 {p95:7.1f} ms (median of rounds)"
        )
    first, *others = summary
    base = summary[first]
    for mode in others:
        p50, p95 = summary[mode]
        print(f"{mode} / {first}: p50 {p50 / base[0]:.2f}, p95 {p95 / base[1]:.2f}")


if __name__ == "__main__":
    main()
