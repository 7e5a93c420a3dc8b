"""What every command shares: one-line errors, settings, plain tables, ages."""

from __future__ import annotations

import time
from typing import NoReturn

import typer

from webhook.logs import escape
from webhook.settings import Settings, SettingsError, load_settings

__all__ = ["age", "fail", "print_table", "settings_or_exit"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``helicone-scorer: message`` on stderr and exit (2: usage or config, 1: failure).

    The message is one line, with any control character escaped: it may quote outside text (an
    API's error, a request id), which must not move the cursor or colour the terminal.
    """
    typer.echo(f"helicone-scorer: {escape(' '.join(message.split()))}", err=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[escape(cell) for cell in row] for row in rows]  # cells may hold outside text
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def age(since: float | None) -> str:
    """A short age like ``42s``, ``5m03s``, ``2h15m`` or ``3d04h``."""
    if since is None:
        return "-"
    s = max(0, int(time.time() - since))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
