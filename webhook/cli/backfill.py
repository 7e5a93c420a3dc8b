"""``helicone-scorer backfill``: the store, the scorers and a progress bar around
:func:`webhook.offline.backfill.backfill`."""

from __future__ import annotations

import asyncio
from datetime import datetime

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from scorers import UnknownScorerError
from webhook.cli.api import describe
from webhook.cli.console import fail
from webhook.helicone import Answer
from webhook.logged import HeliconeRequests, QueryFailed, Spending
from webhook.offline.backfill import Tally, backfill
from webhook.settings import Settings, SettingsError
from webhook.store import StoreError, open_store, url_without_password
from webhook.wiring import scoring_from

QUERY_PATIENCE = 600.0  # seconds a query waits for a place in the budget before it gives up

__all__ = ["run"]


def _summary(t: Tally) -> str:
    return (
        f"read {t.read} request(s): {t.queued} queued for delivery, {t.skipped} already queued"
        f" or posted, {t.no_scores} without scores, {t.no_body} without bodies"
        + (f", {t.too_old} older than Helicone's 30-day scoring window" if t.too_old else "")
    )


def run(
    settings: Settings,
    client: HeliconeRequests,
    since: datetime,
    until: datetime,
    limit: int | None,
) -> None:
    try:
        scoring = scoring_from(settings)
        store = open_store(settings.store_url)
    except (SettingsError, UnknownScorerError, ValueError) as exc:
        fail(str(exc))
    if not scoring.scorers:
        fail("no scorer is enabled: nothing to backfill")
    names = ", ".join(s.name for s in scoring.scorers)
    console = Console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,  # the bar goes when it ends: the summary or the error says the rest
        disable=not console.is_terminal,  # no bar in a pipe or a log file
    )
    task = progress.add_task(f"scoring ({names})", total=limit)
    tally = Tally()

    def on_row(t: Tally) -> None:
        nonlocal tally
        tally = t
        progress.update(task, completed=t.read, description=f"scoring: {t.queued} queued")

    def on_retry(answer: Answer, retry: int, retries: int, wait: float) -> None:
        why = describe("request query", answer, settings.api_base)
        progress.console.print(
            f"{why}; retry {retry} of {retries} in {wait:.3g}s",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    async def go() -> Tally:
        try:
            await store.open()
            return await backfill(
                client,
                store,
                scoring,
                since,
                until,
                limit=limit,
                on_row=on_row,
                backoff=settings.retry_base,
                on_retry=on_retry,
                spending=Spending(
                    store.budget(settings.rate_limit_per_minute, settings.rate_window_seconds),
                    "backfill",
                    patience=QUERY_PATIENCE,
                ),
            )
        finally:
            await client.aclose()
            await store.close()

    try:
        with progress:
            result = asyncio.run(go())
            progress.update(task, total=result.read, completed=result.read)
    except QueryFailed as exc:
        fail(
            f"{describe('backfill: request query', exc.answer, settings.api_base)}"
            f" (at offset {exc.offset}; {tally.queued} queued before it, running again skips them)",
            1,
        )
    except StoreError as exc:
        where = url_without_password(settings.database_url)
        fail(f"backfill: the store at {where} failed: {exc}", 1)
    except KeyboardInterrupt:
        fail(f"backfill interrupted; {tally.queued} queued before it", 130)
    typer.echo(_summary(result))
    if result.queued:
        typer.echo(
            "The relay of `helicone-scorer serve` on this store delivers them"
            " (at once if it is running, else when it starts)."
        )
    if result.no_body:
        fail(
            f"{result.no_body} request(s) skipped, their bodies could not be fetched"
            f" ({'; '.join(result.body_errors)})",
            1,
        )
