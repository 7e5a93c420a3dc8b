"""Read Helicone's evals answer: per-score series, true averages, sparklines and a table.

Policy, from what Helicone's ``EvalManager.getEvals`` sends:

- The series are hourly, and an hour with no score is filled with ``value: 0, count: 0``. Such
  an hour is a *gap*, not a zero: it is left blank in sparklines and breaks the plotted line.
- Helicone's ``averageScore`` is computed as the sum of the hourly averages divided by the total
  count, which is not the mean of the scores. The mean shown here is weighted by the hourly
  counts; ``averageScore`` is used only when the series carries no counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from webhook.offline.types import Eval

__all__ = ["Point", "Summary", "mean", "series", "sparkline", "summarize", "table"]

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 28


@dataclass(frozen=True, slots=True)
class Point:
    date: str
    value: float | None  # None: no score in that bucket
    count: int


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    count: int
    mean: float | None
    min: float | None
    max: float | None
    points: list[Point]


def series(ev: Eval) -> list[Point]:
    """The hourly averages, with empty hours as gaps (joined to ``overTime`` by date)."""
    counts = {p.date: p.count for p in ev.over_time}
    points = []
    for p in ev.average_over_time:
        known = p.date in counts
        n = counts.get(p.date)
        count = int(n) if n is not None else 0
        empty = p.value is None or (known and count <= 0)
        points.append(Point(p.date, None if empty else float(p.value or 0), count))
    return points


def mean(ev: Eval, points: Sequence[Point] | None = None) -> float | None:
    points = series(ev) if points is None else points
    weighted = [(p.value, p.count) for p in points if p.value is not None and p.count > 0]
    total = sum(c for _, c in weighted)
    if total:
        return sum(v * c for v, c in weighted) / total
    return None if ev.average_score is None else float(ev.average_score)


def summarize(ev: Eval) -> Summary:
    points = series(ev)
    count = int(ev.count) if ev.count is not None else sum(p.count for p in points)
    lo = None if ev.min_score is None else float(ev.min_score)
    hi = None if ev.max_score is None else float(ev.max_score)
    return Summary(ev.name, count, mean(ev, points) if count else None, lo, hi, points)


def sparkline(values: Sequence[float | None], width: int = SPARK_WIDTH) -> str:
    """One character per bucket of the series; a blank for a bucket with no value."""
    if not values:
        return ""
    width = max(1, min(width, len(values)))
    buckets: list[float | None] = []
    for i in range(width):
        chunk = values[i * len(values) // width : (i + 1) * len(values) // width]
        present = [v for v in chunk if v is not None]
        buckets.append(sum(present) / len(present) if present else None)
    known = [b for b in buckets if b is not None]
    if not known:
        return " " * width
    lo, hi = min(known), max(known)
    span = hi - lo
    out = []
    for b in buckets:
        if b is None:
            out.append(" ")
        elif span == 0:
            out.append(BARS[len(BARS) // 2 - 1])
        else:
            out.append(BARS[min(len(BARS) - 1, int((b - lo) / span * len(BARS)))])
    return "".join(out)


def _fmt(value: float | None, decimals: int = 0) -> str:
    if value is None:
        return "-"
    if decimals == 0 and value == int(value):
        return str(int(value))
    return f"{value:.{max(decimals, 2)}f}"


def table(summaries: Sequence[Summary], width: int = SPARK_WIDTH) -> str:
    """A plain, aligned table: name, count, avg, min, max, and the trend of the average."""
    header = ("name", "count", "avg", "min", "max", "trend (avg over time)")
    rows = [
        (
            s.name,
            str(s.count),
            _fmt(s.mean, 2),
            _fmt(s.min),
            _fmt(s.max),
            sparkline([p.value for p in s.points], width),
        )
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)]
        lines.append("  ".join([*cells, r[5]]).rstrip())
    return "\n".join(lines)
