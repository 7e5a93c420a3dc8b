"""``vocabulary_diversity``: the Cloudflare Worker template's score, to the same numbers."""

from __future__ import annotations

import math
import re

from scorers.context import Context
from scorers.registry import scorer

# JavaScript's \s, which differs from Python's (no \x1c-\x1f or \x85; adds \ufeff).
_JS_WHITESPACE = re.compile(
    "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)


def js_round(x: float) -> int:
    """JavaScript's ``Math.round``: halves round up, towards +infinity."""
    return math.floor(x + 0.5)


@scorer()
def vocabulary_diversity(ctx: Context) -> int | None:
    """Unique lower-cased words (split on whitespace) per 100 words (split on single spaces).

    Scale: 0 and up, usually 0-100; it can pass 100 because the two splits differ, exactly as in
    the Worker. Unique words are pooled across all choices; totals are summed.
    """
    body = ctx.response_body
    if not ctx.texts and not (isinstance(body, dict) and isinstance(body.get("choices"), list)):
        return None  # nothing to score (the Worker scores an empty OpenAI answer as 0)
    unique: set[str] = set()
    total = 0
    for content in ctx.texts:
        unique.update(_JS_WHITESPACE.split(content.lower()))
        total += len(content.split(" "))
    return 0 if total == 0 else js_round(len(unique) / total * 100)
