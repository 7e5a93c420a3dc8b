"""``query_overlap``: how much of the question the answer talks about."""

from __future__ import annotations

from scorers.context import Context
from scorers.registry import scorer

__all__ = ["STOPWORDS", "query_overlap"]

_STOP = """a an and are as at be but by can could did do does for from had has have how i if in
into is it its me my no not of on or our please so than that the their them then there these
they this to us was we were what when where which who why will with would you your"""
STOPWORDS = frozenset(_STOP.encode().split())


@scorer(bounds=(0, 100))
def query_overlap(ctx: Context) -> int | None:
    """Share of the question's distinct words that the answer uses, in percent.

    Scale: 0-100. The question is the request's last user message; common English function
    words are ignored, and words match exactly after lower-casing. A cheap relevance signal: an
    answer that shares none of the question's words is often off topic. Skipped without a
    question (or one of only function words) or without an answer.
    """
    if ctx.text is None:
        return None
    asked = set(ctx.request_tokens) - STOPWORDS
    if not asked:
        return None
    said = ctx.token_index
    return round(100 * sum(1 for w in asked if w in said) / len(asked))
