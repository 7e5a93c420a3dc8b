"""Prometheus metrics, in one registry served at ``GET /metrics``.

With ``serve --workers N`` each process counts in files of its own in the directory the parent
names in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, chosen when
prometheus_client is first imported), and :func:`exposition` adds every process's counts up,
those of workers that exited included, so counters never go back. Gauges are read from the store
by whichever process sets them, so the most recently set value is the one shown.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "ARRIVAL_RATE",
    "BACKLOG_CALLS",
    "DEAD_LETTERS",
    "DRAIN_SECONDS",
    "FEEDBACK_POSTED",
    "MAX_AGE_SECONDS",
    "POST_FAILURES",
    "POST_RATE",
    "QUEUE_DEPTH",
    "RECEIVED",
    "RECONCILE_FAILED",
    "RECONCILE_INTERVAL",
    "RECONCILE_LAST_COMPLETED",
    "RECONCILE_LISTED",
    "RECONCILE_MISSING",
    "RECONCILE_RECONCILED",
    "RECONCILE_UNCONFIRMED",
    "REGISTRY",
    "RETRIES",
    "SAMPLE_PERCENT",
    "SCORER_DURATION",
    "SCORER_ERRORS",
    "SCORES_POSTED",
    "SKIPPED",
    "STORE_READY",
    "exposition",
]

REGISTRY = CollectorRegistry(auto_describe=True)

RECEIVED = Counter(
    "helicone_scorer_webhooks_received",
    "Webhooks received, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
SCORES_POSTED = Counter(
    "helicone_scorer_scores_posted", "Score posts Helicone accepted.", registry=REGISTRY
)
FEEDBACK_POSTED = Counter(
    "helicone_scorer_feedback_posted", "Feedback posts Helicone accepted.", registry=REGISTRY
)
POST_FAILURES = Counter(
    "helicone_scorer_post_failures",
    "API calls that failed, by status (none: no answer).",
    ["status"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "helicone_scorer_retries", "Deliveries scheduled to be tried again.", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "helicone_scorer_dead_letters", "Webhooks moved to the dead letters.", registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "helicone_scorer_queue_depth",
    "Stored webhooks, by state.",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
SKIPPED = Counter(
    "helicone_scorer_skipped",
    "Webhooks finished without posting, by reason (sampled_out, too_old).",
    ["reason"],
    registry=REGISTRY,
)
# The flow (webhook.flow), read from the store every half minute: the same on every instance.
ARRIVAL_RATE = Gauge(
    "helicone_scorer_arrival_rate_per_minute",
    "Live webhooks stored a minute, over the last 10 minutes.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
POST_RATE = Gauge(
    "helicone_scorer_post_rate_per_minute",
    "API calls made a minute, over the last 10 minutes.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
BACKLOG_CALLS = Gauge(
    "helicone_scorer_backlog_calls",
    "API calls the unfinished webhooks still need.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
DRAIN_SECONDS = Gauge(
    "helicone_scorer_drain_seconds",
    "Time to drain the backlog at the budget's pace, less what arrivals need (+Inf: it grows).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
SAMPLE_PERCENT = Gauge(
    "helicone_scorer_sample_percent",
    "Share of webhooks scored and posted (SCORER_SAMPLE; 100: all).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
MAX_AGE_SECONDS = Gauge(
    "helicone_scorer_max_age_seconds",
    "SCORER_MAX_AGE: how long a webhook may wait before it becomes a dead letter.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
# Set on every reading of the flow as well as by /readyz, so it moves with no probe calling.
STORE_READY = Gauge(
    "helicone_scorer_store_ready",
    "1 if the store accepted a durable write at the last check, else 0.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
SCORER_DURATION = Histogram(
    "helicone_scorer_scorer_duration_seconds",
    "Time each scorer took.",
    ["scorer"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SCORER_ERRORS = Counter(
    "helicone_scorer_scorer_errors",
    "Scorer failures (exception, timeout, or a value that is not an int), by scorer.",
    ["scorer"],
    registry=REGISTRY,
)
RECONCILE_LISTED = Counter(
    "helicone_scorer_reconcile_listed",
    "Logged requests the reconciliation sweeps listed.",
    registry=REGISTRY,
)
RECONCILE_MISSING = Counter(
    "helicone_scorer_reconcile_missing",
    "Listed requests (within the filters and sample) the store had never seen.",
    registry=REGISTRY,
)
RECONCILE_RECONCILED = Counter(
    "helicone_scorer_reconcile_reconciled",
    "Missing requests queued for scoring and posting.",
    registry=REGISTRY,
)
RECONCILE_FAILED = Counter(
    "helicone_scorer_reconcile_failed",
    "Missing requests not queued: their bodies could not be had.",
    registry=REGISTRY,
)
RECONCILE_UNCONFIRMED = Counter(
    "helicone_scorer_reconcile_unconfirmed",
    "Posted requests whose scores Helicone never showed: posted once more.",
    registry=REGISTRY,
)
RECONCILE_LAST_COMPLETED = Gauge(
    "helicone_scorer_reconcile_last_completed_timestamp_seconds",
    "When the last reconciliation sweep that reached the end of its window ended (Unix time).",
    registry=REGISTRY,
    multiprocess_mode="max",
)
RECONCILE_INTERVAL = Gauge(
    "helicone_scorer_reconcile_interval_seconds",
    "Seconds between two reconciliation sweeps (SCORER_RECONCILE_INTERVAL; 0: no sweeps).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)

# Outcomes the receiver reports, bound once so the hot path does no label lookup.
OUTCOMES = (
    "accepted",
    "duplicate",
    "bad_signature",
    "too_large",
    "bad_json",
    "bad_payload",
    "store_error",
    "busy",
    "client_disconnect",
    "headers_too_large",
    "headers_timeout",
    "too_many_connections",
)
RECEIVED_BY = {outcome: RECEIVED.labels(outcome) for outcome in OUTCOMES}


def exposition() -> bytes:
    """The text ``GET /metrics`` serves: this process's registry, or with several processes,
    every process's counts added up."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not shared:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
