"""The scorer registry: built-ins register with ``@scorer``, plugins through an entry point.

A scorer is a callable that takes one :class:`~scorers.Context` and returns an ``int``, a
``bool``, ``None`` (no score), or a mapping of several names to ints or bools. It may be a
coroutine function.

Third-party packages register in the entry-point group ``helicone_scorer.scorers``
(``name = "module:callable"``). An installed plugin is on by default: installing it is the opt-in.
A plugin may not take a built-in's name. A plugin that fails to import stops the start with one
line naming it, unless it is listed in ``SCORER_DISABLED``, in which case it is not imported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeAlias

from scorers.context import Context

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginLoadError",
    "Result",
    "Scorer",
    "ScorerConfigError",
    "ScorerError",
    "ScorerFunc",
    "UnknownScorerError",
    "available",
    "named",
    "scorer",
    "select",
]

log = logging.getLogger("scorers")

ENTRY_POINT_GROUP = "helicone_scorer.scorers"

Result: TypeAlias = int | bool | Mapping[str, int | bool] | None
ScorerFunc: TypeAlias = Callable[[Context], Result | Awaitable[Result]]
Bounds: TypeAlias = tuple[int | None, int | None]


@dataclass(frozen=True, slots=True)
class Scorer:
    """A registered scorer.

    ``bounds`` is the documented range of every value it returns (None: unbounded on that
    side); bools count as 0 and 1. ``timeout`` overrides the runner's per-scorer timeout.
    ``scores`` names the scores a scorer returning a mapping gives (the feedback rule may use
    only known score names).
    ``problem`` says why it cannot run as configured: such a scorer is off by default and
    refused by name.
    """

    name: str
    func: ScorerFunc
    description: str
    default: bool = True  # runs unless narrowed by SCORER_ENABLED / SCORER_DISABLED
    bounds: Bounds = (None, None)
    timeout: float | None = None
    problem: str | None = None
    plugin: str | None = None  # the entry point's "module:callable", for plugins
    scores: tuple[str, ...] = ()  # the score names it gives, when not its own name (a mapping)

    @property
    def score_names(self) -> tuple[str, ...]:
        """The names its scores are posted under: ``scores``, or else its own name."""
        return self.scores or (self.name,)


Setup: TypeAlias = Callable[[Scorer], Scorer]

_BUILTINS: dict[str, tuple[Scorer, Setup | None]] = {}


def _summary(doc: str | None) -> str:
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def scorer(
    name: str | None = None,
    *,
    description: str | None = None,
    default: bool = True,
    bounds: Bounds = (None, None),
    setup: Setup | None = None,
) -> Callable[[ScorerFunc], ScorerFunc]:
    """Register a built-in scorer under ``name`` (default: the function's name).

    ``setup``, if given, is called by :func:`available` with the registered scorer and returns
    it configured (e.g. from settings): it may raise :class:`ScorerConfigError`.
    """

    def register(func: ScorerFunc) -> ScorerFunc:
        key: str = name or str(getattr(func, "__name__", ""))
        desc = description or _summary(func.__doc__)
        _BUILTINS[key] = (Scorer(key, func, desc, default, bounds), setup)
        return func

    return register


class ScorerError(ValueError):
    """A scorer configuration problem; the message is one line."""


class UnknownScorerError(ScorerError):
    def __init__(self, unknown: Iterable[str], known: Iterable[str]) -> None:
        super().__init__(
            f"unknown scorer(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )


class PluginLoadError(ScorerError):
    """An installed plugin could not be imported."""


class ScorerConfigError(ScorerError):
    """A scorer's own settings are invalid, or it was enabled without them."""


def _not_loaded(ctx: Context) -> None:
    return None


def available(skip: Iterable[str] = ()) -> dict[str, Scorer]:
    """Every scorer: the built-ins, then installed plugins (which may not shadow a built-in).

    Scorers named in ``skip`` are listed but not set up: plugins are not imported, built-ins do
    not read their settings. Raises :class:`PluginLoadError` when a plugin fails to import, and
    :class:`ScorerConfigError` on a built-in's bad settings.
    """
    import scorers.builtin  # noqa: F401  (registers the built-ins)

    skipped = set(skip)
    found = {
        key: setup(s) if setup and key not in skipped else s
        for key, (s, setup) in _BUILTINS.items()
    }
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            if found[ep.name].plugin != ep.value:
                log.warning("plugin scorer %s (%s) ignored: the name is taken", ep.name, ep.value)
            continue
        if ep.name in skipped:
            found[ep.name] = Scorer(ep.name, _not_loaded, "(disabled, not loaded)", plugin=ep.value)
            continue
        found[ep.name] = _load(ep.name, ep.value, ep.load)
    return found


def named(names: Iterable[str]) -> dict[str, Scorer]:
    """The registered scorers called ``names``, set up as :func:`available` sets them up, and
    no other plugin imported: a scorer process resolves the server's selection this way.
    A name not registered is left out; raises as :func:`available` does."""
    import scorers.builtin  # noqa: F401  (registers the built-ins)

    wanted = set(names)
    every = set(_BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found = available(skip=every - wanted)
    return {n: found[n] for n in wanted if n in found}


def _load(name: str, value: str, load: Callable[[], object]) -> Scorer:
    try:
        func = load()
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise PluginLoadError(
            f"plugin scorer {name} ({value}) failed to load: {detail}"
            f" (uninstall it, or set SCORER_DISABLED={name})"
        ) from None
    if isinstance(func, Scorer):  # a plugin may export a configured Scorer
        return dataclasses.replace(func, name=name, plugin=value)
    if not callable(func):
        raise PluginLoadError(f"plugin scorer {name} ({value}) is not callable")
    desc = _summary(getattr(func, "__doc__", None)) or f"plugin {value}"
    return Scorer(name, func, desc, plugin=value)


def select(
    scorers: Mapping[str, Scorer],
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
) -> list[Scorer]:
    """Narrow the registry: ``enabled`` (if any) is the whole list, ``disabled`` is removed.

    A name in either list that is not registered raises :class:`UnknownScorerError`; a scorer
    named in ``enabled`` that cannot run as configured raises :class:`ScorerConfigError`.
    """
    enabled, disabled = list(dict.fromkeys(enabled)), list(disabled)
    unknown = {n for n in [*enabled, *disabled] if n not in scorers}
    if unknown:
        raise UnknownScorerError(unknown, scorers)
    for n in enabled:
        problem = scorers[n].problem
        if problem and n not in disabled:
            raise ScorerConfigError(f"scorer {n} is enabled but not configured: {problem}")
    names = enabled or [s.name for s in scorers.values() if s.default and not s.problem]
    return [scorers[n] for n in names if n not in disabled]
