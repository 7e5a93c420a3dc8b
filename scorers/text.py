"""Cheap, shared text measures. Pure functions over one string; none of them raises.

Speed policy: built-ins run on every webhook, so these work on the UTF-8 bytes with
``bytes.translate``, ``split`` and ``count`` (C loops) instead of per-word Python code. Bytes of
non-ASCII characters are treated as letters that are not vowels: the measures are tuned for
English and stay defined (never raise) for everything else.
"""

from __future__ import annotations

import string
from collections.abc import Hashable, Iterable
from itertools import count
from typing import TypeVar

__all__ = [
    "first_seen",
    "lowered",
    "readability_counts",
    "sentence_count",
    "syllable_count",
    "tokens",
    "word_count",
]

_LETTERS = string.ascii_lowercase
_VOWELS = "aiouy"  # and "e", which has a class of its own


def _table(mapping: dict[str, str], high: str, default: str) -> bytes:
    """A 256-byte translate table: ASCII by ``mapping``, bytes >= 0x80 to ``high``."""
    out = bytearray(default.encode() * 256)
    for chars, to in mapping.items():
        for ch in chars:
            out[ord(ch)] = ord(to)
    for b in range(0x80, 0x100):
        out[b] = ord(high)
    return bytes(out)


# Word tokens: letters, digits, "_", "'" and non-ASCII bytes stay; anything else is a space.
_KEEP = frozenset((_LETTERS + string.ascii_uppercase + string.digits + "'_").encode())
_TOKEN_TABLE = bytes(b if b in _KEEP or b >= 0x80 else 0x20 for b in range(256))

# Letter shapes for syllables: v = vowel (not e), e, l, c = other letter or apostrophe, space.
_SHAPE = _table(
    {"aiouy": "v", "e": "e", "l": "l", "bcdfghjkmnpqrstvwxz'": "c"},
    "c",
    " ",
)
# Vowel groups and words: a run of "v" (or of "x") starts wherever one follows a space.
_VOWEL_RUNS = bytes.maketrans(b"ve lc", b"vv   ")
_LETTER_RUNS = bytes.maketrans(b"velc", b"xxxx")
_L_AS_C = bytes.maketrans(b"l", b"c")

_ASCII = bytes(range(0x80))

H = TypeVar("H", bound=Hashable)

# Sentence shapes: terminators s, line breaks n, other whitespace space, anything else x.
_SENTENCE = _table({".!?": "s", "\n": "n", " \t\r\f\v": " "}, "x", "x")


def lowered(text: str) -> tuple[str, bytes]:
    """``text.lower()``, and that as UTF-8 (a lone surrogate becomes "?").

    Speed policy: when no non-ASCII character changes case (the usual answer, with its dashes,
    curly quotes and emoji), lower-casing the UTF-8 bytes' ASCII letters gives the same text for
    a fraction of ``str.lower``'s cost on a non-ASCII string.
    """
    if text.isascii():
        lower = text.lower()
        return lower, lower.encode()
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        pass
    else:
        # Its non-ASCII characters, whole: UTF-8 never puts an ASCII byte inside one.
        wide = raw.translate(None, _ASCII).decode()
        if wide.lower() == wide:  # none changes case (so there is no capital sigma either)
            low = raw.lower()
            return low.decode(), low
    lower = text.lower()
    return lower, lower.encode("utf-8", "replace")


def first_seen(items: Iterable[H]) -> tuple[dict[H, int], list[int]]:
    """Each distinct item's first position, and every item as its first position.

    The second list stands for ``items`` with small ints, which index a list where the items
    themselves would need a dict (and hashing) on every lookup.
    """
    index: dict[H, int] = {}
    return index, list(map(index.setdefault, items, count()))


def tokens(lower: bytes) -> list[bytes]:
    """Word tokens of lower-cased UTF-8 text: punctuation splits, apostrophes stay inside."""
    return lower.translate(_TOKEN_TABLE).split()


def _shape(lower: bytes) -> bytes:
    return b" " + lower.translate(_SHAPE) + b" "


def word_count(lower: bytes) -> int:
    """Words for readability: runs of letters (apostrophes and non-ASCII count as letters)."""
    return _words(_shape(lower))


def _words(shape: bytes) -> int:
    return shape.translate(_LETTER_RUNS).count(b" x")


def syllable_count(lower: bytes) -> int:
    """English syllables: vowel groups (y counts), minus a silent final e.

    A final e after a consonant is silent ("make", "mile", "gazelle"), except after a
    consonant + l ("table", "people"), and not in short words whose only vowel it is ("the",
    "she").
    """
    return _syllables(_shape(lower))


def _syllables(shape: bytes) -> int:
    groups = shape.translate(_VOWEL_RUNS).count(b" v")
    merged = shape.translate(_L_AS_C)  # where "l" needs no class of its own
    silent = (
        merged.count(b"ce ")
        - shape.count(b"cle ")
        - merged.count(b" ce ")
        - merged.count(b" cce ")
        - merged.count(b" ccce ")
    )
    return max(groups - max(silent, 0), 0)


def readability_counts(lower: bytes) -> tuple[int, int, int]:
    """(words, sentences, syllables) of lower-cased UTF-8 text, sharing one pass."""
    shape = _shape(lower)
    return _words(shape), sentence_count(lower), _syllables(shape)


def sentence_count(text: bytes) -> int:
    """Sentences: runs of . ! ? before whitespace, plus lines that end without one. At least 1."""
    shape = text.translate(_SENTENCE) + b"n"
    ends = shape.count(b"s ") + shape.count(b"sn") + shape.count(b"xn")
    return max(ends, 1)
