"""Paired, interleaved timing of the implementations of one benchmark group.

Why: on a shared 2-core machine, load and clock drift change over seconds, and a runtime's
parallel region stalls for milliseconds when one of its threads is descheduled. Timing
numba for half a second and then torch for half a second lets that drift land on one side
only, and a ratio of the two medians then says more about the machine than about the code.

How:

1. Each implementation is called once and timed (``first_call_s``: compilation or cache load
   for numba), then once more (``compile_s`` is the difference).
2. Calibration: each implementation gets a number of calls per round (``iterations``) such
   that a round lasts at least ``min_time``; the number of rounds comes from the time budget
   (``max_time`` per implementation, as pytest-benchmark's option means it), at least
   ``min_rounds``, at most ``max_rounds``.
3. Rounds: in every round the implementations run in a fresh random order; each runs one
   untimed call (it absorbs the switch from the other runtime: the measured cost of the first
   small torch call after a numba parallel kernel is ~0.4 us, see ``threads.py``) and then
   its ``iterations`` timed calls. Round ``i`` of every implementation was thus measured
   within the same few milliseconds, so their ratio is paired: drift hits both sides alike.
4. Judgement: every pair gets the median of its per-round ratios with a distribution-free
   interval, and each implementation is judged from its own rounds (``Result.reasons``: a
   median in a slow mode, too few rounds, or a ratio interval wider than +-10%; alone, also
   spread and stalls, see ``reports.paired.noise``). An unstable group is measured again, at most
   ``retries`` more times, and the least noisy attempt is kept; if none is stable, the group
   is marked noisy and the report keeps it out of headlines, fits and the gate.

Threading: numba uses its default (OpenMP) layer and torch its defaults, which is what their
users get. ``threads.py`` measured the alternatives on this machine: numba's workqueue layer
makes each parallel launch cost ~70 us instead of ~2 us; OMP_WAIT_POLICY=PASSIVE makes a
medium torch call 4x slower (81 vs 21 us) and numba's launch ~60 us; with the defaults a small
torch call right after a numba kernel costs 2.6 us against 2.2 us alone.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from reports.paired import MAX_MEDIAN_OVER_MIN, MIN_ROUNDS, noise, paired_ratio

LEVEL = 0.95
# A paired ratio is precise enough when its interval is within +-10% of it (hi/lo <= 1.21).
MAX_CI_SPREAD = 1.21
# An attempt stops at this multiple of its budget even before min_rounds (then it is judged
# on the rounds it has): on a busy machine calls calibrated when quiet can each take
# milliseconds, and min_rounds rounds of them would stretch a run without bound.
HARD_LIMIT = 4.0


@dataclass
class Result:
    """The outcome of one group: per implementation, per-call times of every round."""

    names: list[str]
    times: dict[str, list[float]] = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)
    first_call_s: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    attempts: int = 0
    noise: dict[str, dict] = field(default_factory=dict)
    ratios: dict[str, dict[str, dict]] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def timed(self) -> list[str]:
        return [n for n in self.names if n in self.times]

    @property
    def paired(self) -> bool:
        return len(self.timed) > 1

    @property
    def stable(self) -> bool:
        return not any(self.reasons(n) for n in self.timed)

    def reasons(self, name: str) -> list[str]:
        """Why this implementation's figures are not trustworthy (empty when they are).

        Alone, an implementation is judged by all of ``reports.paired.noise``'s rules. In a
        paired group, spread and stalls that hit every side alike cancel in the per-round
        ratios, so a side is judged by the rules no pairing can repair (too few rounds; a
        median in a slow mode, far above the fastest round: the signature of parallel regions
        stalled for whole scheduler slices) and every ratio's interval must be within +-10%.
        """
        nz = self.noise[name]
        if not self.paired:
            return list(nz["reasons"])
        out = []
        if nz["rounds"] < MIN_ROUNDS:
            out.append(f"only {nz['rounds']} rounds")
        if nz["median_over_min"] > MAX_MEDIAN_OVER_MIN:
            out.append(f"slow mode: median is {nz['median_over_min']:.3g}x the fastest round "
                       f"(limit {MAX_MEDIAN_OVER_MIN:g}x)")
        for other, r in self.ratios.get(name, {}).items():
            if r["lo"] is None:
                out.append(f"too few rounds for an interval of the ratio to {other}")
            elif r["hi"] / r["lo"] > MAX_CI_SPREAD:
                out.append(f"ratio to {other} known only within [{r['lo']:.3g}, {r['hi']:.3g}]")
        for other in self.timed:
            if other != name and self.noise[other]["median_over_min"] > MAX_MEDIAN_OVER_MIN:
                out.append(f"its partner {other} was in a slow mode")
        return out


def _calibrate(fn: Callable[[], object], min_time: float, timer) -> int:
    """Calls per round so that a round lasts at least ``min_time``.

    The per-call time is the fastest of a few trials, so that one stalled trial on a busy
    machine does not make the rounds too short to time (or the budget look spent).
    """
    n, best = 1, float("inf")
    for _ in range(5):
        t0 = timer()
        for _ in range(n):
            fn()
        best = min(best, (timer() - t0) / n)
        n = int(min(max(1.0, math.ceil(min_time / max(best, 1e-9))), 1 << 20))
    return n


def measure(fns: dict[str, Callable[[], object]], *, max_time: float, min_time: float,
            min_rounds: int, max_rounds: int = 400, retries: int = 1, timer=time.perf_counter,
            disable_gc: bool = True, seed: int = 0) -> Result:
    """Time ``fns`` in interleaved rounds (see the module docstring) and judge the result.

    Each attempt runs rounds until its budget (``max_time`` per implementation) is spent, at
    least ``min_rounds`` and at most ``max_rounds`` of them.
    """
    start = time.perf_counter()
    res = Result(names=list(fns))
    live: dict[str, Callable[[], object]] = {}
    for name, fn in fns.items():
        try:
            t0 = timer()
            fn()
            first = timer() - t0
            t0 = timer()
            fn()
            second = timer() - t0
        except Exception as exc:  # reported by that implementation's test, not the others'
            res.errors[name] = exc
            continue
        res.first_call_s[name] = first
        res.compile_s[name] = max(first - second, 0.0)
        live[name] = fn
    if not live:
        res.wall_s = time.perf_counter() - start
        return res
    for name, fn in live.items():
        res.iterations[name] = _calibrate(fn, min_time, timer)
    rng = np.random.default_rng(seed)
    budget = max_time * len(live)

    best: tuple[float, dict[str, list[float]]] | None = None
    for attempt in range(1 + retries):
        t_attempt = time.perf_counter()
        times = _rounds(live, res.iterations, budget, min_rounds, max_rounds, rng, timer,
                        disable_gc)
        score = _judge(res, times)
        res.attempts = attempt + 1
        if best is None or score < best[0]:
            best = (score, times)
        if res.stable or time.perf_counter() - t_attempt > 2 * budget:
            break  # stable; or so slow a machine that another attempt would not be quieter
    assert best is not None
    if best[1] is not res.times:
        _judge(res, best[1])
    res.wall_s = time.perf_counter() - start
    return res


def _rounds(live, iterations, budget, min_rounds, max_rounds, rng, timer, disable_gc,
            ) -> dict[str, list[float]]:
    names = list(live)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    if disable_gc:
        gc.disable()
    start = time.perf_counter()
    deadline, hard = start + budget, start + HARD_LIMIT * budget
    try:
        r = 0
        while r < max_rounds:
            now = time.perf_counter()
            if now >= hard or (r >= min_rounds and now >= deadline):
                break
            for j in rng.permutation(len(names)):
                name = names[j]
                fn, k = live[name], iterations[name]
                fn()  # untimed: absorbs the switch from the other implementation
                t0 = timer()
                for _ in range(k):
                    fn()
                times[name].append((timer() - t0) / k)
            r += 1
    finally:
        if gc_was:
            gc.enable()
    return times


def _judge(res: Result, times: dict[str, list[float]]) -> float:
    """Fill ``res`` from ``times``; return a noise score (lower is quieter)."""
    res.times = times
    res.noise = {n: noise(t) for n, t in times.items()}
    res.ratios = {}
    for a in times:
        res.ratios[a] = {}
        for b in times:
            if a != b:
                value, lo, hi = paired_ratio(times[a], times[b], level=LEVEL)
                res.ratios[a][b] = {"value": value, "lo": lo, "hi": hi, "level": LEVEL}
    spread = [math.log(r["hi"] / r["lo"]) if r["lo"] else math.inf
              for rs in res.ratios.values() for r in rs.values()]
    return max(r["iqr_rel"] for r in res.noise.values()) + max(spread, default=0.0)
