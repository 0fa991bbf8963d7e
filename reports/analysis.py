"""From loaded runs to what the report shows: the verdict, per-algorithm correctness and
performance, scaling fits, and comparisons. No HTML here (render.py), no drawing (charts.py).

What is never headlined: a benchmark whose timings were not stable (``stable`` false in its
``extra_info``, see ``reports/paired.py``) is shown greyed with its reasons, and left out of the
verdict's extremes, the fitted exponents, the crossovers and the gate. Within-run ratios come
from paired rounds when the run has them (the median of per-round ratios, with an interval),
else from the ratio of medians, and the report says which.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from reports.comparison import DENOMINATOR, NUMERATOR, Comparison, compare_runs
from reports.config import GateConfig
from reports.loading import (
    CHECK_ORDER,
    COMPILED,
    IMPL_ORDER,
    PASS_ORDER,
    Bench,
    BenchRun,
    Check,
    CorrectnessRun,
    Load,
    PairRatio,
    order_key,
    size_key,
)
from reports.merge import CorrectnessSet
from reports.stats import crossovers, power_fit

_RANK = {"failed": 0, "passed": 1, "skipped": 2, "not run": 3}
# The GPU implementations: the twin on CUDA, and reference.cuda's kernels (the benchmark times
# the two together, by CUDA events; their ratio is the numba-cuda vs torch-cuda column).
GPU_IMPLS = ("torch-cuda", "numba-cuda")
# The overview's one column for the checks outside CHECK_ORDER (every dtype together).
OTHER_CHECKS = ("other checks", "")


@dataclass
class Cell:
    """The correctness matrix cell of one algorithm x check x dtype (all devices/cases)."""

    checks: list[Check]

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        for v in ("failed", "passed", "skipped"):
            if v in verdicts:
                return v
        return "not run"

    @property
    def worst(self) -> float:
        ran = [c.worst for c in self.checks if c.verdict != "skipped"]
        return max(ran) if ran else 0.0

    @property
    def examples(self) -> int:
        return sum(c.examples for c in self.checks)

    @property
    def counts(self) -> Counter:
        return Counter(c.verdict for c in self.checks)

    @property
    def devices(self) -> str:
        return ", ".join(sorted({c.device for c in self.checks if c.device}))

    @property
    def runs(self) -> str:
        """The correctness runs the checks come from (empty with one run)."""
        return ", ".join(dict.fromkeys(c.run for c in self.checks if c.run))

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks if c.verdict != "skipped"), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks if c.verdict != "skipped"), default=0.0)

    @property
    def tolerance(self) -> tuple[float | None, float | None]:
        c = next((c for c in self.checks if c.rtol is not None), self.checks[0])
        return c.rtol, c.atol

    @property
    def reasons(self) -> list[str]:
        return sorted({c.reason for c in self.checks if c.reason})

    @property
    def first(self) -> Check:
        return self.checks[0]

    @property
    def measured(self) -> bool:
        """Whether the check compares numbers against a tolerance (vs pass/fail only)."""
        return any(c.rtol is not None or c.atol is not None for c in self.checks)

    @property
    def zero_over_zero(self) -> bool:
        return any(c.zero_over_zero for c in self.checks)

    @property
    def figures(self) -> list[tuple[str, object]]:
        """The named figures the checks measured (label prefixed by the case when several)."""
        out = []
        for c in self.checks:
            for label, v in c.figures.items():
                out.append((label, v))
        return out

    @property
    def scalar_figures(self) -> list[tuple[str, object]]:
        """The figures shown as text: numbers, booleans, short text."""
        return [(k, v) for k, v in self.figures if not isinstance(v, list)]

    @property
    def curves(self) -> list[tuple[str, list[float]]]:
        """The figures that are series of numbers (a loss per epoch or step), drawn together
        as one line chart per check row."""
        return [(k, v) for k, v in self.figures if isinstance(v, list)]


def within(num: Bench | None, den: Bench | None) -> PairRatio | None:
    """``num``'s time over ``den``'s within one run: from paired rounds when the run timed them
    together, else the ratio of the medians (``method`` "medians", no interval)."""
    if num is None or den is None:
        return None
    paired = num.ratio_to(den)
    if paired is not None:
        return paired
    if num.timing.median > 0 and den.timing.median > 0:
        return PairRatio(num.timing.median / den.timing.median, method="medians")
    return None


@dataclass
class PerfRow:
    run: int
    run_label: str
    dtype: str
    pass_: str
    size: str
    cells: dict[str, Bench | None]
    peaks: dict[str, dict]
    # implementation -> the reason the benchmark gave for not timing it in this group
    not_run: dict[str, str] = field(default_factory=dict)

    @property
    def size_label(self) -> str:
        """The size as a headline names it: a sweep point's name ("s4") says nothing alone,
        so it comes with its shapes ("s4 (x: 65536)")."""
        b = self.any_bench
        if self.size in ("small", "medium", "large") or b is None or not b.shapes:
            return self.size
        shapes = ", ".join(f"{k}: {'×'.join(str(n) for n in s)}" for k, s in b.shapes.items())
        return f"{self.size} ({shapes})"

    def median(self, impl: str) -> float | None:
        b = self.cells.get(impl)
        return b.timing.median if b else None

    def pair(self, num: str, den: str) -> PairRatio | None:
        return within(self.cells.get(num), self.cells.get(den))

    def speed(self, num: str, den: str) -> float | None:
        p = self.pair(num, den)
        return p.value if p else None

    def noisy(self, *impls: str) -> list[Bench]:
        """The benchmarks among ``impls`` whose timings were not stable."""
        return [b for i in impls if (b := self.cells.get(i)) is not None and b.noisy]

    def noise_text(self, *impls: str) -> str:
        return "; ".join(f"{b.impl}: {', '.join(b.reasons)}" for b in self.noisy(*impls))

    @property
    def any_bench(self) -> Bench | None:
        return next((b for b in self.cells.values() if b is not None), None)

    @property
    def compile_s(self) -> float | None:
        b = self.cells.get(NUMERATOR)
        return b.compile_s if b else None

    @property
    def first_call_s(self) -> float | None:
        b = self.cells.get(NUMERATOR)
        return b.first_call_s if b else None

    @property
    def compiled(self) -> Bench | None:
        """The torch-compile benchmark of the row (None when not timed)."""
        return self.cells.get(COMPILED)


# A call is dispatch-bound (its time mostly the fixed cost of a call: argument checks,
# dispatch, a parallel launch) when its median is below this, or below twice the line's
# fastest stable median: see ``fit_mask``.
DISPATCH_FLOOR_S = 20e-6
DISPATCH_FACTOR = 2.0


def fit_mask(times: list[float], noisy: list[bool]) -> tuple[list[bool], str]:
    """Which points of a scaling line the exponent is fitted over, and why a line is not fitted.

    A point is left out when its benchmark was noisy, or when it is **dispatch-bound**: its
    median is under ``DISPATCH_FLOOR_S`` (20 µs) or under ``DISPATCH_FACTOR`` (2) x the fastest
    stable median of the line (the smallest size's, normally). Such a call spends up to half
    its time or more on what every call costs whatever its size, so its time says little about
    how the work grows; a fit through it flattens the exponent. The smallest size is therefore
    never fitted. With fewer than two points left the line is not fitted, and the note says
    why ("not fitted: dispatch-bound", "not fitted: noisy", or "not fitted: too few sizes"
    when only the smallest was left out and its call is not dispatch-bound: a line of two
    sizes, 340 µs and 25 ms, is not dispatch-bound).
    """
    stable = [t for t, n in zip(times, noisy, strict=True) if not n]
    if not stable:
        return [False] * len(times), "not fitted: noisy"
    bound = max(DISPATCH_FLOOR_S, DISPATCH_FACTOR * min(stable))
    mask = [not n and t >= bound for t, n in zip(times, noisy, strict=True)]
    if sum(mask) >= 2:
        return mask, ""
    fittable_if_quiet = sum(t >= bound for t in times)
    left_out = [t for t, n in zip(times, noisy, strict=True) if not n and t < bound]
    if fittable_if_quiet >= 2:
        why = "noisy"
    elif left_out == [min(stable)] and min(stable) >= DISPATCH_FLOOR_S:
        # Only the reference point was left out, and it is no dispatch-bound call: the line
        # has too few sizes (two sizes give one point past the smallest).
        why = "too few sizes (the smallest is never fitted)"
    else:
        why = "dispatch-bound"
    return mask, f"not fitted: {why}"


@dataclass
class Line:
    """One curve of a scaling chart: a run x implementation x dtype x pass over sizes."""

    run: int
    impl: str
    dtype: str
    pass_: str
    sizes: list[float]
    times: list[float]
    size_names: list[str]
    exponent: float | None
    label: str = ""
    noisy: list[bool] = field(default_factory=list)
    fitted: list[bool] = field(default_factory=list)
    fit_note: str = ""
    eager: bool = False  # torch-compile without a graph at some size: torch's eager times


@dataclass
class Algo:
    name: str
    family: str
    anchor: str
    checks: list[Check] = field(default_factory=list)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    perf: list[PerfRow] = field(default_factory=list)
    impls: list[str] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    size_unit: str = "input elements"
    crossings: list[str] = field(default_factory=list)
    chart: str = ""
    legend: list[dict] = field(default_factory=list)
    size_order: list[str] = field(default_factory=list)

    @property
    def chart_dtype(self) -> str | None:
        """The dtype the chart draws: float32 when present (what benchmarks time by default)."""
        dtypes = sorted({ln.dtype for ln in self.lines if ln.sizes})
        if not dtypes:
            return None
        return "float32" if "float32" in dtypes else dtypes[0]

    @property
    def fit_notes(self) -> list[str]:
        """The chart's lines that got no exponent, and why."""
        runs = {ln.run for ln in self.lines}
        return [f"{ln.impl} {ln.pass_}{f' (run {ln.run + 1})' if len(runs) > 1 else ''}: "
                f"{ln.fit_note}" for ln in self.lines
                if ln.fit_note and ln.sizes and ln.dtype == self.chart_dtype]

    @property
    def check_rows(self) -> list[Cell]:
        """The checks grouped by check x dtype x device x run (invalid-input cases
        together; with several correctness runs, each run's result on its own row)."""
        groups: dict[tuple[str, str, str, str], list[Check]] = {}
        for c in self.checks:
            groups.setdefault((c.check, c.dtype, c.device, c.run), []).append(c)
        return [Cell(v) for v in groups.values()]

    @property
    def status(self) -> str:
        if not self.checks:
            return "not run"
        return min((c.verdict for c in self.checks), key=lambda v: _RANK[v])

    @property
    def worst(self) -> float:
        ran = [c.worst for c in self.checks if c.verdict != "skipped"]
        return max(ran) if ran else 0.0

    def ratios(self, run: int) -> list[tuple[str, str, PairRatio, PerfRow]]:
        """(size, pass, numba/torch-cpu, row) of a run."""
        out = []
        for r in self.perf:
            p = r.pair(NUMERATOR, DENOMINATOR)
            if r.run == run and p is not None:
                out.append((r.size, r.pass_, p, r))
        return out

    @property
    def peers(self) -> list[str]:
        """Implementations numba is compared with beside torch-cpu and torch-cuda: torch-compile
        and the spec's peers (scikit-learn, torch's fused optimizers, ...). numba-cuda is not
        one: it is compared with torch-cuda (timed with it, by CUDA events)."""
        return [i for i in self.impls if i not in (NUMERATOR, DENOMINATOR, *GPU_IMPLS)]

    @property
    def overview_peer(self) -> str:
        """The implementation the overview's ratio column divides by: torch-cpu, or for an
        algorithm without a torch twin (classical ML) its first peer that was timed beside
        numba (scikit-learn, scipy): "not run" there would say a benchmark failed."""
        if any(r.pair(NUMERATOR, DENOMINATOR) for r in self.perf):
            return DENOMINATOR
        return next((i for i in self.peers if i != "torch-compile"
                     and any(r.pair(NUMERATOR, i) for r in self.perf)), DENOMINATOR)

    def not_run_reason(self, impl: str) -> str | None:
        """The first reason a benchmark gave for not timing ``impl`` (None: it never said)."""
        return next((row.not_run[impl] for row in self.perf if impl in row.not_run), None)

    @property
    def eager_in_disguise(self) -> bool:
        """Whether any torch-compile time of the algorithm is torch's eager path (no graph)."""
        return any(b.eager_in_disguise for row in self.perf for b in row.cells.values() if b)

    @property
    def compile_times(self) -> list[float]:
        """torch.compile's compile times (first call less the second) over sizes and passes."""
        return [row.compiled.compile_s for row in self.perf
                if row.compiled is not None and row.compiled.compile_s is not None]

    def headline_ratio(self, run: int, den: str = DENOMINATOR,
                       ) -> list[tuple[str, PairRatio, PerfRow]]:
        """numba/``den`` per size for the overview: forward+backward, else forward; sizes in
        the order of their problem size (rows are already in that order)."""
        if den != DENOMINATOR:
            rows = [(r.size, r.pass_, p, r) for r in self.perf
                    if r.run == run and (p := r.pair(NUMERATOR, den)) is not None]
            passes = {p for _, p, _, _ in rows}
            want = "forward+backward" if "forward+backward" in passes else "forward"
            seen = {}
            for size, p, ratio, row in rows:
                if p == want and size not in seen:
                    seen[size] = (ratio, row)
            return [(size, *seen[size]) for size in seen]
        rows = self.ratios(run)
        passes = {p for _, p, _, _ in rows}
        want = "forward+backward" if "forward+backward" in passes else "forward"
        seen = {}
        for size, p, ratio, row in rows:
            if p == want and size not in seen:
                seen[size] = (ratio, row)
        return [(size, *seen[size]) for size in seen]


@dataclass
class Report:
    title: str
    correctness: CorrectnessSet | None
    runs: list[BenchRun]
    algos: list[Algo]
    columns: list[tuple[str, str]]
    families: list[str]
    impls: list[str]
    comparisons: list[Comparison]
    config: GateConfig
    notes: list[str] = field(default_factory=list)
    other_column: tuple[str, str] = OTHER_CHECKS

    # -- how the machine was ---------------------------------------------------------------
    @property
    def run_parts(self) -> list[tuple[str, BenchRun]]:
        """Every benchmark file as loaded, with a name to mention it by: the run's label, and
        the file's name when the run was merged from several (each measured its own load and
        peaks)."""
        out = []
        for r in self.runs:
            for p in r.parts or [r]:
                out.append((f"{r.label} ({Path(p.path).name})" if r.parts else r.label, p))
        return out

    @property
    def busy_runs(self) -> list[tuple[str, Load]]:
        """Runs (files) whose benchmark said the machine was busy (load average vs CPUs)."""
        return [(name, p.env.load) for name, p in self.run_parts
                if p.env.load and p.env.load.busy]

    @property
    def unstable_peaks(self) -> list[tuple[str, BenchRun, str]]:
        return [(name, p, d) for name, p in self.run_parts for d in sorted(p.env.peaks)
                if p.env.peak_stable(d) is False]

    @property
    def multi_correctness(self) -> bool:
        return bool(self.correctness and self.correctness.multi)

    @property
    def noisy_benchmarks(self) -> list[Bench]:
        return [b for r in self.runs for b in r.benchmarks if b.noisy]

    @property
    def ratio_methods(self) -> set[str]:
        """How the shown numba / torch-cpu ratios were obtained: "paired", "medians"."""
        return {p.method for a in self.algos for row in a.perf
                if (p := row.pair(NUMERATOR, DENOMINATOR)) is not None}

    # -- the verdict at the top --------------------------------------------------------------
    @property
    def checks(self) -> list[Check]:
        return self.correctness.checks if self.correctness else []

    @property
    def counts(self) -> Counter:
        return Counter(c.verdict for c in self.checks)

    @property
    def status(self) -> str:
        if self.correctness is None:
            return "not run"
        if self.counts["failed"]:
            return "failed"
        if not self.checks:
            return "not run"
        return "passed"

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "failed"]

    @property
    def failed_algorithms(self) -> list[str]:
        return sorted({c.algorithm for c in self.failures})

    @property
    def skip_reasons(self) -> list[tuple[str, int]]:
        return Counter(c.reason or "no reason given" for c in self.checks
                       if c.verdict == "skipped").most_common()

    @property
    def n_benchmarks(self) -> int:
        return sum(len(r.benchmarks) for r in self.runs)

    @property
    def sizes(self) -> list[str]:
        """Every size name of the runs: small, medium, large, then s1, s2, ... by name."""
        return sorted({b.size for r in self.runs for b in r.benchmarks}, key=size_key)

    def extremes(self, k: int = 3) -> tuple[list, list]:
        """The k fastest and slowest numba / torch-cpu ratios over all runs, as (ratio, algo,
        row, PairRatio); rows where either side was noisy are never among them."""
        items = []
        for a in self.algos:
            for row in a.perf:
                p = row.pair(NUMERATOR, DENOMINATOR)
                if p is not None and not row.noisy(NUMERATOR, DENOMINATOR):
                    items.append((p.value, a, row, p))
        items.sort(key=lambda t: t[0])
        # With fewer than 2k pairs, each is listed once: the faster half, then the slower.
        n_fast = min(k, (len(items) + 1) // 2)
        return items[:n_fast], items[n_fast:][::-1][:k]

    @property
    def excluded_from_extremes(self) -> int:
        return sum(1 for a in self.algos for row in a.perf
                   if row.pair(NUMERATOR, DENOMINATOR) is not None
                   and row.noisy(NUMERATOR, DENOMINATOR))

    @property
    def missing_benchmarks(self) -> int:
        """Benchmarks a run lacks although it ran that implementation elsewhere (crashed or
        deselected); implementations a run never had (no GPU) do not count, nor those the
        benchmark said it could not time (``explained_not_run``)."""
        has = [{b.impl for b in run.benchmarks} for run in self.runs]
        return sum(1 for a in self.algos for r in a.perf for impl, b in r.cells.items()
                   if b is None and impl in has[r.run] and impl not in r.not_run)

    @property
    def explained_not_run(self) -> int:
        """Implementations the benchmarks could not time and said why (machine_info)."""
        return sum(len(r.not_run) for r in self.runs)

    @property
    def has_compiled(self) -> bool:
        return COMPILED in self.impls

    @property
    def eager_algorithms(self) -> list[Algo]:
        """Algorithms whose torch-compile time is eager in disguise (dynamo made no graph)."""
        return [a for a in self.algos if a.eager_in_disguise]


def anchor(name: str, taken: set[str]) -> str:
    base = "algo-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


def size_order(benches: list[Bench]) -> list[str]:
    """An algorithm's size names, smallest problem first: by the input elements of their
    shapes (else FLOPs, else bytes, from the cost model), and by name where none is known
    (small < medium < large, s1 < s2 < ... < s10)."""
    measure: dict[str, dict[str, float]] = defaultdict(dict)
    for b in benches:
        for what, v in (("elements", b.elements), ("flops", b.flops), ("bytes", b.bytes)):
            if v:
                measure[b.size][what] = max(measure[b.size].get(what, 0.0), v)
    names = {b.size for b in benches}
    what = next((w for w in ("elements", "flops", "bytes")
                 if all(w in measure[n] for n in names)), None)

    def key(name: str):
        return (measure[name][what] if what else 0.0, size_key(name))
    return sorted(names, key=key)


def _problem_size(b: Bench) -> tuple[float | None, str]:
    if b.elements:
        return b.elements, "input elements"
    if b.flops:
        return b.flops, "FLOPs"
    if b.bytes:
        return b.bytes, "bytes"
    return None, ""


def _lines(algo: Algo, runs: list[BenchRun]) -> None:
    groups: dict[tuple, list[Bench]] = defaultdict(list)
    units = set()
    for row in algo.perf:
        for impl, b in row.cells.items():
            if b is not None:
                groups[(row.run, impl, row.dtype, row.pass_)].append(b)
    for b in (b for bs in groups.values() for b in bs):
        units.add(_problem_size(b)[1])
    # One unit for the whole chart: elements when every point has them, else the next best.
    unit = next((u for u in ("input elements", "FLOPs", "bytes") if units == {u}), None)
    if unit is None:
        unit = "size step"
    algo.size_unit = unit
    rank = {name: i for i, name in enumerate(algo.size_order)}
    for (run, impl, dtype, pass_), bs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], order_key(kv[0][1], IMPL_ORDER),
                                            kv[0][2], order_key(kv[0][3], PASS_ORDER))):
        bs.sort(key=lambda b: rank.get(b.size, len(rank)))
        if unit == "size step":
            xs = [float(4 ** rank.get(b.size, len(rank))) for b in bs]
        else:
            xs = [_problem_size(b)[0] for b in bs]
        ts = [b.timing.median for b in bs]
        noisy = [b.noisy for b in bs]
        fitted, note = fit_mask(ts, noisy)
        exponent = None
        if unit == "size step":
            note = "not fitted: no problem size known"
        elif not note:
            exponent = power_fit([x for x, m in zip(xs, fitted, strict=True) if m],
                                 [t for t, m in zip(ts, fitted, strict=True) if m])
        algo.lines.append(Line(run, impl, dtype, pass_, xs, ts, [b.size for b in bs],
                               exponent, noisy=noisy, fitted=fitted, fit_note=note,
                               eager=any(b.eager_in_disguise for b in bs)))
    # Where numba and torch-cpu cross over, per run x dtype x pass, over the sizes where
    # neither was noisy.
    by = {(ln.run, ln.impl, ln.dtype, ln.pass_): ln for ln in algo.lines}
    for (run, impl, dtype, pass_), ln in by.items():
        other = by.get((run, DENOMINATOR, dtype, pass_))
        if impl != NUMERATOR or other is None or unit == "size step":
            continue
        common = sorted(x for x in set(ln.sizes) & set(other.sizes)
                        if not ln.noisy[ln.sizes.index(x)]
                        and not other.noisy[other.sizes.index(x)])
        if len(common) < 2:
            continue
        ta = [ln.times[ln.sizes.index(x)] for x in common]
        tb = [other.times[other.sizes.index(x)] for x in common]
        for x in crossovers(common, ta, tb):
            where = f"{runs[run].label.split(' (')[0]} " if len(runs) > 1 else ""
            below = "below" if ta[0] < tb[0] else "above"
            algo.crossings.append(f"{where}{pass_} {dtype}: numba = torch-cpu at ≈ {x:.2g} "
                                  f"{unit}, numba faster {below}")


