"""Paired timings: ratios from interleaved rounds, and whether a benchmark's timings are stable.

numpy only (no torch, no numba): the benchmarks in ``suites/performance`` import these two
functions while they measure, and the report reads what they wrote.

**Paired ratio.** When implementations A and B are timed in interleaved rounds, round ``i`` of
A and round ``i`` of B saw the same load, clock frequency and cache weather. The ratio
``a[i] / b[i]`` cancels what both rounds shared, so the median over rounds of those per-round
ratios is far steadier than the ratio of the two medians. Its confidence interval is
distribution-free: for the sorted ratios ``r(1) <= ... <= r(n)``, the interval
``[r(k), r(n+1-k)]`` covers the true median with probability ``1 - 2 P(B <= k - 1)``, where
``B ~ Binomial(n, 1/2)`` counts the ratios below the median. ``k`` is the largest index whose
coverage is still at least ``level``. With too few rounds no ``k`` reaches ``level``
(``1 - 2 * 2**-n < level``, e.g. n <= 5 at 95%) and the interval is unknown (None).

**Noise.** A benchmark is judged from its own timings (see ``noise``): dispersion relative to
the median, rounds stalled far above the median, and a median far above the fastest round
(a bimodal run whose median sits in the slow mode).
"""

from __future__ import annotations

import math

import numpy as np

# Thresholds of ``noise`` (a benchmark beyond any of them is unstable).
MAX_IQR_REL = 0.25        # interquartile range / median
STALL_FACTOR = 2.0        # a round slower than this times the median is a stall ...
MAX_STALL_FRACTION = 0.10  # ... and more than this fraction of stalled rounds is noisy
MAX_MEDIAN_OVER_MIN = 3.0  # median / fastest round
MIN_ROUNDS = 5            # fewer rounds cannot show any of the above


def _times(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a 1-d sequence of times in seconds, got "
                        f"{type(x).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d sequence of times, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one time, got none")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))][0]
        raise ValueError(f"{name}: expected positive finite times, got {bad!r}")
    return arr


def _rank(n: int, level: float) -> int:
    """The largest k >= 1 with 1 - 2 P(Binomial(n, 1/2) <= k - 1) >= level, else 0."""
    # log C(n, j) by a running sum of log((n - j + 1) / j); P(B = j) = C(n, j) / 2**n.
    j = np.arange(1, n + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - j + 1) / j))])
    cdf = np.cumsum(np.exp(log_comb - n * math.log(2.0)))  # P(B <= j), j = 0..n
    tail = (1.0 - level) / 2.0
    ok = np.nonzero(cdf[: (n + 1) // 2] <= tail * (1 + 1e-12))[0]  # j = k - 1 with P <= tail
    return int(ok[-1]) + 1 if ok.size else 0


def paired_ratio(a_times, b_times, level: float = 0.95):
    """``(value, lo, hi)``: the median over rounds of ``a[i] / b[i]`` and its ``level``
    confidence interval.

    ``a_times[i]`` and ``b_times[i]`` must come from the same round (timed back to back, in
    either order). The interval is the order-statistic interval of a median: exact for any
    distribution of per-round ratios, assuming only that rounds are exchangeable; ``lo`` and
    ``hi`` are None when there are too few rounds for ``level`` (n <= 5 at 0.95).
    """
    a = _times(a_times, "a_times")
    b = _times(b_times, "b_times")
    if a.size != b.size:
        raise ValueError(f"a_times and b_times: expected the same number of rounds, got "
                         f"{a.size} and {b.size}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level: expected a number between 0 and 1, got {level!r}")
    r = np.sort(a / b)
    n = r.size
    value = float(np.median(r))
    k = _rank(n, float(level))
    if k == 0:
        return value, None, None
    return value, float(r[k - 1]), float(r[n - k])


def noise(times) -> dict:
    """Whether one implementation's per-round times are stable enough to headline.

    Returns ``{"rounds", "iqr_rel", "median_over_min", "stall_fraction", "reasons",
    "stable"}``. Unstable (``stable`` False, one reason per rule broken) when:

    - fewer than ``MIN_ROUNDS`` (5) rounds: nothing below can be judged;
    - ``iqr_rel`` = interquartile range / median > ``MAX_IQR_REL`` (0.25): the middle half of
      the rounds spreads over more than a quarter of the median (healthy runs here: < 0.1);
    - ``stall_fraction`` = fraction of rounds slower than ``STALL_FACTOR`` (2) x the median
      > ``MAX_STALL_FRACTION`` (0.1): a descheduled worker thread or another runtime's spinning
      threads stalled many rounds (a few stalls leave the median unharmed and are allowed);
    - ``median_over_min`` = median / fastest round > ``MAX_MEDIAN_OVER_MIN`` (3): the typical
      round took three times the fastest, i.e. the median sits in a slow mode (frequency and
      cache effects alone stay well under 2x).
    """
    t = _times(times, "times")
    n = int(t.size)
    q1, med, q3 = (float(v) for v in np.quantile(t, (0.25, 0.5, 0.75)))
    iqr_rel = (q3 - q1) / med
    median_over_min = med / float(t.min())
    stall_fraction = float(np.mean(t > STALL_FACTOR * med))
    reasons = []
    if n < MIN_ROUNDS:
        reasons.append(f"only {n} round{'s' if n != 1 else ''} (fewer than {MIN_ROUNDS} cannot "
                       f"show stability)")
    else:
        if iqr_rel > MAX_IQR_REL:
            reasons.append(f"spread: IQR is {iqr_rel:.0%} of the median (limit "
                           f"{MAX_IQR_REL:.0%})")
        if stall_fraction > MAX_STALL_FRACTION:
            reasons.append(f"stalls: {stall_fraction:.0%} of rounds took over "
                           f"{STALL_FACTOR:g}x the median (limit {MAX_STALL_FRACTION:.0%})")
        if median_over_min > MAX_MEDIAN_OVER_MIN:
            reasons.append(f"slow mode: median is {median_over_min:.3g}x the fastest round "
                           f"(limit {MAX_MEDIAN_OVER_MIN:g}x)")
    return {"rounds": n, "iqr_rel": float(iqr_rel), "median_over_min": float(median_over_min),
            "stall_fraction": stall_fraction, "reasons": reasons, "stable": not reasons}
