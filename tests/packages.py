"""The Debian programs some tests drive, installed by ``scripts/test-packages``."""

from __future__ import annotations

import os
import shutil

import pytest


def installed(command: str, package: str) -> str:
    """The path of ``command``: without it, the test is skipped, or fails under CI (``CI`` set),
    where ``scripts/test`` has installed it."""
    path = shutil.which(command)
    if path is None:
        reason = (
            f"no {command} on PATH: scripts/test-packages installs it"
            f" (Debian's {package}, apt-get as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
