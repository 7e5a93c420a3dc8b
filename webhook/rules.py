"""Rules: which scorers run on which webhooks, and when to post thumbs up or down.

Feedback rule (``SCORER_FEEDBACK_RULE``): comparisons of score names with integers, joined by
``and``, ``or``, ``not`` and parentheses, e.g. ``refusal == 0 and word_count >= 20``. It is
parsed once at start with Python's parser and then walked node by node: only those forms are
accepted, and nothing is ever evaluated as code. When a score it names is missing, it gives no
rating.

Scorer rules (``SCORER_RULES_FILE``, TOML): one table per scorer, every key optional::

    [judge]
    sample = 0.1              # share of webhooks to run it on, 0..1
    models = ["gpt-4o*"]      # glob patterns on the payload's model
    providers = ["OPENAI"]    # on the provider (case-insensitive)
    users = ["team-*"]        # on user_id

A scorer runs when every key given matches. Sampling is decided by a hash of the request id and
the scorer's name, so the same webhook gets the same decision on every retry.
"""

from __future__ import annotations

import ast
import hashlib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from scorers import Context

__all__ = ["FeedbackRule", "RuleError", "ScorerRule", "load_scorer_rules", "parse_feedback_rule"]


class RuleError(ValueError):
    """A rule could not be parsed; the message says where and why, in one line."""


# -- feedback rule ---------------------------------------------------------------------------

Scores = Mapping[str, int]
Node = Callable[[Scores], bool | int | None]

_COMPARE: dict[type[ast.cmpop], Callable[[int, int], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


@dataclass(frozen=True, slots=True)
class FeedbackRule:
    text: str
    names: frozenset[str]
    _root: Node

    def rating(self, scores: Scores) -> bool | None:
        """True (thumbs up), False (down), or None when a score it needs is missing."""
        result = self._root(scores)
        return None if result is None else bool(result)


MAX_RULE_CHARS = 1000
MAX_RULE_DEPTH = 20  # nested and/or/not; a real rule needs a handful
_TOO_DEEP = f"nested too deeply (at most {MAX_RULE_DEPTH} levels of and, or, not)"


def parse_feedback_rule(text: str, known: Iterable[str] | None = None) -> FeedbackRule:
    """Parse a rule; with ``known``, every name it uses must be one of those score names.

    The rule's size and nesting are bounded before and while parsing, so a hostile or mistyped
    rule is one line of error, never a RecursionError or MemoryError.
    """
    if len(text) > MAX_RULE_CHARS:
        raise RuleError(f"longer than {MAX_RULE_CHARS} characters")
    body = text.strip()
    lead = len(text) - len(text.lstrip())
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        where = f"column {lead + exc.offset}" if exc.offset else "the end"
        raise RuleError(f"syntax error at {where}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise RuleError(_TOO_DEEP) from None
    if _depth(tree) > 3 * MAX_RULE_DEPTH:  # before anything walks it recursively
        raise RuleError(_TOO_DEEP)
    names: set[str] = set()
    root = _compile(tree.body, names, 0)
    if known is not None:
        unknown = names - set(known)
        if unknown:
            raise RuleError(
                f"unknown score name(s) {', '.join(sorted(unknown))};"
                f" known: {', '.join(sorted(known))}"
            )
    return FeedbackRule(text, frozenset(names), root)


def _depth(tree: ast.AST) -> int:
    """How deep the syntax tree goes, found without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _compile(node: ast.expr, names: set[str], depth: int) -> Node:
    if depth > MAX_RULE_DEPTH:
        raise RuleError(_TOO_DEEP)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, names, depth + 1) for v in node.values]
        return _all(parts) if isinstance(node.op, ast.And) else _any(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, names, depth + 1)
        return lambda s: None if (v := inner(s)) is None else not v
    if isinstance(node, ast.Compare):
        operands = [_operand(o, names) for o in (node.left, *node.comparators)]
        ops = [_COMPARE[type(op)] for op in node.ops if type(op) in _COMPARE]
        if len(ops) != len(node.ops):
            raise RuleError("only ==, !=, <, <=, > and >= compare scores")
        return _chain(operands, ops)
    raise RuleError(
        f"unexpected {ast.unparse(node)!r}: use comparisons like name >= 50, joined by and, or, not"
    )


def _operand(node: ast.expr, names: set[str]) -> Callable[[Scores], int | None]:
    if isinstance(node, ast.Name):
        name = node.id
        names.add(name)
        return lambda s: s.get(name)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):  # bools are ints too
        value = int(node.value)
        return lambda s: value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        negative = -node.operand.value
        return lambda s: negative
    raise RuleError(f"{ast.unparse(node)!r} is not a score name or an integer")


def _chain(
    operands: list[Callable[[Scores], int | None]], ops: list[Callable[[int, int], bool]]
) -> Node:
    def run(s: Scores) -> bool | None:
        values = [o(s) for o in operands]
        if any(v is None for v in values):
            return None
        return all(op(a, b) for op, a, b in zip(ops, values, values[1:], strict=False))  # type: ignore[arg-type]

    return run


def _all(parts: list[Node]) -> Node:
    def run(s: Scores) -> bool | None:
        values = [p(s) for p in parts]
        if any(v is not None and not v for v in values):
            return False
        return None if any(v is None for v in values) else True

    return run


def _any(parts: list[Node]) -> Node:
    def run(s: Scores) -> bool | None:
        values = [p(s) for p in parts]
        if any(v for v in values):
            return True
        return None if any(v is None for v in values) else False

    return run


# -- scorer rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScorerRule:
    sample: float = 1.0
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def applies(self, name: str, ctx: Context) -> bool:
        if self.models and not _matches(ctx.model, self.models):
            return False
        if self.providers and not _matches((ctx.provider or "").upper(), self.providers):
            return False
        if self.users and not _matches(ctx.user_id, self.users):
            return False
        return self.sample >= 1.0 or _fraction(f"{ctx.request_id}:{name}") < self.sample


def _matches(value: str | None, patterns: Iterable[str]) -> bool:
    return value is not None and any(fnmatchcase(value, p) for p in patterns)


def _fraction(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def load_scorer_rules(path: Path, known: Iterable[str]) -> dict[str, ScorerRule]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RuleError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path}: {exc}") from None
    known = set(known)
    rules: dict[str, ScorerRule] = {}
    for name, table in data.items():
        where = f"{path} [{name}]"
        if name not in known:
            raise RuleError(f"{where}: unknown scorer; known: {', '.join(sorted(known))}")
        if not isinstance(table, dict):
            raise RuleError(f"{where}: must be a table")
        extra = set(table) - {"sample", "models", "providers", "users"}
        if extra:
            raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        sample = table.get("sample", 1.0)
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
            raise RuleError(f"{where}: sample must be a number from 0 to 1")
        lists = {}
        for key in ("models", "providers", "users"):
            value = table.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RuleError(f"{where}: {key} must be a list of strings")
            lists[key] = tuple(v.upper() if key == "providers" else v for v in value)
        rules[name] = ScorerRule(float(sample), **lists)
    return rules
