"""The Starlette app: routes, JSON errors, and a lifespan that opens and closes what runs.

What runs is built from the settings by :mod:`webhook.wiring`; the app adds the routes, the
error answers, and the lifespan that starts the scorer processes, opens the store, starts the
relay, the reconciliation sweep and the pruning, and stops them in order (the sweep first: a
shutdown never waits for it; the scorer processes after the relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook.metrics import QUEUE_DEPTH, STORE_READY, exposition
from webhook.monitor import Monitor
from webhook.receive import Ingest, error, json_response, receive
from webhook.settings import Settings
from webhook.status import StatusPage
from webhook.status_view import View
from webhook.store import Store, StoreError
from webhook.wiring import build

__all__ = ["create_app"]

log = logging.getLogger("webhook")


async def prune_forever(store: Store, retention: float) -> None:
    """Forget delivered webhooks older than ``retention`` seconds, now and then (at most hourly).

    Dead letters and anything undelivered are never pruned.
    """
    while True:
        try:
            pruned = await store.prune_done(time.time() - retention)
        except Exception:
            log.exception("pruning delivered webhooks failed; will try again")
        else:
            if pruned:
                log.info("pruned %d delivered webhook(s) past the retention", pruned)
        await asyncio.sleep(min(3600.0, retention / 4))


def create_app(settings: Settings) -> Starlette:
    """The app for these settings: raises like :func:`webhook.wiring.build` on a bad one."""
    parts = build(settings)
    store, relay = parts.store, parts.relay

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if parts.verifier is None:
            log.warning("SCORER_ALLOW_UNSIGNED is on: webhooks are NOT verified. Local use only.")
        if parts.client is None:
            log.warning("HELICONE_API_KEY is not set: dry run, scores are stored but not posted")
        log.info("scorers: %s", ", ".join(s.name for s in parts.scoring.scorers) or "(none)")
        if parts.scoring.feedback_rule is not None:
            log.info("feedback rule: %s", parts.scoring.feedback_rule.text)
        if parts.processes is not None:
            await parts.processes.start()
        try:
            await store.open(serving=True)
        except BaseException:
            if parts.processes is not None:
                await parts.processes.stop()
            raise
        await relay.start()
        if parts.sweeper is not None:
            parts.sweeper.start()
        elif parts.client is None and settings.reconcile_every > 0:
            log.warning("SCORER_RECONCILE_INTERVAL is set, but there is no API key: no sweeps")
        keepers = [asyncio.create_task(monitor(store).run(), name="flow")]
        if settings.retention_days > 0:
            days = settings.retention_days
            keepers.append(asyncio.create_task(prune_forever(store, days * 86400), name="prune"))
        try:
            yield
        finally:
            for keeper in keepers:
                keeper.cancel()
            if parts.sweeper is not None:
                await parts.sweeper.stop()
            await relay.stop(settings.shutdown_grace)
            if parts.processes is not None:
                await parts.processes.stop()
            if parts.client is not None:
                await parts.client.aclose()
            await store.close()

    def monitor(store: Store) -> Monitor:
        return Monitor(
            store.reader,
            limit=settings.rate_limit_per_minute,
            window=settings.rate_window_seconds,
            feedback=parts.scoring.feedback_rule is not None,
            max_age=settings.max_age,
            sample=relay.sample,
            report=settings.flow_report_seconds,
            ping=store.ping,
            reconcile_interval=settings.reconcile_every if parts.sweeper is not None else 0.0,
        )

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(store.ping(), 5.0)
        except Exception as exc:
            STORE_READY.set(0)
            return error(503, f"store is not writable: {str(exc) or type(exc).__name__}")
        STORE_READY.set(1)
        return json_response(200, {"status": "ready"})

    async def metrics(request: Request) -> Response:
        try:
            stats = await store.reader.stats()
        except StoreError as exc:  # the database is away: a scrape error, not a server's 500
            return error(503, f"store is not readable: {exc}")
        for state, count in stats.counts.items():
            QUEUE_DEPTH.labels(state).set(count)
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error(exc.status_code, exc.detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error(500, "internal error")

    routes = [
        Route("/webhook", receive, methods=["POST"]),
        Route("/webhook/", receive, methods=["POST"]),
        Route("/", receive, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if settings.status_token is not None:
        view = View(
            settings,
            store,
            parts.scoring,
            None if parts.client is None else parts.client.heard,
            relay.budget,
            relay.sample,
            parts.sweeper,
        )
        routes += StatusPage(settings.status_token.get_secret_value(), view).routes
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect's Location would come from the Host header
    app.state.ingest = Ingest(store, parts.verifier, settings.max_body_bytes, parts.budget)
    app.state.store = store
    return app
