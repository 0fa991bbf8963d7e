"""Two runs side by side: a baseline and a candidate.

- Absolute times, benchmark by benchmark: candidate median / baseline median with a confidence
  interval and a verdict (faster / slower / no significant change). Only when both runs come
  from the same machine, or when the caller passes ``allow_cross_machine``: a different CPU or
  GPU is not a regression.
- Within-run ratios (numba / torch-cpu), which cancel the machine: how the ratio of each
  algorithm x size x dtype x pass changed, with a confidence interval; a significant change
  beyond the threshold is a regression (what the gate fails on). When both runs timed the pair
  in interleaved rounds, the change is the ratio of the medians of the two runs' per-round
  ratios, with a bootstrap interval over both runs' rounds; otherwise the ratio of ratios of
  medians (older files). A pair that was noisy in either run is not judged ("not gated:
  noisy"): noise never fails the gate.
- Correctness: checks whose verdict changed, appeared or disappeared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reports.config import GateConfig
from reports.loading import (
    IMPL_ORDER,
    PASS_ORDER,
    Bench,
    BenchRun,
    Check,
    CorrectnessRun,
    PairRatio,
    order_key,
    size_key,
)
from reports.stats import Ratio, ratio, ratio_of_ratios

# The within-run ratio: the reference over the eager twin on the same CPU.
NUMERATOR, DENOMINATOR = "numba", "torch-cpu"


@dataclass
class AbsChange:
    base: Bench
    cand: Bench
    change: Ratio  # candidate / baseline median

    @property
    def noisy(self) -> bool:
        """Noisy timings in either run: the change is shown but not judged."""
        return self.base.noisy or self.cand.noisy

    @property
    def verdict(self) -> str:
        return "not judged: noisy" if self.noisy else self.change.verdict


@dataclass
class RatioChange:
    algorithm: str
    family: str
    size: str
    dtype: str
    pass_: str
    base_ratio: float
    cand_ratio: float
    change: Ratio  # candidate ratio / baseline ratio
    max_slowdown: float
    method: str = "medians"  # "paired": per-round ratios of interleaved rounds in both runs
    noisy: list[str] = field(default_factory=list)  # why it is not judged, when noisy
    # Not empty when the torch twin timed is another program than the baseline's (their
    # digests differ, suites/digest.py): the ratio's denominator changed, not the reference.
    twin_changed: str = ""

    @property
    def gated(self) -> bool:
        return not self.noisy and not self.twin_changed

    @property
    def regression(self) -> bool:
        return self.gated and self.change.significant and self.change.value > self.max_slowdown

    @property
    def improvement(self) -> bool:
        return (self.gated and self.change.significant
                and self.change.value < 1.0 / self.max_slowdown)

    @property
    def verdict(self) -> str:
        if self.twin_changed:
            return "not gated: twin changed"
        if self.noisy:
            return "not gated: noisy"
        return "regression" if self.regression else self.change.verdict

    @property
    def label(self) -> str:
        return f"{self.algorithm} {self.size} {self.dtype} {self.pass_}"


@dataclass
class CheckChange:
    algorithm: str
    family: str
    check: str
    dtype: str
    device: str
    nodeid: str
    before: str  # verdict, or "absent"
    after: str
    message: str = ""


def machine_differences(a: BenchRun, b: BenchRun) -> list[str]:
    """What differs between the two runs' hardware; an unknown fact counts as different."""
    diffs = []
    ma, mb = a.env.machine, b.env.machine
    for key in ma:
        if ma[key] != mb[key]:
            diffs.append(f"{key}: {ma[key] or 'unknown'} vs {mb[key] or 'unknown'}")
    if all(v is None for v in (*ma.values(), *mb.values())):
        diffs.append("neither file says which machine it ran on")
    return diffs


def software_differences(a, b) -> list[str]:
    diffs = []
    for name in sorted(set(a.env.versions) | set(b.env.versions)):
        va, vb = a.env.versions.get(name), b.env.versions.get(name)
        if va != vb:
            diffs.append(f"{name} {va or 'absent'} -> {vb or 'absent'}")
    if a.env.commit != b.env.commit and (a.env.commit or b.env.commit):
        diffs.append(f"commit {(a.env.commit or '?')[:10]} -> {(b.env.commit or '?')[:10]}")
    return diffs


