"""Build a tiny scorer plugin as a real wheel and install it with pip into a target directory.

The wheel is written by hand (a wheel is a zip with a ``.dist-info``), so no build backend and
no network are needed; pip then installs it exactly as it would any plugin from PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out: Path, dist: str, modules: dict[str, str], scorers: dict[str, str]) -> Path:
    """A wheel of ``modules`` (name -> source) registering ``scorers`` (name -> "mod:func")."""
    version = "0.1.0"
    info = f"{dist}-{version}.dist-info"
    entry_points = "[helicone_scorer.scorers]\n" + "".join(
        f"{name} = {target}\n" for name, target in scorers.items()
    )
    files = {f"{mod}.py": src.encode() for mod, src in modules.items()} | {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: helicone-scorer-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": entry_points.encode(),
    }
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def pip_install(wheel: Path, target: Path) -> None:
    """``pip install --no-deps --no-index --target``: a real install, offline."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def install_plugin(root: Path, dist: str, modules: dict[str, str], scorers: dict[str, str]) -> Path:
    """Build the wheel in ``root`` and install it into ``root/site``; returns that directory."""
    site = root / "site"
    pip_install(build_wheel(root, dist, modules, scorers), site)
    return site
