"""The ``queue`` commands read or change what a server stored: they never create a store, and a
store they cannot open is one line naming the setting, the absolute path (or the URL, without
its password) and the reason. On both backends."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.cli import one_line_error, run
from tests.conftest import ServerFactory
from tests.server import payload
from tests.stores import BACKENDS

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


@pytest.mark.parametrize("command", QUEUE_COMMANDS, ids=" ".join)
def test_no_store_in_a_postgres_schema_is_said_and_not_created(
    tmp_path: Path, postgres_url: str, command: list[str]
) -> None:
    result = run(tmp_path, {"SCORER_DATABASE_URL": postgres_url}, *command, timeout=60)
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"helicone-scorer: no store at SCORER_DATABASE_URL ({postgres_url}): run the queue"
        " commands with the server's settings, where `helicone-scorer serve` has created it"
    )
    assert result.stdout == ""
    assert _tables(postgres_url) == []  # nothing was created in the schema


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return [str(name) for (name,) in rows]


def test_no_postgres_database_is_one_line_without_the_password(
    tmp_path: Path, postgres_database: str
) -> None:
    parts = urlsplit(postgres_database)
    name = f"scorer_none_{uuid.uuid4().hex[:8]}"
    netloc = f"{parts.username or 'root'}:hunter2@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))
    result = run(tmp_path, {"SCORER_DATABASE_URL": url}, "queue", "dead", timeout=60)
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith(
        f"helicone-scorer: no store at SCORER_DATABASE_URL ({url.replace(':hunter2@', ':***@')}):"
    )
    assert "hunter2" not in result.stderr
    with psycopg.connect(postgres_database) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert found == []  # no database was created either


@pytest.mark.parametrize("store", BACKENDS)
def test_the_servers_store_is_read(tmp_path: Path, make_server: ServerFactory, store: str) -> None:
    server = make_server(api=False, store=store)
    assert server.post(payload()).status_code == 202
    server.terminate()
    env = {"SCORER_DATABASE_URL": server.env["SCORER_DATABASE_URL"] or ""}
    result = run(tmp_path, env, "queue", "--json")
    assert result.returncode == 0, result.stderr
    assert '"done":1' in result.stdout.replace(" ", "")
