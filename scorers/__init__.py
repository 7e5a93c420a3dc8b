"""Scorers for Helicone traffic: the context a scorer sees, the registry, and the runner.

A plugin author needs only this package::

    from scorers import Context, scorer
"""

from scorers.context import Context
from scorers.registry import (
    ENTRY_POINT_GROUP,
    Result,
    Scorer,
    ScorerFunc,
    UnknownScorerError,
    available,
    scorer,
    select,
)
from scorers.run import INT64_MAX, INT64_MIN, Outcome, as_score, run_scorers

__all__ = [
    "ENTRY_POINT_GROUP",
    "INT64_MAX",
    "INT64_MIN",
    "Context",
    "Outcome",
    "Result",
    "Scorer",
    "ScorerFunc",
    "UnknownScorerError",
    "as_score",
    "available",
    "run_scorers",
    "scorer",
    "select",
]
