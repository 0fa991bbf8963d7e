"""Scaling charts: median time against problem size on log-log axes, as inline SVG.

matplotlib's SVG backend draws them (no display, no Agg raster); text stays text
(``svg.fonttype = none``) and the output is trimmed (no metadata, rounded coordinates, no
group ids) so a chart weighs ~10 KB and a catalog of them stays small. Output is deterministic:
the same data gives the same bytes.
"""

from __future__ import annotations

import io
import re

from reports.analysis import Algo, Line

COLORS = {"numba": "#1f77b4", "torch-cpu": "#d62728", "torch-cuda": "#2ca02c",
          "numba-cuda": "#ff7f0e"}
NOISY_COLOR = "#8b95a5"
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
STYLES = {"forward": (0, (4, 2)), "forward+backward": "solid"}
MARKERS = ("o", "s", "^", "D", "v")
MARKER_GLYPHS = ("●", "■", "▲", "◆", "▼")

_RC = {
    "svg.fonttype": "none",
    "font.size": 8,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "path.simplify": True,
}


def _matplotlib():
    # Figure + savefig(format="svg") draw with the SVG backend; pyplot and its GUI backends
    # are never imported.
    import matplotlib
    from matplotlib import ticker
    from matplotlib.figure import Figure

    return matplotlib, Figure, ticker


def _size_label(v: float, pos=None) -> str:
    exp = f"{v:.0e}"
    mant, e = exp.split("e")
    e = int(e)
    if -3 <= e <= 3:
        return f"{v:g}"
    return f"{mant}e{e}"


def _time_tick(v: float, pos=None) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if v >= scale * 0.999 or unit == "ns":
            return f"{v / scale:.3g} {unit}"
    return f"{v:g}"


def _color(impl: str) -> str:
    if impl in COLORS:
        return COLORS[impl]
    return OTHER_COLORS[sum(map(ord, impl)) % len(OTHER_COLORS)]


_ATTR = re.compile(r'( (?:d|x|y|transform|points)=")([^"]*)"')
_NUM = re.compile(r"(\d+\.\d)\d+")


def _trim(svg: str) -> str:
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'<g id="[^"]*">', "<g>", svg)
    svg = re.sub(r"font-family: [^;\"]*;? ?", "", svg)
    svg = _ATTR.sub(lambda m: m.group(1) + _NUM.sub(r"\1", m.group(2)) + '"', svg)
    svg = re.sub(r" \n(?=[LMCz])", " ", svg)
    return svg.strip()


