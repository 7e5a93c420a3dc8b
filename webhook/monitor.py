"""The server's reading of the flow (:mod:`webhook.flow`): into the gauges of ``/metrics``, the
automatic sample, and a log line every ``SCORER_FLOW_REPORT_SECONDS``; a warning when the backlog
would take longer than ``SCORER_MAX_AGE`` to drain. Each reading also pings the store, as
``/readyz`` does, so ``helicone_scorer_store_ready`` follows it with no probe calling."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from webhook import metrics
from webhook.flow import WINDOW, Drain, Sample, drain, duration
from webhook.logs import event
from webhook.store import Reader

__all__ = ["Monitor"]

log = logging.getLogger("webhook.flow")

EVERY = 30.0  # seconds between two readings of the figures (at most)
PING_TIMEOUT = 5.0  # as /readyz's


class Monitor:
    """Reads the figures every ``EVERY`` seconds (or ``report``, if shorter) into the gauges and
    the sample; logs them every ``report`` seconds."""

    def __init__(
        self,
        reader: Reader,
        *,
        limit: int,
        window: float,
        feedback: bool,
        max_age: float,
        sample: Sample,
        report: float = 300.0,
        ping: Callable[[], Awaitable[None]] | None = None,
        reconcile_interval: float = 0.0,
    ) -> None:
        self.reader, self.limit, self.window = reader, limit, window
        self.feedback, self.max_age, self.sample = feedback, max_age, sample
        self.report_every, self.every = report, min(EVERY, report)
        self.ping = ping
        metrics.SAMPLE_PERCENT.set(sample.percent)
        metrics.MAX_AGE_SECONDS.set(max_age)
        metrics.RECONCILE_INTERVAL.set(reconcile_interval)

    async def check_store(self) -> None:
        if self.ping is None:
            return
        try:
            await asyncio.wait_for(self.ping(), PING_TIMEOUT)
        except Exception:
            metrics.STORE_READY.set(0)  # the store logs its own failures
        else:
            metrics.STORE_READY.set(1)

    async def read(self) -> Drain:
        figures = drain(
            await self.reader.flow(WINDOW), self.limit, self.window, self.feedback, self.sample
        )
        self.sample.update(figures)
        metrics.SAMPLE_PERCENT.set(self.sample.percent)
        metrics.ARRIVAL_RATE.set(figures.arriving)
        metrics.POST_RATE.set(figures.posting)
        metrics.BACKLOG_CALLS.set(figures.backlog_calls)
        metrics.DRAIN_SECONDS.set(math.inf if figures.seconds is None else figures.seconds)
        return figures

    def report(self, figures: Drain) -> None:
        fields: dict[str, Any] = {
            "arriving_per_min": round(figures.arriving, 1),
            "posting_per_min": round(figures.posting, 1),
            "limit_per_min": round(figures.capacity, 1),
            "backlog": figures.backlog,
            "backlog_calls": figures.backlog_calls,
            "drain_seconds": None if figures.seconds is None else round(figures.seconds),
        }
        if self.sample.active:
            fields["sample"] = self.sample.percent
        text = (
            f"flow: {figures.arriving:.1f} webhooks/min arriving, {figures.posting:.1f} calls/min"
            f" posted (limit {figures.capacity:.0f}), backlog {figures.backlog} webhooks"
            f" ({figures.backlog_calls} calls), drains in {duration(figures.seconds)}"
        )
        if not figures.late(self.max_age):
            event(log, text, **fields)
            return
        advice = figures.advice(self.max_age, self.sample)
        event(log, f"{text}: {advice}", level=logging.WARNING, **fields)

    async def run(self) -> None:
        """Forever, until cancelled; a failed reading is logged and tried at the next turn."""
        since_report = self.report_every  # the first reading is reported
        while True:
            await self.check_store()
            try:
                figures = await self.read()
            except Exception as exc:
                log.warning("could not read the flow: %s", exc)
            else:
                if since_report >= self.report_every:
                    self.report(figures)
                    since_report = 0.0
            await asyncio.sleep(self.every)
            since_report += self.every
