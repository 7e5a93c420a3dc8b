"""The shapes of Helicone's query answers, validated leniently.

Helicone's own code decides these shapes (see :mod:`webhook.offline.query`): the evals query
builds its rows in JavaScript, so a score with no data has ``minScore: Infinity`` and an average
of ``0/0``, which ``JSON.stringify`` turns into ``null``; hence every number may be None.
Request rows come from Postgres or ClickHouse, where 64-bit numbers may arrive as strings.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["CountPoint", "Eval", "RequestRow", "SignedBody", "ValuePoint", "iso"]


def iso(when: datetime) -> str:
    """UTC with milliseconds and ``Z``, as JavaScript's ``toISOString`` writes it."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _number(value: object) -> int | float | None:
    """A finite number (an int stays an int), or None for null, NaN, infinities and the rest."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


Number = Annotated[int | float | None, BeforeValidator(_number)]
Text = Annotated[str | None, BeforeValidator(_text)]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class CountPoint(_Model):
    date: str
    count: Number = None


class ValuePoint(_Model):
    date: str
    value: Number = None


class Eval(_Model):
    """One score name's statistics over the queried time range (hourly series)."""

    name: str
    average_score: Number = Field(default=None, alias="averageScore")
    min_score: Number = Field(default=None, alias="minScore")
    max_score: Number = Field(default=None, alias="maxScore")
    count: Number = None
    over_time: list[CountPoint] = Field(default_factory=list, alias="overTime")
    average_over_time: list[ValuePoint] = Field(default_factory=list, alias="averageOverTime")


class RequestRow(_Model):
    """One logged request, as ``/v1/request/query`` lists it (the fields scoring needs)."""

    request_id: str
    request_created_at: Text = None
    request_body: Any = None
    response_body: Any = None
    signed_body_url: Text = None
    request_model: Text = None
    response_model: Text = None
    model_override: Text = None
    provider: Text = None
    request_user_id: Text = None
    response_status: Number = None
    delay_ms: Number = None
    prompt_tokens: Number = None
    completion_tokens: Number = None
    total_tokens: Number = None
    cost_usd: Number = Field(default=None, alias="costUSD")
    cost: Number = None


class SignedBody(_Model):
    """What a signed body URL holds."""

    request: Any = None
    response: Any = None
