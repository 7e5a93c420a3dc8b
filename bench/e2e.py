"""End to end: webhooks in, scored, posted to the API; our server against the Worker template.

The Worker is Cloudflare's template ``worker-helicone-scores`` (``bench/worker/worker.js``) run
in workerd, the open-source Workers runtime (npm package ``workerd``, pinned in
``bench/worker/package.json``; ``npm ci --prefix bench/worker`` runs first if it is missing).
Both post to the same loopback stand-in of Helicone's API (``tests/standin.py``), run in a
process of its own (``bench/standin_server.py``).

Each measurement: a fresh stand-in and a fresh system (our server on a fresh SQLite file or
PostgreSQL schema); wrk sends ``--count`` unique webhooks, each once (``bench/e2e.lua``),
signed as Helicone signs them, over ``--connections`` connections; the time runs from wrk's
start until the stand-in has answered a score post for every one of them, so the rate is score
posts per second, end to end. Our server runs with only ``vocabulary_diversity``, the rate limit
lifted, no feedback, no reconciliation sweeps, and the other settings at their defaults; the
Worker checks no signature and answers each webhook after its post, as the template does. Every
system must post the same scores for the same webhooks (a digest of the stand-in's calls).

A round measures every system in turn (the stand-in alone first: wrk posting scores straight to
it, the ceiling of any system here), so the shared machine's noise hits all alike. The report:
each system's median rate with its lowest and highest round, and ours / Worker, the ratio of
medians with the rounds' own ratios.

    .venv/bin/python -m bench.e2e [--count 20000] [--rounds 3] [--stores sqlite,postgres]
        [--workers 1,2] [--postgres-url postgresql://root@127.0.0.1:5432/test]

``--workers N`` passes ``--workers N`` to ``helicone-scorer serve`` for N > 1. Needs wrk (Debian:
apt-get install wrk) and npm.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx2
import orjson

from bench.ingest import SECRET, Place, free_port
from bench.ingest import webhook as webhook_of
from bench.postgres import add_postgres_url, postgres_database
from tests.standin import API_KEY
from webhook.verify import sign

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker"
WORKERD = WORKER / "node_modules" / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd"
TEXT = (
    "the report finds revenue grew while costs fell outlook is cautious but positive for next"
    " year The Q3 numbers beat forecasts and margins widened as demand held up in Europe Asia"
)
WORDS = TEXT.split(" ")


def webhook(rng: random.Random) -> bytes:
    """A unique OpenAI chat webhook of about 700 bytes, as Helicone sends it; its text varies,
    so the scores do (one or two choices, repeated words, the odd double space or newline)."""

    def text() -> str:
        words = rng.choices(WORDS, k=rng.randint(8, 40))
        return "".join(w + rng.choice((" ", " ", " ", " ", "  ", "\n")) for w in words).strip()

    answers = [text() for _ in range(rng.choice((1, 1, 1, 2)))]
    return webhook_of(str(uuid.UUID(int=rng.getrandbits(128), version=4)), answers)


def write_lines(work: Path, count: int) -> tuple[Path, Path]:
    """The webhooks for the systems, and as many score posts for the stand-in alone: files of
    ``<path>\\t<signature>\\t<body>`` lines, for ``e2e.lua``."""
    rng = random.Random(13)
    webhooks, direct = work / "webhooks.txt", work / "scores.txt"
    with webhooks.open("w") as hooks, direct.open("w") as scores:
        for _ in range(count):
            body = webhook(rng)
            hooks.write(f"/webhook\t{sign(SECRET, body)}\t{body.decode()}\n")
            rid = uuid.UUID(int=rng.getrandbits(128), version=4)
            score = orjson.dumps({"scores": {"vocabulary_diversity": rng.randint(40, 100)}})
            scores.write(f"/v1/request/{rid}/score\t-\t{score.decode()}\n")
    return webhooks, direct


def ensure_workerd() -> Path:
    if not WORKERD.exists():
        print("installing workerd: npm ci --prefix bench/worker", flush=True)
        npm = ["npm", "ci", "--prefix", str(WORKER), "--no-audit", "--no-fund"]
        subprocess.run(npm, check=True)
    subprocess.run([str(WORKERD), "--version"], check=True, capture_output=True)
    return WORKERD


class StandInProcess:
    """``bench/standin_server.py`` as a child process, asked for its counts over a pipe."""

    def __init__(self, log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.standin_server"],
            cwd=HERE.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.base_url = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the stand-in exited {self.proc.wait()}")
        return line.strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def count(self) -> tuple[int, int, float]:
        """Score posts answered 2xx, distinct request ids, when the last one was answered."""
        posts, ids, last = self.ask("count").split()
        return int(posts), int(ids), float(last)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclasses.dataclass
class System:
    name: str
    store: str | None = None  # None: the Worker, or the stand-in alone
    workers: int = 1


@dataclasses.dataclass
class Outcome:
    rate: float  # score posts a second, end to end
    seconds: float
    posts: int  # may pass the count: our server delivers at least once
    digest: str
    cpu: dict[str, float]  # share of one core each process (with its children) used meanwhile


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of ``pid`` and its descendants still running."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def wait_answering(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers any HTTP status (the server is up), or the process ends."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in 60 s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running(
    system: System, standin: str, place: Place | None, args: argparse.Namespace, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The system started, pointing at the stand-in: its URL and process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "SCORER_"))}
    env |= {"HELICONE_API_BASE": standin, "HELICONE_API_KEY": API_KEY}
    if place is None:
        cmd = [str(WORKERD), "serve", str(WORKER / "config.capnp")]
        cmd += ["--socket-addr", f"http=127.0.0.1:{port}"]
    else:
        env |= {
            "HELICONE_WEBHOOK_SECRET": SECRET,
            "SCORER_DATABASE_URL": place.url,
            "SCORER_ENABLED": "vocabulary_diversity",
            "SCORER_RATE_LIMIT_PER_MINUTE": "10000000",
            "SCORER_RECONCILE_INTERVAL": "0",
            "PYTHONPATH": str(HERE.parent),
        }
        env |= dict(item.split("=", 1) for item in args.env)
        cmd = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--log-level", "warning"]
        if system.workers > 1:
            cmd += ["--workers", str(system.workers)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answering(url, proc, log)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_wrk(url: str, lines: Path, idle: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            "-d3600s",  # stopped by SIGINT once every post has arrived
            "-s",
            str(HERE / "e2e.lua"),
            url,
            "--",
            str(lines),
            str(args.threads),
            API_KEY,
            idle,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_wrk(wrk: subprocess.Popen[str]) -> tuple[int, int, str]:
    """SIGINT wrk; the webhooks it got answers to (-1: unknown), how many of those were not
    2xx, and all it printed."""
    wrk.send_signal(signal.SIGINT)
    try:
        out, _ = wrk.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        wrk.kill()
        out, _ = wrk.communicate()
    found = re.search(r"answered (\d+) failed (\d+)", out)
    if found is None:
        return -1, -1, out
    return int(found.group(1)), int(found.group(2)), out


def profile(pid: int, path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (and its worker processes) for ``seconds``, into ``path``."""
    py_spy = Path(sys.executable).with_name("py-spy")
    fmt = "raw" if path.suffix == ".txt" else "flamegraph"
    cmd = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    cmd += ["--subprocesses", "--nonblocking", "--format", fmt, "-o", str(path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(
    system: System,
    lines: Path,
    place: Place | None,
    args: argparse.Namespace,
    work: Path,
    profile_to: Path | None,
) -> Outcome:
    log = work / f"{system.name}.log"
    with contextlib.ExitStack() as stack, (work / "standin.log").open("ab") as standin_log:
        standin = StandInProcess(standin_log)
        stack.callback(standin.close)
        if system.name == "standin":
            url, idle, pid = standin.base_url, "/v1/evals/query", None
        else:
            url, proc = stack.enter_context(running(system, standin.base_url, place, args, log))
            idle, pid = "/", proc.pid
        pids = {"standin": standin.proc.pid} | ({"system": pid} if pid else {})
        start = time.monotonic()
        wrk = start_wrk(url, lines, idle, args)
        pids["wrk"] = wrk.pid
        cpu = {name: cpu_seconds(p) for name, p in pids.items()}
        spy = profile(pid, profile_to, args.profile_seconds) if profile_to and pid else None
        try:
            ids, progress, moved = 0, 0, time.monotonic()
            while ids < args.count:
                time.sleep(0.1)
                posts, ids, last = standin.count()
                if ids > progress:
                    progress, moved = ids, time.monotonic()
                if wrk.poll() is not None or time.monotonic() - moved > args.stall:
                    said = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise RuntimeError(f"{system.name}: {ids} of {args.count} posted:\n{said}")
            elapsed = time.monotonic() - start
            cpu = {name: (cpu_seconds(p) - cpu[name]) / elapsed for name, p in pids.items()}
        finally:
            answered, failed, out = stop_wrk(wrk)
            if spy is not None:
                spy.wait()
        if answered != args.count or failed:
            raise RuntimeError(f"{system.name}: {answered} answered, {failed} not 2xx:\n{out}")
        if place is not None and (stored := place.stored()) != args.count:
            raise RuntimeError(f"{system.name}: {stored} webhooks stored of {args.count}")
        if (violations := int(standin.ask("violations"))) != 0:
            raise RuntimeError(f"{system.name}: the stand-in saw {violations} violations")
        seconds = last - start
        return Outcome(args.count / seconds, seconds, posts, standin.ask("digest"), cpu)


def names(value: str, allowed: set[str]) -> list[str]:
    items = list(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    if not items or set(items) - allowed:
        sys.exit(f"expected a comma list of {', '.join(sorted(allowed))}, not {value!r}")
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=20_000, help="webhooks per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--stores", default="sqlite", help="comma list: sqlite, postgres")
    ap.add_argument("--workers", default="1", help="comma list of server process counts")
    add_postgres_url(ap)
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting"
    )
    ap.add_argument("--stall", type=float, default=60, help="give up after this long idle (s)")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy our servers in the first round into DIR/<system>.svg"
        " (--profile-format raw: collapsed stacks, .txt)",
    )
    ap.add_argument("--profile-format", choices=("svg", "raw"), default="svg")
    ap.add_argument("--profile-seconds", type=float, default=10)
    args = ap.parse_args()
    if args.count < 1 or args.rounds < 1:
        sys.exit("--count and --rounds: at least 1")
    stores = names(args.stores, {"sqlite", "postgres"})
    try:
        counts = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    except ValueError:
        sys.exit(f"--workers takes a comma list of numbers, not {args.workers!r}")
    if not counts or counts[0] < 1:
        sys.exit("--workers: at least one process")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    ensure_workerd()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    systems = [System("standin"), System("worker")]
    systems += [System(f"{s}-{n}", s, n) for s in stores for n in counts]
    # SIGTERM (a timeout, say) unwinds like an error: the servers stop, the database is dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        with contextlib.ExitStack() as stack:
            database = (
                stack.enter_context(postgres_database(args.postgres_url))
                if "postgres" in stores
                else None
            )
            report(run(args, systems, work, database), args)
    finally:
        shutil.rmtree(work)


