"""HTML and markdown from a Report, with Jinja2 templates in reports/templates.

Autoescape is on for HTML: algorithm names, messages and shrunk inputs come from user code and
are text, never markup. The markdown summary escapes what markdown and a pull-request comment's
HTML would interpret. CSS and JS are read from the package and inlined: the report is one file
that needs no network.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup

from reports import format as fmt
from reports.analysis import Report, achieved
from reports.loading import order_key
from reports.merge import file_names

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>#!~])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def md(text: object) -> str:
    """Text made inert in markdown (and in the HTML GitHub renders from it), on one line."""
    s = " ".join(str(text).split())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _ENTITY.sub("&amp;", s)  # only "&name;" would turn into another character


def md_code(text: object) -> str:
    """Text as a markdown code span (safe in a table cell)."""
    s = " ".join(str(text).split()).replace("`", "'").replace("|", "\\|")
    return f"`{s}`"


def short_dtype(d: str) -> str:
    return {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}.get(d, d)


def bar_width(worst: float) -> float:
    if not math.isfinite(worst):
        return 100.0
    return round(min(max(worst, 0.0), 1.0) * 100, 1)


def figure_text(v: object) -> str:
    """A named figure of a check: numbers to 4 significant digits, text as it came."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return fmt.sig(float(v), 4)


CURVE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def curve_color(i: int) -> str:
    return CURVE_COLORS[i % len(CURVE_COLORS)]


