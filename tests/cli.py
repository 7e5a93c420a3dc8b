"""Run the real ``helicone-scorer`` command line as a child process, against the stand-in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.standin import API_KEY


def api_env(base_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HELICONE_API_KEY": API_KEY,
        "HELICONE_API_BASE": base_url,
        "SCORER_DATABASE_URL": f"sqlite:///{tmp_path / 'scorer.db'}",
        "SCORER_RETRY_BASE": "0.01",  # the backfill's backoff between query retries
        "SCORER_ENABLED": "vocabulary_diversity",  # the server under test scores the same way
        **extra,
    }


def run(
    tmp_path: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "120",
    }
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        env=clean | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's single stderr line; asserts there is exactly one and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("helicone-scorer: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]
