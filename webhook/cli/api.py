"""Helicone's scoring API from the command line: ``evals``, ``post-scores``, ``feedback``,
``backfill``, ``reconcile``.

Every failure is one line on stderr, ``helicone-scorer: ...``: exit 2 for a bad argument or
setting (nothing was sent), exit 1 when Helicone refused or could not be reached.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer

from scorers import INT64_MAX, INT64_MIN
from webhook.cli.console import fail, settings_or_exit
from webhook.helicone import Answer, id_problem
from webhook.logged import iso
from webhook.score import is_uuid
from webhook.settings import Settings, key_values

if TYPE_CHECKING:
    from webhook.offline.query import HeliconeQuery

__all__ = ["parse_scores", "parse_when", "register"]

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INT = re.compile(r"[+-]?\d+")


def parse_when(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w``, ``90s`` back from ``now``, or an ISO date or date-time
    (UTC unless it says otherwise)."""
    text = text.strip()
    if m := _DURATION.fullmatch(text):
        return now - timedelta(seconds=float(m[1]) * _UNITS[m[2].lower()])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30m, 12h, 7d, 2w) nor an ISO date/time"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_scores(items: list[str]) -> dict[str, int | bool]:
    """``name=value`` pairs; a value is an Int64 or ``true``/``false``. Raises ValueError."""
    scores: dict[str, int | bool] = {}
    for name, value in key_values(items).items():
        if value.lower() in ("true", "false"):
            scores[name] = value.lower() == "true"
        elif _INT.fullmatch(value) and INT64_MIN <= int(value) <= INT64_MAX:
            scores[name] = int(value)
        else:
            raise ValueError(
                f"{name}={value}: a score is an integer or true/false"
                " (Helicone silently drops anything else, floats included)"
            )
    return scores


def _client(settings: Settings, command: str) -> HeliconeQuery:
    from webhook.offline.query import HeliconeQuery
    from webhook.wiring import helicone_client

    client = helicone_client(settings, HeliconeQuery)
    if client is None:
        fail(f"HELICONE_API_KEY is not set: {command} needs a Helicone API key")
    return client


def describe(what: str, answer: Answer, base: str) -> str:
    """One line saying why a call failed."""
    error = " ".join((answer.error or "").split())[:300]
    if answer.status is None:
        return f"{what} failed: {error or 'no answer'} ({base})"
    if answer.status == 401:
        return f"{what} failed: Helicone answered 401 ({error}): check HELICONE_API_KEY"
    if answer.status == 429:
        wait = "" if answer.retry_after is None else f"; retry in {math.ceil(answer.retry_after)}s"
        return f"{what} failed: Helicone answered 429, rate limited (200 requests/minute){wait}"
    return f"{what} failed: Helicone answered {answer.status}: {error}"


def _call(client: HeliconeQuery, call: Callable[[HeliconeQuery], Awaitable[T]]) -> T:
    async def run() -> T:
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


class Rating(StrEnum):
    up = "up"
    down = "down"


def post_scores(
    request_id: Annotated[str, typer.Argument(help="The Helicone request id.")],
    scores: Annotated[list[str], typer.Argument(help="name=value pairs: integers or true/false.")],
) -> None:
    """Post scores to one request, by hand (ints and true/false only)."""
    if (problem := id_problem(request_id)) is not None:
        fail(f"{request_id!r}: {problem}")
    try:
        parsed = parse_scores(scores)
    except ValueError as exc:
        fail(str(exc))
    settings = settings_or_exit()
    client = _client(settings, "post-scores")
    answer = _call(client, lambda c: c.post_scores(request_id, parsed))
    if not answer.ok:
        fail(describe("posting scores", answer, settings.api_base), 1)
    names = ", ".join(f"{k}={str(v).lower()}" for k, v in parsed.items())
    typer.echo(f"posted to {request_id}: {names} (Helicone applies scores ~10 minutes later)")


def feedback(
    request_id: Annotated[str, typer.Argument(help="The Helicone request id (a UUID).")],
    rating: Annotated[Rating, typer.Argument(help="up (thumbs up) or down (thumbs down).")],
) -> None:
    """Give one request thumbs up or down."""
    if not is_uuid(request_id):
        fail(f"{request_id!r} is not a UUID: Helicone's feedback needs the request's UUID")
    settings = settings_or_exit()
    client = _client(settings, "feedback")
    answer = _call(client, lambda c: c.post_feedback(request_id, rating is Rating.up))
    if not answer.ok:
        fail(describe("feedback", answer, settings.api_base), 1)
    typer.echo(f"feedback {rating.value} recorded for {request_id}")


