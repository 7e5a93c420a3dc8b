"""Cheap, shared text measures. Pure functions over one string; none of them raises.

Speed policy: built-ins run on every webhook, so these work on the UTF-8 bytes with
``bytes.translate`` and ``split``, and on big ints (shifts, masks, ``int.bit_count``): C loops
instead of per-word Python code. Bytes of non-ASCII characters are treated as letters that are
not vowels: the measures are tuned for English and stay defined (never raise) for everything else.
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

# Letter shapes, for short words that end in e: v = vowel (not e), e, l, c = other letter or
# apostrophe, and a space for anything else; "l" merged into "c".
_SHAPE = _table(
    {"aiouy": "v", "e": "e", "l": "l", "bcdfghjkmnpqrstvwxz'": "c"},
    "c",
    " ",
)
_L_AS_C = bytes.maketrans(b"l", b"c")

# Byte classes for readability_counts, by bit: vowel ("e" too), "e", "l", consonant ("l" too;
# an apostrophe or a byte >= 0x80 is one), letter (any of those), and for sentences: . ! ?, a
# line break, whitespace (line breaks too).
_VOWEL, _E, _L, _CONS, _LETTER, _STOP, _BREAK, _SPACE = range(8)


def _classes() -> bytes:
    out = bytearray(256)
    for chars, bits in (
        ("aiouy", (_VOWEL, _LETTER)),
        ("e", (_VOWEL, _E, _LETTER)),
        ("l", (_L, _CONS, _LETTER)),
        ("bcdfghjkmnpqrstvwxz'" + "".join(map(chr, range(0x80, 0x100))), (_CONS, _LETTER)),
        (".!?", (_STOP,)),
        ("\n", (_BREAK, _SPACE)),
        (" \t\r\f\v", (_SPACE,)),
    ):
        for ch in chars:
            out[ord(ch)] = sum(1 << bit for bit in bits)
    return bytes(out)


_CLASSES = _classes()

_ASCII = bytes(range(0x80))

H = TypeVar("H", bound=Hashable)


def lowered(text: str) -> tuple[str, bytes]:
    """``text.lower()``, and that as UTF-8 (a lone surrogate becomes "?").

    Speed policy: when no non-ASCII character changes case (the usual answer, with its dashes,
    curly quotes and emoji), lower-casing the UTF-8 bytes' ASCII letters gives the same text for
    a fraction of ``str.lower``'s cost on a non-ASCII string. Checking that costs time in
    proportion to the non-ASCII characters: past about one in eight (each adds a byte or more),
    ``str.lower`` is as fast, and is used.
    """
    if text.isascii():
        lower = text.lower()
        return lower, lower.encode()
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        pass
    else:
        if (len(raw) - len(text)) * 8 > len(text):
            lower = text.lower()
            return lower, lower.encode()
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


def word_count(lower: bytes) -> int:
    """Words for readability: runs of letters (apostrophes and non-ASCII count as letters)."""
    return readability_counts(lower)[0]


def sentence_count(text: bytes) -> int:
    """Sentences: runs of . ! ? before whitespace, plus lines that end without one. At least 1."""
    return readability_counts(text)[1]


def syllable_count(lower: bytes) -> int:
    """English syllables: vowel groups (y counts), minus a silent final e.

    A final e after a consonant is silent ("make", "mile", "gazelle"), except after a
    consonant + l ("table", "people"), and not in short words whose only vowel it is ("the",
    "she": " ce ", " cce ", " ccce " in letter shapes, each counted without overlaps).
    """
    return readability_counts(lower)[2]


def readability_counts(lower: bytes) -> tuple[int, int, int]:
    """(words, sentences, syllables) of lower-cased UTF-8 text.

    Speed policy: the text's byte classes are read as one big int, 8 bits a byte, and every
    count is a few shifts and masks and one ``int.bit_count``: C loops over machine words. A
    mask holds bit 0 of byte i when byte i is of its kind; ``m << 8`` puts byte i + 1 there,
    ``m >> 8`` byte i - 1. Before the start and past the end are spaces (and a line break).
    """
    n = len(lower)
    if not n:
        return 0, 1, 0
    x = int.from_bytes(lower.translate(_CLASSES), "big")
    one = int.from_bytes(b"\x01" * n, "big")  # bit 0 of every byte; "m ^ one" is "not m"
    letter = x >> _LETTER & one
    vowel = x >> _VOWEL & one
    e = x >> _E & one
    el = x >> _L & one
    cons = x >> _CONS & one
    words = (letter ^ letter & letter >> 8).bit_count()  # letters after a non-letter
    groups = (vowel ^ vowel & vowel >> 8).bit_count()
    e_end = e ^ e & letter << 8  # "e" then a space (or the end)
    ce = cons & e_end << 8  # "ce " of the shapes
    ce_next = ce << 8
    cle = (cons ^ el) & el << 8 & e_end << 16  # within ce_next
    space = letter ^ (one | 1 << 8 * n)  # not a letter, or the space before the start
    cce_next = (cons & ce_next) << 8
    short = (space & ce_next, space & cce_next, space & (cons & cce_next) << 8)
    starts = short[0] | short[1] | short[2]
    few = starts.bit_count()
    # bytes.count counts without overlaps: two of one length that share their space (after an
    # "e"), as in " he be ", count once; three or more in a row are left to bytes.count itself.
    if starts & e >> 8:
        for k, m in enumerate(short):
            pairs = m & m << 8 * (3 + k)
            if pairs & pairs << 8 * (3 + k):
                shape = (b" " + lower.translate(_SHAPE) + b" ").translate(_L_AS_C)
                few = sum(shape.count(p) for p in (b" ce ", b" cce ", b" ccce "))
                break
            few -= pairs.bit_count()
    silent = (ce_next ^ cle).bit_count() - few  # "ce " less "cle " less the short words
    syllables = max(groups - max(silent, 0), 0)
    stop = x >> _STOP & one
    white = x >> _SPACE & one
    white_next = white << 8 | 1  # the next byte is whitespace, or the end
    break_next = (x >> _BREAK & one) << 8 | 1  # a line break, or the end
    ends = (stop & white_next | (white ^ one) & break_next).bit_count()
    return words, max(ends, 1), syllables
