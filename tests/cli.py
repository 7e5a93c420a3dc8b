"""Run the real ``helicone-scorer`` command line as a child process: the one way tests do it.

``run`` waits for it to finish; ``start`` hands back the running process for tests that read its
output as it comes. Both use the same command (``python -m webhook`` with this interpreter) and the
same clean environment: no settings of the caller leak in, except coverage's own variables, so a
measured run measures the command line too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.standin import API_KEY

Completed = subprocess.CompletedProcess[str]


def api_env(base_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HELICONE_API_KEY": API_KEY,
        "HELICONE_API_BASE": base_url,
        "SCORER_DATABASE_URL": f"sqlite:///{tmp_path / 'scorer.db'}",
        "SCORER_RETRY_BASE": "0.01",  # the backfill's backoff between query retries
        "SCORER_ENABLED": "vocabulary_diversity",  # the server under test scores the same way
        **extra,
    }


def _argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "webhook", *args]


def _env(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    clean = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "120",
    }
    clean |= {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}
    return clean | env


def run(
    workdir: Path, env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> Completed:
    """``helicone-scorer *args`` in ``workdir``, with ``env`` over a clean environment."""
    return subprocess.run(
        _argv(args),
        env=_env(workdir, env),
        cwd=workdir,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def start(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The same command, running, its stdout and stderr piped."""
    return subprocess.Popen(
        _argv(args),
        env=_env(workdir, env),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def one_line_error(result: Completed) -> str:
    """The failure's single stderr line; asserts there is exactly one and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("helicone-scorer: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]
