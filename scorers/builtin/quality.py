"""Automated quality checks, after the "Automated Quality Checks" example in Helicone's score docs.

The docs' sketch is a few lines of JavaScript; these keep its names and intent, and fix what
would mislead on real answers (each docstring says how). All are skipped when the response has
no assistant text.
"""

from __future__ import annotations

import re

from scorers.context import Context
from scorers.registry import scorer

__all__ = [
    "contains_markdown",
    "exceeds_min_length",
    "has_citations",
    "has_code_examples",
    "starts_with_greeting",
    "word_count",
]

MIN_LENGTH = 100

_CITATION = re.compile(r"\[\^?[0-9]{1,3}\]|\([0-9]{4}\)")
_GREETING = re.compile(
    r"[\W_]*(?:hello|hi|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening))\b",
    re.IGNORECASE,
)
_MD_LINE = re.compile(r"^[ \t]{0,3}(?:#{1,6}[ \t]|[-*+][ \t]|[0-9]{1,3}[.)][ \t]|>|\|.*\|)", re.M)
_MD_INLINE = re.compile(r"\*\*\S|__\S|\]\(|`")


@scorer(bounds=(0, None))
def word_count(ctx: Context) -> int | None:
    """Words in the answer: runs of non-whitespace.

    Scale: 0 and up. The docs' sketch splits on single spaces, which counts "a\\nb" as one word
    and a double space as an extra word; this does not.
    """
    return None if ctx.text is None else len(ctx.split_words)


@scorer(bounds=(0, 1))
def has_citations(ctx: Context) -> bool | None:
    """The answer cites: a numbered reference like [1] or [^1], or a year like (2024).

    Scale: 0 or 1. The docs' check, plus Markdown footnotes.
    """
    return None if ctx.text is None else _CITATION.search(ctx.text) is not None


@scorer(bounds=(0, 1))
def has_code_examples(ctx: Context) -> bool | None:
    """The answer has a fenced code block (``` or ~~~).

    Scale: 0 or 1.
    """
    if ctx.text is None:
        return None
    return "```" in ctx.text or "~~~" in ctx.text


@scorer(bounds=(0, 1))
def starts_with_greeting(ctx: Context) -> bool | None:
    """The answer opens with a greeting: hello, hi, hey, greetings, good morning...

    Scale: 0 or 1. Whole words only (the docs' /^(hello|hi|hey)/i also matches "History"), after
    any leading spaces or punctuation.
    """
    return None if ctx.text is None else _GREETING.match(ctx.text) is not None


@scorer(bounds=(0, 1))
def exceeds_min_length(ctx: Context) -> bool | None:
    """The answer is longer than 100 characters.

    Scale: 0 or 1. Characters are Unicode code points (JavaScript's length counts UTF-16 units,
    so emoji count once here, twice there).
    """
    return None if ctx.text is None else len(ctx.text) > MIN_LENGTH


@scorer(bounds=(0, 1))
def contains_markdown(ctx: Context) -> bool | None:
    """The answer uses Markdown: headings, lists, quotes, tables, bold, code or links.

    Scale: 0 or 1. The docs' /[#*_`]/ fires on any snake_case name or "#1"; this looks for
    Markdown constructs instead.
    """
    if ctx.text is None:
        return None
    return _MD_INLINE.search(ctx.text) is not None or _MD_LINE.search(ctx.text) is not None
