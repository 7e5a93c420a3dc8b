"""``vocabulary_diversity``: the Cloudflare Worker template's score, to the same numbers."""

from __future__ import annotations

import math
import re

from scorers.context import Context
from scorers.registry import scorer

__all__ = ["js_round", "js_words", "vocabulary_diversity"]

# JavaScript's \s, which differs from Python's (no \x1c-\x1f or \x85; adds \ufeff).
_JS_WHITESPACE = re.compile(
    "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)
# Where the two definitions differ; without these, str.split() is JavaScript's split(/\s+/)
# minus the empty strings at either end.
_DIFFERENT = ("\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\ufeff")


def js_round(x: float) -> int:
    """JavaScript's ``Math.round``: halves round up, towards +infinity."""
    return math.floor(x + 0.5)


def js_words(lower: str, split: list[str] | None = None) -> set[str]:
    """The distinct items of JavaScript's ``lower.split(/\\s+/)``, empty strings included.

    ``split``, if given, is ``lower.split()`` already made (``Context.split_words``).
    """
    if any(ch in lower for ch in _DIFFERENT):
        return set(_JS_WHITESPACE.split(lower))
    words = set(lower.split() if split is None else split)
    if not lower or lower[0].isspace() or lower[-1].isspace():
        words.add("")
    return words


@scorer(bounds=(0, None))
def vocabulary_diversity(ctx: Context) -> int | None:
    """Unique lower-cased words (split on whitespace) per 100 words (split on single spaces).

    Scale: 0 and up, usually 0-100; it can pass 100 because the two splits differ, exactly as in
    the Worker. Unique words are pooled across all choices; totals are summed. An OpenAI body
    with no text scores 0, as in the Worker; a body of another shape with no text is skipped.
    """
    body = ctx.response_body
    if not ctx.texts and not (isinstance(body, dict) and isinstance(body.get("choices"), list)):
        return None
    if len(ctx.texts) == 1:
        unique = js_words(ctx.lower, ctx.split_words)
    else:
        unique = set()
        for content in ctx.texts:
            unique |= js_words(content.lower())
    total = sum(content.count(" ") + 1 for content in ctx.texts)
    return 0 if total == 0 else js_round(len(unique) / total * 100)
