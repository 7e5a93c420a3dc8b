"""``helicone-scorer reconcile``: one reconciliation sweep now, with the server's own code
(:mod:`webhook.reconcile`), on the store the server uses; it prints what it found."""

from __future__ import annotations

import asyncio

import typer

from webhook.cli.console import fail
from webhook.logged import HeliconeRequests
from webhook.reconcile import Tally
from webhook.settings import Settings
from webhook.store import NoStore, StoreError, open_reader, open_store, url_without_password
from webhook.wiring import sweeper_from

__all__ = ["run"]


def run(settings: Settings, client: HeliconeRequests, since: float | None) -> None:
    """One sweep on the settings' store; ``since`` (epoch s) widens its window."""
    where = url_without_password(settings.database_url)

    async def go() -> Tally | None:
        try:
            await (await open_reader(settings.store_url)).close()  # never creates a store
            store = open_store(settings.store_url)
            await store.open()
            try:
                budget = store.budget(settings.rate_limit_per_minute, settings.rate_window_seconds)
                sweeper = sweeper_from(settings, store, client, budget)
                return await sweeper.sweep(since=since)
            finally:
                await store.close()
        finally:
            await client.aclose()

    try:
        tally = asyncio.run(go())
    except NoStore:
        fail(f"no store at {where}: start `helicone-scorer serve` on it first (it creates it)")
    except (StoreError, ValueError) as exc:
        fail(f"reconcile: the store at {where} failed: {exc}", 1)
    except KeyboardInterrupt:
        fail("reconcile interrupted; what it queued stays queued", 130)
    if tally is None:
        fail("another instance is sweeping now; try again when it is done", 1)
    if tally.since >= tally.until:
        typer.echo(
            f"nothing to list yet: {tally.summary().partition(':')[0]} is empty (the store is"
            f" younger than SCORER_RECONCILE_SETTLE, {settings.reconcile_settle:g}s)"
        )
        return
    typer.echo(tally.summary())
    if tally.reconciled:
        typer.echo(
            f"{tally.reconciled} queued: the relay of `helicone-scorer serve` on this store posts"
            " them (at once if it is running, else when it starts)."
        )
    if tally.stopped is not None:
        fail(f"the sweep stopped early: {tally.stopped}", 1)
    if tally.failed:
        fail(
            f"{tally.failed} missed request(s) not queued, their bodies could not be fetched"
            f" ({'; '.join(tally.errors)})",
            1,
        )
