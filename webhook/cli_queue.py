"""``helicone-scorer queue``: inspect and manage the stored queue, even while the server runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import typer

from webhook.console import age, fail, print_table, settings_or_exit
from webhook.store import Store, open_store

__all__ = ["register"]

T = TypeVar("T")

queue_app = typer.Typer(
    help="Inspect and manage the stored queue (works while the server runs).",
    no_args_is_help=False,
)


def _with_store(work: Callable[[Store], Awaitable[T]]) -> T:
    settings = settings_or_exit()

    async def run() -> T:
        store = open_store(settings.database_url)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except Exception as exc:  # e.g. the database file cannot be opened
        fail(f"store error: {type(exc).__name__}: {exc}", 1)


@queue_app.callback(invoke_without_command=True)
def summary(
    ctx: typer.Context,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts by state, and the age of the oldest webhook not yet delivered."""
    if ctx.invoked_subcommand is not None:
        return
    stats = _with_store(lambda store: store.stats())
    if json:
        typer.echo(
            orjson.dumps({"counts": stats.counts, "oldest_pending_at": stats.oldest_pending_at})
        )
        return
    print_table(["state", "count"], [[k, str(v)] for k, v in stats.counts.items()])
    typer.echo(f"oldest pending: {age(stats.oldest_pending_at)}")


@queue_app.command("dead")
def dead(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the dead letters: request id, attempts and last error."""
    letters = _with_store(lambda store: store.dead_letters(limit))
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
    count = _with_store(lambda store: store.requeue_dead(None if all_ else request_ids))
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
        count = len(_with_store(lambda store: store.dead_letters(10**9)))
        fail(f"this deletes {count} dead letter(s) for good; add --yes to confirm")
    count = _with_store(lambda store: store.purge_dead())
    typer.echo(f"purged {count} dead letter(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
