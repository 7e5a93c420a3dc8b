"""``helicone-scorer score`` and ``helicone-scorer scorers``: the scorers, offline.

``score`` runs exactly what the server's scoring stage would run on a payload (the same enabled
scorers and rules, the same "Body too large" fetch, the same timeouts, the same feedback rule),
without storing or posting anything.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from scorers import Scorer, ScorerError, available
from webhook.cli.console import fail, print_table, settings_or_exit
from webhook.settings import SettingsError

__all__ = ["register"]


def _read_payload(file: Path) -> dict[str, Any]:
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        fail(f"{file} is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        fail(f"{file} must hold a JSON object (a webhook payload)")
    return payload


def _scale(s: Scorer) -> str:
    low, high = s.bounds
    if low is None and high is None:
        return "any"
    if high is None:
        return f"{low}+"
    return f"{'' if low is None else low}-{high}"


def score(
    file: Annotated[Path, typer.Argument(help="Webhook payload JSON file, or - for stdin.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: scores, errors, durations.")
    ] = False,
) -> None:
    """Run the enabled scorers on one webhook payload, offline, and print the scores.

    A scorer that fails is reported on stderr, one line each; the others still score.
    """
    from webhook.wiring import scoring_from

    logging.basicConfig(level=logging.WARNING, format="helicone-scorer: %(message)s")
    settings = settings_or_exit()
    try:
        scoring = scoring_from(settings)  # the server's scorers, rules and feedback rule
    except (ScorerError, SettingsError) as exc:
        fail(str(exc))
    payload = _read_payload(file)
    rid = payload.get("request_id")
    outcome = asyncio.run(scoring.score_payload(rid if isinstance(rid, str) else "", payload))
    if as_json:
        out = {
            "request_id": payload.get("request_id"),
            "scores": outcome.scores,
            "feedback": outcome.feedback,
            "errors": outcome.errors,
            "durations_ms": {k: round(v * 1000, 3) for k, v in outcome.durations.items()},
        }
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    if not outcome.scores:
        typer.echo("(no scores)")
    else:
        print_table(["SCORE", "VALUE"], [[k, str(v)] for k, v in outcome.scores.items()])


def list_scorers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every registered scorer, built-in or plugin, with its scale and description."""
    from webhook.wiring import enabled_scorers

    settings = settings_or_exit()
    try:
        registry = available(skip=settings.scorer_disabled)
    except ScorerError as exc:
        fail(str(exc))
    try:
        on = {s.name for s in enabled_scorers(settings, registry)}
    except ScorerError as exc:
        typer.echo(f"helicone-scorer: warning: {exc}", err=True)
        on = set()
    entries: list[dict[str, Any]] = [
        {
            "name": s.name,
            "enabled": s.name in on,
            "scale": _scale(s),
            "source": f"plugin {s.plugin}" if s.plugin else "built-in",
            "description": s.description + (f" ({s.problem})" if s.problem else ""),
        }
        for s in registry.values()
    ]
    if as_json:
        typer.echo(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode())
        return
    print_table(
        ["NAME", "ON", "SCALE", "SOURCE", "DESCRIPTION"],
        [
            [e["name"], "yes" if e["enabled"] else "no", e["scale"], e["source"], e["description"]]
            for e in entries
        ],
    )


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.command("scorers")(list_scorers)