def _bench_sort(key):
    algorithm, impl, size, dtype, pass_ = key
    return (algorithm, size_key(size), dtype, order_key(pass_, PASS_ORDER),
            order_key(impl, IMPL_ORDER))


def within_run_ratios(run: BenchRun) -> dict[tuple, tuple[Bench, Bench]]:
    """(algorithm, size, dtype, pass) -> (numba bench, torch-cpu bench) of one run."""
    out = {}
    for b in run.benchmarks:
        if b.impl != NUMERATOR:
            continue
        den = run.find((b.algorithm, DENOMINATOR, b.size, b.dtype, b.pass_))
        if den is not None:
            out[(b.algorithm, b.size, b.dtype, b.pass_)] = (b, den)
    return out


def _noise(label: str, num: Bench, den: Bench) -> list[str]:
    """Why the pair num / den of one run is not to be judged (empty when it is sound).

    The pair's own judgement when the file has one (a noisy third implementation of the group
    does not silence this pair); else each side's."""
    pair = num.ratio_to(den)
    if pair is not None and pair.reasons is not None:
        return [f"{label} {num.impl}/{den.impl}: {'; '.join(pair.reasons)}"] if pair.reasons \
            else []
    return [f"{label} {b.impl}: {', '.join(b.reasons)}" for b in (num, den) if b.noisy]


def _replicate_limit(base: PairRatio | None, max_slowdown: float,
                     max_spread: float) -> tuple[float, list[str]]:
    """The slow-down allowed against a baseline pair, and why it is not gated (if so).

    A baseline made of several runs of one commit, each in its own process, knows how far the
    pair's within-run ratio moves between processes (code and memory placement: up to 1.4x at
    small sizes on the 2-core CI machine, however quiet). The change is measured against the
    first run, so the candidate may exceed the highest replicate by ``max_slowdown``; a pair
    spread wider than ``max_spread`` is not gated: one run cannot tell a slow-down from
    where the process happened to land."""
    reps = base.replicates if base is not None else None
    if not reps or len(reps) < 2:
        return max_slowdown, []
    spread = max(reps) / min(reps)
    if spread > max_spread:
        return max_slowdown, [f"baseline: the ratio moves {spread:.3g}x between its {len(reps)} "
                              f"runs of one commit (limit {max_spread:g}x): one run cannot "
                              f"tell a slow-down from process-to-process drift"]
    return max_slowdown * max(reps) / reps[0], []


def ratio_change(nb: Bench, db: Bench, nc: Bench, dc: Bench, alpha: float,
                 key: object = ()) -> tuple[Ratio, str, float, float]:
    """How the within-run ratio num/den changed from the baseline (b) to the candidate (c):
    (change, method, baseline ratio, candidate ratio)."""
    pb, pc = nb.ratio_to(db), nc.ratio_to(dc)
    if pb is not None and pc is not None and pb.dist is not None and pc.dist is not None:
        # Both runs' per-round ratios are known: the change is the ratio of their medians.
        return ratio(pc.dist, pb.dist, alpha, ("paired", key)), "paired", pb.value, pc.value
    if (pb is not None and pc is not None and None not in (pb.lo, pb.hi, pc.lo, pc.hi)
            and pb.level and pc.level):
        # Only the runs' intervals are known: combine them conservatively (both cover their
        # ratio with probability >= level, so both at once with >= level**2).
        value = pc.value / pb.value
        level = pb.level * pc.level
        return (Ratio(value, pc.lo / pb.hi, pc.hi / pb.lo, 1.0 - level), "paired",
                pb.value, pc.value)
    change = ratio_of_ratios(nc.timing, dc.timing, nb.timing, db.timing, alpha, key)
    return (change, "medians", nb.timing.median / db.timing.median,
            nc.timing.median / dc.timing.median)


def ratio_changes(base: BenchRun, cand: BenchRun, config: GateConfig) -> list[RatioChange]:
    rb, rc = within_run_ratios(base), within_run_ratios(cand)
    out = []
    for key in sorted(set(rb) & set(rc), key=lambda k: _bench_sort((k[0], "", *k[1:]))):
        (nb, db), (nc, dc) = rb[key], rc[key]
        th = config.threshold(nc.family, nc.algorithm)
        change, method, base_ratio, cand_ratio = ratio_change(nb, db, nc, dc, th.alpha, key)
        limit, drift = _replicate_limit(nb.ratio_to(db), th.max_slowdown,
                                        config.max_replicate_spread)
        out.append(RatioChange(nc.algorithm, nc.family, nc.size, nc.dtype, nc.pass_,
                               base_ratio, cand_ratio, change, limit, method,
                               _noise("baseline", nb, db) + drift
                               + _noise("candidate", nc, dc), _twin_changed(db, dc)))
    return out


