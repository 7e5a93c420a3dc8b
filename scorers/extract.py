"""Find the assistant's text, the user's question and a few answer facts in a Helicone body.

Every function here takes whatever JSON arrived and never raises. The shapes, from
``shared/helicone-facts.md`` and Helicone's body processors:

- OpenAI chat: ``choices[i].message.content`` as a string, null (tool calls) or a list of
  ``{type: "text", text}`` parts; legacy completions ``choices[i].text``; the Responses API
  ``output[].content[]`` (``output_text`` parts).
- OpenAI streamed: Helicone's rebuilt message, or, when it is missing, the chunks in
  ``streamed_data`` (a list of parsed chunks, or a raw SSE string).
- Anthropic Messages: ``content[]`` text blocks only (``thinking``, ``tool_use``... skipped);
  legacy ``completion``; when the stream was not rebuilt, the raw SSE string in ``streamed_data``.
- Gemini: ``candidates[i].content.parts[*].text`` without ``thought: true`` parts; a body may be a
  list of such objects (their texts are joined per candidate).
- Bodies that arrive as JSON-encoded strings, and error wrappers (``{}``, ``helicone_error``,
  "HTML response detected"), which have no assistant text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

__all__ = [
    "TOO_LARGE",
    "assistant_texts",
    "decode_body",
    "finish_reasons",
    "is_too_large",
    "last_user_text",
    "refused",
    "sse_events",
    "stream_events",
    "stream_finish_reasons",
    "stream_usage",
]

TOO_LARGE = "Body too large for webhook"
_TEXT_PARTS = frozenset(("text", "input_text", "output_text"))
_MAX_DEPTH = 8  # lists of lists of response objects are unwrapped this deep, no further


def is_too_large(body: Any) -> bool:
    """The marker Helicone sends instead of a body over 10 KB."""
    return isinstance(body, str) and body.lstrip().startswith(TOO_LARGE)


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


def sse_events(raw: str) -> list[Any]:
    """The JSON ``data:`` payloads of a server-sent-events string (``[DONE]`` and junk skipped)."""
    events: list[Any] = []
    for line in raw.splitlines():
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data[:1] in ("{", "["):
            try:
                events.append(orjson.loads(data))
            except orjson.JSONDecodeError:
                continue
    return events


def _part_text(part: Any) -> str | None:
    """A content part's text: OpenAI/Anthropic typed parts, or Gemini parts (not thoughts)."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict) or part.get("thought") is True:
        return None
    kind = part.get("type")
    if kind is not None and kind not in _TEXT_PARTS:
        return None
    text = part.get("text")
    return text if isinstance(text, str) else None


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [t for t in map(_part_text, content) if t is not None]
        return "".join(parts) if parts else None
    return None


def _gemini_parts(candidate: Any) -> str | None:
    if not isinstance(candidate, dict):
        return None
    content = candidate.get("content")
    return _content_text(content.get("parts")) if isinstance(content, dict) else None


def _from_events(events: Iterable[Any]) -> list[str]:
    """Rebuild answers from stream events: OpenAI chunks, Anthropic events, Gemini chunks."""
    by_index: dict[int, list[str]] = {}

    def add(index: Any, text: Any) -> None:
        if isinstance(text, str) and text:
            by_index.setdefault(index if isinstance(index, int) else 0, []).append(text)

    for event in events:
        if not isinstance(event, dict):
            continue
        choices, candidates = event.get("choices"), event.get("candidates")
        if isinstance(choices, list):
            for pos, choice in enumerate(choices):
                if isinstance(choice, dict):
                    index = choice.get("index", pos)
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        add(index, _content_text(delta.get("content")))
                    add(index, choice.get("text"))
        elif isinstance(candidates, list):
            for pos, candidate in enumerate(candidates):
                if isinstance(candidate, dict):
                    add(candidate.get("index", pos), _gemini_parts(candidate))
        elif event.get("type") == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                add(0, delta.get("text"))
        elif event.get("type") == "completion":
            add(0, event.get("completion"))
    return ["".join(by_index[i]) for i in sorted(by_index)]


def stream_events(body: Any) -> list[Any]:
    """The stream's events in ``streamed_data``: parsed chunks, or a raw SSE string parsed."""
    data = body.get("streamed_data") if isinstance(body, dict) else None
    if isinstance(data, str):
        return sse_events(data)
    return data if isinstance(data, list) else []


def _streamed(body: dict[str, Any]) -> list[str]:
    return _from_events(stream_events(body))


def stream_finish_reasons(events: Iterable[Any]) -> list[str]:
    """The last finish reason per choice of a stream: OpenAI chunks' ``finish_reason``,
    Anthropic's ``message_delta`` ``stop_reason``, Gemini chunks' ``finishReason``."""
    last: dict[Any, str] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        if event.get("type") == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                last[0] = delta["stop_reason"]
        for key, field in (("choices", "finish_reason"), ("candidates", "finishReason")):
            items = event.get(key)
            if isinstance(items, list):
                for pos, item in enumerate(items):
                    if isinstance(item, dict) and isinstance(item.get(field), str):
                        last[item.get("index", pos)] = item[field]
    return [r for r in last.values() if r]


