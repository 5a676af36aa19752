"""Server-rendered SVG charts for the usage page: no script, readable without CSS, every label
escaped (model names are data)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import date

from django.utils import formats
from django.utils.html import escape
from django.utils.safestring import mark_safe

# Colour-blind-safe palette (Okabe–Ito), dark enough on white for 3:1 contrast of graphics. Each shape
# also gets class s<N>: the dark scheme (site.css) swaps the one colour too dark on its background.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def stacked_bars(*, days: list[date], series: Mapping[str, Sequence[float]], title: str, chart_id: str,
                 fmt: Callable[[float], str] | None = None, empty: str = "No usage in this period.") -> str:
    """A stacked bar per day, one colour per model, with a legend and a <title> on every bar. Values
    are written by `fmt` (by default whole numbers, grouped as the reader's language groups them)
    and days in its short date format."""
    fmt = fmt or (lambda v: formats.number_format(round(v), force_grouping=True))
    width, height, left, right, top, bottom = 720, 240, 64, 12, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    ceiling = _nice_ceiling(max(totals, default=0))
    slot = plot_w / max(1, len(days))
    bar_w = max(2.0, slot * 0.7)
    parts = [f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {width} {height + 24 * ((len(series) + 3) // 4)}" '
             f'role="img" aria-labelledby="{escape(chart_id)}-title" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{escape(chart_id)}-title">{escape(title)}</title>']
    for i in range(5):  # horizontal grid lines with their values
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(fmt(ceiling * i / 4))}</text>')
    for d, day in enumerate(days):
        x = left + d * slot + (slot - bar_w) / 2
        y = top + plot_h
        for s, (model, values) in enumerate(series.items()):
            value = values[d]
            if value <= 0:
                continue
            h = plot_h * value / ceiling
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[s % len(PALETTE)]}" class="s{s % len(PALETTE)}"><title>{escape(formats.date_format(day, "SHORT_DATE_FORMAT"))} · {escape(model)}: '
                         f'{escape(fmt(value))}</title></rect>')
        if len(days) <= 14 or d % max(1, len(days) // 10) == 0 or d == len(days) - 1:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                         f'class="axis">{escape(day.strftime("%m-%d"))}</text>')
    for s, model in enumerate(series):  # the legend, four to a row
        lx, ly = left + (s % 4) * 160, height + 24 * (s // 4) + 4
        parts.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}" class="s{s % len(PALETTE)}"/>')
        parts.append(f'<text x="{lx + 18}" y="{ly + 11}" class="legend">{escape(model)}</text>')
    if not series:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" class="axis">'
                     f'{escape(empty)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string above is escaped
