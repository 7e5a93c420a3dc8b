"""``valid_json`` and ``truncated``: did the answer keep its form."""

from __future__ import annotations

from typing import Any

import orjson

from scorers.context import Context
from scorers.extract import finish_reasons
from scorers.registry import scorer

__all__ = ["json_request", "truncated", "valid_json"]

_CUT = frozenset(("length", "max_tokens", "MAX_TOKENS", "max_output_tokens"))


def json_request(body: Any) -> tuple[bool, dict[str, Any] | None] | None:
    """Whether the request asked for JSON: None if not, else (object required?, JSON schema).

    OpenAI ``response_format`` (``json_object``, ``json_schema``), the Responses API's
    ``text.format``, and Gemini's ``generationConfig.responseMimeType: application/json``.
    """
    if not isinstance(body, dict):
        return None
    text = body.get("text")
    for fmt in (
        body.get("response_format"),
        text.get("format") if isinstance(text, dict) else None,
    ):
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
            schema = spec.get("schema") if isinstance(spec, dict) else None
            return True, schema if isinstance(schema, dict) else None
    config = body.get("generationConfig")
    if isinstance(config, dict) and config.get("responseMimeType") == "application/json":
        schema = config.get("responseSchema") or config.get("responseJsonSchema")
        return False, schema if isinstance(schema, dict) else None
    return None


def _valid(text: str, need_object: bool, schema: dict[str, Any] | None) -> bool:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if need_object and not isinstance(data, dict):
        return False
    required = schema.get("required") if schema else None
    if isinstance(data, dict) and isinstance(required, list):
        return all(key in data for key in required if isinstance(key, str))
    return True


@scorer(bounds=(0, 1))
def valid_json(ctx: Context) -> bool | None:
    """The answer is valid JSON, when the request asked for JSON.

    Scale: 0 or 1. Every choice must parse; for OpenAI's JSON modes it must be an object, and
    with a JSON schema it must have the schema's top-level required keys. Skipped when the
    request did not ask for JSON, or the response has no text (e.g. a tool call).
    """
    asked = json_request(ctx.request_body)
    if asked is None or not ctx.texts:
        return None
    need_object, schema = asked
    return all(_valid(t, need_object, schema) for t in ctx.texts)


@scorer(bounds=(0, 1))
def truncated(ctx: Context) -> bool | None:
    """The answer was cut off by the token limit.

    Scale: 0 or 1, from the finish reason: OpenAI "length", Anthropic "max_tokens", Gemini
    "MAX_TOKENS", Responses API "max_output_tokens". Skipped when the body has no finish reason.
    """
    reasons = finish_reasons(ctx.response_body)
    if not reasons:
        return None
    return any(r in _CUT for r in reasons)
