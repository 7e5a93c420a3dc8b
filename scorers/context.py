"""What a scorer sees: one webhook, with the assistant's text already extracted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scorers.extract import assistant_texts, decode_body, last_user_text

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """The input of every scorer. Built once per webhook; scorers must not mutate it.

    ``texts`` holds one string per choice (OpenAI) or one for the whole answer (other
    providers); ``text`` joins them, and is None when the response has no assistant text.
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

    @property
    def request_id(self) -> str | None:
        rid = self.payload.get("request_id")
        return rid if isinstance(rid, str) else None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Context:
        """Build a context from a webhook payload. Never raises on odd shapes."""
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


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
