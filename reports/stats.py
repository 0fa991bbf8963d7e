"""Statistics on timing distributions: confidence intervals of ratios of medians, power fits.

Ratios of medians get a percentile bootstrap confidence interval. The bootstrap distribution of
a sample median is known in closed form: the median of ``n`` draws from a distribution with
quantile function ``Q`` is ``Q(U)`` with ``U ~ Beta((n+1)/2, (n+1)/2)`` (the order statistic of
uniforms). So a replicate costs one Beta draw and one interpolation in the run's quantile
function, instead of resampling and sorting ``n`` timings, and it works the same for raw
timings, for the quantiles a baseline keeps and for old files that only have quartiles.

Consecutive timings of one process are not independent (clock boost, caches, the other
process on the core), so ``n`` is capped at ``N_EFF_MAX``: a hundred thousand rounds of a
5 microsecond call do not make its median known to a part in a thousand. Changes between
processes (+-40% seen on this project's 2-core machines) are beyond any within-run interval;
the gate's threshold is what absorbs them.

A change is significant at level ``alpha`` when the two-sided ``1 - alpha`` interval of the
ratio excludes 1.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from reports.loading import PROBS, Timing

N_EFF_MAX = 500
RESAMPLES = 4000


@dataclass(frozen=True)
class Ratio:
    """An estimated ratio of medians with its confidence interval (``lo``, ``hi``)."""

    value: float
    lo: float | None
    hi: float | None
    alpha: float

    @property
    def judged(self) -> bool:
        return self.lo is not None

    @property
    def significant(self) -> bool:
        return self.judged and (self.lo > 1.0 or self.hi < 1.0)

    @property
    def verdict(self) -> str:
        """'slower' / 'faster' (ratio above / below 1, significantly) or 'no significant change'."""
        if not self.judged:
            return "not judged"
        if not self.significant:
            return "no significant change"
        return "slower" if self.value > 1.0 else "faster"


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded by the key: the same inputs give the same intervals, every build."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def median_draws(t: Timing, rng: np.random.Generator, n: int = RESAMPLES) -> np.ndarray:
    """``n`` bootstrap replicates of the log of the median of ``t``'s rounds."""
    m = min(t.rounds, N_EFF_MAX)
    a = (m + 1) / 2.0
    if a < 50:
        u = rng.beta(a, a, size=n)
    else:  # Beta(a, a): symmetric, excess kurtosis -6/(2a+3) > -0.06, so normal; and cheaper
        u = np.clip(0.5 + rng.standard_normal(n) / (2.0 * np.sqrt(2 * a + 1)), 0.0, 1.0)
    return np.log(np.interp(u, PROBS, t.quantiles))


def ratio(num: Timing, den: Timing, alpha: float, key: object = ()) -> Ratio:
    """median(num) / median(den), with a ``1 - alpha`` bootstrap interval."""
    value = num.median / den.median
    if min(num.rounds, den.rounds) < 2:
        return Ratio(value, None, None, alpha)
    rng = rng_for("ratio", key)
    logs = median_draws(num, rng) - median_draws(den, rng)
    lo, hi = np.exp(np.quantile(logs, (alpha / 2, 1 - alpha / 2)))
    return Ratio(value, float(lo), float(hi), alpha)


def ratio_of_ratios(num_c: Timing, den_c: Timing, num_b: Timing, den_b: Timing, alpha: float,
                    key: object = ()) -> Ratio:
    """(num_c / den_c) / (num_b / den_b): how a within-run ratio changed from b to c."""
    value = (num_c.median / den_c.median) / (num_b.median / den_b.median)
    if min(t.rounds for t in (num_c, den_c, num_b, den_b)) < 2:
        return Ratio(value, None, None, alpha)
    rng = rng_for("ratio_of_ratios", key)
    logs = (median_draws(num_c, rng) - median_draws(den_c, rng)
            - median_draws(num_b, rng) + median_draws(den_b, rng))
    lo, hi = np.exp(np.quantile(logs, (alpha / 2, 1 - alpha / 2)))
    return Ratio(value, float(lo), float(hi), alpha)


def power_fit(sizes, times) -> float | None:
    """The exponent ``k`` of ``time ~ size**k`` (least squares on log-log), or None."""
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.log(np.asarray(times, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        return None
    return float(np.polyfit(x, y, 1)[0])


def crossovers(sizes, a_times, b_times) -> list[float]:
    """Sizes where curve a crosses curve b, by log-log interpolation between measured points."""
    x = np.log(np.asarray(sizes, dtype=np.float64))
    d = np.log(np.asarray(a_times, dtype=np.float64)) - np.log(np.asarray(b_times, np.float64))
    out = []
    for i in range(len(x) - 1):
        if d[i] == 0:
            out.append(float(np.exp(x[i])))
        elif d[i] * d[i + 1] < 0:
            t = d[i] / (d[i] - d[i + 1])
            out.append(float(np.exp(x[i] + t * (x[i + 1] - x[i]))))
    return out
