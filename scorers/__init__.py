"""Scorers for Helicone traffic: the context a scorer sees, the registry, and the runner.

A plugin author needs only this package::

    from scorers import Context, scorer
"""

from scorers.context import Context
from scorers.fetch import Origin, fill_bodies, parse_origins
from scorers.registry import (
    ENTRY_POINT_GROUP,
    PluginLoadError,
    Result,
    Scorer,
    ScorerConfigError,
    ScorerError,
    ScorerFunc,
    UnknownScorerError,
    available,
    scorer,
    select,
)
from scorers.run import (
    DEFAULT_TIMEOUT,
    INT64_MAX,
    INT64_MIN,
    Outcome,
    Runner,
    as_score,
    run_scorers,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENTRY_POINT_GROUP",
    "INT64_MAX",
    "INT64_MIN",
    "Context",
    "Origin",
    "Outcome",
    "PluginLoadError",
    "Result",
    "Runner",
    "Scorer",
    "ScorerConfigError",
    "ScorerError",
    "ScorerFunc",
    "UnknownScorerError",
    "as_score",
    "available",
    "fill_bodies",
    "parse_origins",
    "run_scorers",
    "scorer",
    "select",
]