class Painter:
    """One matplotlib figure reused for every chart: creating axes, ticks and fonts once
    instead of per algorithm makes a catalog of charts several times faster."""

    def __init__(self) -> None:
        self.matplotlib, Figure, ticker = _matplotlib()
        with self.matplotlib.rc_context(_RC):
            self.fig = Figure(figsize=(4.9, 3.0))
            self.ax = self.fig.add_subplot()
            self.ax.set_xscale("log")
            self.ax.set_yscale("log")
            for axis, fmt in ((self.ax.xaxis, _size_label),
                              (self.ax.yaxis, _time_tick)):
                axis.set_major_locator(ticker.LogLocator(numticks=6))
                axis.set_minor_locator(ticker.NullLocator())
                axis.set_major_formatter(ticker.FuncFormatter(fmt))
            self.fig.subplots_adjust(left=0.15, right=0.98, top=0.97, bottom=0.15)

    def chart(self, algo: Algo, salt: str) -> tuple[str, list[dict]]:
        """One algorithm's scaling chart: SVG markup and its legend ('' and [] if no data).

        Colour is the implementation, line style the pass, marker the run; the fitted
        exponent k of time ~ size**k is printed at the right end of each line. The legend is
        returned as data for the HTML around the chart.
        """
        lines = [ln for ln in algo.lines if ln.sizes]
        if not lines:
            return "", []
        # One dtype per chart: float32 when present (what the benchmarks time by default).
        dtype = algo.chart_dtype
        lines = [ln for ln in lines if ln.dtype == dtype]
        runs = sorted({ln.run for ln in lines})
        ax = self.ax
        with self.matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
            for artist in [*ax.lines, *ax.texts]:
                artist.remove()
            for ln in lines:
                ax.plot(ln.sizes, ln.times, color=_color(ln.impl),
                        linestyle=STYLES.get(ln.pass_, "dotted"),
                        marker=MARKERS[runs.index(ln.run) % len(MARKERS)], markersize=3.5,
                        linewidth=1.4)
                bad = [(x, t) for x, t, n in zip(ln.sizes, ln.times, ln.noisy, strict=False)
                       if n]
                if bad:  # noisy timings: a grey cross over the point, never fitted
                    ax.plot([x for x, _ in bad], [t for _, t in bad], linestyle="none",
                            marker="x", markersize=7, markeredgewidth=1.6, color=NOISY_COLOR)
            ax.relim()
            ax.autoscale_view()
            xmin = min(min(ln.sizes) for ln in lines)
            xmax = max(max(ln.sizes) for ln in lines)
            span = max(xmax / xmin, 10.0)
            ax.set_xlim(xmin / span**0.05, xmax * span**0.2)  # room for the exponents
            ymin = min(min(ln.times) for ln in lines)
            ymax = max(max(ln.times) for ln in lines)
            yspan = max(ymax / ymin, 10.0)
            ax.set_ylim(ymin / yspan**0.05, ymax * yspan**0.08)
            ax.set_xlabel(f"problem size ({algo.size_unit})")
            ax.set_ylabel(f"time per call, {dtype}")
            _exponents(ax, lines)
            buf = io.StringIO()
            self.fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        eager = {ln.impl for ln in lines if ln.eager}
        legend = [{"kind": "impl", "color": _color(i),
                   "label": f"{i} (eager in disguise)" if i in eager else i}
                  for i in dict.fromkeys(ln.impl for ln in lines)]
        # An implementation with a column but no line here: the benchmark's reason for it.
        drawn = {ln.impl for ln in lines}
        legend += [{"kind": "notrun", "marker": "–",
                    "label": f"{i}: not run: {why.removeprefix(f'{i}: ')}"}
                   for i in algo.impls if i not in drawn and (why := algo.not_run_reason(i))]
        legend += [{"kind": "pass", "label": p,
                    "dash": "" if STYLES.get(p) == "solid" else "4 2"}
                   for p in dict.fromkeys(ln.pass_ for ln in lines)]
        if any(any(ln.noisy) for ln in lines):
            legend.append({"kind": "noisy", "label": "noisy (not fitted)", "marker": "×"})
        if len(runs) > 1:
            legend += [{"kind": "run", "label": run_label,
                        "marker": MARKER_GLYPHS[k % len(MARKER_GLYPHS)]}
                       for k, run_label in enumerate(f"run {r + 1}" for r in runs)]
        return _trim(buf.getvalue()), legend


def _exponents(ax, lines: list[Line]) -> None:
    """Write k=... beside the last point of each line, nudged apart so labels do not overlap."""
    import numpy as np

    ends = [(np.log10(ln.times[-1]), ln) for ln in lines if ln.exponent is not None]
    if not ends:
        return
    lo, hi = (np.log10(v) for v in ax.get_ylim())
    gap = 0.065 * (hi - lo)  # the height of a label in log10 units
    ends.sort(key=lambda e: e[0])
    placed: list[float] = []
    for y, _ in ends:
        placed.append(max(y, placed[-1] + gap) if placed else y)
    shift = max(placed[-1] - (hi - gap / 2), 0.0)  # keep the top label inside the axes
    for (_, ln), py in zip(ends, placed, strict=True):
        ax.text(ln.sizes[-1] * 1.3, 10 ** (py - shift), f"k={ln.exponent:.2f}", va="center",
                fontsize=7, color=_color(ln.impl))


def draw_all(algos: list[Algo]) -> None:
    painter = None
    for i, a in enumerate(algos):
        if not any(ln.sizes for ln in a.lines):
            continue
        painter = painter or Painter()
        a.chart, a.legend = painter.chart(a, salt=f"refbench-{i}")
