"""Hand-written inline SVG charts (no plotting dependency): bars, histograms, log-log lines.

Every chart is one `<svg class="plot">` string with its own size, axes and legend, drawn
with system fonts only, so the report needs nothing outside its one HTML file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

FONT = "font-family:system-ui,sans-serif;font-size:12px"
AXIS = "#555"
GRID = "#e4e4e4"


def svg(width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg class="plot" role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" style="{FONT}">'
            f"<title>{escape(label)}</title>{''.join(body)}</svg>")


def text(x: float, y: float, content: str, anchor: str = "start", color: str = "#222",
         rotate: bool = False) -> str:
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" dominant-baseline="middle" '
            f'fill="{color}"{turn}>{escape(str(content))}</text>')


def rect(x: float, y: float, w: float, h: float, color: str, tip: str = "") -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}">{title}</rect>'


def line(x1: float, y1: float, x2: float, y2: float, color: str = AXIS, width: float = 1,
         dash: str = "") -> str:
    style = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="{width}"{style}/>')


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    """Colored squares with names, left to right from (x, y)."""
    out = []
    for name, color in items:
        out += [rect(x, y - 6, 12, 12, color), text(x + 17, y, name)]
        x += 40 + 7 * len(name)
    return out


@dataclass
class Scale:
    """Data -> pixels on one axis, linear or log10."""
    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        lo, hi, v = self.lo, self.hi, value
        if self.log:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(v, self.lo))
        span = (hi - lo) or 1.0
        return self.start + (v - lo) / span * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            steps = (1, 2, 5) if last - first <= 2 else (1,)
            return [m * 10.0 ** e for e in range(first, last + 1) for m in steps
                    if self.lo <= m * 10.0 ** e <= self.hi * (1 + 1e-9)]
        return nice_ticks(self.lo, self.hi)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def fmt_number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_tick(value: float) -> str:
    """Compact axis labels: 2.5k, 10M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return fmt_number(value)


def hbar_chart(rows: Sequence[tuple[str, Sequence[float]]], colors: Sequence[str], label: str,
               value_text: Callable[[int], str] | None = None, names: Sequence[str] = (),
               width: int = 760) -> str:
    """Horizontal bars, one per row, each stacked from its segment values (one color each)."""
    left, right, row_h, top = 170, 130, 24, 28 if names else 6
    peak = max((sum(values) for _, values in rows), default=0) or 1
    scale = Scale(0, peak, left, width - right)
    body = legend(list(zip(names, colors)), left, 12) if names else []
    for i, (name, values) in enumerate(rows):
        y, total = top + i * row_h, 0.0
        body.append(text(left - 8, y + row_h / 2, name, anchor="end"))
        for value, color in zip(values, colors):
            if value > 0:
                start, total = scale(total), total + value
                body.append(rect(start, y + 3, max(scale(total) - start, 1.0), row_h - 6, color,
                                 f"{name}: {fmt_number(value)}"))
        shown = value_text(i) if value_text else fmt_number(total)
        body.append(text(scale(total) + 6, y + row_h / 2, shown, color=AXIS))
    body.append(line(left, top, left, top + row_h * len(rows)))
    return svg(width, top + row_h * len(rows) + 6, body, label)


def axes(x: Scale, y: Scale, xlabel: str, ylabel: str) -> list[str]:
    """Grid lines, tick labels and axis titles of a plot area."""
    body = []
    for t in y.ticks():
        body += [line(x.start, y(t), x.end, y(t), GRID), text(x.start - 6, y(t), fmt_tick(t), "end", AXIS)]
    for t in x.ticks():
        body += [line(x(t), y.start, x(t), y.start + 4), text(x(t), y.start + 14, fmt_tick(t), "middle", AXIS)]
    body += [line(x.start, y.start, x.end, y.start), line(x.start, y.start, x.start, y.end)]
    body.append(text((x.start + x.end) / 2, y.start + 32, xlabel, "middle"))
    body.append(text(14, (y.start + y.end) / 2, ylabel, "middle", rotate=True))
    return body


def histogram(edges: Sequence[float], series: Sequence[tuple[str, Sequence[int], str]], label: str,
              xlabel: str, vline: tuple[float, str] | None = None, width: int = 760,
              height: int = 300) -> str:
    """Stacked vertical bars over bins `edges[i]..edges[i+1]`; an optional dashed marker line."""
    totals = [sum(counts[i] for _, counts, _ in series) for i in range(len(edges) - 1)]
    x = Scale(edges[0], edges[-1], 64, width - 16)
    y = Scale(0, max(max(totals, default=0), 1), height - 44, 40)
    body = axes(x, y, xlabel, "rows")
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        base = 0
        for name, counts, color in series:
            if counts[i]:
                body.append(rect(x(lo) + 0.5, y(base + counts[i]), max(x(hi) - x(lo) - 1, 1),
                                 y(base) - y(base + counts[i]), color,
                                 f"{name} {lo:.3g}..{hi:.3g}: {counts[i]:,}"))
                base += counts[i]
    if vline is not None:
        at, right_half = x(vline[0]), x(vline[0]) > (x.start + x.end) / 2
        body += [line(at, y.start, at, y.end, "#c0392b", 2, "6 3"),
                 text(at - 5 if right_half else at + 5, y.end - 10, vline[1],
                      "end" if right_half else "start", "#c0392b")]
    body += legend([(name, color) for name, _, color in series], x.start, 12)
    return svg(width, height, body, label)


def decade(value: float, rounding) -> float:
    """The power of ten at or below (`math.floor`) or above (`math.ceil`) a positive value."""
    nudge = 1e-9 if rounding is math.floor else -1e-9
    return 10.0 ** rounding(math.log10(value) + nudge)


def loglog_lines(series: Sequence[tuple[str, Sequence[tuple[float, float]], str]], label: str,
                 xlabel: str, ylabel: str, width: int = 760, height: int = 340) -> str:
    """Polylines on log10 x and y axes (points with values <= 0 are left out)."""
    points = [[(a, b) for a, b in pts if a > 0 and b > 0] for _, pts, _ in series]
    xs = [a for pts in points for a, _ in pts] or [1.0]
    ys = [b for pts in points for _, b in pts] or [1.0]
    x_lo, y_lo = decade(min(xs), math.floor), decade(min(ys), math.floor)
    x = Scale(x_lo, max(decade(max(xs), math.ceil), x_lo * 10), 64, width - 16, log=True)
    y = Scale(y_lo, max(decade(max(ys), math.ceil), y_lo * 10), height - 44, 30, log=True)
    body = axes(x, y, xlabel, ylabel)
    for i, ((name, _, color), pts) in enumerate(zip(series, points)):
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        wide = 2 + 2 * (len(series) - 1 - i)  # earlier series wider: identical lines stay visible
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="{wide}" points="{coords}">'
                    f"<title>{escape(name)}</title></polyline>")
    body += legend([(name, color) for name, _, color in series], x.start, 12)
    return svg(width, height, body, label)
