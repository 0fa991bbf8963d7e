"""From loaded runs to what the report shows: the verdict, per-algorithm correctness and
performance, scaling fits, and comparisons. No HTML here (render.py), no drawing (charts.py).
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
    IMPL_ORDER,
    PASS_ORDER,
    SIZE_ORDER,
    Bench,
    BenchRun,
    Check,
    CorrectnessRun,
    order_key,
)
from reports.stats import crossovers, power_fit

_RANK = {"failed": 0, "passed": 1, "skipped": 2, "not run": 3}


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


@dataclass
class PerfRow:
    run: int
    run_label: str
    dtype: str
    pass_: str
    size: str
    cells: dict[str, Bench | None]
    peaks: dict[str, dict]

    def median(self, impl: str) -> float | None:
        b = self.cells.get(impl)
        return b.timing.median if b else None

    def speed(self, num: str, den: str) -> float | None:
        a, b = self.median(num), self.median(den)
        return a / b if a and b else None

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

    @property
    def check_rows(self) -> list[Cell]:
        """The checks grouped by check x dtype x device (invalid-input cases together)."""
        groups: dict[tuple[str, str, str], list[Check]] = {}
        for c in self.checks:
            groups.setdefault((c.check, c.dtype, c.device), []).append(c)
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

    def ratios(self, run: int) -> list[tuple[str, str, float]]:
        """(size, pass, numba/torch-cpu) of a run, forward+backward first when present."""
        out = []
        for r in self.perf:
            s = r.speed(NUMERATOR, DENOMINATOR)
            if r.run == run and s is not None:
                out.append((r.size, r.pass_, s))
        return out

    def headline_ratio(self, run: int) -> list[tuple[str, float]]:
        """numba/torch-cpu per size for the overview: forward+backward, else forward."""
        rows = self.ratios(run)
        passes = {p for _, p, _ in rows}
        want = "forward+backward" if "forward+backward" in passes else "forward"
        seen = {}
        for size, p, s in rows:
            if p == want and size not in seen:
                seen[size] = s
        return [(size, seen[size]) for size in sorted(seen, key=lambda s: order_key(s, SIZE_ORDER))]


@dataclass
class Report:
    title: str
    correctness: CorrectnessRun | None
    runs: list[BenchRun]
    algos: list[Algo]
    columns: list[tuple[str, str]]
    families: list[str]
    impls: list[str]
    comparisons: list[Comparison]
    config: GateConfig
    notes: list[str] = field(default_factory=list)

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

    def extremes(self, k: int = 3) -> tuple[list, list]:
        """The k fastest and slowest numba / torch-cpu ratios over all runs."""
        items = []
        for a in self.algos:
            for row in a.perf:
                s = row.speed(NUMERATOR, DENOMINATOR)
                if s is not None:
                    items.append((s, a, row))
        items.sort(key=lambda t: t[0])
        return items[:k], items[::-1][:k]

    @property
    def missing_benchmarks(self) -> int:
        """Benchmarks a run lacks although it ran that implementation elsewhere (crashed or
        deselected); implementations a run never had (no GPU) do not count."""
        has = [{b.impl for b in run.benchmarks} for run in self.runs]
        return sum(1 for a in self.algos for r in a.perf for impl, b in r.cells.items()
                   if b is None and impl in has[r.run])


def anchor(name: str, taken: set[str]) -> str:
    base = "algo-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


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
    for (run, impl, dtype, pass_), bs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], order_key(kv[0][1], IMPL_ORDER),
                                            kv[0][2], order_key(kv[0][3], PASS_ORDER))):
        bs.sort(key=lambda b: order_key(b.size, SIZE_ORDER))
        if unit == "size step":
            xs = [float(4 ** order_key(b.size, SIZE_ORDER)[0]) for b in bs]
        else:
            xs = [_problem_size(b)[0] for b in bs]
        ts = [b.timing.median for b in bs]
        algo.lines.append(Line(run, impl, dtype, pass_, xs, ts, [b.size for b in bs],
                               power_fit(xs, ts) if unit != "size step" else None))
    # Where numba and torch-cpu cross over, per run x dtype x pass.
    by = {(ln.run, ln.impl, ln.dtype, ln.pass_): ln for ln in algo.lines}
    for (run, impl, dtype, pass_), ln in by.items():
        other = by.get((run, DENOMINATOR, dtype, pass_))
        if impl != NUMERATOR or other is None or unit == "size step":
            continue
        common = sorted(set(ln.sizes) & set(other.sizes))
        if len(common) < 2:
            continue
        ta = [ln.times[ln.sizes.index(x)] for x in common]
        tb = [other.times[other.sizes.index(x)] for x in common]
        for x in crossovers(common, ta, tb):
            where = f"{runs[run].label.split(' (')[0]} " if len(runs) > 1 else ""
            below = "below" if ta[0] < tb[0] else "above"
            algo.crossings.append(f"{where}{pass_} {dtype}: numba = torch-cpu at ≈ {x:.2g} "
                                  f"{unit}, numba faster {below}")


def build_report(correctness: CorrectnessRun | None, runs: list[BenchRun], config: GateConfig,
                 allow_cross_machine: bool = False, title: str = "refbench report") -> Report:
    for i, r in enumerate(runs):
        gpu = (r.env.gpu or {}).get("name")
        what = r.env.node or Path(r.path).stem
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

    dtypes = sorted({c.dtype for c in correctness.checks} if correctness else set(),
                    key=lambda d: (d == "", d))
    check_names = sorted({c.check for c in correctness.checks} if correctness else set(),
                         key=lambda c: order_key(c, CHECK_ORDER))
    columns = [(ch, dt) for ch in check_names for dt in dtypes
               if correctness and any(c.check == ch and c.dtype == dt
                                      for c in correctness.checks)]
    all_impls: set[str] = set()
    taken: set[str] = set()
    ordered = sorted(algos.values(), key=lambda a: (a.family, a.name))
    for a in ordered:
        a.anchor = anchor(a.name, taken)
        a.checks.sort(key=lambda c: (order_key(c.check, CHECK_ORDER), c.dtype, c.device,
                                     c.nodeid))
        for col in columns:
            mine = [c for c in a.checks if (c.check, c.dtype) == col]
            if mine:
                a.cells[col] = Cell(mine)
        # Performance: every (run, dtype, pass, size) any run has for this algorithm, with a
        # "not run" cell for each implementation that run lacks there.
        impls = sorted({b.impl for r in runs for b in r.benchmarks if b.algorithm == a.name},
                       key=lambda i: order_key(i, IMPL_ORDER))
        a.impls = impls
        all_impls.update(impls)
        for ri, r in enumerate(runs):
            mine = [b for b in r.benchmarks if b.algorithm == a.name]
            if not mine:
                continue
            if a.family == "unknown":
                a.family = next((b.family for b in mine if b.family != "unknown"), a.family)
            slots = sorted({(b.dtype, b.pass_, b.size) for r2 in runs for b in r2.benchmarks
                            if b.algorithm == a.name},
                           key=lambda s: (s[0], order_key(s[1], PASS_ORDER),
                                          order_key(s[2], SIZE_ORDER)))
            for dtype, pass_, size in slots:
                cells = {i: r.find((a.name, i, size, dtype, pass_)) for i in impls}
                a.perf.append(PerfRow(ri, r.label, dtype, pass_, size, cells, r.env.peaks))
        _lines(a, runs)

    notes = []
    for r in runs:
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
    """GFLOP/s and GB/s of a benchmark, and their fraction of the machine's measured peaks."""
    t = b.timing.median
    out: dict[str, float | None] = {"flops": None, "bytes": None, "flops_frac": None,
                                    "bytes_frac": None}
    peak = peaks.get(b.device) or {}
    for key, pkey in (("flops", "flops_per_s"), ("bytes", "bytes_per_s")):
        amount = getattr(b, key)
        if amount and t > 0:
            out[key] = amount / t
            p = peak.get(pkey)
            if isinstance(p, (int, float)) and p > 0 and math.isfinite(p):
                out[key + "_frac"] = out[key] / p
    return out