def curves_svg(curves: list[tuple[str, list[float]]], width: int = 300,
               height: int = 110) -> Markup:
    """Several numeric series of one check (loss per epoch, reference and torch) as one small
    inline SVG line chart: x is the index (1..n), y linear between the finite extremes; a
    non-finite value breaks its line. Labels go in the HTML legend beside it (escaped there);
    the SVG holds only numbers we format, so it is safe markup."""
    finite = [y for _, ys in curves for y in ys if math.isfinite(y)]
    if not finite:
        return Markup("")
    n = max(len(ys) for _, ys in curves)
    lo, hi = min(finite), max(finite)
    if hi == lo:
        lo, hi = lo - (abs(lo) or 1.0) * 0.05, hi + (abs(hi) or 1.0) * 0.05
    left, right, top, bottom = 46, 8, 8, 18
    w, h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (w * i / (n - 1) if n > 1 else w / 2)

    def y(v: float) -> float:
        return top + h * (hi - v) / (hi - lo)

    parts = [f'<svg class="curves" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" '
             f'stroke="#dde2ea"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{fmt.sig(hi, 3)}</text>',
             f'<text x="{left - 4}" y="{top + h}" text-anchor="end">{fmt.sig(lo, 3)}</text>',
             f'<text x="{left}" y="{height - 4}">1</text>',
             f'<text x="{left + w}" y="{height - 4}" text-anchor="end">{n}</text>']
    for k, (_, ys) in enumerate(curves):
        runs, run = [], []
        for i, v in enumerate(ys):
            if math.isfinite(v):
                run.append(f"{x(i):.1f},{y(v):.1f}")
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        for pts in runs:
            if len(pts) == 1:
                cx, cy = pts[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{curve_color(k)}"/>')
            else:
                parts.append(f'<polyline points="{" ".join(pts)}" fill="none" '
                             f'stroke="{curve_color(k)}" stroke-width="1.5"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # numbers and our own colours only


def curve_text(ys: list[float]) -> str:
    """A curve as text beside its chart: first and last values and the number of points."""
    if not ys:
        return "no points"
    return f"{figure_text(ys[0])} → {figure_text(ys[-1])} ({len(ys)} points)"


def sort_num(x: float | None) -> str:
    """A data-sort value: numbers sort numerically, missing ones last."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "inf"
    return f"{float(x):.4g}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            disabled_extensions=("md",), default=True),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(
        time=fmt.time_text, rate=fmt.rate_text, pct=fmt.percent_text, speed=fmt.speed_text,
        ratio=fmt.ratio_text, worst=fmt.worst_text, sig=fmt.sig, md=md, md_code=md_code,
        dt=short_dtype, bar=bar_width, sortnum=sort_num, within=fmt.within_text,
        interval=fmt.interval_text, figure=figure_text, curve_text=curve_text,
    )
    env.globals.update(achieved=achieved, order_key=order_key, isfinite=math.isfinite,
                       curves_svg=curves_svg, curve_color=curve_color)
    return env


def _static(name: str) -> Markup:
    text = resources.files("reports").joinpath("templates", name).read_text(encoding="utf-8")
    return Markup(text)  # our own CSS/JS, not user data


_KEEP = re.compile(r"(<pre\b.*?</pre>)", re.S)
_INDENT = re.compile(r"\n[ \t]+|(?<=>)[ \t]{2,}|[ \t]{2,}(?=<)")


def compact(html: str) -> str:
    """Drop the templates' indentation (a fifth of a large report); <pre> keeps its own."""
    parts = _KEEP.split(html)
    return "".join(p if i % 2 else _INDENT.sub(_space, p) for i, p in enumerate(parts))


def _space(m: re.Match) -> str:
    return "\n" if m.group(0).startswith("\n") else " "  # the same once HTML collapses it


def render_html(template: str, **context) -> str:
    env = _environment()
    html = env.get_template(template).render(css=_static("report.css"), js=_static("report.js"),
                                             **context)
    return compact(html)


def render_md(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)


def write(out_dir: Path, name: str, text: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def report_context(report: Report) -> dict:
    fastest, slowest = report.extremes()
    methods = report.ratio_methods
    if methods == {"paired"}:
        method = ("median of per-round ratios from interleaved rounds, with 95% intervals; "
                  "below 1 means numba is faster")
    elif methods == {"medians"}:
        method = ("ratio of median times: these runs have no paired rounds; below 1 means "
                  "numba is faster")
    else:
        method = ("from interleaved rounds where the run has them (with intervals), else the "
                  "ratio of median times; below 1 means numba is faster")
    return {"r": report, "fastest": fastest, "slowest": slowest, "ratio_method": method,
            "ratio_mixed": len(methods) > 1}


def environment_table(runs) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """One column per run (correctness and benchmark files), one row per fact."""
    def commit(env) -> str:
        if not env.commit:
            return "–"
        state = {True: " (dirty tree)", False: " (clean)", None: ""}[env.dirty]
        return env.commit[:12] + state

    def gpu(env, *keys) -> str:
        if not env.gpu:
            return "none"
        return " · ".join(f"{env.gpu[k]}" for k in keys if env.gpu.get(k) not in (None, ""))

    def peak(env, device) -> str:
        p = env.peaks.get(device)
        if not p:
            return "–"
        text = (f"{fmt.rate_text(p.get('flops_per_s'), 'FLOP')}, "
                f"{fmt.rate_text(p.get('bytes_per_s'), 'B')}")
        samples = [(what, env.peak_samples(device, key), unit)
                   for what, key, unit in (("FLOP/s", "flops_per_s", "FLOP"),
                                           ("B/s", "bytes_per_s", "B"))]
        spread = "; ".join(f"{len(xs)} samples {fmt.rate_text(min(xs), unit)}–"
                           f"{fmt.rate_text(max(xs), unit)}" for _, xs, unit in samples if xs)
        stable = env.peak_stable(device)
        if stable is False:
            why = [str(x) for x in p.get("reasons") or []] if isinstance(
                p.get("reasons"), list) else []
            text += " — NOT STABLE" + (f" ({'; '.join(why)[:300]})" if why else "") + (
                ": % of peak is unreliable")
        elif stable:
            text += " (stable)"
        if spread:
            text += f" ({spread})"
        if p.get("method"):
            text += f"; {str(p['method'])[:200]}"
        return text

    def load(env, when) -> str:
        ld = env.load
        values = getattr(ld, when) if ld else None
        if not values:
            return "–"
        text = " / ".join(f"{v:.2f}" for v in values)
        return text + (f" on {ld.cpus} CPUs" if ld.cpus else "") + (
            " (busy)" if ld.busy and when == "start" else "")

    heads = [f"{r.title or r.label}: {file_names(r)}" for r in runs]
    facts = [
        ("kind", lambda r: {"correctness": "correctness checks", "benchmark": "benchmarks",
                            "baseline": "baseline (compact)"}[r.kind]),
        ("created", lambda r: r.created or "–"),
        ("CPU", lambda r: r.env.cpu or "–"),
        ("cores", lambda r: str(r.env.cores) if r.env.cores else "–"),
        ("host", lambda r: r.env.node or "–"),
        ("GPU", lambda r: gpu(r.env, "name", "count")),
        ("GPU driver · CUDA · capability",
         lambda r: gpu(r.env, "driver", "cuda", "capability") if r.env.gpu else "–"),
        ("python", lambda r: r.env.python or "–"),
    ]
    names = ["numpy", "numba", "llvmlite", "scipy", "torch", "hypothesis", "pytest-benchmark"]
    extra = sorted({k for r in runs for k in r.env.versions} - set(names))
    for name in names + extra:
        facts.append((name, lambda r, n=name: r.env.versions.get(n) or "–"))
    facts += [
        ("commit", lambda r: commit(r.env)),
        ("measured peak, CPU", lambda r: peak(r.env, "cpu")),
        ("measured peak, CUDA", lambda r: peak(r.env, "cuda")),
        ("load average at start (1 / 5 / 15 min)", lambda r: load(r.env, "start")),
        ("load average at end (1 / 5 / 15 min)", lambda r: load(r.env, "end")),
        ("threading", lambda r: "; ".join(f"{k}: {v}" for k, v in r.env.threading.items())
         or "–"),
        ("platform", lambda r: r.env.platform or "–"),
        ("Hypothesis profile · --device",
         lambda r: f"{r.profile or '–'} · {r.device or '–'}" if r.kind == "correctness" else ""),
    ]
    if any(r.parts for r in runs):
        facts.insert(1, ("files", lambda r: ", ".join(Path(p).name for p in r.sources)))

    def per_part(run, get) -> str:
        """One value for a run; a run merged from several files shows each file's value
        where they differ (the shards' start times, load, measured peaks)."""
        if not run.parts:
            return get(run)
        values = [get(p) for p in run.parts]
        if len(set(values)) == 1:
            return values[0]
        return " · ".join(f"{v} ({Path(p.path).name})" for v, p in zip(values, run.parts,
                                                                       strict=True))

    rows = []
    for label, get in facts:
        values = [get(r) if label == "files" else per_part(r, get) for r in runs]
        if any(v not in ("–", "", "none") for v in values):
            rows.append((label, values))
    return heads, rows
