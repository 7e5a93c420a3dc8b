"""What the status page shows, gathered from the running service: one JSON-ready dict.

Each part is read on its own with a deadline (:data:`READ_SECONDS`): a store that is away makes
its parts say so (``"error"``) and the rest still shows. The score distributions are the costly
read: from the latest :data:`SCORES_READ` live webhooks of each window at most, at most every
:data:`SCORES_EVERY` seconds, one reading at a time however many pages ask. Nothing here holds
a body, a score's inputs, a secret or a key: the store is named without its password, the judge
by its model and host.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from scorers.settings import load_judge_settings
from webhook.flow import WINDOW, Sample, drain, duration
from webhook.helicone import Heard
from webhook.reconcile import Sweeper
from webhook.rules import FeedbackRule, ScorerRule
from webhook.score import Scoring
from webhook.settings import Settings
from webhook.store import PostBudget, Store, sqlite_path

__all__ = ["Bar", "View", "ago", "attention", "bars", "where_stored"]

READ_SECONDS = 5.0
SCORES_EVERY = 30.0
SCORES_READ = 10_000  # the latest live webhooks a distribution is read from, at most
DEAD_SHOWN = 20
HOUR, DAY = 3600.0, 86400.0


class View:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        scoring: Scoring,
        heard: Heard | None,  # None: a dry run (no API key)
        budget: PostBudget,
        sample: Sample,
        sweeper: Sweeper | None,
    ) -> None:
        self.settings, self.store, self.scoring = settings, store, scoring
        self.heard, self.budget, self.sample, self.sweeper = heard, budget, sample, sweeper
        self._scores: tuple[float, dict[str, Any]] | None = None
        self._scores_read: asyncio.Future[dict[str, Any]] | None = None
        self._judge = _judge(scoring)

    async def figures(self) -> dict[str, Any]:
        now = time.time()
        ready, queue, delivery, reconciliation, scores, dead = await asyncio.gather(
            _read(self._ready()),
            _read(self._queue(now)),
            _read(self._delivery(now)),
            _read(self._reconciliation()),
            _read(self._score_counts(now)),
            _read(self._dead()),
        )
        figures = {
            "at": now,
            "service": {
                "ready": {"ready": "error" not in ready, "error": ready.get("error")},
                "dry_run": self.heard is None,
                "api": None if self.heard is None else _host(self.settings.api_base),
                "store": where_stored(self.settings.database_url),
                "scorers": [
                    {"name": s.name, "scores": list(s.score_names), "rule": _rule(r)}
                    for s in self.scoring.scorers
                    for r in [self.scoring.rules.get(s.name)]
                ],
                "feedback_rule": _feedback(self.scoring.feedback_rule),
                "judge": self._judge,
            },
            "queue": queue,
            "delivery": delivery,
            "reconciliation": reconciliation,
            "scores": scores,
            "dead_letters": dead,
        }
        figures["attention"] = attention(figures)
        return figures

    async def _ready(self) -> dict[str, Any]:
        await self.store.ping()
        return {"ready": True}

    async def _queue(self, now: float) -> dict[str, Any]:
        stats = await self.store.reader.stats()
        oldest = stats.oldest_pending_at
        return {
            "counts": stats.counts,
            "oldest_undelivered_seconds": None if oldest is None else max(0.0, now - oldest),
        }

    async def _delivery(self, now: float) -> dict[str, Any]:
        s = self.settings
        figures = drain(
            await self.store.reader.flow(WINDOW),
            s.rate_limit_per_minute,
            s.rate_window_seconds,
            self.scoring.feedback_rule is not None,
            self.sample,
        )
        late = figures.late(s.max_age)
        api: dict[str, Any] | None = None
        if self.heard is not None:
            throttled = self.heard.throttled(HOUR)
            api = {
                "failing": self.heard.failing,
                "trouble_since": self.heard.trouble_since,
                "last": _said(self.heard.last),
                "last_ok": _said(self.heard.last_ok),
                "last_trouble": _said(self.heard.last_trouble),
                "throttled_last_hour": len(throttled),
                "last_throttled_at": throttled[-1] if throttled else None,
                "next_call_in_seconds": await self.budget.wait_time("live"),
            }
        return {
            "arriving_per_min": figures.arriving,
            "posting_per_min": figures.posting,
            "limit_per_min": figures.capacity,
            "backlog": figures.backlog,
            "backlog_calls": figures.backlog_calls,
            "drain_seconds": figures.seconds,  # None: the backlog grows
            "max_age_seconds": s.max_age,
            "late": late,
            "advice": figures.advice(s.max_age, self.sample) if late else None,
            "sample_percent": figures.sample,
            "api": api,
        }

    async def _reconciliation(self) -> dict[str, Any]:
        on = self.sweeper is not None
        last = self.sweeper.last if self.sweeper is not None else None
        return {
            "on": on,
            "interval_seconds": self.settings.reconcile_every if on else None,
            "checked_up_to": await self.store.reader.sweep_mark(),
            "last_sweep": None if last is None else asdict(last),
        }

    async def _score_counts(self, now: float) -> dict[str, Any]:
        """The last reading, if fresh; else one reading shared by every page asking meanwhile
        (a page that gives up waiting leaves it running for the next)."""
        if self._scores is not None and time.monotonic() - self._scores[0] < SCORES_EVERY:
            return self._scores[1]
        if self._scores_read is None or self._scores_read.done():
            self._scores_read = asyncio.ensure_future(self._read_scores(now))
        return await asyncio.shield(self._scores_read)

    async def _read_scores(self, now: float) -> dict[str, Any]:
        reader = self.store.reader
        try:
            hour = await reader.score_counts(now - HOUR, SCORES_READ)
            day = await reader.score_counts(now - DAY, SCORES_READ)
        except Exception as exc:
            scores: dict[str, Any] = {"error": str(exc) or type(exc).__name__}
        else:
            scores = {
                "hour": _distributions(hour.counts),
                "day": _distributions(day.counts),
                "webhooks_read": {"hour": hour.webhooks, "day": day.webhooks},
                "most": SCORES_READ,
                "read_at": now,
            }
        # A failure too: the next pages do not read it again at once. From the read's end, on
        # the monotonic clock.
        self._scores = (time.monotonic(), scores)
        return scores

    async def _dead(self) -> dict[str, Any]:
        letters = await self.store.reader.dead_letters(DEAD_SHOWN, newest=True)
        return {"latest": [asdict(d) for d in letters]}


async def _read(part: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """A part of the page, or why it could not be read in time. A read past its time is left
    to finish in the background rather than cancelled: the store's own timeouts end it, and
    cancelling a query on a database that stopped answering can take longer than the read."""
    read = asyncio.ensure_future(part)
    done, _ = await asyncio.wait({read}, timeout=READ_SECONDS)
    if not done:
        read.add_done_callback(_forget)
        return {"error": f"no answer from the store in {READ_SECONDS:.0f} s"}
    try:
        return read.result()
    except Exception as exc:
        return {"error": str(exc) or type(exc).__name__}


def _forget(read: asyncio.Future[dict[str, Any]]) -> None:
    """Take an abandoned read's outcome, so its failure is not reported as never retrieved."""
    if not read.cancelled():
        read.exception()


