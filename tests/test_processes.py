"""Sync scorers in worker processes (scorers/processes.py), through the real server.

A plugin installed with pip gives scorers that tell where they ran, raise, spin past their
timeout, or end their process; the server's processes are found through /proc.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.plugins import install_plugin
from tests.server import Server, payload
from tests.standin import StandIn

PROBE = '''
"""Scorers that report on the process they run in."""
import os
import time
from pathlib import Path


def where_pid(ctx):
    return os.getpid()


def where_nice(ctx):
    return os.nice(0)


def boom(ctx):
    raise RuntimeError("kaput in a process")


def ratio(ctx):
    return 0.5


def junk(ctx):
    return {"fine": 2, "odd": (x for x in ())}


def spin(ctx):
    """Spins on the CPU forever when the answer says "spin", after noting its process."""
    if "spin" not in (ctx.text or ""):
        return 0
    Path(os.environ["PROBE_MARKERS"], "spinning").write_text(str(os.getpid()))
    while True:
        pass


def crash(ctx):
    """Ends its process at once when the answer says "crash"."""
    if "crash" in (ctx.text or ""):
        os._exit(3)
    return 0
'''

PARENT_ONLY = '''
"""A plugin that refuses to be imported in a child process."""
import multiprocessing

if multiprocessing.parent_process() is not None:
    raise ImportError("this plugin only loads in the main process")


def parent_only(ctx):
    return 1
'''

SCORERS = ["where_pid", "where_nice", "boom", "ratio", "junk", "spin", "crash"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    return install_plugin(
        root,
        "probe_plugin",
        {"probe_plugin": PROBE, "parent_only_plugin": PARENT_ONLY},
        {name: f"probe_plugin:{name}" for name in SCORERS}
        | {"parent_only": "parent_only_plugin:parent_only"},
    )


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command (state first), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def alive(proc: tuple[int, str]) -> bool:
    """Whether the process (pid, start time) still runs: not gone, not a zombie, not reused."""
    fields = stat(proc[0])
    return fields is not None and fields[0] != "Z" and fields[19] == proc[1]


def descendants(pid: int) -> set[tuple[int, str]]:
    """Every living descendant of ``pid``, as (pid, start time)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[tuple[int, str]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = stat(child)
            if fields is not None:
                found.add((child, fields[19]))
                todo.append(child)
    return found


def niceness(pid: int) -> int:
    fields = stat(pid)
    assert fields is not None
    return int(fields[16])


def probe_server(make_server: ServerFactory, site: Path, tmp_path: Path, **env: str) -> Server:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    defaults = {
        "PYTHONPATH": str(site),
        "PROBE_MARKERS": str(markers),
        "SCORER_TIMEOUT_SECONDS": "2",
        "SCORER_SCORING_PROCESSES": "2",
    }
    server = make_server(**(defaults | env))
    if (defaults | env)["SCORER_SCORING_PROCESSES"] != "0":
        server.wait_for_log("scoring in 2 process(es)", 60)  # until then: threads
    return server


def scored(server: Server, standin: StandIn, text: str) -> tuple[str, dict[str, int]]:
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, text)).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids(), timeout=30)
    [scores] = standin.scores_for(rid)
    return rid, scores


def test_sync_scorers_run_in_low_priority_processes_that_a_plugin_reaches(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    assert server.proc is not None
    rid, scores = scored(server, standin, "Hello! Nice.")
    workers = {pid for pid, _ in descendants(server.proc.pid)}
    assert scores["where_pid"] != server.proc.pid
    assert scores["where_pid"] in workers
    assert scores["where_nice"] == min(19, niceness(server.proc.pid) + 10)
    assert scores["vocabulary_diversity"] == 100  # the built-ins too
    assert "boom" not in scores  # it raised: only its own score is lost
    assert scores["fine"] == 2
    assert not {"ratio", "odd"} & set(scores)  # a float is refused, and junk
    log = server.log()
    assert f"scorer boom failed (request_id={rid}): RuntimeError: kaput in a process" in log
    assert "scorer ratio returned float for 'ratio'; only ints and bools are sent" in log
    assert "scorer junk returned generator for 'odd'; only ints and bools are sent" in log
    assert "scoring in 2 process(es) at nice +10" in log


def test_an_overrunning_scorer_has_its_process_killed_and_the_next_webhook_scores(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    rid, scores = scored(server, standin, "please spin")
    assert "spin" not in scores
    assert scores["word_count"] == 2  # the rest of the webhook's scorers still scored
    assert "where_pid" in scores
    assert f"scorer spin failed (request_id={rid}): timed out after 2s" in server.log()
    spinner = int((tmp_path / "markers" / "spinning").read_text())
    eventually(lambda: (stat(spinner) or ["Z"])[0] == "Z", what="the spinning scorer killed")
    # The next webhooks score in full, on a replacement process.
    for _ in range(3):
        _, scores = scored(server, standin, "all calm")
        assert scores["spin"] == 0
        assert scores["where_pid"] != spinner


def test_a_process_that_dies_fails_only_the_scorer_it_ran(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    rid, scores = scored(server, standin, "crash now")
    assert "crash" not in scores
    assert scores["word_count"] == 2
    log = server.log()
    assert f"scorer crash failed (request_id={rid}): the scorer process died (exit code 3)" in log
    _, scores = scored(server, standin, "all calm")
    assert scores["crash"] == 0


def test_a_scorer_a_process_cannot_load_runs_on_the_servers_threads(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    assert server.proc is not None
    server.wait_for_log(
        "scorer parent_only runs on the server's threads, not in a scorer process:"
        " plugin scorer parent_only (parent_only_plugin:parent_only) failed to load:"
        " ImportError: this plugin only loads in the main process"
    )
    _, scores = scored(server, standin, "Hello")
    assert scores["parent_only"] == 1
    assert scores["where_pid"] != server.proc.pid  # the others still run in processes


def test_zero_processes_scores_on_threads_as_before(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path, SCORER_SCORING_PROCESSES="0")
    assert server.proc is not None
    _, scores = scored(server, standin, "Hello")
    assert scores["where_pid"] == server.proc.pid
    assert descendants(server.proc.pid) == set()
    assert "scoring in" not in server.log()


def test_scorer_processes_end_with_the_server_even_on_sigkill(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    assert server.proc is not None
    scored(server, standin, "Hello")
    # the forkserver, its workers (two, and a busy one), and the resource tracker
    assert server.post(payload(text="please spin")).status_code == 202
    eventually((tmp_path / "markers" / "spinning").exists, what="a scorer spinning")
    family = descendants(server.proc.pid)
    assert len(family) >= 3, family
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    eventually(
        lambda: not any(map(alive, family)),
        what="no scorer process left",
        show=lambda: [p for p in family if alive(p)],
    )


def test_scorer_processes_are_stopped_at_shutdown(
    make_server: ServerFactory, standin: StandIn, probe: Path, tmp_path: Path
) -> None:
    server = probe_server(make_server, probe, tmp_path)
    assert server.proc is not None
    scored(server, standin, "Hello")
    family = descendants(server.proc.pid)
    assert family
    assert server.terminate()
    eventually(
        lambda: not any(map(alive, family)),
        what="no scorer process left",
        show=lambda: [p for p in family if alive(p)],
    )
