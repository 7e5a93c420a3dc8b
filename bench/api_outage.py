"""Helicone's API down, then back: how long the backlog takes to be posted once it answers.

Webhooks arrive at ``--rate`` a second (signed, acknowledged, scored) while nothing listens at
the API's address (every call gets no answer) for ``--outage`` seconds. Then the stand-in starts
on that address and the clock runs until no webhook is left to post (each posted, or dead). It
prints what the status page says at the end of the outage (its "Needs attention" sentences and
time to drain), the seconds to drain, and the queue at the end (dead letters included). Default
settings otherwise (200 calls a minute, retries up to ``SCORER_RETRY_CAP``); real time: about
``--outage`` plus the drain.

    .venv/bin/python -m bench.api_outage [--rate 0.5] [--outage 600] [--python PYTHON]

``--python`` runs another checkout's server (its interpreter imports its own ``webhook``).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from html import unescape
from pathlib import Path
from typing import Any

from tests.server import Server, payload, with_api
from tests.standin import StandIn

TOKEN = "bench-status-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def figures(server: Server) -> dict[str, Any]:
    data: dict[str, Any] = server.client.get("/status.json", headers=BEARER).json()
    return data


def finished(server: Server) -> bool:
    """Nothing left to post: every webhook delivered, or a dead letter."""
    counts: dict[str, int] = figures(server)["queue"]["counts"]
    return counts["pending"] + counts["leased"] == 0


def drain_sentence(server: Server) -> str:
    """The page's "Time to drain" line, as a person reads it."""
    html = server.client.get("/status", headers=BEARER).text
    found = re.search(r"<dt>Time to drain</dt><dd>(.*?)</dd>", html, re.S)
    return unescape(re.sub(r"<[^>]+>", "", found.group(1))) if found else "(not found)"


def measure(rate: float, outage: float, python: str, timeout: float) -> None:
    api = StandIn()  # not started: nothing listens at its address until the outage ends
    with tempfile.TemporaryDirectory() as tmp:
        env = with_api(api.base_url) | {
            "SCORER_ENABLED": "vocabulary_diversity",
            "SCORER_STATUS_TOKEN": TOKEN,
            "SCORER_RETRY_BASE": None,  # the defaults, not the tests' quick ones
            "SCORER_POLL_INTERVAL": None,
        }
        server = Server(Path(tmp), env, python=python).start()
        try:
            sent = 0
            start = time.monotonic()
            while time.monotonic() - start < outage:
                assert server.post(payload(str(uuid.uuid4()))).status_code == 202
                sent += 1
                time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))
            seen = figures(server)
            print(f"after {outage:.0f} s without the API, {sent} webhooks acknowledged")
            for sentence in seen["attention"]:
                print(f"  needs attention: {sentence}")
            print(f"  time to drain: {drain_sentence(server)}")
            api.start()  # the API back, at the same address
            back = time.monotonic()
            while not finished(server) and time.monotonic() - back < timeout:
                time.sleep(0.5)
            seconds = time.monotonic() - back
            queue = figures(server)["queue"]["counts"]
            print(
                f"posted {len(api.posted_ids())}/{sent} in {seconds:.0f} s after the API came"
                f" back; queue: {queue} ({python})"
            )
        finally:
            server.close()
            api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=0.5, help="webhooks a second")
    parser.add_argument("--outage", type=float, default=600.0, help="seconds without the API")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait after")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if args.rate <= 0 or args.outage <= 0:
        parser.error("--rate and --outage must be above 0")
    measure(args.rate, args.outage, args.python, args.timeout)


if __name__ == "__main__":
    main()