def _distributions(counts: Mapping[str, Mapping[int, int]]) -> dict[str, Any]:
    return {
        name: {"webhooks": sum(values.values()), "counts": dict(sorted(values.items()))}
        for name, values in sorted(counts.items())
    }


def attention(s: dict[str, Any]) -> list[str]:
    """What needs a person, in the page's words (``figures["attention"]``)."""
    said: list[str] = []
    ready, d, q, r = s["service"]["ready"], s["delivery"], s["queue"], s["reconciliation"]
    at = s["at"]
    if not ready["ready"]:
        said.append(
            f"The store does not accept writes ({ready['error']}): webhooks are answered 503,"
            " and Helicone does not send them again; the reconciliation sweep finds them once"
            " the store is back."
        )
    for part in (q, d, r, s["scores"], s["dead_letters"]):
        if "error" in part:
            said.append(f"Part of this page could not be read: {part['error']}.")
            break
    if d.get("late"):
        said.append(f"Behind: {d['advice']}.")
    api = d.get("api")
    if api is not None:
        ok, bad = api["last_ok"], api["last_trouble"]
        if api["failing"]:
            since = f"for {duration(at - api['trouble_since'])}" if ok else "since it started"
            why = bad["error"] or "no error text"
            last = (
                f"the last call got no answer ({why})"
                if bad["status"] is None
                else f"the last answer was {bad['status']} ({why})"
            )
            then = (
                " It refuses the API key: check HELICONE_API_KEY, then retry the dead letters"
                " it made."
                if bad["status"] in (401, 403)
                else " Webhooks are still accepted and wait in the queue; each is tried again"
                " after a growing delay."
            )
            said.append(
                f"Helicone's API has not accepted a call from this process {since}: {last},"
                f" {ago(bad['at'], at)}.{then}"
            )
        if n := api["throttled_last_hour"]:
            said.append(
                f"Helicone answered 429 (too many requests) {n} time{'s' if n != 1 else ''} in"
                f" the last hour, the last {ago(api['last_throttled_at'], at)}: each one paused"
                " every call for its Retry-After."
            )
    sweep = r.get("last_sweep")
    if sweep and sweep["stopped"] and sweep["stopped"] != "cancelled":
        said.append(f"The last reconciliation sweep stopped early: {sweep['stopped']}.")
    if sweep and sweep["failed"]:
        said.append(
            f"The last reconciliation sweep could not fetch {sweep['failed']} missed"
            " request(s): the next sweeps try them again."
        )
    if dead := q.get("counts", {}).get("dead"):
        said.append(f"{dead} dead letter{'s' if dead != 1 else ''}: see Dead letters below.")
    return said


