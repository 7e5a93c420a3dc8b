"""Recovery after a crash: time from a restart to the last acknowledged webhook posted.

With default settings (lease 120 s, relay concurrency 8, poll 1 s): ``--count`` webhooks are
acknowledged while the stand-in of Helicone's API holds every score post open, so the relay's
first posts are in flight (leased) when the server is SIGKILLed. The server is started again on
the same file and the clock runs until the stand-in has every acknowledged webhook's scores.

    .venv/bin/python -m bench.recovery [--count 50] [--python /other/checkout/.venv/bin/python]

``--python`` runs another checkout's server (its interpreter imports its own ``webhook``), to
compare with a baseline on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.server import Server, payload, with_api
from tests.standin import Injected, StandIn

DEFAULTS: dict[str, str | None] = {"SCORER_RETRY_BASE": None, "SCORER_POLL_INTERVAL": None}


def measure(count: int, python: str, timeout: float) -> tuple[float, int]:
    """Seconds from the restart to the last webhook posted, and how many posts were in flight."""
    standin = StandIn().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp), with_api(standin.base_url) | DEFAULTS, python=python)
            try:
                return _run(server, standin, count, timeout)
            finally:
                server.close()
    finally:
        standin.stop()


def _run(server: Server, standin: StandIn, count: int, timeout: float) -> tuple[float, int]:
    standin.fail_next(*[Injected(201, stall=3600.0)] * 8)  # the relay's default concurrency
    server.start()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for rid in ids:
        assert server.post(payload(rid)).status_code == 202
    deadline = time.monotonic() + 30
    while (leased := _posting(server)) < min(8, count):
        assert time.monotonic() < deadline, "posts never got in flight"
        time.sleep(0.05)
    server.kill()
    started = time.monotonic()
    server.start()
    while not set(ids) <= standin.posted_ids():
        if time.monotonic() - started > timeout:
            return float("inf"), leased
        time.sleep(0.05)
    return time.monotonic() - started, leased


def _posting(server: Server) -> int:
    rows = server.rows().values()
    return sum(1 for r in rows if r["state"] == "leased" and r["scores"] is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    seconds, leased = measure(args.count, args.python, args.timeout)
    print(
        f"{args.count} acknowledged, {leased} posts in flight at SIGKILL: all posted"
        f" {seconds:.1f} s after the restart ({args.python})"
    )


if __name__ == "__main__":
    main()
