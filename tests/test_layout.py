"""The layout's promises: light commands load no server, and the packages import one way only.

- ``--version``, ``--help`` and ``queue`` start without Starlette, uvicorn, Pillow,
  prometheus-client or psycopg (loaded for a PostgreSQL store only), and so do ``scorers`` and
  ``score``, which run the server's scoring stage but not the server: each runs for real in a
  child process, which then lists ``sys.modules``.
- ``scorers`` never imports ``webhook``; the server never imports the command line or the
  offline tools; these reach the store only through its contract (``webhook.store``), never a
  backend nor a database driver. Checked on the source's import statements, lazy ones
  included, so an import inside a function that a test never reaches still counts.
"""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.server import payload
from webhook.store import open_store

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("starlette", "uvicorn", "PIL", "prometheus_client", "psycopg", "psycopg_pool", "aiohttp")

# Runs the command line as ``python -m webhook`` does, then writes the loaded modules to a file
# (stdout is the command's own).
PROBE = """
import runpy, sys
out, sys.argv = sys.argv[1], ["helicone-scorer", *sys.argv[2:]]
try:
    runpy.run_module("webhook", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(out, "w") as f:
    f.write(repr((code, sorted(sys.modules))))
"""


async def _create_store(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--version"], "helicone-scorer "),
        (["--help"], "Commands"),
        (["queue"], "oldest pending"),
        (["queue", "--help"], "Inspect and manage the stored queue"),
        (["queue", "--json"], '"counts"'),
        (["scorers"], "vocabulary_diversity"),
        (["score", "payload.json"], "vocabulary_diversity"),
    ],
)
def test_light_commands_load_no_server(tmp_path: Path, args: list[str], expect: str) -> None:
    url = f"sqlite:///{tmp_path / 'scorer.db'}"
    asyncio.run(_create_store(url))  # ``queue`` reads an existing store, and never creates one
    (tmp_path / "payload.json").write_bytes(payload())
    out = tmp_path / "modules"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SCORER_DATABASE_URL": url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    code, modules = ast.literal_eval(out.read_text())
    assert code in (0, None), result.stderr
    assert expect in result.stdout
    loaded = sorted({m.partition(".")[0] for m in modules} & set(HEAVY))
    assert loaded == [], f"helicone-scorer {' '.join(args)} loaded {loaded}"
    if args == ["queue", "--json"]:
        assert orjson.loads(result.stdout)["counts"]["pending"] == 0


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, at any depth in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.add(node.module)
            # ``from webhook import metrics`` names a module too
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(roots: list[str]) -> set[str]:
    """The project's modules that ``roots`` import, directly or not (with their packages)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(name)) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents run first
        todo.extend(_imports(path))
    return seen


def test_scorers_never_import_webhook() -> None:
    files = sorted((ROOT / "scorers").rglob("*.py"))
    assert files
    for path in files:
        bad = sorted(n for n in _imports(path) if n.partition(".")[0] == "webhook")
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_server_never_imports_the_command_line_or_the_offline_tools() -> None:
    # What ``serve`` runs: the app (and through it the wiring and the request path), and the
    # HTTP layer's guard and budget.
    server = _closure(["webhook.app", "webhook.guard", "webhook.budget"])
    assert {"webhook.app", "webhook.wiring", "webhook.relay", "webhook.store.sqlite"} <= server
    bad = sorted(m for m in server if m.startswith(("webhook.cli", "webhook.offline")))
    assert bad == [], f"the server imports {bad}"


def test_the_command_line_and_offline_tools_use_the_store_only_through_its_contract() -> None:
    files = sorted(p for d in ("cli", "offline") for p in (ROOT / "webhook" / d).rglob("*.py"))
    assert files
    for path in files:
        backend = [n for n in _imports(path) if n.startswith("webhook.store.") and _module_file(n)]
        bad = sorted({*backend, *({"sqlite3"} & _imports(path))})
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
