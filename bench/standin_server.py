"""The stand-in of Helicone's API (tests/standin.py) in a process of its own, for the benchmarks.

In a benchmark's own process the stand-in's server thread shares the GIL with the load tool's
bookkeeping; here it has an interpreter to itself. It prints its base URL on the first line of
stdout, then answers one line on stdin with one line on stdout:

- ``count``: ``<score posts answered 2xx> <distinct request ids> <when the last one was answered,
  time.monotonic()>``: the clock is the machine's monotonic one, the same in every process;
- ``digest``: a SHA-256 of every posted request id with its scores, sorted, so two systems fed
  the same webhooks can be checked to have posted the same numbers;
- ``violations``: how many calls the stand-in found wrong (bad path, non-int score);
- end of input: it stops.

    .venv/bin/python -m bench.standin_server
"""

from __future__ import annotations

import hashlib
import sys

import orjson

from tests.standin import StandIn


def count(standin: StandIn) -> str:
    calls = standin.ok_calls()
    ids = {c.request_id for c in calls}
    last = max((c.at for c in calls), default=0.0)
    return f"{len(calls)} {len(ids)} {last!r}"


def digest(standin: StandIn) -> str:
    posted = sorted((c.request_id or "", orjson.dumps(c.body)) for c in standin.ok_calls())
    sha = hashlib.sha256()
    for rid, body in dict(posted).items():
        sha.update(rid.encode() + b"\t" + body + b"\n")
    return sha.hexdigest()


def main() -> None:
    standin = StandIn().start()
    print(standin.base_url, flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                print(count(standin), flush=True)
            elif command == "digest":
                print(digest(standin), flush=True)
            elif command == "violations":
                print(len(standin.violations), flush=True)
            else:
                print(f"unknown command {command!r}", flush=True)
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
