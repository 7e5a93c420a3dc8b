"""What a scorer sees: one webhook, with the assistant's text already extracted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from scorers import text as measures
from scorers.extract import assistant_texts, decode_body, last_user_text

__all__ = ["Context"]

log = logging.getLogger("scorers")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Context:
    """The input of every scorer. Built once per webhook; scorers must not mutate it.

    ``texts`` holds one string per choice (OpenAI) or candidate (Gemini), or one for the whole
    answer (other providers); ``text`` joins them with newlines, and is None when the response
    has no assistant text. ``request_text`` is the last user message, or None.

    The properties below (``lower``, ``tokens``...) are computed once, on first use, and shared
    by every scorer of this webhook. Two threads may compute one at the same time; both get
    the same value.
    """

    payload: Mapping[str, Any]
    request_body: Any = None
    response_body: Any = None
    texts: tuple[str, ...] = ()
    text: str | None = None
    request_text: str | None = None
    model: str | None = None
    provider: str | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def request_id(self) -> str | None:
        rid = self.payload.get("request_id")
        return rid if isinstance(rid, str) else None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Context:
        """Build a context from a webhook payload. Never raises on odd shapes."""
        if not isinstance(payload, Mapping):
            return cls(payload={})
        try:
            request_body = decode_body(payload.get("request_body"))
            response_body = decode_body(payload.get("response_body"))
            texts = tuple(assistant_texts(response_body))
            metadata = payload.get("metadata")
            return cls(
                payload=payload,
                request_body=request_body,
                response_body=response_body,
                texts=texts,
                text="\n".join(texts) if texts else None,
                request_text=last_user_text(request_body),
                model=_str(payload.get("model")),
                provider=_str(payload.get("provider")),
                user_id=_str(payload.get("user_id")),
                metadata=metadata if isinstance(metadata, Mapping) else {},
            )
        except Exception:  # a bug in extraction must not lose the webhook's other scores
            log.exception("could not read the payload's bodies; scoring without text")
            return cls(payload=payload)

    # -- shared, computed once ---------------------------------------------------------------

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, computed once per context under ``key``: share work between scorers."""
        try:
            value: T = self._memo[key]
        except KeyError:
            value = self._memo[key] = make()
        return value

    @property
    def lower(self) -> str:
        """The assistant's text, lower-cased ("" when there is none)."""
        return self._lowered[0]

    @property
    def lower_bytes(self) -> bytes:
        """``lower`` as UTF-8, for the byte-level measures of :mod:`scorers.text`."""
        return self._lowered[1]

    @property
    def _lowered(self) -> tuple[str, bytes]:
        return self.memo("lowered", lambda: measures.lowered(self.text or ""))

    @property
    def split_words(self) -> list[str]:
        """``lower`` split on whitespace."""
        return self.memo("split_words", lambda: self.lower.split())

    @property
    def tokens(self) -> list[bytes]:
        """Word tokens of ``lower`` (UTF-8 bytes), punctuation removed."""
        return self.memo("tokens", lambda: measures.tokens(self.lower_bytes))

    @property
    def token_index(self) -> dict[bytes, int]:
        """Each distinct token of ``tokens``, with its first position."""
        return self._first_seen[0]

    @property
    def token_ids(self) -> list[int]:
        """``tokens`` as small ints: each token's first position."""
        return self._first_seen[1]

    @property
    def _first_seen(self) -> tuple[dict[bytes, int], list[int]]:
        return self.memo("first_seen", lambda: measures.first_seen(self.tokens))

    @property
    def request_tokens(self) -> list[bytes]:
        """Word tokens of the lower-cased ``request_text``."""
        return self.memo(
            "request_tokens",
            lambda: measures.tokens((self.request_text or "").lower().encode("utf-8", "replace")),
        )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
