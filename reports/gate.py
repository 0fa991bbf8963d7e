"""The CI gate: fail on any correctness failure, or on a real slow-down.

A slow-down is judged on the within-run ratio numba / torch-cpu (both timed in the same
process, in interleaved rounds when the run says so, so the machine cancels) against the same
ratio in a baseline: it fails the gate when the change is significant (its ``1 - alpha``
interval excludes 1) AND larger than ``max_slowdown``. With paired rounds in both runs the
change compares the two runs' per-round ratios (see comparison.py). A pair that was noisy in
either run is listed as "not gated: noisy" and never fails the gate. Thresholds:
``[tool.refbench.gate]`` in pyproject.toml (see config.py).

A within-run ratio also moves between processes of one commit on one machine (code and memory
placement; at the small CI sizes, ~10 us calls, by up to 1.3x however quiet the machine), and no
interval of a single run can see that. So a regression can be put to **confirmation runs**:
later runs of the same benchmarks, each in a fresh process. A regression stands unless a
confirmation run that judged the pair (it was not noisy there) measured the change within the
limit; such a pair is listed as "not confirmed" with every run's figure, and does not fail the
gate. A real slow-down shows in every process; one that comes and goes with the process is below
what the gate can resolve, and the report still shows its ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reports.comparison import RatioChange, ratio_changes, within_run_ratios
from reports.config import GateConfig
from reports.format import ratio_text
from reports.loading import BenchRun, Check, CorrectnessRun
from reports.merge import CorrectnessSet


@dataclass
class GateResult:
    failures: list[Check]
    lines: list[str] = field(default_factory=list)
    regressions: list = field(default_factory=list)
    empty: bool = False
    # regressions of the first run that a confirmation run measured within the limit
    dismissed: list = field(default_factory=list)

    def summary(self) -> dict:
        """What a script needs to decide the next step (``gate --summary FILE``)."""
        return {"passed": self.ok, "empty": self.empty,
                "correctness_failures": len(self.failures),
                "regressions": [c.label for c in self.regressions],
                "regressed_pairs": [{"algorithm": c.algorithm, "size": c.size,
                                     "dtype": c.dtype, "pass": c.pass_}
                                    for c in self.regressions],
                "not_confirmed": [c.label for c in self.dismissed]}

    @property
    def ok(self) -> bool:
        return not self.failures and not self.regressions and not self.empty


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."


def _key(c: RatioChange) -> tuple[str, str, str, str]:
    return (c.algorithm, c.size, c.dtype, c.pass_)


def _confirm(regressions: list[RatioChange], baseline: BenchRun,
             confirmations: Sequence[BenchRun], config: GateConfig
             ) -> list[tuple[RatioChange, list[str], bool]]:
    """Each regression of the first run with what every confirmation run said of it, and
    whether one of them measured the change within the limit (then it does not stand)."""
    changes = [{_key(c): c for c in ratio_changes(baseline, run, config)}
               for run in confirmations]
    out = []
    for reg in regressions:
        said, cleared = [], False
        for i, by_key in enumerate(changes, 1):
            c = by_key.get(_key(reg))
            if c is None:
                said.append(f"re-run {i}: not measured")
            elif c.twin_changed:
                said.append(f"re-run {i}: twin changed, not judged")
            elif not c.gated:
                said.append(f"re-run {i}: noisy, not judged")
            else:
                said.append(f"re-run {i}: {c.cand_ratio:.3g}, {ratio_text(c.change)}")
                cleared |= c.change.value <= c.max_slowdown
        out.append((reg, said, cleared))
    return out


def gate(correctness: CorrectnessSet | CorrectnessRun, bench: BenchRun | None,
         baseline: BenchRun | None, config: GateConfig, baseline_note: str = "",
         confirmations: Sequence[BenchRun] = ()) -> GateResult:
    """``correctness``: every check counts, from every run (merge.py) when there are several.
    ``confirmations``: later runs of the same benchmarks, each in its own process; a regression
    of ``bench`` that one of them measured within the limit does not fail the gate."""
    runs = correctness.runs if isinstance(correctness, CorrectnessSet) else [correctness]
    checks = correctness.checks
    failures = [c for c in checks if c.verdict == "failed"]
    result = GateResult(failures=failures, empty=not checks)
    lines = result.lines
    n = {v: sum(c.verdict == v for c in checks) for v in ("passed", "failed", "skipped")}

    if not checks:
        lines.append(f"correctness: {correctness.path} holds no checks (did the run collect "
                     f"nothing?)")
    elif failures:
        algos = sorted({c.algorithm for c in failures})
        lines.append(f"correctness: {len(failures)} of {len(checks)} checks FAILED in "
                     f"{len(algos)} algorithm(s): {', '.join(algos[:10])}"
                     + (" ..." if len(algos) > 10 else ""))
        for c in failures[:20]:
            where = f" ({c.run})" if c.run else ""
            lines.append(f"  - {c.algorithm} {c.check} {c.dtype or ''} on {c.device or '?'}"
                         f"{where}: {_first_line(c.message) or 'failed'}")
            if c.replay:
                lines.append(f"    replay: {c.replay}")
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20} more (see the report)")
    else:
        lines.append(f"correctness: all {n['passed']} checks passed"
                     + (f" ({n['skipped']} skipped)" if n["skipped"] else ""))
    if len(runs) > 1:
        lines.append(f"  correctness from {len(runs)} runs: "
                     + "; ".join(r.title for r in runs))
    for r in runs:
        if r.parts:
            lines.append(f"  {r.title}: merged from {len(r.parts)} files of one run ("
                         + ", ".join(Path(p).name for p in r.sources) + ")")

    if bench is None:
        lines.append("performance: not gated (no --bench file)")
    elif baseline is None:
        lines.append("performance: not gated (no baseline: pass --baseline FILE or set "
                     "[tool.refbench.gate] baseline in pyproject.toml)"
                     + (f"; {baseline_note}" if baseline_note else ""))
    else:
        changes = ratio_changes(baseline, bench, config)
        result.regressions = [c for c in changes if c.regression]
        said: dict[tuple, list[str]] = {}
        if confirmations and result.regressions:
            judged = _confirm(result.regressions, baseline, confirmations, config)
            said = {_key(c): s for c, s, _ in judged}
            result.regressions = [c for c, _, cleared in judged if not cleared]
            result.dismissed = [c for c, _, cleared in judged if cleared]
        where = f"vs baseline {baseline.path}"
        if not changes:
            have = len(within_run_ratios(bench))
            lines.append(f"performance: not gated: no numba / torch-cpu pair in common with "
                         f"the baseline {where} ({have} pair(s) in this run)")
        else:
            noisy = [c for c in changes if c.noisy and not c.twin_changed]
            other_twin = [c for c in changes if c.twin_changed]
            gated = [c for c in changes if c.gated]
            judged = [c for c in gated if c.change.judged]
            slower = [c for c in gated if c.change.significant and c.change.value > 1]
            faster = [c for c in gated if c.change.significant and c.change.value < 1]
            paired = sum(c.method == "paired" for c in gated)
            how = ("all from paired rounds" if paired == len(gated) else
                   "ratios of medians: no paired rounds" if paired == 0 else
                   f"{paired} from paired rounds, {len(gated) - paired} ratios of medians")
            head = (f"performance: {len(result.regressions)} regression(s) in {len(gated)} "
                    f"gated within-run ratios (numba / torch-cpu; {how}) {where}; threshold "
                    f"{config.max_slowdown:g}x at alpha {config.alpha:g}"
                    + (" (with overrides)" if config.overrides else ""))
            lines.append(head)
            if confirmations:
                lines.append(f"  confirmation: {len(confirmations)} later run(s) of the same "
                             f"benchmarks, each in a fresh process; a regression stands unless "
                             f"one of them measured the change within the limit")
            for c in sorted(result.regressions, key=lambda c: -c.change.value):
                lines.append(f"  - REGRESSION {c.label}: numba/torch-cpu {c.base_ratio:.3g} -> "
                             f"{c.cand_ratio:.3g}, {ratio_text(c.change)} "
                             f"(limit {c.max_slowdown:.3g}x)"
                             + (f"; {'; '.join(said[_key(c)])}" if _key(c) in said else ""))
            for c in sorted(result.dismissed, key=lambda c: -c.change.value):
                lines.append(f"  - not confirmed: {c.label}: numba/torch-cpu {c.base_ratio:.3g} "
                             f"-> {c.cand_ratio:.3g}, {ratio_text(c.change)} in the first run "
                             f"(limit {c.max_slowdown:.3g}x); {'; '.join(said[_key(c)])}: "
                             f"drift between processes, not a slow-down of the code")
            if noisy:
                lines.append(f"  not gated: noisy ({len(noisy)}): unstable in a run, or drifting "
                             f"between the baseline's runs; never a failure")
                for c in noisy[:15]:
                    lines.append(f"  - not gated: noisy {c.label}: {'; '.join(c.noisy)}")
                if len(noisy) > 15:
                    lines.append(f"  ... and {len(noisy) - 15} more (see the report)")
            if other_twin:
                lines.append(f"  not gated: twin changed ({len(other_twin)}): the torch twin "
                             f"timed is another program than the baseline's; never a failure")
                for c in other_twin[:15]:
                    lines.append(f"  - not gated: twin changed {c.label}: "
                                 f"{c.base_ratio:.3g} -> {c.cand_ratio:.3g}; {c.twin_changed}")
            small = [c for c in slower if not c.regression]
            if small:
                lines.append(f"  {len(small)} significant slow-down(s) within the threshold, "
                             f"worst {max(small, key=lambda c: c.change.value).label} "
                             f"{ratio_text(max(small, key=lambda c: c.change.value).change)}")
            if faster:
                best = min(faster, key=lambda c: c.change.value)
                lines.append(f"  {len(faster)} significantly faster, best {best.label} "
                             f"{ratio_text(best.change)}")
            if len(judged) < len(gated):
                lines.append(f"  {len(gated) - len(judged)} not judged (fewer than 2 rounds)")
            diffs = [f"{k}: {v} vs {bench.env.machine[k]}"
                     for k, v in baseline.env.machine.items()
                     if v is not None and bench.env.machine[k] is not None
                     and v != bench.env.machine[k]]
            if diffs:
                lines.append("  note: the baseline comes from another machine ("
                             + "; ".join(diffs) + "); within-run ratios cancel most of that")
    status = "PASSED" if result.ok else "FAILED"
    lines.insert(0, f"refbench gate: {status}")
    return result
