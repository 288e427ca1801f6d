"""Charts as inline SVG strings (matplotlib, no pyplot state, no external files or fonts).

Each function returns an ``<svg>...</svg>`` string ready to paste into HTML, or None when there
is nothing to draw. Text stays text (``svg.fonttype = none``), so the file stays small and the
browser's fonts render it. Element ids are salted per chart so several charts in one page never
share a clip-path id.
"""
from __future__ import annotations

import io
import itertools
import math
import re
from typing import Any, Sequence

_counter = itertools.count()

#: colour-blind-safe palette (Okabe-Ito)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    n = next(_counter)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"fd-chart-{n}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    s = buf.getvalue()
    s = s[s.index("<svg"):]  # drop the XML declaration and DOCTYPE
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)  # RDF namespaces with URLs
    return _prefix_ids(s, f"c{n}-")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Make every id (and every reference to it) unique to this chart within the page."""
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if not ids:
        return svg
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})" if m.group(1) in ids else m.group(0), svg)
    svg = re.sub(r'(href=")#([^"]+)"', lambda m: f'{m.group(1)}#{prefix}{m.group(2)}"' if m.group(2) in ids else m.group(0), svg)
    return svg


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=96)
    fig.set_facecolor("white")
    return fig


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    lows: dict[str, Sequence[float | None]] | None = None,
    highs: dict[str, Sequence[float | None]] | None = None,
    ylim: tuple[float, float] | None = None,
    zero_line: bool = False,
    horizontal: bool | None = None,
) -> str | None:
    """One group of bars per entry of ``groups``, one bar per series (run), optional CI whiskers."""
    if not groups or not series or not any(_finite(v) for vs in series.values() for v in vs):
        return None
    if horizontal is None:
        horizontal = len(groups) > 8
    n_s = len(series)
    width = 0.8 / n_s
    if horizontal:
        fig = _figure(8.5, max(2.2, 0.32 * len(groups) * max(1, n_s * 0.6) + 1.2))
    else:
        fig = _figure(max(5.0, min(11.5, 0.9 * len(groups) * max(1, n_s * 0.55) + 2)), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, (name, vals) in enumerate(series.items()):
        pos = [g + (k - (n_s - 1) / 2) * width for g in range(len(groups))]
        v = [x if _finite(x) else 0.0 for x in vals]
        err = None
        if lows and highs and name in lows and name in highs:
            lo = [(x - l) if _finite(x) and _finite(l) else 0.0 for x, l in zip(vals, lows[name])]
            hi = [(h - x) if _finite(x) and _finite(h) else 0.0 for x, h in zip(vals, highs[name])]
            err = [[max(0.0, a) for a in lo], [max(0.0, b) for b in hi]]
        color = PALETTE[k % len(PALETTE)]
        if horizontal:
            ax.barh(pos, v, height=width, color=color, label=name, xerr=err, ecolor="#333", capsize=2)
        else:
            ax.bar(pos, v, width=width, color=color, label=name, yerr=err, ecolor="#333", capsize=2)
        missing = [p for p, x in zip(pos, vals) if not _finite(x)]
        for p in missing:  # mark "no value" explicitly instead of drawing a zero bar silently
            if horizontal:
                ax.text(0, p, " n/a", va="center", fontsize=7, color="#777")
            else:
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777", rotation=90)
    ticks = list(range(len(groups)))
    # the value axis is x for horizontal bars, y otherwise
    set_ticks, set_labels, set_lim, ref_line, set_label, value_axis = (
        (ax.set_yticks, ax.set_yticklabels, ax.set_xlim, ax.axvline, ax.set_xlabel, "x") if horizontal else
        (ax.set_xticks, ax.set_xticklabels, ax.set_ylim, ax.axhline, ax.set_ylabel, "y"))
    set_ticks(ticks)
    tilt = not horizontal and (len(groups) > 4 or max(len(str(g)) for g in groups) > 12)
    set_labels(groups, rotation=25 if tilt else 0, ha="right" if tilt else ("right" if horizontal else "center"),
               fontsize=8)
    if horizontal:
        ax.invert_yaxis()
    set_label(ylabel)
    if ylim:
        set_lim(*ylim)
    if zero_line:
        ref_line(0, color="#444", lw=0.8)
    ax.grid(axis=value_axis, color="#ddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    if n_s > 1:
        ax.legend(fontsize=8, frameon=False, loc="best")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _svg(fig)


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: dict[tuple[str, str], float | None],
    *,
    title: str,
    cbar_label: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
) -> str | None:
    """Rows x columns of numbers, annotated when small enough; missing cells are grey."""
    import numpy as np

    if not rows or not cols or not any(_finite(v) for v in values.values()):
        return None
    grid = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = values.get((r, c))
            if _finite(v):
                grid[i, j] = v
    fig = _figure(min(14, 2.8 + 0.42 * len(cols)), 1.4 + 0.34 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#e6e6e6")
    # vector cells (pcolormesh), not an embedded raster image
    im = ax.pcolormesh(np.ma.masked_invalid(grid), cmap=cm, vmin=vmin, vmax=vmax, edgecolors="white", linewidth=0.5)
    ax.set_facecolor("#e6e6e6")
    ax.invert_yaxis()
    ax.set_xticks([j + 0.5 for j in range(len(cols))])
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    if len(rows) * len(cols) <= 400:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    v = grid[i, j]
                    r, g, b, _ = im.cmap(im.norm(v))  # light text on dark cells, for any colour map
                    ax.text(j + 0.5, i + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    cb.set_label(cbar_label, fontsize=8)
    if cb.solids is not None:
        cb.solids.set_rasterized(False)  # vector colour bar: no embedded bitmap
    ax.set_title(title, fontsize=10)
    return _svg(fig)
