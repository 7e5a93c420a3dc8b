"""Charts of Helicone's score averages over time, as SVG (by hand) or PNG (with Pillow).

One layout, two renderers: :func:`layout` turns the summaries into a few drawing primitives
(one panel per score, each on its own scale, gaps where an hour had no score), then
:func:`to_svg` writes them as text and :func:`to_png` draws them with Pillow, at twice the size
and scaled down, so lines and text are smooth.

Why Pillow for PNG: matplotlib brings numpy, fonttools, kiwisolver, contourpy and more; Pillow
is one package with no dependencies and wheels for every platform, and it draws readable text
with a font it ships. A pure-Python PNG writer would still leave us rasterizing lines and text
by hand. Pillow is imported only when a PNG is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from webhook.offline.evals import Point, Summary

__all__ = ["Chart", "layout", "to_png", "to_svg", "write"]

Anchor = Literal["start", "middle", "end"]

WIDTH = 800
LEFT, RIGHT = 64, 24
TITLE_H = 44
PANEL_H = 132
PLOT_TOP, PLOT_H = 30, 72
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")
INK, MUTED, GRID = "#111827", "#6b7280", "#e5e7eb"
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"


@dataclass(frozen=True, slots=True)
class Line:
    points: tuple[tuple[float, float], ...]
    color: str
    width: float = 2.0


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    r: float
    color: str


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    stroke: str
    fill: str = "none"


@dataclass(frozen=True, slots=True)
class Text:
    x: float
    y: float
    text: str
    size: int = 12
    color: str = INK
    anchor: Anchor = "start"


Item = Line | Dot | Rect | Text


@dataclass(slots=True)
class Chart:
    width: int
    height: int
    items: list[Item] = field(default_factory=list)


def _short(date: str) -> str:
    """``2024-01-01T10:00:00.000Z`` or ``2024-01-01 10:00:00`` → ``2024-01-01 10:00``."""
    return date.replace("T", " ")[:16]


def _runs(points: Sequence[Point]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = [[]]
    for i, p in enumerate(points):
        if p.value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, p.value))
    return [r for r in runs if r]


def _panel(chart: Chart, s: Summary, top: float, color: str) -> None:
    x0, x1 = LEFT, chart.width - RIGHT
    y0, y1 = top + PLOT_TOP, top + PLOT_TOP + PLOT_H
    mean = "-" if s.mean is None else f"{s.mean:.2f}"
    chart.items.append(Text(x0, top + 18, s.name, 14, INK))
    chart.items.append(Text(x1, top + 18, f"n={s.count}  avg={mean}", 12, MUTED, "end"))
    chart.items.append(Rect(x0, y0, x1 - x0, y1 - y0, GRID))
    values = [p.value for p in s.points if p.value is not None]
    if not values:
        chart.items.append(Text((x0 + x1) / 2, (y0 + y1) / 2 + 4, "no scores", 12, MUTED, "middle"))
        return
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    n = len(s.points)
    pad = 6  # keep lines and dots off the frame

    def at(i: int, v: float) -> tuple[float, float]:
        x = (x0 + x1) / 2 if n == 1 else x0 + pad + i / (n - 1) * (x1 - x0 - 2 * pad)
        y = y1 - pad - (v - lo) / (hi - lo) * (y1 - y0 - 2 * pad)
        return round(x, 1), round(y, 1)

    for run in _runs(s.points):
        if len(run) == 1:
            x, y = at(*run[0])
            chart.items.append(Dot(x, y, 2.5, color))
        else:
            chart.items.append(Line(tuple(at(i, v) for i, v in run), color))
    chart.items.append(Text(x0 - 6, y0 + pad + 4, f"{hi:.4g}", 11, MUTED, "end"))
    chart.items.append(Text(x0 - 6, y1 - pad + 4, f"{lo:.4g}", 11, MUTED, "end"))
    chart.items.append(Text(x0, y1 + 15, _short(s.points[0].date), 11, MUTED))
    chart.items.append(Text(x1, y1 + 15, _short(s.points[-1].date), 11, MUTED, "end"))


def layout(summaries: Sequence[Summary], title: str) -> Chart:
    height = TITLE_H + max(1, len(summaries)) * PANEL_H
    chart = Chart(WIDTH, height)
    chart.items.append(Text(LEFT, 26, title, 16, INK))
    if not summaries:
        chart.items.append(Text(WIDTH / 2, TITLE_H + 60, "No scores in this range.", 13, MUTED))
    for i, s in enumerate(summaries):
        _panel(chart, s, TITLE_H + i * PANEL_H, PALETTE[i % len(PALETTE)])
    return chart


def to_svg(chart: Chart) -> str:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}"'
        f' viewBox="0 0 {chart.width} {chart.height}" font-family="{escape(FONT)}">',
        f'<rect width="{chart.width}" height="{chart.height}" fill="#ffffff"/>',
    ]
    for item in chart.items:
        if isinstance(item, Line):
            pts = " ".join(f"{x:g},{y:g}" for x, y in item.points)
            out.append(
                f'<polyline points="{pts}" fill="none" stroke="{item.color}"'
                f' stroke-width="{item.width:g}" stroke-linejoin="round" stroke-linecap="round"/>'
            )
        elif isinstance(item, Dot):
            out.append(
                f'<circle cx="{item.x:g}" cy="{item.y:g}" r="{item.r:g}" fill="{item.color}"/>'
            )
        elif isinstance(item, Rect):
            out.append(
                f'<rect x="{item.x:g}" y="{item.y:g}" width="{item.w:g}" height="{item.h:g}"'
                f' fill="{item.fill}" stroke="{item.stroke}"/>'
            )
        else:
            out.append(
                f'<text x="{item.x:g}" y="{item.y:g}" font-size="{item.size}" fill="{item.color}"'
                f' text-anchor="{item.anchor}">{escape(item.text)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(chart: Chart) -> bytes:
    import io

    from PIL import Image, ImageDraw, ImageFont

    k = 2  # drawn at twice the size, then scaled down: antialiased lines and text
    image = Image.new("RGB", (chart.width * k, chart.height * k), "#ffffff")
    draw = ImageDraw.Draw(image)
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    anchors = {"start": "ls", "middle": "ms", "end": "rs"}
    for item in chart.items:
        if isinstance(item, Line):
            pts = [(x * k, y * k) for x, y in item.points]
            draw.line(pts, fill=item.color, width=round(item.width * k), joint="curve")
        elif isinstance(item, Dot):
            x, y, r = item.x * k, item.y * k, item.r * k
            draw.ellipse((x - r, y - r, x + r, y + r), fill=item.color)
        elif isinstance(item, Rect):
            box = (item.x * k, item.y * k, (item.x + item.w) * k, (item.y + item.h) * k)
            fill = None if item.fill == "none" else item.fill
            draw.rectangle(box, fill=fill, outline=item.stroke, width=k)
        else:
            size = item.size * k
            if size not in fonts:
                fonts[size] = ImageFont.load_default(size)
            draw.text(
                (item.x * k, item.y * k),
                item.text,
                fill=item.color,
                font=fonts[size],
                anchor=anchors[item.anchor],
            )
    image = image.resize((chart.width, chart.height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write(path: Path, summaries: Sequence[Summary], title: str) -> None:
    """Write the chart; the format follows the suffix (``.svg`` or ``.png``)."""
    chart = layout(summaries, title)
    if path.suffix.lower() == ".png":
        path.write_bytes(to_png(chart))
    else:
        path.write_text(to_svg(chart), encoding="utf-8")
