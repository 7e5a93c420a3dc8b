"""What an unsigned client can make the server hold: memory under a burst of large unsigned
bodies, and connections still open after thousands stall mid-headers.

Runs ``python -m webhook serve`` with the given interpreter (``--python``; e.g. another checkout's
venv to measure it before a change) and prints one line per figure.

    .venv/bin/python bench/availability.py memory
    .venv/bin/python bench/availability.py stalled --connections 20000 --wait 40
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
SECRET = "bench-secret"


def start(python: str, workdir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "SCORER_"))}
    proc = subprocess.Popen(
        [python, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=base
        | {"HELICONE_WEBHOOK_SECRET": SECRET, "SCORER_DATABASE_URL": f"sqlite:///{workdir}/b.db"}
        | env,
        cwd=workdir,
        stdout=(workdir / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024
    return fields


def sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def post_unsigned(port: int, size: int) -> str:
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(head)
            sock.sendall(b"x" * size)
            answer = sock.recv(100)
    except OSError as exc:
        return type(exc).__name__
    return answer.split(b" ", 2)[1].decode() if answer else "closed"


def memory(python: str, port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(python, Path(tmp), port, {})
        try:
            time.sleep(1)
            before = status(proc.pid)
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                answers = list(pool.map(lambda _: post_unsigned(port, 15 * MiB), range(40)))
            time.sleep(3)
            after = status(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    counts = {a: answers.count(a) for a in sorted(set(answers))}
    print(
        f"forty 15 MiB unsigned bodies: RSS before {before['VmRSS']} MB, peak (VmHWM)"
        f" {after['VmHWM']} MB, RSS 3 s after {after['VmRSS']} MB; answers {counts}"
    )


def client(port: int, count: int) -> None:
    """Hold ``count`` connections that stop mid-headers, until stdin closes."""
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Le")
            held.append(sock)
        except OSError:
            continue
    print(len(held), flush=True)
    sys.stdin.read()


def stalled(python: str, port: int, connections: int, wait: float) -> None:
    per = 5000
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(python, Path(tmp), port, {})
        clients = []
        try:
            for left in range(connections, 0, -per):
                clients.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "client",
                            "--port",
                            str(port),
                            "--connections",
                            str(min(per, left)),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            opened = sum(int(c.stdout.readline()) for c in clients if c.stdout)
            at_peak = sockets(proc.pid)
            time.sleep(wait)
            after = sockets(proc.pid)
            answer = post_signed(port)
        finally:
            for c in clients:
                if c.stdin:
                    c.stdin.close()
                c.wait()
            proc.kill()
            proc.wait()
    print(
        f"{connections} stalled connections ({opened} opened): server sockets {at_peak} when"
        f" all were open, {after} after {wait:.0f} s; then a signed webhook got: {answer}"
    )


def post_signed(port: int) -> str:
    import hashlib
    import hmac
    import uuid

    body = b'{"request_id":"%s"}' % str(uuid.uuid4()).encode()
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest().encode()
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nHelicone-Signature: %s\r\n" % sig
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body)
            return sock.recv(100).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["memory", "stalled", "client"])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--wait", type=float, default=40.0)
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.python, args.port)
    elif args.what == "stalled":
        stalled(args.python, args.port, args.connections, args.wait)
    else:
        client(args.port, args.connections)


if __name__ == "__main__":
    main()
