"""Run the built image and check it end to end: ``scripts/container-test`` calls this.

    python -m tests.container BUILDAH_ARGS_JSON IMAGE WORKDIR

It starts the loopback stand-in of Helicone's API, runs the image's own ``CMD`` with ``buildah
run`` (chroot isolation, so it shares this machine's loopback), and checks that:

- the image is configured as the Dockerfile promises (non-root numeric ``USER``, ``/data``
  volume, ``HEALTHCHECK``, ``PYTHONUNBUFFERED``, no compiler and no pip);
- ``/healthz`` answers, and so does the image's ``HEALTHCHECK`` command run inside the container;
- one signed webhook is acknowledged, stored in the volume, and its scores reach the stand-in;
- every process of the service runs as a non-root user;
- SIGTERM shuts it down cleanly.

The only deviation from the image's ``CMD`` is ``--host 127.0.0.1``, so nothing listens beyond
loopback on the machine that runs the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import httpx2

from tests.eventually import eventually
from tests.server import SECRET, payload, read_rows
from tests.standin import API_KEY, StandIn, free_port
from webhook.verify import sign

VOLUME = "/data"


class CheckFailed(Exception):
    pass


passed = 0


def check(condition: bool, message: str) -> None:
    global passed
    if not condition:
        raise CheckFailed(message)
    passed += 1
    print(f"  ok: {message}")


def buildah(args: list[str], *more: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args, *more], text=True, check=True, **kwargs)


def run_argv(
    args: list[str],
    container: str,
    command: list[str],
    env: dict[str, str] | None = None,
    volume: tuple[Path, str] | None = None,
) -> list[str]:
    """``buildah run`` with chroot isolation: this machine's network and pid space."""
    argv = ["buildah", *args, "run", "--isolation", "chroot"]
    argv += [f"--env={k}={v}" for k, v in (env or {}).items()]
    if volume is not None:
        argv.append(f"--volume={volume[0]}:{volume[1]}")
    return [*argv, container, "--", *command]


def image_config(args: list[str], image: str) -> dict[str, Any]:
    out = buildah(args, "inspect", "--type", "image", image, capture_output=True).stdout
    config: dict[str, Any] = json.loads(out)["Docker"]["config"]
    return config


def check_config(config: dict[str, Any]) -> int:
    """The image's configuration; returns the numeric uid it runs as."""
    user = str(config.get("User") or "")
    uid = user.split(":")[0]
    check(uid.isdigit() and int(uid) != 0, f"USER is a numeric non-root uid ({user!r})")
    check(VOLUME in (config.get("Volumes") or {}), f"{VOLUME} is declared as a volume")
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    check(env.get("PYTHONUNBUFFERED") == "1", "PYTHONUNBUFFERED=1")
    check(
        env.get("SCORER_DATABASE_URL", "").startswith(f"sqlite:///{VOLUME}/"),
        "SCORER_DATABASE_URL points into the volume",
    )
    secrets = {"HELICONE_API_KEY", "HELICONE_AUTH", "HELICONE_WEBHOOK_SECRET"}
    check(not secrets & env.keys(), "no secret is baked into the image")
    test = (config.get("Healthcheck") or {}).get("Test") or []
    check(test[:1] == ["CMD"] and "/healthz" in " ".join(test), "HEALTHCHECK probes /healthz")
    check(config.get("Cmd") == ["helicone-scorer", "serve"], "CMD is helicone-scorer serve")
    return int(uid)


