"""Numbers as people read them: times with units, ratios as "x faster", rates in G/s."""

from __future__ import annotations

import math

from reports.loading import PairRatio
from reports.stats import Ratio


def sig(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, without exponent for everyday magnitudes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    mag = math.floor(math.log10(abs(x)))
    if -4 <= mag < 6:
        decimals = max(digits - 1 - mag, 0)
        return f"{x:.{decimals}f}"
    return f"{x:.{digits - 1}e}"


def time_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    a = abs(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if a >= scale or unit == "ns":
            return f"{sig(seconds / scale)} {unit}"
    return f"{seconds:g} s"


def rate_text(per_s: float | None, unit: str) -> str:
    """3.1 GFLOP/s, 850 MB/s: SI prefixes on a rate."""
    if per_s is None or not math.isfinite(per_s):
        return "–"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)):
        if per_s >= scale or prefix == "":
            return f"{sig(per_s / scale)} {prefix}{unit}/s"
    return "–"


def percent_text(fraction: float | None) -> str:
    if fraction is None or not math.isfinite(fraction):
        return "–"
    if fraction < 0.001:
        return "<0.1%"
    return f"{fraction * 100:.{1 if fraction < 0.1 else 0}f}%"


def speed_text(r: float | None, subject: str = "") -> str:
    """A time ratio (subject / other) as '3.2x faster' / '1.4x slower' / 'same'."""
    if r is None or not math.isfinite(r) or r <= 0:
        return "–"
    who = f"{subject} " if subject else ""
    if 0.995 <= r <= 1.005:
        return f"{who}same"
    if r < 1:
        return f"{who}{sig(1 / r, 2)}x faster"
    return f"{who}{sig(r, 2)}x slower"


def ratio_number(x: float) -> str:
    """A ratio near 1 to two decimals (1.00, 0.97, 12.50), others to three digits."""
    return f"{x:.2f}" if 0.01 <= x < 100 else sig(x)


def ratio_text(r: Ratio) -> str:
    """'1.62x [1.41, 1.85]' with the confidence interval, when there is one."""
    if not r.judged:
        return f"{ratio_number(r.value)}x (too few rounds to judge)"
    return f"{ratio_number(r.value)}x [{ratio_number(r.lo)}, {ratio_number(r.hi)}]"


def worst_text(w: float | None) -> str:
    if w is None:
        return "–"
    if not math.isfinite(w):
        return str(w)
    return "0" if w == 0 else sig(w, 2)


def interval_text(p: PairRatio | None) -> str:
    """A within-run ratio's interval as people read it: '95%: 2.9-3.5x faster', or the
    interval of the ratio itself when it includes 1 ('95%: 0.97-1.04, includes 1')."""
    if p is None or p.lo is None or p.hi is None:
        return ""
    level = f"{p.level:.0%}: " if p.level else ""
    if p.hi < 1:
        a, b = _apart(1 / p.hi, 1 / p.lo)
        return f"{level}{a}–{b}x faster"
    if p.lo > 1:
        a, b = _apart(p.lo, p.hi)
        return f"{level}{a}–{b}x slower"
    return f"{level}{ratio_number(p.lo)}–{ratio_number(p.hi)}, includes 1"


def _apart(a: float, b: float) -> tuple[str, str]:
    """Two bounds to 2 significant digits, or more until they read differently (up to 4)."""
    for digits in (2, 3, 4):
        ta, tb = sig(a, digits), sig(b, digits)
        if ta != tb:
            break
    return ta, tb


def within_text(p: PairRatio | None, subject: str = "", method: bool = True) -> str:
    """'numba 3.2x faster (95%: 2.9-3.5x faster)', or '... (ratio of medians)' (without the
    method when ``method`` is false: a heading already said it)."""
    if p is None:
        return "–"
    head = speed_text(p.value, subject)
    if not p.paired:
        return f"{head} (ratio of medians)" if method else head
    iv = interval_text(p)
    return f"{head} ({iv})" if iv else f"{head} (paired, too few rounds for an interval)"
