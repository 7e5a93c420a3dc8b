"""The ``helicone-scorer`` command line: one Typer app, a module per group of commands.

``serve`` and ``send`` (:mod:`.serve`), ``score`` and ``scorers`` (:mod:`.score`), ``queue``
(:mod:`.queue`), the API commands (:mod:`.api`), ``backfill`` (:mod:`.backfill`) and
``reconcile`` (:mod:`.reconcile`). Each command
imports what it runs when it runs: ``--help``, ``--version`` and ``queue`` load neither the web
server nor the metrics nor Pillow.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from webhook.cli import api, queue, score, serve

__all__ = ["app", "main"]

app = typer.Typer(
    help="Score Helicone traffic: a webhook that scores every logged LLM response.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"helicone-scorer {version('helicone-scorer')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Score Helicone traffic: a webhook that scores every logged LLM response."""


def main() -> None:
    app()


serve.register(app)
score.register(app)
queue.register(app)
api.register(app)
