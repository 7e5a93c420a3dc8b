"""The scoring stage: from a stored webhook to the scores and the rating to post.

Which scorers run on a webhook is decided here by the scorer rules (sampling and filters); what a
scorer does is the ``scorers`` package's business. Feedback is only rated for UUID request ids,
because Helicone's feedback API refuses anything else.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from scorers import Context, Scorer, run_scorers
from webhook.metrics import SCORER_ERRORS
from webhook.rules import FeedbackRule, ScorerRule

__all__ = ["Scored", "Scoring", "is_uuid"]


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


@dataclass(slots=True)
class Scoring:
    scorers: Sequence[Scorer]
    rules: Mapping[str, ScorerRule] = field(default_factory=dict)
    feedback_rule: FeedbackRule | None = None

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
        return await self.score_payload(request_id, payload if isinstance(payload, dict) else {})

    async def score_payload(self, request_id: str, payload: dict[str, object]) -> Scored:
        ctx = Context.from_payload(payload)
        outcome = await run_scorers(self.chosen(ctx), ctx)
        for name in outcome.errors:
            SCORER_ERRORS.labels(name).inc()
        feedback = None
        if self.feedback_rule is not None and is_uuid(request_id):
            feedback = self.feedback_rule.rating(outcome.scores)
        return Scored(outcome.scores, feedback)
