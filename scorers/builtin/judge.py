"""``judge``: an LLM grades the answer, one score per criterion.

It calls an OpenAI-compatible chat-completions endpoint (``SCORER_JUDGE_BASE_URL`` +
``/chat/completions``, with ``SCORER_JUDGE_API_KEY`` and ``SCORER_JUDGE_MODEL``), asks for a JSON
object (``response_format: json_object``, temperature 0) and posts ``judge_<criterion>`` for each
of ``SCORER_JUDGE_CRITERIA``, an int from 0 to 100. The ``judge_`` prefix keeps an LLM's opinion
apart from measured scores and from other scorers' names in Helicone.

Policy: off unless ``SCORER_JUDGE_BASE_URL`` and ``SCORER_JUDGE_MODEL`` are set. At most
``SCORER_JUDGE_CONCURRENCY`` calls at once per process; each call is bounded by
``SCORER_JUDGE_TIMEOUT``. An HTTP error, a timeout, or a reply that is not a JSON object with
the criteria raises, so the runner logs it and drops only the judge's scores. A criterion the
reply leaves out or gives a non-number is dropped alone; numbers are rounded and clamped to
0-100. Texts longer than ``SCORER_JUDGE_MAX_CHARS`` are cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import ssl
import weakref
from typing import Any

import httpx2
import orjson

from scorers.context import Context
from scorers.registry import Scorer, scorer
from scorers.settings import JudgeSettings, load_judge_settings

__all__ = ["Judge", "parse_reply"]

log = logging.getLogger("scorers.judge")

SYSTEM = (
    "You are a strict, fair evaluator of an AI assistant's answer. Rate the answer on each "
    "criterion from 0 (worst) to 100 (best). Reply with only a JSON object whose keys are "
    "exactly: {keys}, and whose values are integers from 0 to 100."
)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[... cut ...]"


def parse_reply(content: Any, criteria: tuple[str, ...]) -> dict[str, int]:
    """``judge_<criterion>`` -> 0-100 from the judge's reply; raises ValueError if unusable."""
    if not isinstance(content, str):
        raise ValueError("judge reply has no text content")
    text = content.strip()
    if text.startswith("```"):  # some models fence JSON despite being asked not to
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError(f"judge reply is not JSON: {content[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError("judge reply is not a JSON object")
    lowered = {str(k).strip().lower(): v for k, v in data.items()}
    scores: dict[str, int] = {}
    for criterion in criteria:
        value = lowered.get(criterion)
        if isinstance(value, str):
            try:
                value = float(value.strip().rstrip("%"))
            except ValueError:
                continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            scores[f"judge_{criterion}"] = min(100, max(0, round(value)))
    if not scores:
        raise ValueError(f"judge reply has none of the criteria: {', '.join(criteria)}")
    return scores


class Judge:
    """The configured judge: one per process; async, so the runner awaits it on the loop."""

    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._ssl: ssl.SSLContext | None = None

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(self.settings.concurrency)
        return gate

    def request(self, ctx: Context) -> dict[str, Any]:
        s = self.settings
        question = _cut(ctx.request_text or "(not available)", s.max_chars)
        answer = _cut(ctx.text or "", s.max_chars)
        return {
            "model": s.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM.format(keys=", ".join(s.criteria))},
                {
                    "role": "user",
                    "content": f"Question:\n{question}\n\nAnswer to evaluate:\n{answer}",
                },
            ],
        }

    async def __call__(self, ctx: Context) -> dict[str, int] | None:
        if ctx.text is None:
            return None
        s = self.settings
        headers = {"Content-Type": "application/json"}
        if s.api_key is not None:
            headers["Authorization"] = f"Bearer {s.api_key.get_secret_value()}"
        url = f"{s.base_url}/chat/completions"
        if url.startswith("https:") and self._ssl is None:
            self._ssl = httpx2.create_ssl_context()
        async with (
            self._gate(),
            httpx2.AsyncClient(timeout=s.timeout, verify=self._ssl or True) as client,
        ):
            try:
                response = await asyncio.wait_for(
                    client.post(url, content=orjson.dumps(self.request(ctx)), headers=headers),
                    s.timeout,
                )
            except (TimeoutError, httpx2.TimeoutException):
                # Its own words: a bare TimeoutError would read as the runner's timeout firing.
                raise ValueError(f"judge did not answer in {s.timeout:g}s") from None
        if response.status_code != 200:
            raise ValueError(f"judge answered HTTP {response.status_code}: {response.text[:120]}")
        try:
            body = orjson.loads(response.content)
            content = body["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ValueError("judge reply is not a chat completion") from None
        return parse_reply(content, s.criteria)


def _unconfigured(ctx: Context) -> None:
    return None


def _setup(registered: Scorer) -> Scorer:
    settings = load_judge_settings()
    problem = settings.problem
    if settings.half_set:
        log.warning("the judge is off: %s", settings.half_set)
    return dataclasses.replace(
        registered,
        func=_unconfigured if problem else Judge(settings),
        default=problem is None,
        problem=problem,
        timeout=settings.timeout + 1.0,  # the call is bounded by its own timeout first
        scores=tuple(f"judge_{c}" for c in settings.criteria),
    )


@scorer("judge", bounds=(0, 100), setup=_setup)
def _judge_placeholder(ctx: Context) -> None:
    """An LLM grades the answer: judge_<criterion> for each SCORER_JUDGE_CRITERIA, 0-100.

    Off unless SCORER_JUDGE_BASE_URL and SCORER_JUDGE_MODEL are set.
    """
