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
3. Rounds: in every round the implementations run in one of their orders, every order once
   in each block of rounds (``_orders``: AB, BA, ... for two), the blocks shuffled; each runs one
   untimed call (it absorbs the switch from the other runtime: the measured cost of the first
   small torch call after a numba parallel kernel is ~0.4 us, see ``threads.py``; a call over
   ``WARM_UP_BELOW_S`` skips it) and then its ``iterations`` timed calls. Round ``i`` of every
   implementation was thus measured within the same few milliseconds, so their ratio is
   paired: drift hits both sides alike.
4. Stalls: between rounds, a short call into each parallel runtime of the group (``Probe``:
   torch's and numba's thread pools, see ``stalls.py``) is timed. On an oversubscribed machine
   a parallel region waits for a descheduled worker thread, and then EVERY call that enters
   one takes milliseconds instead of microseconds, for phases of a second or more: uniformly,
   so neither pairing nor a slow-mode test can see it (a whole group measured in such a
   phase once put 17 false 150-900x "regressions" in a baseline). A round with a stalled
   probe before or after it does not count towards ``min_rounds``, and it is dropped
   (counted in ``Result.stall``) when an implementation ran more than ``STALL_EFFECT`` times
   slower in such rounds than in the clean ones (a serial call loses nothing to a stalled
   pool, and its rounds are kept); a group left with too few rounds is noisy, with the
   reason, and so is one whose every round had a stalled probe (nothing to compare with).
5. Judgement: every pair gets the median of its per-round ratios with a distribution-free
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

import contextlib
import gc
import itertools
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
# No attempt runs longer than this: a twin that takes seconds per call (torch's autograd
# through gaussian_log_likelihood at the large size) would spend minutes on min_rounds rounds;
# it gets the rounds that fit and is judged on those (as HARD_LIMIT's groups are).
MAX_ATTEMPT_S = 20.0
# A call slower than this gets no untimed call before its timed ones in a round: the switch
# from the other runtime costs ~0.4 us (threads.py), under 0.05% of it, and the untimed call
# would double the cost of a large group's rounds.
WARM_UP_BELOW_S = 1e-3
# An unstable group is measured again only if its attempt took less than this (a large group
# whose calls take a second spends minutes on min_rounds rounds; its verdict stands).
RETRY_WITHIN_S = 5.0
# ... but never sooner than this: one time slice lost to another process on a busy machine is
# tens of milliseconds, which would end a budget of a few milliseconds after a round or two.
HARD_FLOOR_S = 0.25
# Rounds in a stall phase are dropped when an implementation's median in them is more than this
# times its median in the clean rounds (a stalled pool costs 100-1000x; time-sharing a core
# with a busy process, which pairing cancels, at most ~2x).
STALL_EFFECT = 3.0
# Calibration stops early, at one call per round, once two calls each outlast a round, only
# when a call is also slower than this: under a CPU hog a 15 us parallel kernel stalls for a
# few hundred us, twice in a row often enough, and one call per round then (calibrated on
# stalls) paid the per-round cost on one side only of an A/A pair (1.6% in a measured run,
# and an A/A 99.9% interval of [0.964, 0.987] in CI). Three more trials of a call this short
# cost at most 15 ms.
CALIBRATE_ALL_BELOW_S = 5e-3


