"""Building blocks of self-contained HTML reports: escaped tables, SVG charts, and a page with inline CSS.

Reports get mailed and attached to tickets, so a report must open anywhere with no network: no scripts, fonts,
stylesheets or images are fetched; charts are inline SVG drawn here (no ``xmlns`` URL either). Every string that
reaches the markup goes through :func:`esc` unless it is :class:`Html` built here, so text from a run (a server's
error message, an endpoint's name) cannot inject markup. Used by ``cmw loadtest --html`` and reusable as is.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PALETTE = ("#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#8c6d1f", "#444444")
MAX_POINTS = 3000  # per series: beyond it a chart shows every k-th point (the file stays small, the browser fast)
WIDTH, HEIGHT = 640, 300
CHAR_W = 6.6  # average glyph width at the charts' 12 px, for laying out legends without measuring text
Style = Literal["line", "step", "points", "cross", "dashed"]
LegendItem = tuple[str, str, str]  # name, colour, style (a Style or "bar")


class Html(str):
    """Markup built by this module (already escaped): :func:`esc` passes it through unchanged."""

    __slots__ = ()


def esc(value: object) -> Html:
    """Text as HTML; quotes too, so it is also safe inside attributes."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], sep: str = "\n") -> Html:
    """Concatenate markup, escaping whatever is not :class:`Html` yet."""
    return Html(sep.join(esc(p) for p in parts))


def slug(text: str) -> str:
    """An id from any text: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


# --------------------------------------------------------------------------- page structure


def page(title: str, body: Iterable[Html], *, subtitle: str | None = None,
         nav: Sequence[tuple[str, str]] = ()) -> Html:
    """A whole HTML document with inline CSS; ``nav`` is (section id, heading) for a table of contents."""
    links = join(Html(f'<a href="#{esc(slug(ref))}">{esc(text)}</a>') for ref, text in nav)
    return Html(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<header>\n<h1>{esc(title)}</h1>\n"
        + (f'<p class="subtitle">{esc(subtitle)}</p>\n' if subtitle else "")
        + (f"<nav>{links}</nav>\n" if nav else "")
        + "</header>\n<main>\n" + join(body) + "\n</main>\n</body>\n</html>\n"
    )


def section(ref: str, heading: str, *parts: Html | str) -> Html:
    """A report section: ``<section id=ref>`` with its heading, so readers and tests can find it."""
    return Html(f'<section id="{esc(slug(ref))}">\n<h2>{esc(heading)}</h2>\n{join(parts)}\n</section>')


def note(text: str, kind: Literal["info", "warn", "bad", "good"] = "info") -> Html:
    return Html(f'<p class="note {kind}">{esc(text)}</p>')


def badge(text: str, kind: Literal["info", "warn", "bad", "good"]) -> Html:
    return Html(f'<span class="badge {kind}">{esc(text)}</span>')


def grid(*parts: Html) -> Html:
    """Side by side where the page is wide enough (small multiples, one per profile)."""
    return Html('<div class="grid">' + join(parts) + "</div>")


def table(header: Sequence[object], rows: Iterable[Sequence[object]], *, caption: str | None = None,
          align: str | None = None) -> Html:
    """An HTML table; ``None`` shows as "–". ``align`` is one letter per column (``l``/``r``), default ``lrrr…``."""
    def cell(tag: str, value: object, col: int) -> str:
        right = (align[col] if align is not None and col < len(align) else ("l" if col == 0 else "r")) == "r"
        attr = ' class="num"' if right else ""
        return f"<{tag}{attr}>{esc('–' if value is None else value)}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(cell("th" if i == 0 else "td", v, i) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Html(f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
                "</tbody></table></div>")


def definitions(items: Iterable[tuple[str, object]]) -> Html:
    """A definition list: the run's provenance (target, workload, versions)."""
    return Html("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc('–' if v is None else v)}</dd>" for k, v in items)
                + "</dl>")


