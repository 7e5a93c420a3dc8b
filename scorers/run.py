"""Run the selected scorers on one context and keep only valid integer scores.

Policy: a scorer that raises, or returns something other than an int, a bool, None or a mapping
of those, loses only its own score; the failure is logged with the scorer's name and reported in
``Outcome.errors``. Helicone stores Int64 and silently drops floats, so a float is refused here
rather than sent. A bool becomes 1 or 0.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scorers.context import Context
from scorers.registry import Result, Scorer

__all__ = ["INT64_MAX", "INT64_MIN", "Outcome", "as_score", "run_scorers"]

log = logging.getLogger("scorers")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class Outcome:
    scores: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def as_score(value: object) -> int | None:
    """The value Helicone will store, or None when it must not be sent."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


async def run_scorers(scorers: Sequence[Scorer], ctx: Context) -> Outcome:
    outcome = Outcome()
    for s in scorers:
        try:
            result = s.func(ctx)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            log.warning("scorer %s failed: %s: %s", s.name, type(exc).__name__, exc)
            outcome.errors[s.name] = f"{type(exc).__name__}: {exc}"
            continue
        _collect(s.name, result, outcome)
    return outcome


def _collect(name: str, result: Result, outcome: Outcome) -> None:
    if result is None:
        return
    items = result.items() if isinstance(result, Mapping) else [(name, result)]
    for key, value in items:
        score = as_score(value)
        if score is None or not isinstance(key, str) or not key:
            log.warning(
                "scorer %s returned %s for %r; only ints and bools are sent",
                name,
                type(value).__name__,
                key,
            )
            outcome.errors[str(key)] = f"not an int: {type(value).__name__}"
            continue
        outcome.scores[key] = score