@dataclass(frozen=True)
class Probe:
    """A short call into one runtime's thread pool, timed between rounds to catch stalls.

    ``limit_s``: a call slower than this means the pool waited for a descheduled thread
    (``stalls.py`` sets it at 10x the same call on one thread, which no healthy parallel call
    comes near and every stalled one exceeds by far).
    """

    fn: Callable[[], object]
    limit_s: float
    what: str


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
    # Rounds dropped because a probe stalled: {"rounds": all rounds run, "dropped": n,
    # "probes": {name: {"what", "limit_s", "median_s", "max_s", "stalled"}}} (empty: no probes)
    stall: dict = field(default_factory=dict)
    # Implementations whose calls per round were set again from a first attempt's rounds (their
    # calibration had met a stall and made the rounds too short; that attempt was discarded)
    recalibrated: list[str] = field(default_factory=list)
    # Implementations given one untimed call before their timed calls in each round
    warm_up: set[str] = field(default_factory=set)

    @property
    def timed(self) -> list[str]:
        return [n for n in self.names if n in self.times]

    @property
    def paired(self) -> bool:
        return len(self.timed) > 1

    @property
    def stable(self) -> bool:
        return not any(self.reasons(n) for n in self.timed)

    @property
    def anchor(self) -> str | None:
        """The implementation every other one is compared with (the first timed: numba)."""
        return self.timed[0] if self.timed else None

    def own_reasons(self, name: str) -> list[str]:
        """What no pairing can repair in this implementation's own rounds."""
        nz = self.noise[name]
        if not self.paired:
            return list(nz["reasons"])
        out = []
        if self.stall.get("all_stalled"):
            out.append(f"a parallel runtime stalled around every one of the "
                       f"{self.stall['rounds']} rounds ("
                       + "; ".join(f"{p['what']}: median {p['median_s'] * 1e6:.3g} us, limit "
                                   f"{p['limit_s'] * 1e6:.3g} us"
                                   for p in self.stall["probes"].values() if p["stalled"])
                       + "): the machine is oversubscribed, and with no clean round to compare "
                         "with, whether these times include stalls is unknown")
        elif nz["rounds"] < MIN_ROUNDS:
            why = f"only {nz['rounds']} rounds"
            if self.stall.get("dropped"):
                stalled = [f"{p['what']} took up to {p['max_s'] * 1e3:.3g} ms (limit "
                           f"{p['limit_s'] * 1e6:.3g} us)"
                           for p in self.stall["probes"].values() if p["stalled"]]
                why += (f": {self.stall['dropped']} of {self.stall['rounds']} rounds dropped "
                        f"because a parallel runtime stalled ({'; '.join(stalled)}): the "
                        f"machine is oversubscribed")
            out.append(why)
        if nz["median_over_min"] > MAX_MEDIAN_OVER_MIN:
            out.append(f"slow mode: median is {nz['median_over_min']:.3g}x the fastest round "
                       f"(limit {MAX_MEDIAN_OVER_MIN:g}x)")
        return out

    def pair_reasons(self, a: str, b: str) -> list[str]:
        """Why the ratio a / b is not trustworthy: either side's own reasons, or an interval
        wider than +-10%."""
        out = [f"{n}: {r}" for n in (a, b) for r in self.own_reasons(n)]
        r = self.ratios[a][b]
        if r["lo"] is None:
            out.append(f"too few rounds for an interval of {a}/{b}")
        elif r["hi"] / r["lo"] > MAX_CI_SPREAD:
            out.append(f"{a}/{b} known only within [{r['lo']:.3g}, {r['hi']:.3g}]")
        return out

    def reasons(self, name: str) -> list[str]:
        """Why this implementation's figures are not trustworthy (empty when they are).

        Alone, an implementation is judged by all of ``reports.paired.noise``'s rules. In a
        paired group, spread and stalls that hit every side alike cancel in the per-round
        ratios, so a side is judged by the rules no pairing can repair (``own_reasons``: too
        few clean rounds; a median in a slow mode, far above the fastest round: the signature
        of parallel regions stalled for whole scheduler slices). The anchor (numba) is judged
        on its own rounds only; every other implementation also on its ratio to the anchor
        (interval within +-10%, the anchor not in a slow mode). So a noisy torch-fused never
        greys numba or the numba / torch-cpu pair: each pair is judged on its own two sides
        (``pair_reasons``).
        """
        if not self.paired or name == self.anchor:
            return self.own_reasons(name)
        out = self.own_reasons(name)
        out += [r for r in self.pair_reasons(name, self.anchor)
                if not r.startswith(f"{name}: ")]
        return out


def _calibrate(fn: Callable[[], object], min_time: float, timer) -> tuple[int, float]:
    """Calls per round so that a round lasts at least ``min_time``, and the per-call time.

    The per-call time is the fastest of a few trials, so that one stalled trial on a busy
    machine does not make the rounds too short to time (or the budget look spent); a call
    under ``CALIBRATE_ALL_BELOW_S`` gets all five trials even when its first ones stalled.
    """
    n, best = 1, float("inf")
    for trial in range(5):
        t0 = timer()
        for _ in range(n):
            fn()
        best = min(best, (timer() - t0) / n)
        n = int(min(max(1.0, math.ceil(min_time / max(best, 1e-9))), 1 << 20))
        if n == 1 and trial and best > CALIBRATE_ALL_BELOW_S:
            break  # two calls each longer than a round, and not short: one call per round
    return n, best


