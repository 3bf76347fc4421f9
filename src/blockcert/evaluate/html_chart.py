"""The bound chain as an inline SVG figure: B_k (sound, empirical) against the observed e_k.

One column per block of the chain, a log10 y axis (the sound B_k grows by orders of magnitude
along the chain while e_k stays small), so a bound sits ABOVE its observed point wherever
B_k >= e_k. A value that is None (not computed) or <= 0 (no place on a log axis) gets no point;
a series with no point is absent from the plot and the legend. Standard library only; every
label is escaped, and the figure needs no script and no external file.

Every marker carries class "point", data-series, data-block and data-value, and a <title>
(the browser's tooltip), so the page can be checked and read without the report JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from blockcert.evaluate.html_parts import Markup

WIDTH, HEIGHT = 960, 340
LEFT, RIGHT, TOP, BOTTOM = 72, 20, 44, 52  # plot margins (px): tick labels, legend, axis title
MAX_TICKS = 8

# (report key, legend label, colour, marker)
SERIES = (
    ("bound_sound", "B_k sound", "#1d4e89", "circle"),
    ("bound_empirical", "B_k empirical", "#d97b29", "square"),
    ("observed", "observed e_k", "#2a9d5b", "cross"),
)


def _positive(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _series_points(blocks: Sequence[Mapping]) -> dict[str, list[tuple[int, int, float]]]:
    """key -> [(column, block, value)] of the plottable values; empty series dropped."""
    points = {}
    for key, *_ in SERIES:
        found = [
            (i, int(b["block"]), v)
            for i, b in enumerate(blocks)
            if (v := _positive(b.get(key))) is not None
        ]
        if found:
            points[key] = found
    return points


def _decades(values: Sequence[float]) -> tuple[int, int, int]:
    """(lowest, highest, step) decade of the y axis: every value inside, <= MAX_TICKS ticks."""
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    step = max(1, math.ceil((hi - lo) / (MAX_TICKS - 1)))
    return lo, lo + step * math.ceil((hi - lo) / step), step


class _Frame:
    """Pixel coordinates of (column, value) in the plot area."""

    def __init__(self, n_columns: int, lo: int, hi: int):
        self.n, self.lo, self.hi = n_columns, lo, hi
        self.width = WIDTH - LEFT - RIGHT
        self.height = HEIGHT - TOP - BOTTOM

    def x(self, column: int) -> float:
        return LEFT + (column + 0.5) * self.width / self.n

    def y(self, value: float) -> float:
        # y = top + (hi - log10 v) / (hi - lo) * height: one decade is a fixed pixel height
        return TOP + (self.hi - math.log10(value)) / (self.hi - self.lo) * self.height


def _axes(frame: _Frame, step: int, blocks: Sequence[Mapping]) -> list[str]:
    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{frame.width}" height="{frame.height}" '
        'fill="#fbfcfe" stroke="#c9d1db"/>'
    ]
    for decade in range(frame.lo, frame.hi + 1, step):
        y = frame.y(10.0**decade)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + frame.width}" y1="{y:.2f}" '
            f'y2="{y:.2f}" stroke="#e3e8ee"/>'
            f'<text x="{LEFT - 8}" y="{y + 4:.2f}" text-anchor="end" class="tick">10'
            f'<tspan dy="-7" font-size="9">{decade}</tspan></text>'
        )
    label_every = max(1, math.ceil(len(blocks) / 30))  # keep block labels from overlapping
    for i, b in enumerate(blocks):
        if i % label_every == 0:
            parts.append(
                f'<text x="{frame.x(i):.2f}" y="{TOP + frame.height + 16}" text-anchor="middle" '
                f'class="tick">{escape(str(b["block"]))}</text>'
            )
    parts.append(
        f'<text x="{LEFT + frame.width / 2:.2f}" y="{HEIGHT - 10}" text-anchor="middle" '
        'class="axis-title">block k</text>'
        f'<text transform="translate(16 {TOP + frame.height / 2:.2f}) rotate(-90)" '
        'text-anchor="middle" class="axis-title">deviation, L2 (log scale)</text>'
    )
    return parts


def _marker(shape: str, x: float, y: float, colour: str, attrs: str, tip: str) -> str:
    title = f"<title>{escape(tip)}</title>"
    if shape == "circle":
        return f'<circle {attrs} cx="{x:.2f}" cy="{y:.2f}" r="4.5" fill="{colour}">{title}</circle>'
    if shape == "square":
        return (
            f'<rect {attrs} x="{x - 4:.2f}" y="{y - 4:.2f}" width="8" height="8" '
            f'fill="{colour}">{title}</rect>'
        )
    return (
        f'<path {attrs} d="M{x - 5:.2f} {y - 5:.2f}L{x + 5:.2f} {y + 5:.2f}M{x - 5:.2f} '
        f'{y + 5:.2f}L{x + 5:.2f} {y - 5:.2f}" stroke="{colour}" stroke-width="2.5">{title}</path>'
    )


def _series(frame: _Frame, key: str, label: str, colour: str, shape: str, points) -> str:
    """One series: segments between neighbouring blocks that both have a value, then markers."""
    parts = [f'<g class="series" data-series="{key}">']
    for (i, _, a), (j, _, b) in zip(points, points[1:], strict=False):
        if j == i + 1:
            parts.append(
                f'<line x1="{frame.x(i):.2f}" y1="{frame.y(a):.2f}" x2="{frame.x(j):.2f}" '
                f'y2="{frame.y(b):.2f}" stroke="{colour}" stroke-width="1.6" opacity="0.8"/>'
            )
    for i, block, value in points:
        attrs = (
            f'class="point" data-series="{key}" data-block="{block}" data-value="{value!r}" '
            f'data-y="{frame.y(value):.4f}"'
        )
        tip = f"block {block}: {label} = {value:.4g}"
        parts.append(_marker(shape, frame.x(i), frame.y(value), colour, attrs, tip))
    parts.append("</g>")
    return "".join(parts)


def _subscript_k(label: str) -> str:
    """ "B_k sound" as B with a subscript k (SVG text has no <sub>)."""
    head, found, tail = label.partition("_k")
    if not found:
        return escape(label)
    return (
        f'{escape(head)}<tspan dy="4" font-size="10">k</tspan><tspan dy="-4">{escape(tail)}</tspan>'
    )


def _legend(present: Sequence[tuple]) -> str:
    parts, x = [], LEFT
    for key, label, colour, shape in present:
        parts.append(
            _marker(shape, x + 5, 18, colour, f'class="legend-mark" data-for="{key}"', label)
        )
        parts.append(f'<text x="{x + 15}" y="22" class="legend">{_subscript_k(label)}</text>')
        x += 30 + 7 * len(label)
    return "".join(parts)


def chain_figure(blocks: Sequence[Mapping]) -> Markup:
    """<figure id="chain-plot"> with the SVG (or a note when nothing is plottable)."""
    points = _series_points(blocks)
    if not points:
        return Markup(
            '<figure id="chain-plot"><p class="note">Every bound and observed deviation of the '
            "chain is 0 or not computed: nothing to draw on a log axis.</p></figure>"
        )
    lo, hi, step = _decades([v for found in points.values() for _, _, v in found])
    frame = _Frame(len(blocks), lo, hi)
    present = [s for s in SERIES if s[0] in points]
    body = _axes(frame, step, blocks)
    body += [_series(frame, *s, points[s[0]]) for s in present]
    svg = (
        f'<svg id="chain-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="chain-title" '
        f'data-log-lo="{lo}" data-log-hi="{hi}" data-plot-top="{TOP}" '
        f'data-plot-height="{frame.height}">'
        '<title id="chain-title">Bound chain B_k against the observed deviation e_k</title>'
        + _legend(present)
        + "".join(body)
        + "</svg>"
    )
    missing = [label for key, label, *_ in SERIES if key not in points]
    notes = ["Markers sit at each block's value; a bound above its observed point holds there."]
    if missing:
        notes.append(f"Absent (not computed, or 0 everywhere): {', '.join(missing)}.")
    zeros = [str(b["block"]) for b in blocks if _positive(b.get("observed")) is None]
    if zeros and "observed" in points:
        notes.append(
            f"Observed e_k = 0 (not drawn on the log axis) at block(s) {', '.join(zeros)}."
        )
    caption = escape(" ".join(notes))
    return Markup(f'<figure id="chain-plot">{svg}<figcaption>{caption}</figcaption></figure>')
