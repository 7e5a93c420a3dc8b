"""Find the assistant's text (and the user's question) in a Helicone body. Never raises.

This first version knows the OpenAI chat and legacy completion shapes, and bodies that arrive as
JSON-encoded strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["assistant_texts", "decode_body", "last_user_text"]


def decode_body(body: Any) -> Any:
    """A body may be an object, or that object JSON-encoded as a string (the dashboard's test)."""
    if isinstance(body, str):
        stripped = body.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return body
    return body


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None


def assistant_texts(body: Any) -> Iterator[str]:
    """The assistant's text, one string per choice that has any (empty strings are skipped)."""
    if not isinstance(body, dict):
        return
    choices = body.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = _content_text(message.get("content")) if isinstance(message, dict) else None
        if text is None and isinstance(choice.get("text"), str):
            text = choice["text"]
        if text:
            yield text


def last_user_text(body: Any) -> str | None:
    """The text of the last user message in a chat request, or a legacy ``prompt``."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else None
