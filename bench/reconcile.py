"""An outage, then reconciliation: how many requests logged while the server was down are
scored after it comes back, and how long that takes.

Helicone (the loopback stand-in) logs ``--rate`` requests a second throughout. For ``--before``
seconds the server is up and gets each one's webhook too; then it stops (SIGTERM) for
``--outage`` seconds, while the requests are only logged; then it starts again, with no new
traffic, and the clock runs until every request logged during the outage is scored, then posted.
Defaults: 5 requests/s, a 5-minute outage (it runs in real time: about 6 minutes in all).

The server runs with a reconciliation sweep every ``--interval`` seconds, a settle time of 5 s
and the rate limit lifted (``SCORER_RATE_LIMIT_PER_MINUTE=100000``): at 5 requests/s live traffic
alone is 300 calls a minute, past hosted Helicone's 200, so with the default limit the reconciled
requests would be scored but posted only as the budget allows.

    .venv/bin/python -m bench.reconcile [--rate 5] [--outage 300] [--before 20] [--interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.server import Server, payload, with_api
from tests.standin import StandIn
from webhook.store import open_reader


def log(standin: StandIn, rid: str) -> None:
    body = orjson.loads(payload(rid))
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    standin.log_request(rid, body["request_body"], body["response_body"], created_at=created)


def traffic(standin: StandIn, server: Server | None, rate: float, seconds: float) -> list[str]:
    """``rate`` requests a second for ``seconds``, logged, and sent to ``server`` if up."""
    ids: list[str] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rid = str(uuid.uuid4())
        log(standin, rid)
        if server is not None:
            assert server.post(payload(rid)).status_code == 202
        ids.append(rid)
        time.sleep(max(0.0, (len(ids) / rate) - (time.monotonic() - start)))
    return ids


def scored(url: str, ids: list[str]) -> int:
    async def read() -> int:
        reader = await open_reader(url)
        try:
            entries = await reader.entries(ids)
        finally:
            await reader.close()
        return sum(1 for e in entries.values() if e.scores is not None)

    return asyncio.run(read())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--outage", type=float, default=300.0)
    parser.add_argument("--before", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    standin = StandIn().start()
    settings = {
        "SCORER_RECONCILE_INTERVAL": str(args.interval),
        "SCORER_RECONCILE_SETTLE": "5",
        "SCORER_RATE_LIMIT_PER_MINUTE": "100000",
        "SCORER_RETRY_BASE": None,
        "SCORER_POLL_INTERVAL": None,
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp), with_api(standin.base_url) | settings)
            try:
                server.start()
                before = traffic(standin, server, args.rate, args.before)
                server.terminate()
                missed = traffic(standin, None, args.rate, args.outage)
                print(f"{len(before)} requests delivered, then {len(missed)} logged while down")
                back = time.monotonic()
                server.start()
                all_scored = all_posted = None
                while time.monotonic() - back < args.timeout:
                    if all_scored is None and scored(server.store_url, missed) == len(missed):
                        all_scored = time.monotonic() - back
                    if set(missed) <= standin.posted_ids():
                        all_posted = time.monotonic() - back
                        break
                    time.sleep(0.5)
                done = scored(server.store_url, missed)
                posts = Counter(c.request_id for c in standin.ok_calls())
                print(f"scored after the restart: {done} of {len(missed)}")
                print(
                    f"all scored {all_scored and round(all_scored, 1)} s after the restart,"
                    f" all posted {all_posted and round(all_posted, 1)} s after it"
                )
                print(f"posted more than once: {sum(1 for n in posts.values() if n > 1)}")
                sweeps = [line for line in server.log().splitlines() if "reconcile: window" in line]
                print("\n".join(sweeps))
            finally:
                server.close()
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
