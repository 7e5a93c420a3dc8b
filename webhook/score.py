"""The scoring stage: from a stored webhook to the scores and the rating to post.

- A "Body too large" webhook has its bodies fetched first, from allowed hosts only, while the
  presigned URL (valid 30 minutes) still works: this stage runs as soon as a webhook is stored.
- Which scorers run on a webhook is decided here by the scorer rules (sampling and filters);
  what a scorer does, and its isolation (timeouts, threads, processes), is the ``scorers``
  package's. The server's stage has a runner with scorer processes; the command line's does not.
- Feedback is only rated for UUID request ids, because Helicone's feedback API refuses others.
- The stage reports each scorer's time and failures in :class:`Scored`; the server's relay turns
  them into metrics, so the command line's ``score`` and ``backfill`` load no metrics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from scorers import DEFAULT_TIMEOUT, Context, Origin, Runner, Scorer, fill_bodies, run_scorers
from webhook.rules import FeedbackRule, ScorerRule

__all__ = ["Scored", "Scoring", "is_uuid"]

INLINE_BYTES = 64 * 1024  # bodies below this are read on the event loop


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Scored:
    scores: dict[str, int]
    feedback: bool | None = None
    errors: dict[str, str] = field(default_factory=dict)  # scorer name -> why it gave no score
    durations: dict[str, float] = field(default_factory=dict)  # scorer name -> seconds


@dataclass(slots=True)
class Scoring:
    scorers: Sequence[Scorer]
    rules: Mapping[str, ScorerRule] = field(default_factory=dict)
    feedback_rule: FeedbackRule | None = None
    scorer_timeout: float = DEFAULT_TIMEOUT
    body_allow: Sequence[Origin] = ()
    body_fetch_timeout: float = 10.0
    body_fetch_max_bytes: int = 32 * 1024 * 1024
    runner: Runner | None = None  # None: the shared thread runner (the command line's)

    def chosen(self, ctx: Context) -> list[Scorer]:
        return [
            s
            for s in self.scorers
            if (rule := self.rules.get(s.name)) is None or rule.applies(s.name, ctx)
        ]

    async def score(self, request_id: str, body: bytes | None) -> Scored:
        """Score a stored webhook body (the receiver checked it is a JSON object)."""
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        return await self.score_payload(request_id, payload, len(body or b""))

    async def score_payload(
        self, request_id: str, payload: Mapping[str, Any], size: int = INLINE_BYTES
    ) -> Scored:
        original = payload
        payload = await fill_bodies(
            payload,
            self.body_allow,
            fetch_timeout=self.body_fetch_timeout,
            max_bytes=self.body_fetch_max_bytes,
        )
        # Extraction can be long on big bodies: keep those off the loop that serves webhooks.
        # A small one costs microseconds, far less than the hand-off to a thread.
        if size < INLINE_BYTES and payload is original:
            ctx = Context.from_payload(payload)
        else:
            ctx = await asyncio.to_thread(Context.from_payload, payload)
        outcome = await run_scorers(
            self.chosen(ctx), ctx, scorer_timeout=self.scorer_timeout, runner=self.runner
        )
        feedback = None
        if self.feedback_rule is not None and is_uuid(request_id):
            feedback = self.feedback_rule.rating(outcome.scores)
        return Scored(outcome.scores, feedback, outcome.errors, outcome.durations)
