"""Charts as inline SVG, drawn here (no script, no network): horizontal bars, a time series of one or more
lines, and a histogram.  Each returns ``Markup`` with every label escaped; each mark carries a
``<title>`` with its exact value, which a browser shows on hover."""

from __future__ import annotations

import math
import time
from typing import Sequence

from markupsafe import Markup, escape

__all__ = ["bar_chart", "fmt_number", "histogram", "line_chart"]

_COLORS = ("#2f6fb0", "#d9822b", "#3a9a5b", "#b8434a", "#7a5cb5", "#6b7280")


def fmt_number(value: float | int | None) -> str:
    """A number as a short label: 1,234 / 12.3 / 0.0123 / 1.2e-05; "-" for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def bar_chart(items: Sequence[tuple[str, float]], unit: str = "", width: int = 560) -> Markup:
    """One horizontal bar per (label, value), longest for the largest value."""
    if not items:
        return Markup('<p class="empty">no data</p>')
    top = max(v for _, v in items) or 1
    label_w, row_h = 190, 22
    height = row_h * len(items) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bars" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * row_h
        w = max(1, int((width - label_w - 90) * value / top))
        text = escape(f"{label}: {fmt_number(value)} {unit}".strip())
        parts.append(f'<text x="0" y="{y + 15}" class="label">{escape(_cut(label, 28))}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 6}" fill="{_COLORS[0]}">'
                     f'<title>{text}</title></rect>'
                     f'<text x="{label_w + w + 6}" y="{y + 15}" class="value">{escape(fmt_number(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(series: dict[str, Sequence[tuple[int, float]]], unit: str = "", width: int = 620,
               height: int = 200) -> Markup:
    """One line per named series of (epoch ms, value) points, on shared axes, with a legend."""
    points = [p for s in series.values() for p in s]
    if not points:
        return Markup('<p class="empty">no data</p>')
    left, bottom, top_pad = 60, 30, 10
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    vmax = max(v for _, v in points) or 1
    span = (t1 - t0) or 1
    plot_w, plot_h = width - left - 10, height - bottom - top_pad

    def xy(t: int, v: float) -> tuple[float, float]:
        return left + plot_w * (t - t0) / span, top_pad + plot_h * (1 - v / vmax)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart lines" width="{width}" '
             f'height="{height + 18 * len(series)}" role="img">',
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 10}" y2="{top_pad + plot_h}" class="axis"/>',
             f'<text x="{left - 6}" y="{top_pad + 10}" class="tick" text-anchor="end">'
             f'{escape(fmt_number(vmax))}</text>',
             f'<text x="{left - 6}" y="{top_pad + plot_h}" class="tick" text-anchor="end">0</text>',
             f'<text x="{left}" y="{height - 8}" class="tick">{escape(_clock(t0))}</text>',
             f'<text x="{width - 10}" y="{height - 8}" class="tick" text-anchor="end">{escape(_clock(t1))}</text>']
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = _COLORS[i % len(_COLORS)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in sorted(pts)))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}">'
                     f'<title>{escape(name)}</title></polyline>')
        for t, v in pts:
            x, y = xy(t, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                         f'<title>{escape(f"{name} at {_clock(t)}: {fmt_number(v)} {unit}".strip())}</title></circle>')
        ly = height + 14 + 18 * i
        parts.append(f'<rect x="{left}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + 16}" y="{ly}" class="label">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram(edges: Sequence[float], counts: Sequence[int], width: int = 520, height: int = 180) -> Markup:
    """Bars of ``counts`` over the buckets between consecutive ``edges`` (len(edges) == len(counts) + 1)."""
    if not counts or len(edges) != len(counts) + 1:
        return Markup('<p class="empty">no data</p>')
    top = max(counts) or 1
    bottom, plot_h = 24, height - 34
    bar_w = (width - 20) / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart histogram" width="{width}" height="{height}" '
             f'role="img">']
    for i, n in enumerate(counts):
        h = plot_h * n / top
        x = 10 + i * bar_w
        label = escape(f"[{fmt_number(edges[i])}, {fmt_number(edges[i + 1])}): {n:,}")
        parts.append(f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(1.0, bar_w - 2):.1f}" '
                     f'height="{h:.1f}" fill="{_COLORS[0]}"><title>{label}</title></rect>')
    parts.append(f'<text x="10" y="{height - 6}" class="tick">{escape(fmt_number(edges[0]))}</text>'
                 f'<text x="{width - 10}" y="{height - 6}" class="tick" text-anchor="end">'
                 f'{escape(fmt_number(edges[-1]))}</text></svg>')
    return Markup("".join(parts))


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) + " UTC"
