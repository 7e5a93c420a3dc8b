"""Wiring: everything the server and the command line run, built from the settings in one place.

The scorers and the scoring stage, the store, the Helicone client, the relay, the reconciliation
sweep, the verifier and the in-flight budget are made here, so the server, ``score``,
``scorers``, ``backfill``, ``reconcile`` and the API commands all run what the settings say, the
same way. The app only adds routes and a lifespan (:mod:`webhook.app`); nothing here starts a
task or opens a file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from scorers import Runner, Scorer, available, select
from scorers.processes import Processes
from webhook.budget import Budget
from webhook.helicone import Helicone
from webhook.logged import HeliconeRequests
from webhook.rules import RuleError, load_scorer_rules, parse_feedback_rule
from webhook.score import Scoring
from webhook.settings import Settings, SettingsError
from webhook.store import PostBudget, Store, open_store
from webhook.verify import Verifier

if TYPE_CHECKING:
    from webhook.reconcile import Sweeper
    from webhook.relay import Relay

__all__ = [
    "Parts",
    "build",
    "enabled_scorers",
    "helicone_client",
    "relay_from",
    "scoring_from",
    "startup_checks",
    "sweeper_from",
]

log = logging.getLogger("webhook")

H = TypeVar("H", bound=Helicone)


@dataclass(frozen=True, slots=True)
class Parts:
    """What a server runs, built but not started: the lifespan opens and starts them."""

    scoring: Scoring
    store: Store
    client: Helicone | None  # None: a dry run, scores are stored but not posted
    relay: Relay
    sweeper: Sweeper | None  # None: no API key, or SCORER_RECONCILE_INTERVAL=0
    verifier: Verifier | None  # None: SCORER_ALLOW_UNSIGNED, webhooks are not verified
    budget: Budget
    processes: Processes | None  # None: SCORER_SCORING_PROCESSES=0, sync scorers on threads


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


def helicone_client(settings: Settings, kind: type[H]) -> H | None:
    """The API client (``kind``: the server's, or the offline tools' that can also query), or
    None when no API key is set."""
    if settings.api_key is None:
        return None
    return kind(
        settings.api_base, settings.api_key.get_secret_value(), timeout=settings.post_timeout
    )


def relay_from(
    settings: Settings, store: Store, scoring: Scoring, client: Helicone | None
) -> Relay:
    """The relay with the configured retry policy, posting budget, concurrency and poll.

    Imported here, not at the top: only the server runs a relay, and with it the metrics, so
    ``score``, ``scorers`` and ``backfill`` use this module without loading them.
    """
    from webhook.deliver import RetryPolicy
    from webhook.flow import Sample
    from webhook.relay import Relay

    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        base=settings.retry_base,
        cap=settings.retry_cap,
        max_age=settings.max_age,
        lease=settings.lease_seconds,
    )
    budget = store.budget(settings.rate_limit_per_minute, settings.rate_window_seconds)
    return Relay(
        store,
        scoring,
        client,
        budget,
        concurrency=settings.relay_concurrency,
        policy=policy,
        poll_interval=settings.poll_interval,
        sample=Sample(settings.sample),
    )


def sweeper_from(
    settings: Settings, store: Store, client: HeliconeRequests, budget: PostBudget
) -> Sweeper:
    """The reconciliation sweep with the configured policy, spending the relay's budget.
    Imported here, not at the top, for the same reason as the relay."""
    from webhook.reconcile import Policy, Sweeper

    policy = Policy(
        interval=settings.reconcile_every,
        settle=settings.reconcile_settle,
        properties=settings.reconcile_properties,
        sample=settings.reconcile_sample,
        confirm_after=settings.reconcile_confirm_after,
        retention=settings.retention_days * 86400,
    )
    return Sweeper(store, client, budget, policy)


def build(settings: Settings) -> Parts:
    """Check the settings and build the server's parts. Raises :class:`SettingsError`,
    :class:`scorers.ScorerError` or ``ValueError`` (an unsupported database URL), one line each."""
    scoring = startup_checks(settings)
    processes = None
    if settings.scoring_workers > 0:
        processes = Processes(scoring.scorers, settings.scoring_workers)
        scoring = dataclasses.replace(scoring, runner=Runner(processes=processes))
    store = open_store(settings.store_url)
    client = helicone_client(settings, HeliconeRequests)  # it posts, and the sweep lists
    relay = relay_from(settings, store, scoring, client)
    sweeper = None
    if client is not None and settings.reconcile_every > 0:
        sweeper = sweeper_from(settings, store, client, relay.budget)
    return Parts(
        scoring=scoring,
        store=store,
        client=client,
        relay=relay,
        sweeper=sweeper,
        verifier=Verifier(settings.secrets) if settings.secrets else None,
        budget=Budget(settings.max_inflight_bytes),
        processes=processes,
    )
