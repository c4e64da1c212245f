"""A bar chart of runs and failures per day as inline SVG (pure): no script, no style, no external asset.

Prefect's UI renders a markdown artifact's HTML through DOMPurify with its SVG profile, forbidding
`<script>`, `<style>`, `<iframe>`, `<form>` and `style=` attributes: so colours and fonts here are
presentation attributes. Markdown ends an HTML block at a blank line, so the SVG has none.
"""
from __future__ import annotations

from html import escape
from typing import Sequence

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 28, 40  # margins: axis labels left, day labels below
RUNS_FILL, FAILURES_FILL, AXIS = "#4c78a8", "#e45756", "#666666"
FONT = 'font-family="sans-serif" font-size="11"'


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 x 10^n at or above `value` (at least 1): the axis' top."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def daily_runs_chart(days: Sequence[tuple[str, int, int]], title: str) -> str:
    """`days`: (label, runs, failures) per day, oldest first; failures are drawn over their day's runs.

    Bars are scaled to the busiest day; every text (title, labels) is XML-escaped.
    """
    for label, runs, failures in days:
        if runs < 0 or failures < 0 or failures > runs:
            raise ValueError(f"day {label!r}: runs {runs} and failures {failures} must satisfy 0 <= failures <= runs")
    top = nice_ceiling(max((runs for _, runs, _ in days), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.7)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="16" {FONT} font-size="13" fill="#222222">{escape(title)}</text>']
    for value in (0, top // 2, top) if top > 1 else (0, top):
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#dddddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" {FONT} text-anchor="end" fill="{AXIS}">{value}</text>')
    for i, (label, runs, failures) in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        for count, fill, what in ((runs, RUNS_FILL, "runs"), (failures, FAILURES_FILL, "failures")):
            if count:
                h = plot_h * count / top
                parts.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                             f'fill="{fill}"><title>{escape(label)}: {count} {what}</title></rect>')
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" {FONT} text-anchor="middle" '
                     f'fill="{AXIS}">{escape(label)}</text>')
    legend_y = HEIGHT - 8
    parts += [f'<rect x="{LEFT}" y="{legend_y - 9}" width="10" height="10" fill="{RUNS_FILL}"/>',
              f'<text x="{LEFT + 14}" y="{legend_y}" {FONT} fill="#222222">runs</text>',
              f'<rect x="{LEFT + 60}" y="{legend_y - 9}" width="10" height="10" fill="{FAILURES_FILL}"/>',
              f'<text x="{LEFT + 74}" y="{legend_y}" {FONT} fill="#222222">failures (Failed, Crashed)</text>',
              "</svg>"]
    return "\n".join(parts)
