"""The three jobs behind the CLI: build a report, compare two runs, gate CI (plus writing a
compact baseline). Each takes paths and returns what the CLI prints; bad input raises
``InputError``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reports.analysis import build_report
from reports.charts import draw_all
from reports.comparison import compare_checks, compare_runs
from reports.config import GateConfig, load_config
from reports.gate import GateResult, gate
from reports.loading import (
    BenchRun,
    CorrectnessRun,
    InputError,
    baseline_doc,
    load,
)
from reports.merge import CorrectnessSet, merge_benches, merge_correctness
from reports.render import (
    environment_table,
    render_html,
    render_md,
    report_context,
    write,
)


def load_file(path: str | Path, expect: tuple[str, ...]):
    """``loading.load`` with any surprise in a file's content turned into one clear line."""
    try:
        return load(path, expect)
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise InputError(f"{path}: not a usable result file ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None


def _paths(paths: str | Path | list | tuple | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [str(paths)]
    return [str(p) for p in paths]


def load_correctness(paths: str | Path | list | None) -> CorrectnessSet | None:
    """One or more correctness files merged into runs (see merge.py); None for none."""
    return merge_correctness([load_file(p, ("correctness",)) for p in _paths(paths)])


def load_benches(paths: str | Path | list | None) -> list[BenchRun]:
    """Benchmark (or baseline) files merged into runs (see merge.py), in argument order."""
    return merge_benches([load_file(p, ("benchmark", "baseline")) for p in _paths(paths)])


@dataclass
class Built:
    html: Path
    markdown_path: Path
    markdown: str


def build(correctness: str | list[str] | None, benches: list[str], out: str | Path,
          allow_cross_machine: bool = False, config: GateConfig | None = None,
          title: str = "refbench report") -> Built:
    """The report of one or more correctness files and benchmark files: files that are shards
    of one run merge, files of different runs are shown side by side (merge.py)."""
    config = config or load_config()
    corr = load_correctness(correctness)
    runs = load_benches(benches)
    report = build_report(corr, runs, config, allow_cross_machine, title)
    draw_all(report.algos)
    heads, rows = environment_table((corr.runs if corr else []) + runs)
    ctx = report_context(report)
    ctx.update(env_heads=heads, env_rows=rows,
               anchors={a.name: a.anchor for a in report.algos},
               sources=_paths(correctness) + _paths(benches))
    out = Path(out)
    html = write(out, "index.html", render_html("report.html", **ctx))
    md = render_md("summary.md", report_path=str(html), **ctx)
    md_path = write(out, "summary.md", md)
    return Built(html, md_path, md)


@dataclass
class Compared:
    markdown: str
    html: Path | None
    regressions: int
    newly_failing: int


def compare(base: str, cand: str, out: str | Path | None = None,
            allow_cross_machine: bool = False, config: GateConfig | None = None) -> Compared:
    config = config or load_config()
    kinds = ("correctness", "benchmark", "baseline")
    a, b = load_file(base, kinds), load_file(cand, kinds)
    if isinstance(a, CorrectnessRun) != isinstance(b, CorrectnessRun):
        what = {True: "a correctness file", False: "a benchmark file"}
        raise InputError(f"{base} is {what[isinstance(a, CorrectnessRun)]} but {cand} is "
                         f"{what[isinstance(b, CorrectnessRun)]}: compare two of the same kind")
    a.label, b.label = "baseline", "candidate"
    a.title, b.title = "baseline", "candidate"
    c, changes = None, None
    if isinstance(a, BenchRun):
        c = compare_runs(a, b, config, allow_cross_machine)
        n = c.counts()
        headline = (f"{n['regressions']} regression(s)" if n["regressions"]
                    else "no regression") + f" in {len(c.ratios)} within-run ratios"
        status = "failed" if n["regressions"] else "passed"
        regressions, failing = n["regressions"], 0
    else:
        changes = compare_checks(a, b)
        failing = sum(ch.after == "failed" for ch in changes)
        headline = (f"{failing} check(s) newly failing" if failing
                    else f"no check newly failing ({len(changes)} changed)")
        status = "failed" if failing else "passed"
        regressions = 0
    impls = sorted({x.impl for r in (a, b) if isinstance(r, BenchRun) for x in r.benchmarks})
    heads, rows = environment_table([a, b])
    ctx = dict(c=c, changes=changes, headline=headline, status=status, base_path=str(base),
               cand_path=str(cand), env_heads=heads, env_rows=rows, alpha=config.alpha,
               impls=impls)
    md = render_md("compare.md", **ctx)
    html = None
    if out is not None:
        html = write(Path(out), "compare.html", render_html("compare.html", **ctx))
        write(Path(out), "compare.md", md)
    return Compared(md, html, regressions, failing)


def run_gate(correctness: str | list[str], bench: str | list[str] | None, baseline: str | None,
             config: GateConfig | None = None,
             confirm: Sequence[str] = ()) -> GateResult:
    """Gate every check of the correctness files (merged as for a report) and the within-run
    ratios of one benchmark run (its shards merged) against the baseline; ``confirm``: later
    runs of the same benchmarks (one file each, each from its own process) that a regression
    must also show (gate.py)."""
    config = config or load_config()
    corr = load_correctness(correctness)
    if corr is None:
        raise InputError("gate: no correctness file given")
    runs = load_benches(bench)
    if len(runs) > 1:
        raise InputError("the gate judges one benchmark run, but the --bench files come from "
                         f"{len(runs)} runs (other commits, machines or versions): "
                         + "; ".join(" + ".join(r.sources) for r in runs)
                         + ". Gate each run with its own command")
    run = runs[0] if runs else None
    note = ""
    base = None
    if baseline:
        base = load_file(baseline, ("benchmark", "baseline"))
    elif run is not None and config.baseline is not None:
        if config.baseline.exists():
            base = load_file(config.baseline, ("benchmark", "baseline"))
        else:
            note = f"the configured baseline {config.baseline} does not exist"
    confirmations = []
    for path in confirm:
        other = load_file(path, ("benchmark",))
        if run is not None and (other.env.commit, other.env.dirty) != (run.env.commit,
                                                                        run.env.dirty):
            raise InputError(f"{path}: a confirmation run must measure the same code as the "
                             f"run it confirms (commit {run.env.commit}, dirty "
                             f"{run.env.dirty}), but it measured commit {other.env.commit}, "
                             f"dirty {other.env.dirty}")
        confirmations.append(other)
    if confirmations and run is None:
        raise InputError("gate: --confirm needs the --bench run it confirms")
    return gate(corr, run, base, config, note, confirmations)


def write_baseline(bench: str, out: str | Path, more: Sequence[str] = ()) -> Path:
    """A compact baseline of ``bench``; ``more``: other runs of the same commit, each from its
    own process, whose within-run ratios become each pair's ``replicates``."""
    import json

    run = load_file(bench, ("benchmark",))
    if not run.benchmarks:
        raise InputError(f"{bench}: holds no benchmarks; a baseline needs some")
    others = [load_file(m, ("benchmark",)) for m in more]
    doc = baseline_doc(run, str(bench))
    if others:
        doc["replicate_sources"] = [str(m) for m in more]
        for entry, b in zip(doc["benchmarks"], run.benchmarks, strict=True):
            for other_impl, r in (entry.get("ratios") or {}).items():
                reps = [r["value"]]
                for o in others:
                    ob = o.find(b.key)
                    den = o.find((b.algorithm, other_impl, b.size, b.dtype, b.pass_))
                    pr = ob.ratio_to(den) if ob is not None and den is not None else None
                    if pr is not None:
                        reps.append(float(f"{pr.value:.5g}"))
                r["replicates"] = reps
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=None, separators=(",", ":")).replace(
        '},{"name"', '},\n{"name"') + "\n")
    return path