def build_report(correctness: CorrectnessSet | CorrectnessRun | None, runs: list[BenchRun],
                 config: GateConfig, allow_cross_machine: bool = False,
                 title: str = "refbench report") -> Report:
    """``correctness``: every correctness run (merge.merge_correctness) or one file as
    loaded; ``runs``: the benchmark runs (merge.merge_benches), the first the baseline."""
    if isinstance(correctness, CorrectnessRun):
        correctness = CorrectnessSet([correctness])
    for i, r in enumerate(runs):
        gpu = (r.env.gpu or {}).get("name")
        what = r.env.node or Path(r.sources[0]).stem
        r.label = f"run {i + 1} ({what})" if len(runs) > 1 else "run"
        r.title = r.label + (f", {gpu}" if gpu else "")
    algos: dict[str, Algo] = {}

    def algo(name: str, family: str) -> Algo:
        if name not in algos:
            algos[name] = Algo(name=name, family=family, anchor="")
        a = algos[name]
        if a.family == "unknown" and family != "unknown":
            a.family = family
        return a

    for c in correctness.checks if correctness else []:
        algo(c.algorithm, c.family).checks.append(c)
    for r in runs:
        for b in r.benchmarks:
            algo(b.algorithm, b.family)
        for n in r.not_run:
            algo(n.algorithm, "unknown")

    dtypes = sorted({c.dtype for c in correctness.checks} if correctness else set(),
                    key=lambda d: (d == "", d))
    # The overview has a column per dtype for each kind of check every spec runs (forward,
    # gradient, ...). The checks only some algorithms have (a real-data accuracy, a
    # trajectory, a convergence) share one column: a column each made the table 57 columns
    # wide, mostly dashes, and pushed the timings out of sight.
    present = {c.check for c in correctness.checks} if correctness else set()
    check_names = [ch for ch in CHECK_ORDER if ch in present]
    columns = [(ch, dt) for ch in check_names for dt in dtypes
               if correctness and any(c.check == ch and c.dtype == dt
                                      for c in correctness.checks)]
    if present - set(CHECK_ORDER):
        columns.append(OTHER_CHECKS)
    all_impls: set[str] = set()
    taken: set[str] = set()
    ordered = sorted(algos.values(), key=lambda a: (a.family, a.name))
    for a in ordered:
        a.anchor = anchor(a.name, taken)
        a.checks.sort(key=lambda c: (order_key(c.check, CHECK_ORDER), c.dtype, c.device,
                                     c.run, c.nodeid))
        for col in columns:
            mine = ([c for c in a.checks if c.check not in CHECK_ORDER] if col == OTHER_CHECKS
                    else [c for c in a.checks if (c.check, c.dtype) == col])
            if mine:
                a.cells[col] = Cell(mine)
        # Performance: every (run, dtype, pass, size) any run has for this algorithm, with a
        # "not run" cell for each implementation that run lacks there.
        impls = sorted({b.impl for r in runs for b in r.benchmarks if b.algorithm == a.name}
                       | {n.impl for r in runs for n in r.not_run if n.algorithm == a.name},
                       key=lambda i: order_key(i, IMPL_ORDER))
        a.size_order = size_order([b for r in runs for b in r.benchmarks
                                   if b.algorithm == a.name])
        a.impls = impls
        all_impls.update(impls)
        for ri, r in enumerate(runs):
            mine = [b for b in r.benchmarks if b.algorithm == a.name]
            if not mine and not any(n.algorithm == a.name for n in r.not_run):
                continue
            if a.family == "unknown":
                a.family = next((b.family for b in mine if b.family != "unknown"), a.family)
            rank = {name: i for i, name in enumerate(a.size_order)}
            slots = sorted({(b.dtype, b.pass_, b.size) for r2 in runs for b in r2.benchmarks
                            if b.algorithm == a.name}
                           | {(n.dtype, n.pass_, n.size) for r2 in runs for n in r2.not_run
                              if n.algorithm == a.name},
                           key=lambda s: (s[0], order_key(s[1], PASS_ORDER),
                                          rank.get(s[2], len(rank))))
            for dtype, pass_, size in slots:
                cells = {i: r.find((a.name, i, size, dtype, pass_)) for i in impls}
                # A group's implementations come from one file (shards keep groups whole):
                # its peaks are that file's.
                some = next((b for b in cells.values() if b is not None), None)
                peaks = r.env_of(some).peaks if some else r.env.peaks
                why = {i: w for i in impls if cells[i] is None
                       and (w := r.why_not_run((a.name, i, size, dtype, pass_)))}
                a.perf.append(PerfRow(ri, r.label, dtype, pass_, size, cells, peaks, why))
        _lines(a, runs)

    notes = []
    for r in runs:
        if r.parts:
            notes.append(f"{r.label}: merged from {len(r.parts)} files of one run (same "
                         f"commit, machine and versions): {', '.join(r.sources)}")
        if not r.benchmarks:
            notes.append(f"{r.label}: {r.path} holds no benchmarks")
        elif not any(b.timing.raw for b in r.benchmarks):
            notes.append(f"{r.label}: {r.path} has no raw timings (stats.data); intervals use "
                         f"its quartiles")
    comparisons = [compare_runs(runs[0], r, config, allow_cross_machine) for r in runs[1:]]
    ordered.sort(key=lambda a: (a.family, a.name))
    return Report(title=title, correctness=correctness, runs=runs, algos=ordered,
                  columns=columns, families=sorted({a.family for a in ordered}),
                  impls=sorted(all_impls, key=lambda i: order_key(i, IMPL_ORDER)),
                  comparisons=comparisons, config=config, notes=notes)


def achieved(b: Bench, peaks: dict[str, dict]) -> dict[str, float | None]:
    """GFLOP/s and GB/s of a benchmark, and their fraction of the machine's measured peaks;
    ``peak_stable`` is False when the peaks were flagged as not stable (the fractions are then
    shown marked), None when the file does not say."""
    t = b.timing.median
    out: dict[str, float | None] = {"flops": None, "bytes": None, "flops_frac": None,
                                    "bytes_frac": None}
    peak = peaks.get(b.device) or {}
    out["peak_stable"] = peak.get("stable") if isinstance(peak.get("stable"), bool) else None
    for key, pkey in (("flops", "flops_per_s"), ("bytes", "bytes_per_s")):
        amount = getattr(b, key)
        if amount and t > 0:
            out[key] = amount / t
            p = peak.get(pkey)
            if isinstance(p, (int, float)) and p > 0 and math.isfinite(p):
                out[key + "_frac"] = out[key] / p
    return out
