"""Plots for the HTML report as inline SVG strings: bar charts, histograms and line charts.

Written by hand so the report needs no plotting library and no assets: every function returns
one `<svg>` element (or a short note when there is nothing to draw) as `Markup`, so the
report's templates insert it as is. All text inside is escaped here.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

PALETTE = ("#3367d6", "#e8710a", "#1e8e3e", "#d93025", "#9334e6", "#12b5cb", "#b06000", "#5f6368")
WIDTH, HEIGHT = 560, 280
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 42, 48
MAX_POINTS = 400  # per line; longer series are thinned evenly
LABEL_CHARS = 36  # per line of a horizontal bar's label; longer labels wrap


def empty_note(text: str) -> Markup:
    """What a plot shows when it has no data."""
    return Markup(f'<p class="missing">{escape(text)}</p>')


def fmt(value: float) -> str:
    """A short label for an axis or a bar: 1,234 / 0.25 / 3.2e-05."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.2g}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values covering [lo, hi] (whole numbers only if `integer`)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, math.ceil(step))
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value < hi + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


@dataclass(frozen=True)
class _Frame:
    """The plot area and the data ranges it maps."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    left: float = LEFT
    top: float = TOP
    width: float = WIDTH - LEFT - RIGHT
    height: float = HEIGHT - TOP - BOTTOM

    def x(self, value: float) -> float:
        span = (self.x_hi - self.x_lo) or 1
        return self.left + (value - self.x_lo) / span * self.width

    def y(self, value: float) -> float:
        span = (self.y_hi - self.y_lo) or 1
        return self.top + self.height - (value - self.y_lo) / span * self.height


def _text(x: float, y: float, text: str, anchor: str = "middle", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{escape(str(text))}</text>'


def _svg(title: str, body: list[str], height: int = HEIGHT) -> Markup:
    label = escape(title)
    return Markup(
        f'<svg class="plot" role="img" aria-label="{label}" '
        f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">'
        f"<title>{label}</title>"
        + _text(WIDTH / 2, 18, title, cls="title")
        + "".join(body)
        + "</svg>"
    )


def _y_axis(frame: _Frame, ticks: list[float], label: str) -> list[str]:
    parts = []
    for tick in ticks:
        y = frame.y(tick)
        parts.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.left + frame.width}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(_text(frame.left - 6, y + 4, fmt(tick), anchor="end"))
    if label:
        x, y = 14, frame.top + frame.height / 2
        parts.append(
            f'<text x="{x}" y="{y:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 {x} {y:.1f})">{escape(label)}</text>'
        )
    return parts


def _x_axis(frame: _Frame, ticks: list[tuple[float, str]], label: str) -> list[str]:
    base = frame.top + frame.height
    parts = [
        f'<line class="axis" x1="{frame.left}" x2="{frame.left + frame.width}" '
        f'y1="{base}" y2="{base}"/>'
    ]
    parts += [_text(frame.x(value), base + 16, text) for value, text in ticks]
    if label:
        parts.append(_text(frame.left + frame.width / 2, HEIGHT - 8, label))
    return parts


def _value_range(values: Sequence[float]) -> tuple[float, list[float]]:
    """The top of a count axis that starts at zero, and its ticks."""
    ticks = nice_ticks(0, max(max(values, default=0), 1), integer=True)
    return ticks[-1], ticks


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "count",
) -> Markup:
    """Vertical bars, one per label, with the value above each bar when there are few."""
    if not values:
        return empty_note(f"{title}: no data")
    top, ticks = _value_range(values)
    frame = _Frame(0, len(values), 0, top)
    slot = frame.width / len(values)
    every = max(1, math.ceil(len(values) / 16))  # label at most ~16 bars
    parts = _y_axis(frame, ticks, y_label)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x, y = frame.x(i) + slot * 0.1, frame.y(value)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{frame.y(0) - y:.1f}" fill="{PALETTE[0]}"><title>{escape(str(label))}: '
            f"{escape(fmt(value))}</title></rect>"
        )
        if len(values) <= 20 and value:
            parts.append(_text(x + slot * 0.4, y - 4, fmt(value), cls="small"))
    ticks_x = [(i + 0.5, str(label)[:10]) for i, label in enumerate(labels) if i % every == 0]
    return _svg(title, parts + _x_axis(frame, ticks_x, x_label))


def hbar_chart(labels: Sequence[str], values: Sequence[float], *, title: str) -> Markup:
    """Horizontal bars with long labels on the left (reasons, sources, arms); bars start at
    zero, so negative values (e.g. log-likelihoods) point left."""
    if not values:
        return empty_note(f"{title}: no data")
    row, left, line = 22, 230, 13
    wrapped = [
        textwrap.wrap(str(label), LABEL_CHARS, break_on_hyphens=False) or [""] for label in labels
    ]
    tops = [
        TOP + i * row + line * sum(len(w) - 1 for w in wrapped[:i]) for i in range(len(wrapped))
    ]
    height = tops[-1] + row + line * (len(wrapped[-1]) - 1) + 16
    lo, hi = min(min(values), 0), max(max(values), 0)
    frame = _Frame(lo, hi, 0, 1, left=left + 34, width=WIDTH - left - 94)
    zero = frame.x(0)
    parts = []
    if lo < 0:
        parts.append(
            f'<line class="axis" x1="{zero:.1f}" x2="{zero:.1f}" y1="{TOP}" y2="{height - 16}"/>'
        )
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        # a long label wraps over several lines, never cut: the row grows instead
        y = tops[i] + line * (len(wrapped[i]) - 1) / 2
        end = frame.x(value)
        text = str(label)
        parts += [
            _text(left - 6, tops[i] + 15 + line * k, part, anchor="end")
            for k, part in enumerate(wrapped[i])
        ]
        parts.append(
            f'<rect class="bar" x="{min(zero, end):.1f}" y="{y + 3}" width="{abs(end - zero):.1f}" '
            f'height="{row - 6}" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(text)}: '
            f"{escape(fmt(value))}</title></rect>"
        )
        after, anchor = (end + 4, "start") if value >= 0 else (end - 4, "end")
        parts.append(_text(after, y + 15, fmt(value), anchor=anchor, cls="small"))
    return _svg(title, parts, height=height)


def histogram(
    values: Sequence[float],
    *,
    title: str,
    x_label: str = "",
    bins: int | None = None,
) -> Markup:
    """Counts of `values` in equal-width bins over their range, on a numeric x axis
    (by default about 2 * sqrt(n) bins, between 5 and 30)."""
    if not values:
        return empty_note(f"{title}: no data")
    bins = bins or max(5, min(30, round(2 * math.sqrt(len(values)))))
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - lo) / width))] += 1
    top, ticks = _value_range(counts)
    frame = _Frame(lo, hi, 0, top)
    parts = _y_axis(frame, ticks, "count")
    for i, count in enumerate(counts):
        if not count:
            continue
        x0, x1 = frame.x(lo + i * width), frame.x(lo + (i + 1) * width)
        y = frame.y(count)
        parts.append(
            f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{frame.y(0) - y:.1f}" fill="{PALETTE[0]}"><title>'
            f"{escape(fmt(lo + i * width))} to {escape(fmt(lo + (i + 1) * width))}: {count}"
            "</title></rect>"
        )
    ticks_x = [(t, fmt(t)) for t in nice_ticks(lo, hi) if lo <= t <= hi]
    return _svg(title, parts + _x_axis(frame, ticks_x, x_label))


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return list(points)
    stride = len(points) / MAX_POINTS
    return [points[int(i * stride)] for i in range(MAX_POINTS)] + [points[-1]]


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "step",
    y_label: str = "",
) -> Markup:
    """One line per named series of (x, y) points, with a legend."""
    series = {name: _thin(points) for name, points in series.items() if points}
    if not series:
        return empty_note(f"{title}: no data")
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    y_ticks = (
        nice_ticks(min(ys), max(ys)) if max(ys) > min(ys) else nice_ticks(min(ys) - 1, max(ys) + 1)
    )
    frame = _Frame(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, y_ticks[0], y_ticks[-1])
    parts = _y_axis(frame, y_ticks, y_label)
    x_ticks = [
        (t, fmt(t)) for t in nice_ticks(frame.x_lo, frame.x_hi) if frame.x_lo <= t <= frame.x_hi
    ]
    parts += _x_axis(frame, x_ticks, x_label)
    for i, (name, points) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="1.8" '
            f'points="{path}"><title>{escape(name)}</title></polyline>'
        )
        if len(points) <= 30:
            parts += [
                f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5" fill="{colour}"/>'
                for x, y in points
            ]
        legend_y = TOP + 4 + i * 14
        parts.append(
            f'<rect x="{WIDTH - RIGHT - 150}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
        )
        parts.append(
            _text(WIDTH - RIGHT - 136, legend_y + 9, name[:24], anchor="start", cls="small")
        )
    return _svg(title, parts)
