"""``latency_ms``, ``cost_micro_usd``, ``completion_tokens``: from the webhook's ``metadata``.

Helicone adds ``metadata`` ``{cost (USD), promptTokens, completionTokens, totalTokens,
latencyMs}`` when the webhook includes data. Values that are missing, negative or not numbers
are skipped, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scorers.context import Context
from scorers.extract import stream_events, stream_usage
from scorers.registry import scorer

__all__ = ["completion_tokens", "cost_micro_usd", "latency_ms"]

_MAX = 2**63 - 1


def _count(value: Any, scale: float = 1.0) -> int | None:
    """A non-negative finite number, scaled and rounded to an int that fits Int64; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    scaled = value * scale if scale != 1.0 else value
    if scaled < 0 or scaled > _MAX:
        return None
    result = round(scaled)
    return result if result <= _MAX else None


@scorer(bounds=(0, None))
def latency_ms(ctx: Context) -> int | None:
    """How long the LLM call took, in milliseconds (metadata.latencyMs).

    Scale: 0 and up.
    """
    return _count(ctx.metadata.get("latencyMs"))


@scorer(bounds=(0, None))
def cost_micro_usd(ctx: Context) -> int | None:
    """What the call cost, in millionths of a US dollar (metadata.cost, rounded).

    Scale: 0 and up; 1,000,000 is one dollar. Helicone reports 0 for models it cannot price.
    """
    return _count(ctx.metadata.get("cost"), 1e6)


def _usage_tokens(body: Any) -> int | None:
    if not isinstance(body, Mapping):
        return None
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        usage = stream_usage(stream_events(body))  # a stream that was not rebuilt
    if isinstance(usage, Mapping):
        for key in ("completion_tokens", "output_tokens"):
            if (n := _count(usage.get(key))) is not None:
                return n
    gemini = body.get("usageMetadata")
    if isinstance(gemini, Mapping):
        return _count(gemini.get("candidatesTokenCount"))
    return None


@scorer(bounds=(0, None))
def completion_tokens(ctx: Context) -> int | None:
    """Tokens the model generated (metadata.completionTokens).

    Scale: 0 and up. When the metadata has none, or 0 (Helicone's value when it could not
    count), the response body's usage is used (OpenAI, Anthropic, Gemini, or a stream's last
    usage chunk) if it has a count.
    """
    meta = _count(ctx.metadata.get("completionTokens"))
    if meta:
        return meta
    body = _usage_tokens(ctx.response_body)
    return body if body is not None else meta