def _twin_changed(base: Bench, cand: Bench) -> str:
    """Why the pair is not comparable when the two runs timed different twins (empty when they
    timed the same, or a run does not say: an older file is judged as before)."""
    if base.twin and cand.twin and base.twin != cand.twin:
        return (f"the {cand.impl} twin's code changed ({base.twin} in the baseline, "
                f"{cand.twin} now): the ratio's denominator is another program")
    return ""



@dataclass
class Comparison:
    base: BenchRun
    cand: BenchRun
    machine_diffs: list[str]
    software_diffs: list[str]
    allow_cross_machine: bool
    absolute: list[AbsChange]
    ratios: list[RatioChange]
    only_base: list[tuple] = field(default_factory=list)
    only_cand: list[tuple] = field(default_factory=list)

    @property
    def same_machine(self) -> bool:
        return not self.machine_diffs

    @property
    def judges_absolute(self) -> bool:
        return self.same_machine or self.allow_cross_machine

    @property
    def refusal(self) -> str:
        if self.judges_absolute:
            return ""
        return ("The two runs come from different machines (" + "; ".join(self.machine_diffs)
                + "): absolute times are shown but no change is called a regression or an "
                  "improvement. Within-run ratios (numba / torch-cpu) are compared instead. "
                  "Pass --allow-cross-machine to judge absolute times anyway.")

    def counts(self) -> dict[str, int]:
        c = {"slower": 0, "faster": 0, "no significant change": 0, "not judged": 0,
             "not judged: noisy": 0}
        if self.judges_absolute:
            for a in self.absolute:
                c[a.verdict] += 1
        c["regressions"] = sum(r.regression for r in self.ratios)
        c["improvements"] = sum(r.improvement for r in self.ratios)
        c["noisy"] = sum(bool(r.noisy) and not r.twin_changed for r in self.ratios)
        c["twin changed"] = sum(bool(r.twin_changed) for r in self.ratios)
        c["paired"] = sum(r.method == "paired" for r in self.ratios)
        return c


def compare_runs(base: BenchRun, cand: BenchRun, config: GateConfig,
                 allow_cross_machine: bool = False) -> Comparison:
    keys_b = {b.key for b in base.benchmarks}
    keys_c = {b.key for b in cand.benchmarks}
    absolute = []
    for key in sorted(keys_b & keys_c, key=_bench_sort):
        b, c = base.find(key), cand.find(key)
        th = config.threshold(c.family, c.algorithm)
        absolute.append(AbsChange(b, c, ratio(c.timing, b.timing, th.alpha, key)))
    absolute.sort(key=lambda a: -a.change.value)
    return Comparison(
        base=base, cand=cand, machine_diffs=machine_differences(base, cand),
        software_diffs=software_differences(base, cand),
        allow_cross_machine=allow_cross_machine, absolute=absolute,
        ratios=ratio_changes(base, cand, config),
        only_base=sorted(keys_b - keys_c, key=_bench_sort),
        only_cand=sorted(keys_c - keys_b, key=_bench_sort))


def compare_checks(base: CorrectnessRun, cand: CorrectnessRun) -> list[CheckChange]:
    """Checks whose verdict changed between the runs, and checks only one run has."""
    def index(run: CorrectnessRun) -> dict[str, Check]:
        return {c.nodeid or f"{c.algorithm}|{c.check}|{c.dtype}|{c.device}": c
                for c in run.checks}

    ib, ic = index(base), index(cand)
    out = []
    for key in sorted(set(ib) | set(ic)):
        b, c = ib.get(key), ic.get(key)
        before = b.verdict if b else "absent"
        after = c.verdict if c else "absent"
        if before == after:
            continue
        ref = c or b
        out.append(CheckChange(ref.algorithm, ref.family, ref.check, ref.dtype, ref.device,
                               ref.nodeid, before, after,
                               (c.message or c.reason) if c else ""))
    rank = {"failed": 0, "absent": 2, "skipped": 1, "passed": 3}
    out.sort(key=lambda ch: (rank.get(ch.after, 4), ch.algorithm, ch.check, ch.dtype))
    return out
