"""Sampling by request id: the same answer for one id everywhere, every time.

A hash of the id, not a random draw, so every instance, every retry and every sweep decide
alike: the first 8 bytes of its SHA-256, as an integer, modulo 10,000, below ``percent * 100``.
"""

from __future__ import annotations

import hashlib

__all__ = ["in_sample"]


def in_sample(request_id: str, percent: float) -> bool:
    """Whether ``request_id`` is in a sample of ``percent`` (0-100) percent."""
    if percent >= 100:
        return True
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100
