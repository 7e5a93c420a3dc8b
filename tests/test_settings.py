"""Start-up: settings from the environment, clear one-line errors, safe defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import run
from tests.conftest import ServerFactory
from tests.server import payload
from tests.standin import StandIn
from webhook.settings import Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SCORER_MAX_BODY_BYTES": "lots"}, "SCORER_MAX_BODY_BYTES"),
        ({"SCORER_MAX_BODY_BYTES": "0"}, "SCORER_MAX_BODY_BYTES"),
        ({"PORT": "99999"}, "PORT"),
        ({"HELICONE_API_BASE": "api.helicone.ai"}, "HELICONE_API_BASE"),
        ({"SCORER_DATABASE_URL": "mysql://x"}, "SCORER_DATABASE_URL"),
        ({"SCORER_ALLOW_UNSIGNED": "perhaps"}, "SCORER_ALLOW_UNSIGNED"),
        ({"SCORER_DATABASE_POOL_SIZE": "0"}, "SCORER_DATABASE_POOL_SIZE"),
        ({"SCORER_DATABASE_CONNECT_TIMEOUT": "soon"}, "SCORER_DATABASE_CONNECT_TIMEOUT"),
        ({"SCORER_DATABASE_STATEMENT_TIMEOUT": "-1"}, "SCORER_DATABASE_STATEMENT_TIMEOUT"),
        ({"SCORER_RECONCILE_INTERVAL": "-1"}, "SCORER_RECONCILE_INTERVAL"),
        ({"SCORER_RECONCILE_SETTLE": "soon"}, "SCORER_RECONCILE_SETTLE"),
        ({"SCORER_RECONCILE_PROPERTIES": "app"}, "SCORER_RECONCILE_PROPERTIES"),
        ({"SCORER_RECONCILE_PROPERTIES": "a=1,a=2"}, "SCORER_RECONCILE_PROPERTIES"),
        ({"SCORER_RECONCILE_SAMPLE": "101"}, "SCORER_RECONCILE_SAMPLE"),
        ({"SCORER_RECONCILE_CONFIRM_AFTER": "0"}, "SCORER_RECONCILE_CONFIRM_AFTER"),
        ({"SCORER_SAMPLE": "most"}, "SCORER_SAMPLE"),
        ({"SCORER_SAMPLE": "0"}, "SCORER_SAMPLE"),
        ({"SCORER_SAMPLE": "101"}, "SCORER_SAMPLE"),
        ({"SCORER_FLOW_REPORT_SECONDS": "0"}, "SCORER_FLOW_REPORT_SECONDS"),
        ({"SCORER_STATUS_TOKEN": "too-short"}, "SCORER_STATUS_TOKEN"),
    ],
)
def test_bad_value_stops_start_with_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", **env}, "serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"helicone-scorer: invalid setting {name}:")


def test_a_store_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'a-file' / 'scorer.db'}"
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_DATABASE_URL": url}, "serve")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "helicone-scorer: invalid setting SCORER_DATABASE_URL: cannot open the store:"
    )


def test_no_secret_refuses_to_start(tmp_path: Path) -> None:
    result = run(tmp_path, {}, "serve")
    assert result.returncode == 2
    assert "HELICONE_WEBHOOK_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsigned_allowed_explicitly_warns_and_accepts(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(HELICONE_WEBHOOK_SECRET=None, SCORER_ALLOW_UNSIGNED="true")
    assert "webhooks are NOT verified" in server.log()
    assert server.post(payload(), secret=None).status_code == 202


def test_missing_api_key_runs_dry_and_says_so(make_server: ServerFactory) -> None:
    server = make_server(api=False)
    assert "HELICONE_API_KEY is not set: dry run" in server.log()


def test_env_names_and_worker_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HELICONE_AUTH", "sk-from-worker")
    monkeypatch.setenv("HELICONE_WEBHOOK_SECRET", "a, b ,,c")
    monkeypatch.setenv("HELICONE_API_BASE", "https://eu.api.helicone.ai/")
    s = load_settings()
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "sk-from-worker"
    assert s.secrets == ["a", "b", "c"]
    assert s.api_base == "https://eu.api.helicone.ai"
    assert "sk-from-worker" not in repr(s)
    monkeypatch.setenv("HELICONE_API_KEY", "sk-new")
    assert load_settings().api_key.get_secret_value() == "sk-new"  # type: ignore[union-attr]


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HELICONE_API_KEY", "HELICONE_AUTH", "HELICONE_API_BASE", "PORT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.api_base == "https://api.helicone.ai"
    assert s.database_url == "sqlite:///./data/helicone-scorer.db"
    assert s.max_body_bytes == 16 * 1024 * 1024
    assert s.port == 8080
    assert s.api_key is None  # no key: a dry run
    assert s.reconcile_every == 0  # nothing to list without a key
    assert (s.reconcile_settle, s.reconcile_sample, s.reconcile_confirm_after) == (120, 100, 900)
    assert s.reconcile_properties == {}


def test_reconcile_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HELICONE_API_KEY", "sk")
    assert load_settings().reconcile_every == 600  # with a key, every 10 minutes
    monkeypatch.setenv("SCORER_RECONCILE_INTERVAL", "0")
    assert load_settings().reconcile_every == 0  # turned off
    monkeypatch.setenv("SCORER_RECONCILE_INTERVAL", " ")
    assert load_settings().reconcile_every == 600
    monkeypatch.setenv("SCORER_RECONCILE_PROPERTIES", " app = chat ,, env=a=b,")
    assert load_settings().reconcile_properties == {"app": "chat", "env": "a=b"}


def test_sample_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().sample == 100  # all, by default
    monkeypatch.setenv("SCORER_SAMPLE", " Auto ")
    assert load_settings().sample == "auto"
    monkeypatch.setenv("SCORER_SAMPLE", "12.5")
    assert load_settings().sample == 12.5
    monkeypatch.setenv("SCORER_SAMPLE", "nan")
    with pytest.raises(SettingsError, match=r"^invalid setting SCORER_SAMPLE: must be auto, or a"):
        load_settings()


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PORT", raising=False)
    (tmp_path / ".env").write_text("PORT=9191\nHELICONE_WEBHOOK_SECRET=from-dotenv\n")
    s = load_settings()
    assert (s.port, s.secrets) == (9191, ["from-dotenv"])


def test_settings_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_RELAY_CONCURRENCY", "-1")
    with pytest.raises(SettingsError, match=r"^invalid setting SCORER_RELAY_CONCURRENCY: "):
        load_settings()


def test_a_database_from_another_schema_version_stops_the_start(tmp_path: Path) -> None:
    import sqlite3  # to write a file of a schema this build does not know

    db = tmp_path / "future.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    env = {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_DATABASE_URL": f"sqlite:///{db}"}
    result = run(tmp_path, env, "serve")
    assert result.returncode == 2
    from webhook.store.sqlite_schema import SCHEMA_VERSION

    assert f"schema version 99; this build knows version {SCHEMA_VERSION}" in result.stderr


def test_database_settings_beat_the_urls_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from webhook.store.postgres_db import Options

    url = "postgresql://scorer:pw@db:5432/q?pool_max=3&connect_timeout=9&heartbeat=1"
    monkeypatch.setenv("SCORER_DATABASE_URL", url)
    monkeypatch.setenv("SCORER_DATABASE_POOL_SIZE", "4")
    monkeypatch.setenv("SCORER_DATABASE_STATEMENT_TIMEOUT", "2.5")
    monkeypatch.setenv("SCORER_DATABASE_CONNECT_TIMEOUT", "")  # blank: unset
    options = Options.parse(load_settings().store_url)
    assert (options.pool_max, options.connect_timeout, options.statement_timeout) == (4, 9, 2.5)
    assert options.heartbeat == 1  # the URL's own options are kept
    # A database that stops answering is given up after the statement timeout, client side too.
    assert "tcp_user_timeout=2500" in options.conninfo
    assert "statement_timeout" not in options.conninfo  # the store's option, not libpq's

    monkeypatch.setenv("SCORER_DATABASE_URL", "sqlite:///x.db?busy_timeout_ms=50")
    assert load_settings().store_url == "sqlite:///x.db?busy_timeout_ms=50"  # SQLite: as it is
