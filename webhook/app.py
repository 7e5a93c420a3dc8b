"""The Starlette app: routes, JSON errors, and a lifespan that owns the store and the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scorers import Scorer, available, select
from webhook.budget import Budget
from webhook.deliver import Relay, RetryPolicy
from webhook.helicone import Helicone
from webhook.limit import SlidingWindow
from webhook.metrics import QUEUE_DEPTH, REGISTRY
from webhook.receive import Ingest, error, json_response, receive
from webhook.rules import RuleError, load_scorer_rules, parse_feedback_rule
from webhook.score import Scoring
from webhook.settings import Settings, SettingsError
from webhook.store import Store, open_store
from webhook.verify import Verifier

__all__ = ["create_app", "enabled_scorers", "scoring_from", "startup_checks"]

log = logging.getLogger("webhook")


def enabled_scorers(
    settings: Settings, registry: Mapping[str, Scorer] | None = None
) -> list[Scorer]:
    """The scorers that run, for the server and every offline command alike.

    Built-ins that are on by default and every installed plugin, narrowed by ``SCORER_ENABLED``
    and ``SCORER_DISABLED`` (disabled plugins are not even imported). Raises
    :class:`scorers.ScorerError` (one line) for an unknown name, a plugin that fails to import,
    or a scorer enabled without its settings.
    """
    if registry is None:
        registry = available(skip=settings.scorer_disabled)
    return select(registry, settings.scorer_enabled, settings.scorer_disabled)


def scoring_from(settings: Settings) -> Scoring:
    """The scoring stage as configured: scorers, their rules, and the feedback rule.

    Both rules are checked against every scorer that exists, on or off: a name nothing knows
    stops the start (a typo would silently turn a rule off); a rule about a scorer that is off
    is kept, with a note, so turning the scorer on needs no other change.
    """
    registry = available(skip=settings.scorer_disabled)
    scorers = enabled_scorers(settings, registry)
    on = {n for s in scorers for n in (s.name, *s.score_names)}
    try:
        feedback = (
            parse_feedback_rule(
                settings.feedback_rule, {n for s in registry.values() for n in s.score_names}
            )
            if settings.feedback_rule
            else None
        )
    except RuleError as exc:
        raise SettingsError(f"invalid setting SCORER_FEEDBACK_RULE: {exc}") from None
    try:
        rules = load_scorer_rules(settings.rules_file, registry) if settings.rules_file else {}
    except RuleError as exc:
        raise SettingsError(f"invalid setting SCORER_RULES_FILE: {exc}") from None
    if off := sorted(set(rules) - on):
        log.info("SCORER_RULES_FILE has rules for scorers that are off: %s", ", ".join(off))
    if feedback is not None and (off := sorted(feedback.names - on)):
        log.warning(
            "SCORER_FEEDBACK_RULE uses scores of scorers that are off (%s): what needs them"
            " gives no rating until they are on",
            ", ".join(off),
        )
    return Scoring(
        scorers,
        rules,
        feedback,
        scorer_timeout=settings.scorer_timeout,
        body_allow=settings.body_origins,
        body_fetch_timeout=settings.body_fetch_timeout,
        body_fetch_max_bytes=settings.body_fetch_max_bytes,
    )


def startup_checks(settings: Settings) -> Scoring:
    """Refuse unsafe or broken configurations before serving; returns the scoring stage."""
    if not settings.secrets and not settings.allow_unsigned:
        raise SettingsError(
            "HELICONE_WEBHOOK_SECRET is not set: set it to the webhook's HMAC key"
            " (or SCORER_ALLOW_UNSIGNED=true for local tries only)"
        )
    if settings.max_inflight_bytes < settings.max_body_bytes:
        raise SettingsError(
            "invalid setting SCORER_MAX_INFLIGHT_BYTES: must be at least SCORER_MAX_BODY_BYTES"
            f" ({settings.max_body_bytes})"
        )
    return scoring_from(settings)


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
    scoring = startup_checks(settings)
    store = open_store(settings.database_url)
    client = (
        None
        if settings.api_key is None
        else Helicone(
            settings.api_base, settings.api_key.get_secret_value(), timeout=settings.post_timeout
        )
    )
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        base=settings.retry_base,
        cap=settings.retry_cap,
        max_age=settings.max_age,
        lease=settings.lease_seconds,
    )
    limiter = SlidingWindow(settings.rate_limit_per_minute, settings.rate_window_seconds)
    relay = Relay(
        store,
        scoring,
        client,
        limiter,
        concurrency=settings.relay_concurrency,
        policy=policy,
        poll_interval=settings.poll_interval,
    )
    verifier = Verifier(settings.secrets) if settings.secrets else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if verifier is None:
            log.warning("SCORER_ALLOW_UNSIGNED is on: webhooks are NOT verified. Local use only.")
        if client is None:
            log.warning("HELICONE_API_KEY is not set: dry run, scores are stored but not posted")
        log.info("scorers: %s", ", ".join(s.name for s in scoring.scorers) or "(none)")
        if scoring.feedback_rule is not None:
            log.info("feedback rule: %s", scoring.feedback_rule.text)
        await store.open(serving=True)
        await relay.start()
        keeper = None
        if settings.retention_days > 0:
            keeper = asyncio.create_task(prune_forever(store, settings.retention_days * 86400))
        try:
            yield
        finally:
            if keeper is not None:
                keeper.cancel()
            await relay.stop(settings.shutdown_grace)
            if client is not None:
                await client.aclose()
            await store.close()

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(store.ping(), 5.0)
        except Exception as exc:
            return error(503, f"store is not writable: {str(exc) or type(exc).__name__}")
        return json_response(200, {"status": "ready"})

    async def metrics(request: Request) -> Response:
        stats = await store.stats()
        for state, count in stats.counts.items():
            QUEUE_DEPTH.labels(state).set(count)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error(exc.status_code, exc.detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error(500, "internal error")

    app = Starlette(
        routes=[
            Route("/webhook", receive, methods=["POST"]),
            Route("/webhook/", receive, methods=["POST"]),
            Route("/", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect's Location would come from the Host header
    budget = Budget(settings.max_inflight_bytes)
    app.state.ingest = Ingest(store, verifier, settings.max_body_bytes, budget, relay.wake)
    app.state.store = store
    return app
