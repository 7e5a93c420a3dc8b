"""The shapes of Helicone's score statistics (``/v1/evals/query``), validated leniently.

Helicone builds these rows in JavaScript, so a score with no data has ``minScore: Infinity`` and
an average of ``0/0``, which ``JSON.stringify`` turns into ``null``; hence every number may be
None. The lenient types, and the shapes of logged requests, are :mod:`webhook.logged`'s.
"""

from __future__ import annotations

from pydantic import Field

from webhook.logged import Lenient, Number

__all__ = ["CountPoint", "Eval", "ValuePoint"]


class CountPoint(Lenient):
    date: str
    count: Number = None


class ValuePoint(Lenient):
    date: str
    value: Number = None


class Eval(Lenient):
    """One score name's statistics over the queried time range (hourly series)."""

    name: str
    average_score: Number = Field(default=None, alias="averageScore")
    min_score: Number = Field(default=None, alias="minScore")
    max_score: Number = Field(default=None, alias="maxScore")
    count: Number = None
    over_time: list[CountPoint] = Field(default_factory=list, alias="overTime")
    average_over_time: list[ValuePoint] = Field(default_factory=list, alias="averageOverTime")
