"""The scorer settings: names, defaults, and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scorers.fetch import HELICONE_BODY_HOSTS
from tests.cli import run
from webhook.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCORER_BODY_URL_ALLOW", "s3.amazonaws.com"),
        ("SCORER_BODY_URL_ALLOW", "https://ok.example, https://x.example/bucket"),
        ("SCORER_BODY_URL_ALLOW", "ftp://x.example"),
        ("SCORER_TIMEOUT_SECONDS", "0"),
        ("SCORER_TIMEOUT_SECONDS", "soon"),
        ("SCORER_BODY_FETCH_TIMEOUT", "-1"),
        ("SCORER_BODY_FETCH_MAX_BYTES", "0"),
        ("SCORER_SCORING_PROCESSES", "-1"),
        ("SCORER_SCORING_PROCESSES", "many"),
        ("SCORER_SCORING_PROCESSES", "1000"),
    ],
)
def test_bad_value_stops_the_start_in_one_line(tmp_path: Path, name: str, value: str) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", name: value}, "serve")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"helicone-scorer: invalid setting {name}:")


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert (s.scorer_enabled, s.scorer_disabled, s.scorer_timeout) == ((), (), 5.0)
    assert s.body_url_allow == HELICONE_BODY_HOSTS
    assert {o.scheme for o in s.body_origins} == {"https"}
    assert (s.body_fetch_timeout, s.body_fetch_max_bytes) == (10.0, 32 * 1024 * 1024)


def test_scoring_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert load_settings().scoring_workers == 8  # one per core but one, up to the relay's 8
    monkeypatch.setenv("SCORER_RELAY_CONCURRENCY", "32")
    assert load_settings().scoring_workers == 15
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert load_settings().scoring_workers == 2  # at least two
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert load_settings().scoring_workers == 2
    monkeypatch.setenv("SCORER_SCORING_PROCESSES", "0")  # threads, as before
    assert load_settings().scoring_workers == 0
    monkeypatch.setenv("SCORER_SCORING_PROCESSES", " ")
    assert load_settings().scoring_processes is None


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCORER_ENABLED", " word_count, ,latency_ms ")
    monkeypatch.setenv("SCORER_DISABLED", "judge")
    monkeypatch.setenv("SCORER_BODY_URL_ALLOW", "http://127.0.0.1:9000 , https://S3.example.com")
    s = load_settings()
    assert s.scorer_enabled == ("word_count", "latency_ms")
    assert s.scorer_disabled == ("judge",)
    assert [str(o) for o in s.body_origins] == [
        "http://127.0.0.1:9000",
        "https://s3.example.com:443",
    ]
    monkeypatch.setenv("SCORER_BODY_URL_ALLOW", "")
    assert load_settings().body_origins == ()  # empty: never fetch
