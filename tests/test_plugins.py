"""Plugins installed with pip, the registry's settings, and a CPU-bound scorer vs the event loop."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.cli import run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.plugins import install_plugin
from tests.server import Server, payload
from tests.standin import StandIn

DEMO = '''
"""Demo scorers for the tests."""
import os
import time
from pathlib import Path

from scorers import Context


def exclamations(ctx: Context) -> int | None:
    """Exclamation marks in the answer."""
    return None if ctx.text is None else ctx.text.count("!")


def slow_cpu(ctx: Context) -> int | None:
    """Burns CPU in pure Python for SLOW_SECONDS when the answer says "burn cpu"."""
    if "burn cpu" not in (ctx.text or ""):
        return None
    markers = Path(os.environ["SLOW_MARKERS"])
    (markers / "started").touch()
    end = time.monotonic() + float(os.environ.get("SLOW_SECONDS", "3"))
    spins = 0
    while time.monotonic() < end:
        spins += 1
    (markers / "finished").touch()
    return 1
'''

BROKEN = "raise ImportError('this plugin needs numpy 9')\n"


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A target directory where pip installed the demo plugin."""
    target = install_plugin(
        tmp_path_factory.mktemp("plugins"),
        "helicone_demo_plugin",
        {"helicone_demo_plugin": DEMO},
        {
            "exclamations": "helicone_demo_plugin:exclamations",
            "slow_cpu": "helicone_demo_plugin:slow_cpu",
        },
    )
    assert (target / "helicone_demo_plugin.py").exists()
    return target


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(
        tmp_path_factory.mktemp("broken"),
        "broken_plugin",
        {"broken_plugin": BROKEN},
        {"broken": "broken_plugin:score"},
    )


def test_an_installed_plugin_scores_and_is_posted(
    make_server: ServerFactory, standin: StandIn, plugins: Path
) -> None:
    server = make_server(PYTHONPATH=str(plugins))
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "Wow! Great! Really!")).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    [scores] = standin.scores_for(rid)
    assert scores["exclamations"] == 3
    assert scores["vocabulary_diversity"] == 100
    assert "slow_cpu" not in scores  # it returned None: no score
    assert "exclamations" in server.log()  # the start-up line lists the scorers


def test_scorers_command_lists_plugins(tmp_path: Path, plugins: Path) -> None:
    result = run(tmp_path, {"PYTHONPATH": str(plugins)}, "scorers")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("exclamations "))
    assert "plugin helicone_demo_plugin:exclamations" in line
    assert "Exclamation marks in the answer." in line
    assert "yes" in line.split()


def test_enabled_and_disabled_narrow_the_scorers(
    make_server: ServerFactory, standin: StandIn, plugins: Path
) -> None:
    server = make_server(
        PYTHONPATH=str(plugins), SCORER_ENABLED="exclamations, word_count,latency_ms"
    )
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "Hi!")).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    assert standin.scores_for(rid) == [{"exclamations": 1, "word_count": 1, "latency_ms": 321}]
    server.terminate()
    server.env.pop("SCORER_ENABLED")
    server.env["SCORER_DISABLED"] = "exclamations,word_count,readability"
    server.start()
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "Hi!")).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    [scores] = standin.scores_for(rid)
    assert not {"exclamations", "word_count", "readability"} & set(scores)
    assert scores["vocabulary_diversity"] == 100


def test_an_unknown_name_stops_the_start_listing_the_known(tmp_path: Path) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_DISABLED": "nope"}, "serve")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("helicone-scorer: unknown scorer(s): nope; known: ")
    assert "vocabulary_diversity" in lines[0]
    assert "judge" in lines[0]


def test_a_plugin_that_fails_to_load_stops_the_start_in_one_line(
    tmp_path: Path, broken: Path
) -> None:
    env = {"HELICONE_WEBHOOK_SECRET": "k", "PYTHONPATH": str(broken)}
    result = run(tmp_path, env, "serve")
    assert result.returncode == 2
    assert result.stderr == (
        "helicone-scorer: plugin scorer broken (broken_plugin:score) failed to load:"
        " ImportError: this plugin needs numpy 9 (uninstall it, or set SCORER_DISABLED=broken)\n"
    )
    # Disabled, it is not even imported, and the rest runs.
    result = run(tmp_path, env | {"SCORER_DISABLED": "broken"}, "scorers")
    assert result.returncode == 0, result.stderr
    assert "(disabled, not loaded)" in result.stdout


