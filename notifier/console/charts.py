"""Inline SVG charts rendered on the server: no script, no style attribute (the CSP forbids
inline styles) -- geometry in attributes, colours by class (static/console.css)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 640, 220, 32
SERIES_CLASSES = 8


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def lines(series: list[dict[str, object]], labels: list[str]) -> Markup:
    """Read rate (0..1) per series over the buckets: one polyline per series, a legend below."""
    n = max(len(labels), 1)
    step = (WIDTH - 2 * PAD) / max(n - 1, 1)
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 24 * ((len(series) + 3) // 4)}" role="img">']
    for tick in (0, 0.5, 1):
        y = PAD + (HEIGHT - 2 * PAD) * (1 - tick)
        out.append(f'<line class="grid" x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="2" y="{y + 4:.1f}">{tick * 100:.0f}%</text>')
    for i, label in enumerate(labels):
        if n <= 12 or i % 2 == 0:
            x = PAD + i * step
            out.append(
                f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>'
            )
    for k, s in enumerate(series):
        points = s["points"]
        assert isinstance(points, list)
        coords = [
            (PAD + i * step, PAD + (HEIGHT - 2 * PAD) * (1 - v))
            for i, v in enumerate(points)
            if isinstance(v, int | float)
        ]
        cls = f"s{k % SERIES_CLASSES}"
        if len(coords) > 1:
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline class="line {cls}" points="{line}"/>')
        out.extend(f'<circle class="dot {cls}" cx="{x:.1f}" cy="{y:.1f}" r="4"/>' for x, y in coords)
        lx, ly = PAD + (k % 4) * 150, HEIGHT + 10 + 24 * (k // 4)
        out.append(f'<rect class="key {cls}" x="{lx}" y="{ly}" width="12" height="12"/>')
        out.append(f'<text class="legend" x="{lx + 18}" y="{ly + 11}">{escape(str(s["name"]))}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text in it is escaped above


def bar(value: float | None, unit: str = "") -> Markup:
    """One horizontal 0..1 bar; ``unit`` tags it for live updates (static/console.js)."""
    width = 0.0 if value is None else max(0.0, min(1.0, value)) * 100
    tag = f' data-unit="{escape(unit)}"' if unit else ""
    return Markup(  # noqa: S704 - the only text is escaped
        f'<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect class="bar-bg" width="100" height="8"/>'
        f'<rect class="bar-fill"{tag} width="{width:.1f}" height="8"/></svg>'
    )


def hbars(rows: list[tuple[str, float | None]]) -> Markup:
    """Labelled horizontal bars (one per unit), values 0..1."""
    height = 26 * len(rows) + 8
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img">']
    for i, (name, value) in enumerate(rows):
        y = 4 + 26 * i
        width = 0.0 if value is None else (WIDTH - 260) * max(0.0, min(1.0, value))
        out.append(f'<text class="legend" x="0" y="{y + 15}">{escape(name)}</text>')
        out.append(f'<rect class="bar-bg" x="200" y="{y}" width="{WIDTH - 260}" height="18"/>')
        out.append(f'<rect class="bar-fill" x="200" y="{y}" width="{width:.1f}" height="18"/>')
        out.append(f'<text class="legend" x="{WIDTH - 50}" y="{y + 15}">{pct(value)}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text in it is escaped above