# --------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Series:
    """One named line, step line or point cloud of (x, y) pairs; ``color`` defaults to the palette by position."""

    name: str
    points: Sequence[tuple[float, float]]
    style: Style = "line"
    color: str | None = None


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10ⁿ; whole steps for counts) covering [lo, hi]; the ends enclose the data."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude * (1 + 1e-9))
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 6)
    return f"{value:.{decimals}f}"


def _thin(points: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride]


class _Frame:
    """A chart's plotting area: scales from data to SVG coordinates, axes, grid and legend."""

    def __init__(self, *, title: str, x_label: str, y_label: str, x_ticks: list[float], y_ticks: list[float],
                 legend: Sequence[LegendItem], width: int, height: int,
                 y_format: Callable[[float], str] | None = None) -> None:
        self.width, self.height = width, height
        self.legend_rows = self._layout_legend(legend, width - 70)
        self.left, self.right = 58.0, width - 12.0
        self.top, self.bottom = 30.0 + 16 * len(self.legend_rows), height - 40.0
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.y_format = y_format or (lambda v: _tick_label(v, y_ticks))

    @staticmethod
    def _layout_legend(items: Sequence[LegendItem], room: float) -> list[list[tuple[float, LegendItem]]]:
        """Legend entries in rows that fit the chart's width: (x offset, entry) per row."""
        rows: list[list[tuple[float, LegendItem]]] = []
        x = room + 1
        for item in items:
            w = 26 + CHAR_W * len(item[0])
            if x + w > room and (not rows or rows[-1]):
                rows.append([])
                x = 0.0
            rows[-1].append((x, item))
            x += w + 10
        return rows

    def sx(self, x: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (x - lo) / ((hi - lo) or 1) * (self.right - self.left)

    def sy(self, y: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - (y - lo) / ((hi - lo) or 1) * (self.bottom - self.top)

    def render(self, content: str, *, kind: str, empty: str | None = None) -> Html:
        out = [f'<svg viewBox="0 0 {self.width} {self.height}" role="img" class="chart-svg" '
               f'font-family="system-ui, sans-serif" font-size="12">', f"<title>{esc(self.title)}</title>",
               f'<text x="{self.left}" y="16" font-weight="600" font-size="13">{esc(self.title)}</text>']
        for row_i, row in enumerate(self.legend_rows):
            y = 30 + 16 * row_i
            for x, (name, color, style) in row:
                x += self.left
                if style == "points":
                    mark = f'<circle cx="{x + 8}" cy="{y - 4}" r="3.5" fill="{color}"/>'
                elif style == "cross":
                    mark = f'<path d="M{x + 5} {y - 7}l6 6m0 -6l-6 6" stroke="{color}" stroke-width="1.6"/>'
                elif style == "bar":
                    mark = f'<rect x="{x}" y="{y - 9}" width="16" height="10" fill="{color}" fill-opacity="0.7"/>'
                else:
                    dash = ' stroke-dasharray="5 3"' if style == "dashed" else ""
                    mark = (f'<line x1="{x}" x2="{x + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" '
                            f'stroke-width="2"{dash}/>')
                out.append(f'<g class="legend">{mark}<text x="{x + 21}" y="{y}">{esc(name)}</text></g>')
        for t in self.y_ticks:
            y = self.sy(t)
            out.append(f'<line x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                       f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                       f"{esc(self.y_format(t))}</text>")
        for t in self.x_ticks:
            x = self.sx(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" y2="{self.bottom + 4}" stroke="#888"/>'
                       f'<text x="{x:.1f}" y="{self.bottom + 17}" text-anchor="middle" fill="#555">'
                       f"{esc(_tick_label(t, self.x_ticks))}</text>")
        out.append(f'<line x1="{self.left}" x2="{self.right}" y1="{self.bottom}" y2="{self.bottom}" stroke="#888"/>'
                   f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{self.bottom}" stroke="#888"/>')
        out.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.height - 6}" text-anchor="middle">'
                   f"{esc(self.x_label)}</text>")
        mid = (self.top + self.bottom) / 2
        out.append(f'<text transform="translate(14 {mid:.1f}) rotate(-90)" text-anchor="middle">'
                   f"{esc(self.y_label)}</text>")
        out.append(content)
        if empty:
            out.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{mid:.1f}" text-anchor="middle" '
                       f'fill="#777" class="empty">{esc(empty)}</text>')
        out.append("</svg>")
        return Html(f'<figure class="chart" data-kind="{esc(kind)}">' + "".join(out)
                    + f"<figcaption>{esc(self.title)}</figcaption></figure>")


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               y_format: Callable[[float], str] | None = None, width: int = WIDTH, height: int = HEIGHT,
               empty: str = "no data") -> Html:
    """Lines, step lines and point clouds on shared axes, as an inline SVG ``<figure>``.

    Pass the same ``x_range``/``y_range`` to charts shown side by side so their scales compare honestly.
    """
    if any(len(s.points) > MAX_POINTS for s in series):
        title += f" (thinned to ≤ {MAX_POINTS} points per series)"
    series = [Series(s.name, _thin(s.points), s.style, esc(s.color or PALETTE[i % len(PALETTE)]))
              for i, s in enumerate(series) if s.points]  # a legend entry without data would mislead
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_lo, x_hi = x_range or (min([0.0, *xs]), max(xs, default=1.0))
    y_lo, y_hi = y_range or (min([0.0, *ys]), max(ys, default=1.0))
    frame = _Frame(title=title, x_label=x_label, y_label=y_label, x_ticks=nice_ticks(x_lo, x_hi),
                   y_ticks=nice_ticks(y_lo, y_hi, 4), legend=[(s.name, s.color or "", s.style) for s in series],
                   width=width, height=height, y_format=y_format)
    parts = []
    for s in series:
        parts.append(f'<g class="series" data-series="{esc(s.name)}">{_draw(frame, s)}</g>')
    return frame.render("".join(parts), kind="line", empty=None if xs else empty)