def slow_server(
    make_server: ServerFactory, plugins: Path, tmp_path: Path, timeout: str
) -> tuple[Server, Path]:
    """A server with the demo plugin, whose slow_cpu scorer burns 3 s and leaves markers."""
    markers = tmp_path / "markers"
    markers.mkdir()
    server = make_server(
        PYTHONPATH=str(plugins),
        SLOW_MARKERS=str(markers),
        SLOW_SECONDS="3",
        SCORER_TIMEOUT_SECONDS=timeout,
    )
    return server, markers


def test_a_cpu_bound_scorer_does_not_stall_the_webhooks(
    make_server: ServerFactory, standin: StandIn, plugins: Path, tmp_path: Path
) -> None:
    server, markers = slow_server(make_server, plugins, tmp_path, timeout="30")
    slow = str(uuid.uuid4())
    assert server.post(payload(slow, "please burn cpu")).status_code == 202
    eventually((markers / "started").exists, what="the slow scorer started", show=server.log)
    # The slow scorer is burning CPU on a scorer thread. Webhooks are still answered...
    quick = [str(uuid.uuid4()) for _ in range(5)]
    for rid in quick:
        assert server.post(payload(rid, "Hello!")).status_code == 202
        assert server.client.get("/readyz").status_code == 200
    assert not (markers / "finished").exists(), "answered only after the slow scorer finished"
    # ... and even scored and posted, on other threads.
    standin.wait_for(lambda: quick[0] in standin.posted_ids())
    assert not (markers / "finished").exists(), "scored only after the slow scorer finished"
    standin.wait_for(lambda: slow in standin.posted_ids())
    assert standin.scores_for(slow)[0]["slow_cpu"] == 1
    standin.wait_for(lambda: set(quick) <= standin.posted_ids())


def test_the_readme_example_works_as_a_plugin(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Writing a scorer") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    entry = toml.split('[project.entry-points."helicone_scorer.scorers"]\n', 1)[1].strip()
    name, target = (part.strip().strip('"') for part in entry.split("=", 1))
    site = install_plugin(tmp_path, "acme_scorers", {"my_scorers": code}, {name: target})
    env = {"PYTHONPATH": str(site)}
    listed = run(tmp_path, env, "scorers")
    assert "mentions_product" in listed.stdout, listed.stderr
    (tmp_path / "answer.json").write_text(
        '{"request_id": "r", "response_body": {"content": [{"type": "text", "text": "Try ACME"}]}}'
    )
    scored = run(tmp_path, env | {"SCORER_ENABLED": "mentions_product"}, "score", "answer.json")
    assert scored.stdout.split() == ["SCORE", "VALUE", "mentions_product", "1"], scored.stderr


def test_a_scorer_past_its_timeout_loses_only_its_score(
    make_server: ServerFactory, standin: StandIn, plugins: Path, tmp_path: Path
) -> None:
    server, markers = slow_server(make_server, plugins, tmp_path, timeout="0.5")
    rid = str(uuid.uuid4())
    assert server.post(payload(rid, "please burn cpu!")).status_code == 202
    standin.wait_for(lambda: rid in standin.posted_ids())
    [scores] = standin.scores_for(rid)
    assert "slow_cpu" not in scores
    assert (scores["exclamations"], scores["word_count"]) == (1, 3)  # the others still score
    assert not (markers / "finished").exists()  # posted while the late call still ran
    assert f"scorer slow_cpu failed (request_id={rid}): timed out after 0.5s" in server.log()


POISON = '''
class Poison(BaseException):
    """Not an Exception: the kind of thing that would end an event loop."""


async def poison(ctx):
    if ctx.text and "poison" in ctx.text:
        raise Poison("this plugin is broken beyond an Exception")
    return 1
'''


def test_a_poisonous_webhook_ends_as_a_dead_letter_and_the_server_lives_on(
    make_server: ServerFactory, standin: StandIn, tmp_path: Path
) -> None:
    site = install_plugin(
        tmp_path, "poison_plugin", {"poison_plugin": POISON}, {"poison": "poison_plugin:poison"}
    )
    server = make_server(PYTHONPATH=str(site), SCORER_MAX_ATTEMPTS="2")
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    assert server.post(payload(bad, "a poison answer")).status_code == 202
    assert server.post(payload(good, "a fine answer")).status_code == 202
    standin.wait_for(lambda: good in standin.posted_ids())
    assert standin.scores_for(good)[0]["poison"] == 1
    row = server.wait_rows(lambda rows: rows[bad]["state"] == "dead")[bad]
    assert row["attempts"] == 2
    assert "unexpected Poison: this plugin is broken" in row["last_error"]
    assert bad not in standin.posted_ids()
    assert server.client.get("/healthz").status_code == 200  # still serving
    assert server.post(payload()).status_code == 202
