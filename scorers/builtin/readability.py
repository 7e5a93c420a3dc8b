"""``readability`` and ``lexical_diversity``: how easy the answer is to read, and how varied."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from scorers import text as measures
from scorers.context import Context
from scorers.registry import scorer

__all__ = ["MATTR_WINDOW", "lexical_diversity", "mattr", "mattr_of_ids", "readability"]

MATTR_WINDOW = 50


@scorer(bounds=(0, 100))
def readability(ctx: Context) -> int | None:
    """Flesch reading ease, rounded and clamped to 0-100: higher is easier to read.

    Scale: 0-100; 60-70 is plain English, under 30 is hard (academic), over 90 very easy.
    206.835 - 1.015 * words/sentence - 84.6 * syllables/word, with syllables counted by an
    English rule (vowel groups, silent final e), no dictionary and no download. Meaningful for
    English prose only. Skipped when the answer has no words.
    """
    if ctx.text is None:
        return None
    words, sentences, syllables = measures.readability_counts(ctx.lower_bytes)
    if not words:
        return None
    score = 206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words)
    return min(100, max(0, round(score)))


def mattr(tokens: Sequence[Hashable], window: int = MATTR_WINDOW) -> float:
    """Moving-average type-token ratio (Covington & McFall 2010), in one pass.

    The mean, over every window of ``window`` consecutive tokens, of distinct/``window``.
    Token j counts as distinct in the windows that hold it but not its previous occurrence
    p: there are min(j - p, window) of them, less those running past the end. With fewer
    tokens than ``window``, it is the plain type-token ratio.
    """
    return mattr_of_ids(measures.first_seen(tokens)[1], window)


def mattr_of_ids(ids: list[int], window: int = MATTR_WINDOW) -> float:
    """:func:`mattr` of tokens given as ints below ``len(ids)`` (``Context.token_ids``).

    Their last positions then live in a list, which is cheaper to read and write than a dict.
    """
    n = len(ids)
    if n == 0:
        return 0.0
    if n <= window:
        return len(set(ids)) / n
    last = [-1] * n
    total = 0
    full = n - window  # the last window starts here
    for j, i in enumerate(ids[: full + 1]):
        gap = j - last[i]
        last[i] = j
        total += gap if gap < window else window
    for j in range(full + 1, n):
        i = ids[j]
        gap = j - last[i]
        last[i] = j
        count = (gap if gap < window else window) - (j - full)
        if count > 0:
            total += count
    return total / ((full + 1) * window)


@scorer(bounds=(0, 100))
def lexical_diversity(ctx: Context) -> int | None:
    """Moving-average type-token ratio (MATTR, 50-word windows) of the answer, times 100.

    Scale: 0-100; higher means more varied wording. Unlike vocabulary_diversity (the Worker's
    ratio, kept for parity), it does not fall as answers get longer, and punctuation does not
    make new words. Skipped when the answer has no words.
    """
    ids = ctx.token_ids
    if not ids:
        return None
    return min(100, max(0, round(100 * mattr_of_ids(ids))))