def _draw(frame: _Frame, s: Series) -> str:
    pts = [(frame.sx(x), frame.sy(y)) for x, y in s.points]
    if not pts:
        return ""
    color = s.color
    if s.style == "points":
        return "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.4" fill="{color}" fill-opacity="0.7"/>'
                       for x, y in pts)
    if s.style == "cross":
        return "".join(f'<path d="M{x - 3:.1f} {y - 3:.1f}l6 6m0 -6l-6 6" stroke="{color}" stroke-width="1.6"/>'
                       for x, y in pts)
    if s.style == "step":
        d = f"M{pts[0][0]:.1f} {pts[0][1]:.1f}" + "".join(f"H{x:.1f}V{y:.1f}" for x, y in pts[1:])
    else:
        d = "M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in pts)
    dash = ' stroke-dasharray="5 3"' if s.style == "dashed" else ""
    return f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>'


def histogram(samples: Mapping[str, Sequence[float]], *, title: str, x_label: str, y_label: str = "turns",
              bins: int = 30, x_range: tuple[float, float] | None = None, stacked: bool = False,
              colors: Mapping[str, str] | None = None, width: int = WIDTH, height: int = HEIGHT,
              empty: str = "no data") -> Html:
    """Counts of values per bin, one colour per named sample: overlaid (translucent) or ``stacked``."""
    values = [v for vs in samples.values() for v in vs]
    lo, hi = x_range or (min([0.0, *values]), max(values, default=1.0))
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    width_bin = (hi - lo) / bins
    counts = {name: [0] * bins for name in samples}
    for name, vs in samples.items():
        for v in vs:
            counts[name][min(bins - 1, max(0, int((v - lo) / width_bin)))] += 1
    tops = [sum(c[i] for c in counts.values()) for i in range(bins)] if stacked else \
        [c for cs in counts.values() for c in cs]
    palette = {name: esc((colors or {}).get(name, PALETTE[i % len(PALETTE)])) for i, name in enumerate(samples)}
    frame = _Frame(title=title, x_label=x_label, y_label=y_label, x_ticks=nice_ticks(lo, hi),
                   y_ticks=nice_ticks(0, max(tops, default=0) or 1, 4, integer=True),
                   legend=[(n, palette[n], "bar") for n in samples], width=width, height=height)
    parts, base = [], [0] * bins
    for name, cs in counts.items():
        rects = []
        for i, c in enumerate(cs):
            if c:
                x0, x1 = frame.sx(lo + i * width_bin), frame.sx(lo + (i + 1) * width_bin)
                y_top, y_bottom = frame.sy(base[i] + c), frame.sy(base[i])
                rects.append(f'<rect x="{x0:.1f}" y="{y_top:.1f}" width="{max(x1 - x0 - 0.6, 0.6):.1f}" '
                             f'height="{y_bottom - y_top:.1f}" fill="{palette[name]}" '
                             f'fill-opacity="{0.85 if stacked else 0.55}"><title>{esc(name)}: {c}</title></rect>')
        if stacked:
            base = [b + c for b, c in zip(base, cs, strict=True)]
        parts.append(f'<g class="series" data-series="{esc(name)}">{"".join(rects)}</g>')
    return frame.render("".join(parts), kind="histogram", empty=None if values else empty)


