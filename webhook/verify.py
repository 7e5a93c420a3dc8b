"""Verify Helicone's ``Helicone-Signature`` header.

Helicone signs each webhook with the lowercase hex HMAC-SHA256 of the raw request body. The key is
the webhook's ``hmac_key`` used as text (its UTF-8 bytes, never hex-decoded). There is no timestamp
and no prefix, so the only thing to check is the MAC of the exact bytes received: re-serialising
the JSON would not reproduce them.

Helicone sends lowercase hex; a signature in either case is accepted (it is lower-cased before
the comparison), since the case of hex digits carries no secret and a proxy or another signer
may change it. Surrounding whitespace is ignored too.

Several secrets may be configured at once while a key is rotated; a body passes if any matches.
Every secret is always compared, so the time taken does not reveal which one matched.

This module has no dependencies beyond the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["HEADER", "Verifier", "sign"]

HEADER = "helicone-signature"


def sign(secret: str, body: bytes) -> str:
    """Return the signature Helicone would send for ``body`` under ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Verifier:
    """Checks signatures against one or more secrets, in constant time."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # A keyed HMAC is copied per check, so the key schedule is computed once, not per request.
        self._keys = tuple(hmac.new(s.encode(), digestmod=hashlib.sha256) for s in secrets if s)
        if not self._keys:
            raise ValueError("at least one non-empty secret is required")

    def verify(self, body: bytes, signature: str | None) -> bool:
        """True when ``signature`` is the HMAC of ``body`` under any configured secret."""
        if not signature:
            return False
        try:
            given = signature.strip().lower().encode("ascii")
        except UnicodeEncodeError:
            return False
        ok = False
        for key in self._keys:
            mac = key.copy()
            mac.update(body)
            ok |= hmac.compare_digest(mac.hexdigest().encode("ascii"), given)
        return ok