def ago(epoch: float, now: float) -> str:
    """``3 min ago``; ``just now`` under a second."""
    seconds = now - epoch
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str  # the values it holds: "40-49", or "7"
    count: int


def bars(counts: Mapping[int, int], most: int = 10) -> list[Bar]:
    """The bars of a histogram of integer scores: one per value when they span fewer than
    ``most`` (a yes/no scorer's 0 and 1), ten of 10 for scores within 0-100 (the last holds
    90-100), else ``most`` bars of equal width from the least to the greatest."""
    if not counts:
        return []
    lo, hi = min(counts), max(counts)
    if hi - lo < most:
        edges = [(v, v) for v in range(lo, hi + 1)]
    elif lo >= 0 and hi <= 100:
        edges = [(k * 10, k * 10 + 9 if k < 9 else 100) for k in range(10)]
    else:
        width = math.ceil((hi - lo + 1) / most)
        edges = [(lo + k * width, min(hi, lo + (k + 1) * width - 1)) for k in range(most)]
        edges = [e for e in edges if e[0] <= hi]
    return [
        Bar(
            str(a) if a == b else f"{a} to {b}" if a < 0 else f"{a}-{b}",
            sum(n for v, n in counts.items() if a <= v <= b),
        )
        for a, b in edges
    ]


def _said(said: Any) -> dict[str, Any] | None:
    return None if said is None else asdict(said)


def where_stored(url: str) -> dict[str, str]:
    path = sqlite_path(url)
    if path is not None:
        return {"kind": "SQLite", "where": path}
    # Hosts (libpq takes several, comma separated), port and database; never the user, password
    # or options.
    where = url.partition("://")[2].rpartition("@")[2].partition("?")[0]
    return {"kind": "PostgreSQL", "where": where if not where.startswith("/") else f"local{where}"}


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _rule(rule: ScorerRule | None) -> str | None:
    if rule is None:
        return None
    said = []
    if rule.sample < 1:
        said.append(f"sample {rule.sample * 100:g}%")
    for name, values in (("models", rule.models), ("providers", rule.providers)):
        if values:
            said.append(f"{name} {', '.join(values)}")
    if rule.users:
        said.append(f"{len(rule.users)} user pattern(s)")
    return "; ".join(said) or "all"


def _feedback(rule: FeedbackRule | None) -> str | None:
    return None if rule is None else rule.text


def _judge(scoring: Scoring) -> dict[str, Any] | None:
    """The judge's model, host and criteria when it is on (never its key)."""
    if not any(s.name == "judge" for s in scoring.scorers):
        return None
    judge = load_judge_settings()
    return {
        "model": judge.model,
        "host": _host(judge.base_url) if judge.base_url else None,
        "criteria": list(judge.criteria),
        "concurrency": judge.concurrency,
    }