def run(
    args: argparse.Namespace, systems: list[System], work: Path, database: str | None
) -> dict[str, list[Outcome]]:
    webhooks, direct = write_lines(work, args.count)
    results: dict[str, list[Outcome]] = {s.name: [] for s in systems}
    places = 0
    for r in range(args.rounds):
        for system in systems:
            place = None
            if system.store is not None:
                places += 1
                place = Place(system.store, work, database, str(places))
            profile_to = None
            if args.profile and r == 0 and system.store is not None:
                suffix = ".txt" if args.profile_format == "raw" else ".svg"
                profile_to = (args.profile / system.name).with_suffix(suffix)
            lines = direct if system.name == "standin" else webhooks
            outcome = measure(system, lines, place, args, work, profile_to)
            results[system.name].append(outcome)
            cpu = ", ".join(f"{k} {v:.0%}" for k, v in outcome.cpu.items())
            print(
                f"round {r + 1} {system.name:>10}: {outcome.rate:7.0f} posts/s"
                f" ({outcome.seconds:.2f} s, {outcome.posts} posts; CPU {cpu})",
                flush=True,
            )
    digests = {o.digest for s in systems if s.name != "standin" for o in results[s.name]}
    if len(digests) != 1:
        raise RuntimeError("the systems posted different scores for the same webhooks")
    return results


def report(results: dict[str, list[Outcome]], args: argparse.Namespace) -> None:
    print(f"{args.count} webhooks, {args.connections} connections; median (min-max) of")
    print(f"{args.rounds} rounds, posts/s end to end; every system posted the same scores:")
    rates = {name: [o.rate for o in outcomes] for name, outcomes in results.items()}
    for name, values in rates.items():
        shares = results[name][0].cpu.keys()
        cpu = {k: statistics.median(o.cpu[k] for o in results[name]) for k in shares}
        print(
            f"  {name:>10}: {statistics.median(values):7.0f}"
            f" ({min(values):.0f}-{max(values):.0f});"
            f" CPU (median) {', '.join(f'{k} {v:.0%}' for k, v in cpu.items())}"
        )
    worker = rates["worker"]
    for name, values in rates.items():
        if name in ("standin", "worker"):
            continue
        # Per round too: the rounds' own ratios show how far the noise moved the figure.
        per_round = [o / w for o, w in zip(values, worker, strict=True)]
        print(
            f"  {name}/worker: {statistics.median(values) / statistics.median(worker):.2f}"
            f" (per round {min(per_round):.2f}-{max(per_round):.2f})"
        )


if __name__ == "__main__":
    main()