def stream_usage(events: Iterable[Any]) -> dict[str, Any] | None:
    """The stream's last usage: an OpenAI chunk's ``usage`` (sent last, when asked for) or
    Anthropic's ``message_delta`` ``usage`` (cumulative, so the last one is the total)."""
    found: dict[str, Any] | None = None
    for event in events:
        if isinstance(event, dict) and isinstance(event.get("usage"), dict):
            found = event["usage"]
    return found


def _openai(body: dict[str, Any], choices: list[Any]) -> list[str]:
    texts: list[str] = []
    has_message = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text: str | None = None
        if isinstance(message, dict):
            has_message = True
            text = _content_text(message.get("content"))
        if text is None and isinstance(choice.get("text"), str):
            has_message = True
            text = choice["text"]
        if text is None and isinstance(choice.get("delta"), dict):
            text = _content_text(choice["delta"].get("content"))
        if text:
            texts.append(text)
    if not texts and not has_message:
        return _streamed(body)
    return texts


def _responses_api(output: list[Any]) -> list[str]:
    parts = [
        _content_text(item.get("content"))
        for item in output
        if isinstance(item, dict) and item.get("type") == "message"
    ]
    text = "".join(p for p in parts if p)
    return [text] if text else []


def _texts(body: Any, depth: int = 0) -> list[str]:
    if isinstance(body, list):
        if depth >= _MAX_DEPTH:
            return []
        if any(isinstance(b, dict) and ("choices" in b or "candidates" in b) for b in body):
            return _from_events(body)
        nested = [t for b in body for t in _texts(b, depth + 1)]
        return ["".join(nested)] if nested else []
    if isinstance(body, str):
        head = body.lstrip()[:6]
        return _from_events(sse_events(body)) if head.startswith(("data:", "event:")) else []
    if not isinstance(body, dict):
        return []
    choices = body.get("choices")
    if isinstance(choices, list):
        return _openai(body, choices)
    candidates = body.get("candidates")
    if isinstance(candidates, list):
        return _from_events([body])
    content = body.get("content")
    if isinstance(content, list | str):
        text = _content_text(content)
        return [text] if text else _streamed(body)
    output = body.get("output")
    if isinstance(output, list):
        return _responses_api(output)
    message = body.get("message")  # Ollama; or Anthropic's message_start when not rebuilt
    if isinstance(message, dict):
        text = _content_text(message.get("content"))
        return [text] if text else _streamed(body)
    if isinstance(body.get("completion"), str):
        return [body["completion"]] if body["completion"] else []
    return _streamed(body)


def assistant_texts(body: Any) -> Iterator[str]:
    """The assistant's text, one string per choice or candidate that has any (empty skipped)."""
    try:
        texts = _texts(body)
    except RecursionError:  # absurdly nested JSON
        texts = []
    yield from (t for t in texts if t)


def last_user_text(body: Any) -> str | None:
    """The last user message of a chat request (OpenAI, Anthropic, Gemini, Responses API), or a
    legacy ``prompt``."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = body.get("contents")  # Gemini
    if not isinstance(messages, list):
        messages = body.get("input")  # Responses API
        if isinstance(messages, str):
            return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content", message.get("parts")))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return prompt if isinstance(prompt, str) else None


def finish_reasons(body: Any) -> list[str]:
    """Why generation stopped, per choice: OpenAI ``finish_reason``, Anthropic ``stop_reason``,
    Gemini ``finishReason``, Responses API ``incomplete_details.reason``; for a stream that was
    not rebuilt, the chunks' own (:func:`stream_finish_reasons`)."""
    if isinstance(body, list):
        body = next((b for b in reversed(body) if isinstance(b, dict)), None)
    if not isinstance(body, dict):
        return []
    found: list[Any] = [body.get("stop_reason")]
    for key, field in (("choices", "finish_reason"), ("candidates", "finishReason")):
        items = body.get(key)
        if isinstance(items, list):
            found += [c.get(field) for c in items if isinstance(c, dict)]
    details = body.get("incomplete_details")
    if isinstance(details, dict):
        found.append(details.get("reason"))
    reasons = [r for r in found if isinstance(r, str) and r]
    return reasons or stream_finish_reasons(stream_events(body))


def refused(body: Any) -> bool:
    """The provider itself flagged a refusal: OpenAI ``message.refusal`` or Anthropic's
    ``stop_reason: "refusal"``."""
    if not isinstance(body, dict):
        return False
    if body.get("stop_reason") == "refusal":
        return True
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("refusal"), str):
                return bool(message["refusal"])
    return False
