"""The ``queue`` commands read or change what a server stored: they never create a store, and a
store they cannot open is one line naming the setting, the absolute path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import one_line_error, run
from tests.conftest import ServerFactory
from tests.server import payload

QUEUE_COMMANDS = [["queue"], ["queue", "dead"], ["queue", "retry", "--all"],
                  ["queue", "purge", "--dead", "--yes"]]  # fmt: skip


@pytest.mark.parametrize("command", QUEUE_COMMANDS, ids=" ".join)
def test_no_store_at_the_default_path_is_said_and_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(tmp_path, {}, *command, timeout=60)
    assert result.returncode == 2
    where = tmp_path / "data" / "helicone-scorer.db"
    assert one_line_error(result) == (
        f"helicone-scorer: no store at {where}"
        " (SCORER_DATABASE_URL=sqlite:///./data/helicone-scorer.db): run the queue commands"
        " with the server's settings, where `helicone-scorer serve` has created it"
    )
    assert not (tmp_path / "data").exists()
    assert result.stdout == ""


def test_a_store_that_cannot_be_opened_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database, just notes\n" * 100)
    result = run(tmp_path, {"SCORER_DATABASE_URL": "sqlite:///notes.db"}, "queue", timeout=60)
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"helicone-scorer: cannot open the store at {tmp_path / 'notes.db'}"
        " (SCORER_DATABASE_URL=sqlite:///notes.db): file is not a database"
    )


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    result = run(tmp_path, {"SCORER_DATABASE_URL": "sqlite:///dir.db"}, "queue", timeout=60)
    assert result.returncode == 2
    assert one_line_error(result).endswith(
        "(SCORER_DATABASE_URL=sqlite:///dir.db): it is a directory"
    )


def test_the_servers_store_is_read(tmp_path: Path, make_server: ServerFactory) -> None:
    server = make_server(api=False)
    assert server.post(payload()).status_code == 202
    server.terminate()
    result = run(tmp_path, {"SCORER_DATABASE_URL": f"sqlite:///{server.db}"}, "queue", "--json")
    assert result.returncode == 0, result.stderr
    assert '"done":1' in result.stdout.replace(" ", "")
