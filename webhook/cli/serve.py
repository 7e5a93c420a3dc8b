"""``helicone-scorer serve`` and ``helicone-scorer send``: run the server, and try it.

``serve`` loads the server (Starlette, uvicorn, the metrics) only when it runs, so the other
commands, ``--help`` and ``--version`` start without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Annotated

import httpx2
import orjson
import typer

from scorers import UnknownScorerError
from webhook.cli.console import fail, settings_or_exit
from webhook.logs import setup_logging
from webhook.settings import SettingsError, worker_count
from webhook.store import Store, open_store
from webhook.verify import sign

__all__ = ["register"]


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on: $PORT, else 8080.", show_default=False),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        str | None,
        typer.Option(
            metavar="N",
            help="Server processes sharing the port and the store: $SCORER_WORKERS, else 1.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the webhook server, with its background relay to Helicone."""
    from uvicorn.config import STARTUP_FAILURE

    from webhook.budget import keep_large_buffers_mapped
    from webhook.drain import DrainingServer
    from webhook.workers import Listen, Supervisor, server_config

    settings = settings_or_exit()
    count = settings.workers
    if workers is not None:
        try:
            count = worker_count(workers)
        except ValueError as exc:
            fail(f"invalid --workers: {exc}")
    setup_logging(log_level, settings.log_format, pid=count > 1)
    listen = Listen(host, port or settings.port, log_level)
    try:
        config = server_config(settings, listen)
    except (SettingsError, UnknownScorerError, ValueError) as exc:
        fail(str(exc))
    try:
        asyncio.run(_open_and_close(open_store(settings.store_url)))
    except Exception as exc:
        fail(f"invalid setting SCORER_DATABASE_URL: cannot open the store: {exc}")
    if count > 1:
        # The workers build their own app; this one only checked the settings.
        raise typer.Exit(Supervisor(listen, [config.bind_socket()], count).run())
    keep_large_buffers_mapped()
    # What uvicorn.run does with one process, with a server that drains its backlog on SIGTERM.
    server = DrainingServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT, raised again once shut down
        server.run()
    if not server.started:
        raise typer.Exit(STARTUP_FAILURE)


async def _open_and_close(store: Store) -> None:
    """Open the store once before serving, so a bad path is one line, not a failed startup."""
    await store.open()
    await store.close()


SAMPLE = {
    "request_body": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in three languages."}],
    },
    "response_body": {
        "id": "chatcmpl-sample",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! Bonjour! ¡Hola! Three ways to say hello.",
                },
                "finish_reason": "stop",
            }
        ],
    },
    "model": "gpt-4o-mini",
    "provider": "OPENAI",
    "metadata": {
        "cost": 0.000012,
        "promptTokens": 14,
        "completionTokens": 12,
        "totalTokens": 26,
        "latencyMs": 420,
    },
}


UNSIGNED = "no key to sign with; set HELICONE_WEBHOOK_SECRET or pass --secret"


def send(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Payload JSON file, or - for stdin; without it, a built-in sample.",
            show_default=False,
        ),
    ] = None,
    url: Annotated[str, typer.Option(help="Where the server listens.")] = (
        "http://127.0.0.1:8080/webhook"
    ),
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="HELICONE_WEBHOOK_SECRET",
            help="Key to sign with (the first, if several).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Sign a payload as Helicone does and POST it, to try a server locally."""
    if file is None:
        body = orjson.dumps({"request_id": str(uuid.uuid4()), **SAMPLE})
    else:
        try:
            body = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
    headers = {"Content-Type": "application/json"}
    key = (secret or "").split(",")[0].strip()
    if key:
        headers["Helicone-Signature"] = sign(key, body)
    try:
        response = httpx2.post(url, content=body, headers=headers, timeout=30)
    except httpx2.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", 1)
    typer.echo(f"{response.status_code} {response.text}")
    if not key:
        if response.status_code == 401:
            fail(f"401: the webhook was sent unsigned: {UNSIGNED}", 1)
        typer.echo(f"note: the webhook was sent unsigned: {UNSIGNED}", err=True)
    if response.is_error:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(send)
