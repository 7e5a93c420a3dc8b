"""``backfill`` against an API that does not answer: each retry is shown as it happens, and the
failure leaves one clean line (no progress bar cut off)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli import api_env, one_line_error, start
from tests.standin import free_port


def test_backfill_shows_each_retry_as_it_happens_and_ends_clean(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = api_env(base, tmp_path, SCORER_RETRY_BASE="0.25")  # waits 0.25, 0.5, 1, 2 s
    proc = start(tmp_path, env, "backfill", "--since", "1d")
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        # Shown while it waits, not after: 3.5 more seconds of retries are still to come.
        still_running = proc.poll() is None
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running
    assert first.startswith("request query failed: ConnectError")
    assert first.rstrip().endswith("retry 1 of 4 in 0.25s")
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert [line.rsplit("; ", 1)[-1] for line in lines[:4]] == [
        "retry 1 of 4 in 0.25s",
        "retry 2 of 4 in 0.5s",
        "retry 3 of 4 in 1s",
        "retry 4 of 4 in 2s",
    ]
    assert len(lines) == 5, lines
    assert proc.returncode == 1
    result = subprocess.CompletedProcess(proc.args, 1, "", "\n".join(lines))
    assert one_line_error(result).startswith(
        "helicone-scorer: backfill: request query failed: ConnectError"
    )
    assert out == ""
