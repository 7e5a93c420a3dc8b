"""``helicone-scorer queue``: inspect and manage the stored queue, even while the server runs.

Reads go through the store's read path (:func:`webhook.store.open_reader`), which never waits
for the server's writes; changes through the store. No command here creates a store: a URL with
none is an error (exit 2), as is one that cannot be opened; a failure while working is exit 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from webhook.cli.console import age, fail, print_table, settings_or_exit
from webhook.flow import WINDOW, Sample, drain, duration
from webhook.store import (
    Flow,
    NoStore,
    QueueStats,
    Reader,
    Store,
    StoreError,
    open_reader,
    open_store,
    sqlite_path,
    url_without_password,
)

__all__ = ["register"]

T = TypeVar("T")

queue_app = typer.Typer(
    help="Inspect and manage the stored queue (works while the server runs).",
    no_args_is_help=False,
)


class _CannotOpen(Exception):
    def __init__(self, cause: StoreError) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _reader(url: str) -> Reader:
    try:
        return await open_reader(url)
    except StoreError as exc:
        raise _CannotOpen(exc) from exc


def _run(work: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(url)`` on the configured store; every failure is one line."""
    settings = settings_or_exit()
    url = settings.database_url
    path = sqlite_path(url)
    where = f"SCORER_DATABASE_URL ({url_without_password(url)})"
    if path is not None:
        where = f"{Path(path).resolve()} (SCORER_DATABASE_URL={url})"
    try:
        return asyncio.run(work(settings.store_url))
    except _CannotOpen as exc:
        if isinstance(exc.cause, NoStore):
            fail(
                f"no store at {where}: run the queue commands with the server's settings,"
                " where `helicone-scorer serve` has created it"
            )
        fail(f"cannot open the store at {where}: {exc.cause}")
    except StoreError as exc:  # e.g. the database is locked for longer than the busy timeout
        fail(f"the store at {where} failed: {exc}", 1)


def _read(work: Callable[[Reader], Awaitable[T]]) -> T:
    """Run ``work`` on the read path of the existing store."""

    async def go(url: str) -> T:
        reader = await _reader(url)
        try:
            return await work(reader)
        finally:
            await reader.close()

    return _run(go)


def _write(work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on the existing store, opened without serving (it claims nothing)."""

    async def go(url: str) -> T:
        await (await _reader(url)).close()  # there is a store: the read path never creates one
        store = open_store(url)
        try:
            await store.open()
        except StoreError as exc:
            raise _CannotOpen(exc) from exc
        try:
            return await work(store)
        finally:
            await store.close()

    return _run(go)


@queue_app.callback(invoke_without_command=True)
def summary(
    ctx: typer.Context,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts by state, the oldest webhook not yet delivered, and the flow: how fast webhooks
    arrive and are posted (last 10 minutes), and how long the backlog takes to drain."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_or_exit()

    async def read(reader: Reader) -> tuple[QueueStats, Flow]:
        return await reader.stats(), await reader.flow(WINDOW)

    stats, flow = _read(read)
    sample = Sample(settings.sample)
    figures = drain(
        flow,
        settings.rate_limit_per_minute,
        settings.rate_window_seconds,
        settings.feedback_rule is not None,
        sample,
    )
    late = figures.late(settings.max_age)
    if json:
        typer.echo(
            orjson.dumps(
                {
                    "counts": stats.counts,
                    "oldest_pending_at": stats.oldest_pending_at,
                    "arriving_per_minute": figures.arriving,
                    "posting_per_minute": figures.posting,
                    "limit_per_minute": figures.capacity,
                    "backlog": figures.backlog,
                    "backlog_calls": figures.backlog_calls,
                    "drain_seconds": figures.seconds,
                    "drain_past_max_age": late,
                    "sample_percent": figures.sample,
                    "unconfirmed": flow.unconfirmed,
                    "skipped": flow.skipped,
                }
            )
        )
        return
    print_table(["state", "count"], [[k, str(v)] for k, v in stats.counts.items()])
    typer.echo(f"oldest pending: {age(stats.oldest_pending_at)}")
    minutes = f"last {WINDOW / 60:.0f} min"
    typer.echo(f"arriving: {figures.arriving:.1f} webhooks/min ({minutes})")
    typer.echo(
        f"posting: {figures.posting:.1f} calls/min ({minutes}; limit {figures.capacity:.0f}/min)"
    )
    typer.echo(
        f"backlog: {figures.backlog} webhooks, {figures.backlog_calls} calls;"
        f" drains in {duration(figures.seconds)}"
    )
    typer.echo(f"unconfirmed: {flow.unconfirmed} (scores posted again: Helicone did not show them)")
    typer.echo(f"skipped: {flow.skipped} (sampled out, or past Helicone's 30-day window)")
    if sample.active:
        typer.echo(f"sample: {figures.sample:g}% of webhooks scored and posted")
    if late:
        typer.echo(f"warning: {figures.advice(settings.max_age, sample)}")


@queue_app.command("dead")
def dead(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the dead letters: request id, attempts and last error."""
    letters = _read(lambda reader: reader.dead_letters(limit))
    if json:
        typer.echo(orjson.dumps([letter.__dict__ for letter in letters]))
        return
    if not letters:
        typer.echo("no dead letters")
        return
    print_table(
        ["request_id", "attempts", "status", "age", "last error"],
        [
            [
                d.request_id,
                str(d.attempts),
                str(d.last_status or "-"),
                age(d.received_at),
                (d.last_error or "")[:80],
            ]
            for d in letters
        ],
    )


@queue_app.command("retry")
def retry(
    request_ids: Annotated[
        list[str] | None, typer.Argument(help="Dead letters to re-queue.", show_default=False)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-queue every dead letter.")] = False,
) -> None:
    """Re-queue dead letters, by request id or all of them."""
    if bool(request_ids) == all_:
        fail("name the REQUEST_IDs to retry, or pass --all (not both)")
    count = _write(lambda store: store.requeue_dead(None if all_ else request_ids))
    typer.echo(f"re-queued {count} dead letter(s)")
    if request_ids and count < len(request_ids):
        fail(f"{len(request_ids) - count} of the given ids are not dead letters", 1)


@queue_app.command("purge")
def purge(
    dead: Annotated[bool, typer.Option("--dead", help="Purge the dead letters.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Delete dead letters for good. Needs --dead and the confirmation --yes."""
    if not dead:
        fail("say what to purge: --dead")
    if not yes:
        count = _read(lambda reader: reader.stats()).counts["dead"]
        fail(f"this deletes {count} dead letter(s) for good; add --yes to confirm")
    count = _write(lambda store: store.purge_dead())
    typer.echo(f"purged {count} dead letter(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
