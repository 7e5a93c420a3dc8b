"""A sample of requests, decided per request id: the same id is always in or always out.

Helicone samples each webhook delivery at random; a stable choice per id lets every process (the
sweep on any instance, a restart, the webhook path) agree on which requests are in, without
storing the choice. ``percent`` of ids are in, spread uniformly by a hash of the id.
"""

from __future__ import annotations

import hashlib

__all__ = ["in_sample"]


def in_sample(request_id: str, percent: float) -> bool:
    """Whether ``request_id`` is in a ``percent`` (0-100) sample: 0 takes none, 100 takes all."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100