def cdf_chart(samples: Mapping[str, Sequence[float]], *, title: str, x_label: str,
              x_range: tuple[float, float] | None = None, colors: Mapping[str, str] | None = None,
              width: int = WIDTH, height: int = HEIGHT) -> Html:
    """Share of values at or below x, one step line per named sample: distributions of several runs overlaid."""
    series = []
    for i, (name, vs) in enumerate(samples.items()):
        ordered = sorted(vs)
        points = [(ordered[0], 0.0)] + [(v, (k + 1) / len(ordered)) for k, v in enumerate(ordered)] if ordered else []
        series.append(Series(name, points, "step", (colors or {}).get(name, PALETTE[i % len(PALETTE)])))
    return line_chart(series, title=title, x_label=x_label, y_label="share of turns", x_range=x_range,
                      y_range=(0.0, 1.0), y_format=lambda v: f"{v:.0%}", width=width, height=height)


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0;
       background: #fafafa; }
header, main { max-width: 1400px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.subtitle { color: #555; margin: 0 0 8px; }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 6px 0 10px; }
nav a { color: #0b5cab; text-decoration: none; }
section { background: #fff; border: 1px solid #e2e2e2; border-radius: 6px; padding: 14px 16px; margin: 14px 0; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 2px 0 6px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #ccc; white-space: nowrap; }
tbody th { font-weight: 500; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
td { overflow-wrap: anywhere; max-width: 60ch; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 10px 16px; }
.grid > * { align-self: start; min-width: 0; }
figure.chart { margin: 6px 0; }
figure.chart svg { width: 100%; height: auto; display: block; }
figcaption { display: none; }
.note { padding: 6px 10px; border-left: 4px solid #9ab; background: #f3f6f8; margin: 6px 0; }
.note.warn { border-color: #d9a400; background: #fff8e1; }
.note.bad { border-color: #c62828; background: #fdecea; }
.note.good { border-color: #2e7d32; background: #edf7ee; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-weight: 600; font-size: 12px; }
.badge.good { background: #e3f3e4; color: #1b5e20; }
.badge.bad { background: #fbe0de; color: #b71c1c; }
.badge.warn { background: #fff1c2; color: #7a5a00; }
.badge.info { background: #e8eef3; color: #2d4a5f; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
@media print { body { background: #fff; } section { break-inside: avoid; border: none; } nav { display: none; } }
"""
