"""The scorer registry: built-ins register with ``@scorer``, plugins through an entry point.

A scorer is a callable that takes one :class:`~scorers.Context` and returns an ``int``, a
``bool``, ``None`` (no score), or a mapping of several names to ints or bools. It may be a
coroutine function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeAlias

from scorers.context import Context

__all__ = [
    "ENTRY_POINT_GROUP",
    "Result",
    "Scorer",
    "ScorerFunc",
    "UnknownScorerError",
    "available",
    "scorer",
    "select",
]

ENTRY_POINT_GROUP = "helicone_scorer.scorers"

Result: TypeAlias = int | bool | Mapping[str, int | bool] | None
ScorerFunc: TypeAlias = Callable[[Context], Result | Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class Scorer:
    name: str
    func: ScorerFunc
    description: str
    default: bool = True  # runs unless narrowed by SCORER_ENABLED / SCORER_DISABLED


_BUILTINS: dict[str, Scorer] = {}


def scorer(
    name: str | None = None, *, description: str | None = None, default: bool = True
) -> Callable[[ScorerFunc], ScorerFunc]:
    """Register a built-in scorer under ``name`` (default: the function's name)."""

    def register(func: ScorerFunc) -> ScorerFunc:
        key: str = name or str(getattr(func, "__name__", ""))
        doc = description or (func.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _BUILTINS[key] = Scorer(key, func, " ".join(doc.split()), default)
        return func

    return register


def available() -> dict[str, Scorer]:
    """Every scorer: the built-ins, then installed plugins (which may not shadow a built-in)."""
    import scorers.builtin  # noqa: F401  (registers the built-ins)

    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        func = ep.load()
        doc = (getattr(func, "__doc__", None) or f"plugin {ep.value}").strip().split("\n\n")[0]
        found[ep.name] = Scorer(ep.name, func, " ".join(doc.split()))
    return found


class UnknownScorerError(ValueError):
    def __init__(self, unknown: Iterable[str], known: Iterable[str]) -> None:
        super().__init__(
            f"unknown scorer(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )


def select(
    scorers: Mapping[str, Scorer],
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
) -> list[Scorer]:
    """Narrow the registry: ``enabled`` (if any) is the whole list, ``disabled`` is removed."""
    enabled, disabled = list(enabled), list(disabled)
    unknown = {n for n in [*enabled, *disabled] if n not in scorers}
    if unknown:
        raise UnknownScorerError(unknown, scorers)
    names = enabled or [s.name for s in scorers.values() if s.default]
    return [scorers[n] for n in names if n not in disabled]