Since = Annotated[
    str, typer.Option(help="Start: a duration back from now (30m, 12h, 7d, 2w) or an ISO time.")
]
Until = Annotated[
    str | None, typer.Option(help="End: an ISO time or a duration.", show_default="now")
]


def _window(since: str, until: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    try:
        start = parse_when(since, now)
        end = now if until is None else parse_when(until, now)
    except typer.BadParameter as exc:
        fail(str(exc))
    if start >= end:
        fail(f"--since ({iso(start)}) must be before --until ({iso(end)})")
    return start, end


def evals(
    since: Since = "7d",
    until: Until = None,
    name: Annotated[str | None, typer.Option(help="Only this score.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print Helicone's rows as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also write a chart: FILE.svg or FILE.png.")
    ] = None,
) -> None:
    """Show score statistics: count, avg, min, max and a sparkline of the average, per score."""
    from webhook.offline import evals as view

    start, end = _window(since, until)
    if plot is not None and plot.suffix.lower() not in (".svg", ".png"):
        fail(f"--plot {plot}: the file name must end in .svg or .png")
    settings = settings_or_exit()
    client = _client(settings, "evals")
    answer = _call(client, lambda c: c.evals_query(start, end))
    if not answer.ok or answer.data is None:
        fail(describe("evals query", answer, settings.api_base), 1)
    rows = [e for e in answer.data if name is None or e.name == name]
    summaries = [view.summarize(e) for e in rows]
    span = f"{iso(start)[:16].replace('T', ' ')} to {iso(end)[:16].replace('T', ' ')} UTC"
    if as_json:
        dumped = [e.model_dump(mode="json", by_alias=True) for e in rows]
        typer.echo(orjson.dumps(dumped, option=orjson.OPT_INDENT_2).decode())
    elif summaries:
        typer.echo(f"Scores from {span}\n\n{view.table(summaries)}")
    else:
        which = "" if name is None else f" named {name!r}"
        typer.echo(f"No scores{which} from {span}.")
    if plot is not None:
        from webhook.offline.plot import write

        try:
            write(plot, summaries, f"Average score per hour, {span}")
        except OSError as exc:
            fail(f"cannot write {plot}: {exc.strerror or exc}", 1)
        typer.echo(f"wrote {plot}", err=True)


def backfill(
    since: Annotated[
        str,
        typer.Option(help="Start: a duration back from now (30m, 12h, 7d, 2w) or an ISO time."),
    ],
    until: Until = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Score at most this many requests.")
    ] = None,
) -> None:
    """Score past requests with the enabled scorers and queue the scores for delivery.

    Scores are queued in the store (SCORER_DATABASE_URL); the server's relay posts them.
    """
    from webhook.cli.backfill import run

    start, end = _window(since, until)
    settings = settings_or_exit()
    run(settings, _client(settings, "backfill"), start, end, limit)


def reconcile(
    since: Annotated[
        str | None,
        typer.Option(
            help="Widen this run's window back to here: a duration (30m, 12h, 7d) or an ISO"
            " time (at most 30 days back). The stored end mark never moves back.",
            show_default="where the last sweep ended",
        ),
    ] = None,
) -> None:
    """Run one reconciliation sweep now: queue the logged requests the store never saw.

    Those within SCORER_RECONCILE_PROPERTIES and SCORER_RECONCILE_SAMPLE are queued in the store.

    The store is SCORER_DATABASE_URL's; the relay of `helicone-scorer serve` on it posts them.
    """
    from webhook.cli.reconcile import run

    start = None
    if since is not None:
        try:
            start = parse_when(since, datetime.now(UTC)).timestamp()
        except typer.BadParameter as exc:
            fail(str(exc))
    settings = settings_or_exit()
    run(settings, _client(settings, "reconcile"), start)


def register(app: typer.Typer) -> None:
    app.command("evals")(evals)
    app.command("post-scores")(post_scores)
    app.command("feedback")(feedback)
    app.command("backfill")(backfill)
    app.command("reconcile")(reconcile)