def check_contents(args: list[str], container: str) -> None:
    """What must not be in the final image: compilers, and pip in the virtualenv."""
    probe = (
        "for t in gcc cc c++ make ld; do command -v $t && exit 1; done;"
        " test ! -e /opt/venv/bin/pip && test -x /opt/venv/bin/helicone-scorer"
    )
    done = subprocess.run(
        run_argv(args, container, ["sh", "-c", probe]), text=True, capture_output=True
    )
    check(done.returncode == 0, f"no build tools, no pip in the final image {done.stdout.strip()}")


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (the chroot isolation shares this machine's pid space)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def service_processes(root: int) -> dict[int, tuple[int, ...]]:
    """pid -> (real, effective, saved, fs) uids of the service's processes under ``root``."""
    procs: dict[int, tuple[int, ...]] = {}
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"helicone-scorer" not in cmdline or b"buildah" in cmdline:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        procs[pid] = tuple(int(u) for u in uid_line.split()[1:])
    return procs


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop what this run started: SIGTERM first, so buildah cleans up after itself."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        for pid in [*service_processes(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise CheckFailed(f"the container exited ({proc.returncode}):\n{log.read_text()}")
        try:
            return httpx2.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        eventually(healthy, timeout, what="/healthz answered 200", show=log.read_text, interval=0.2)
    except AssertionError as failed:
        raise CheckFailed(str(failed)) from None


def run(args: list[str], image: str, workdir: Path) -> None:
    config = image_config(args, image)
    uid = check_config(config)
    container = buildah(args, "from", "--quiet", image, capture_output=True).stdout.strip()
    # Our own directory is mounted at the volume's path, as a runtime mounts one there. buildah
    # would also mount an anonymous volume at the same path, and which one wins is not stable:
    # drop the declaration from this working container (the image keeps it).
    buildah(args, "config", f"--volume={VOLUME}-", container)
    check_contents(args, container)

    volume = workdir / "volume"
    volume.mkdir()
    # Fly mounts a volume owned by the image's USER; a fresh Docker volume copies the image's
    # /data, owned by it too. Do the same here.
    os.chown(volume, uid, uid)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    standin = StandIn().start()
    env = {
        "PORT": str(port),
        "HELICONE_WEBHOOK_SECRET": SECRET,
        "HELICONE_API_KEY": API_KEY,
        "HELICONE_API_BASE": standin.base_url,
    }
    command = [*config["Cmd"], "--host", "127.0.0.1"]
    log = workdir / "container.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            run_argv(args, container, command, env, (volume, VOLUME)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, proc, log, timeout=60)
        check(True, f"GET /healthz answers 200 on port {port} (PORT honoured)")
        healthcheck = config["Healthcheck"]["Test"][1:]
        probe = subprocess.run(
            run_argv(args, container, healthcheck, {"PORT": str(port)}),
            capture_output=True,
            text=True,
        )
        check(probe.returncode == 0, f"the image's HEALTHCHECK passes {probe.stderr.strip()}")

        rid = str(uuid.uuid4())
        body = payload(rid, "one two two three")
        answer = httpx2.post(
            f"{url}/webhook",
            content=body,
            headers={"Content-Type": "application/json", "Helicone-Signature": sign(SECRET, body)},
            timeout=30,
        )
        check(answer.status_code == 202, f"a signed webhook is acknowledged ({answer.status_code})")
        unsigned = httpx2.post(f"{url}/webhook", content=body, timeout=30)
        check(unsigned.status_code == 401, "an unsigned webhook is refused")
        standin.wait_for(lambda: rid in standin.posted_ids(), timeout=30)
        scores = standin.scores_for(rid)
        check(
            len(scores) == 1 and scores[0].get("vocabulary_diversity") == 75,
            f"its scores reached the stand-in {scores}",
        )
        check(standin.violations == [], "only integer scores were posted")

        procs = service_processes(proc.pid)
        check(bool(procs), f"found the service's processes {sorted(procs)}")
        check(
            all(0 not in uids for uids in procs.values()),
            f"the service runs as non-root: Uid {sorted(set(procs.values()))}",
        )
        check(
            all(uids[0] == uid for uids in procs.values()),
            f"as the image's USER ({uid})",
        )

        image_env = dict(e.split("=", 1) for e in config["Env"])
        in_image = PurePosixPath(image_env["SCORER_DATABASE_URL"].removeprefix("sqlite:///"))
        db = volume / in_image.relative_to(VOLUME)
        check(db.exists(), f"the queue lives in the volume ({in_image})")
        for pid in procs:  # as a container runtime does to the image's main process
            os.kill(pid, signal.SIGTERM)
        proc.wait(60)
        text = log.read_text()
        check("Application shutdown complete" in text, "SIGTERM shuts it down cleanly")
        state = read_rows(db).get(rid, {}).get("state")
        check(state == "done", f"the stored webhook is done after shutdown ({state})")
    except BaseException:
        print(f"--- container log ---\n{log.read_text()}", file=sys.stderr)
        raise
    finally:
        stop(proc)
        standin.stop()
        subprocess.run(["buildah", *args, "rm", container], capture_output=True, check=False)


def main() -> int:
    args, image, workdir = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    try:
        run(args, image, workdir)
    except CheckFailed as exc:
        print(f"container-test: FAILED: {exc}", file=sys.stderr)
        print(f"container-test: {passed} passed, 1 failed")
        return 1
    except BaseException:
        print(f"container-test: {passed} passed, 1 failed")
        raise
    print(f"container-test: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
