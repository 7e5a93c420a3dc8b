"""Cheap, shared text measures. Pure functions over one string; none of them raises.

Speed policy: built-ins run on every webhook, so these work on the UTF-8 bytes with
``bytes.translate``, ``split`` and ``count`` (C loops) instead of per-word Python code. Bytes of
non-ASCII characters are treated as letters that are not vowels: the measures are tuned for
English and stay defined (never raise) for everything else.
"""

from __future__ import annotations

import string

__all__ = ["sentence_count", "syllable_count", "tokens", "word_count"]

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
# Vowel groups: v and e become "v", everything else a space; groups are then split() tokens.
_VOWEL_RUNS = bytes.maketrans(b"ve lc", b"vv   ")

# Sentence shapes: terminators s, line breaks n, other whitespace space, anything else x.
_SENTENCE = _table({".!?": "s", "\n": "n", " \t\r\f\v": " "}, "x", "x")


def tokens(lower: bytes) -> list[bytes]:
    """Word tokens of lower-cased UTF-8 text: punctuation splits, apostrophes stay inside."""
    return lower.translate(_TOKEN_TABLE).split()


def word_count(lower: bytes) -> int:
    """Words that contain a letter (for readability), approximated as all word tokens."""
    return len(lower.translate(_SHAPE).split())


def syllable_count(lower: bytes) -> int:
    """English syllables: vowel groups (y counts), minus a silent final e.

    A final e after a consonant is silent ("make", "mile", "gazelle"), except after a
    consonant + l ("table", "people"), and not in short words whose only vowel it is ("the",
    "she").
    """
    shape = b" " + lower.translate(_SHAPE) + b" "
    groups = len(shape.translate(_VOWEL_RUNS).split())
    silent = (
        shape.count(b"ce ")
        + shape.count(b"le ")
        - shape.count(b"cle ")
        - shape.count(b" ce ")
        - shape.count(b" le ")
        - shape.count(b" cce ")
        - shape.count(b" ccce ")
    )
    return max(groups - max(silent, 0), 0)


def sentence_count(text: bytes) -> int:
    """Sentences: runs of . ! ? before whitespace, plus lines that end without one. At least 1."""
    shape = text.translate(_SENTENCE) + b"n"
    ends = shape.count(b"s ") + shape.count(b"sn") + shape.count(b"xn")
    return max(ends, 1)