def measure(fns: dict[str, Callable[[], object]], *, max_time: float, min_time: float,
            min_rounds: int, max_rounds: int = 400, retries: int = 1, timer=time.perf_counter,
            disable_gc: bool = True, seed: int = 0,
            probes: dict[str, Probe] | None = None,
            serial: Callable[[], contextlib.AbstractContextManager] | None = None,
            serial_names: frozenset[str] | set[str] = frozenset()) -> Result:
    """Time ``fns`` in interleaved rounds (see the module docstring) and judge the result.

    Each attempt runs rounds until its budget (``max_time`` per implementation) is spent, at
    least ``min_rounds`` and at most ``max_rounds`` clean ones (``probes``: see the module
    docstring, step 4). When every round had a stalled probe, ``serial`` (a context in which
    the runtimes use one thread) gives each implementation named in ``serial_names`` a
    stall-free reference time: if no implementation ran more than ``STALL_EFFECT`` times
    slower than that, the stalls did not touch the group and its rounds stand.
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
    round_s = 0.0  # one round of every implementation: its timed calls and the untimed one
    warm_up = res.warm_up
    for name, fn in live.items():
        res.iterations[name], per_call = _calibrate(fn, min_time, timer)
        if per_call < WARM_UP_BELOW_S:
            warm_up.add(name)
        round_s += (res.iterations[name] + (name in warm_up)) * per_call
    rng = np.random.default_rng(seed)
    # The budget never starves min_rounds: a small max_time (a share of --bench-budget) still
    # gets min_rounds rounds, and HARD_LIMIT stays a multiple of what they need on a quiet
    # machine.
    budget = max(max_time * len(live), min_rounds * round_s)

    best: tuple[float, dict[str, list[float]], dict] | None = None
    for attempt in range(1 + retries):
        t_attempt = time.perf_counter()
        times, stall = _rounds(live, res.iterations, budget, min_rounds, max_rounds, rng,
                               timer, disable_gc, probes or {}, warm_up)
        if not res.recalibrated:
            short = _short_rounds(res.iterations, times, min_time)
            if short:  # calibrated in a stall: these rounds are biased, measure them again
                res.recalibrated = sorted(short)
                for name, (k, per_call) in short.items():
                    res.iterations[name] = k
                    if per_call < WARM_UP_BELOW_S:
                        warm_up.add(name)
                round_s = sum((res.iterations[n] + (n in warm_up)) * float(np.median(times[n]))
                              for n in live)
                budget = max(max_time * len(live), min_rounds * round_s)
                times, stall = _rounds(live, res.iterations, budget, min_rounds, max_rounds,
                                       rng, timer, disable_gc, probes or {}, warm_up)
        if stall.get("all_stalled") and serial is not None:
            _check_serial(live, times, stall, serial, serial_names, timer)
        res.stall = stall
        score = _judge(res, times)
        res.attempts = attempt + 1
        if best is None or score < best[0]:
            best = (score, times, stall)
        spent = time.perf_counter() - t_attempt
        if res.stable or spent > 2 * budget or spent > RETRY_WITHIN_S:
            # stable; or so slow a machine that another attempt would not be quieter; or an
            # attempt so long that a second one would double a run's length for one group
            break
    assert best is not None
    if best[1] is not res.times:
        res.stall = best[2]
        _judge(res, best[1])
    res.wall_s = time.perf_counter() - start
    return res


def _short_rounds(iterations: dict[str, int], times: dict[str, list[float]],
                  min_time: float) -> dict[str, tuple[int, float]]:
    """Implementations whose rounds lasted under half of ``min_time``: ``{name: (calls per
    round, per-call time)}`` recalibrated from the median of the rounds.

    A round's fixed cost (the timer, the switch from the other implementation) lands on every
    call's time divided by the calls per round: at least ``min_time`` of calls keeps it under
    ~0.2% (~0.4 us on a 200 us round). Calibrated in a stall, one side of a pair gets one call
    per round while the other gets fifteen: relu's medium kernel timed as both sides of an A/A
    pair, forced to 1 and 15 calls, gave ratios 1.016-1.034 in eight runs, quiet and under a
    hog, seven of their 99.9% intervals excluding 1."""
    short = {}
    for name, k in iterations.items():
        if not times.get(name):
            continue
        per_call = float(np.median(times[name]))
        if k * per_call < min_time / 2:
            short[name] = (int(min(math.ceil(min_time / max(per_call, 1e-9)), 1 << 20)), per_call)
    return short


def _probe(probes: dict[str, Probe], timer, seen: dict[str, list[float]]) -> bool:
    """Time each probe once; True when none stalled."""
    ok = True
    for name, p in probes.items():
        t0 = timer()
        p.fn()
        dt = timer() - t0
        seen[name].append(dt)
        ok = ok and dt <= p.limit_s
    return ok


def _orders(n: int, rng: np.random.Generator):
    """The order of the implementations in each round: every one of the n! orders once per
    block of n! rounds, the block shuffled (n <= 4; a fresh random order each round above).

    The position in a round changes the time: one relu kernel timed as both "a" and "b"
    beside a CPU hog (one busy process per core) gave per-round ratios a/b with median 0.984
    in the 62 rounds where a ran first and 1.018 in the 54 where b did. With a fresh random
    order each round the two orders come up unequally often, and the median of all rounds
    leans to the more frequent one: such an A/A pair once gave the 99.9% interval [0.970,
    0.980] in CI (test_timing's ``test_aa_under_hog``). Balanced blocks give both orders the
    same number of rounds."""
    if n > 4:
        while True:
            yield rng.permutation(n)
    perms = list(itertools.permutations(range(n)))
    while True:
        for i in rng.permutation(len(perms)):
            yield perms[i]


def _rounds(live, iterations, budget, min_rounds, max_rounds, rng, timer, disable_gc,
            probes: dict[str, Probe], warm_up: set[str]) -> tuple[dict[str, list[float]], dict]:
    names = list(live)
    times: dict[str, list[float]] = {n: [] for n in names}
    every: dict[str, list[float]] = {n: [] for n in names}
    seen: dict[str, list[float]] = {n: [] for n in probes}
    gc_was = gc.isenabled()
    if disable_gc:
        gc.disable()
    start = time.perf_counter()
    deadline = start + budget
    hard = start + min(max(HARD_LIMIT * budget, HARD_FLOOR_S), MAX_ATTEMPT_S)
    total = clean = 0
    flags: list[bool] = []  # per round: no stalled probe before or after it
    orders = _orders(len(names), rng)
    try:
        ok_before = _probe(probes, timer, seen)
        while clean < max_rounds:
            now = time.perf_counter()
            if total and (now >= hard or (clean >= min_rounds and now >= deadline)):
                break
            this: dict[str, float] = {}
            for j in next(orders):
                name = names[j]
                fn, k = live[name], iterations[name]
                if name in warm_up:
                    fn()  # untimed: absorbs the switch from the other implementation
                t0 = timer()
                for _ in range(k):
                    fn()
                this[name] = (timer() - t0) / k
                every[name].append(this[name])
            ok_after = _probe(probes, timer, seen)
            total += 1
            flags.append(ok_before and ok_after)
            if ok_before and ok_after:  # no stall phase began or ended around this round
                clean += 1
                for name, t in this.items():
                    times[name].append(t)
            ok_before = ok_after
    finally:
        if gc_was:
            gc.enable()
    stall: dict = {}
    if probes:
        stall = {"rounds": total, "dropped": 0, "probes": {
            name: {"what": p.what, "limit_s": p.limit_s,
                   "median_s": float(np.median(seen[name])), "max_s": max(seen[name]),
                   "stalled": sum(t > p.limit_s for t in seen[name])}
            for name, p in probes.items()}}
        if clean == 0:  # every round stalled: keep them, and say so (own_reasons)
            stall["all_stalled"] = True
            return every, stall
        if clean < total:
            # Drop the stalled rounds only if a stall phase did slow an implementation down:
            # a serial call (64 floats) never enters a pool and loses nothing to it.
            bad = ~np.asarray(flags)
            hit = {n: float(np.median(np.asarray(every[n])[bad]) / np.median(times[n]))
                   for n in names}
            stall["slowed"] = {n: round(f, 3) for n, f in hit.items() if f > STALL_EFFECT}
            if stall["slowed"]:
                stall["dropped"] = total - clean
                return times, stall
    return every, stall


def _check_serial(live, times, stall, serial, serial_names, timer) -> None:
    """Every round had a stalled probe: were the implementations slowed by it? (in place)"""
    ref: dict[str, float] = {}
    with serial():
        for name in live:
            if name in serial_names:
                best = math.inf
                for _ in range(3):
                    t0 = timer()
                    live[name]()
                    best = min(best, timer() - t0)
                ref[name] = best
    stall["serial_s"] = ref
    slowed = {n: float(np.median(times[n]) / ref[n]) if n in ref else math.inf for n in live}
    stall["slowed"] = {n: round(f, 3) for n, f in slowed.items() if f > STALL_EFFECT}
    if not stall["slowed"]:
        stall["all_stalled"] = False  # serial work: the stalled pools cost it nothing


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
