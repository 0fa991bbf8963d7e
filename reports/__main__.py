"""``python -m reports build | compare | gate | confirm | baseline``: see ``--help`` of each."""

from __future__ import annotations

import argparse
import sys
import time

from reports.loading import InputError

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2

DESCRIPTION = """\
Reports on refbench results: one self-contained HTML file, a markdown summary, comparisons of
two runs, and the CI gate. Inputs are the correctness JSON (pytest --results-json=FILE) and
pytest-benchmark's JSON (pytest suites/performance --benchmark-json=FILE).
Exit status: 0 done (gate: passed), 1 gate failed, 2 unusable input (one line on stderr)."""

BUILD = """\
Write OUT/index.html (one file, inline CSS/JS/SVG, opens offline) and OUT/summary.md, then print
the HTML path and the markdown summary. The report shows the verdict first, the environment of
every run, a correctness matrix (check x dtype per algorithm, worst error as a fraction of the
tolerance, failures with their shrunk input and replay command), performance per algorithm
(median and IQR per implementation and size, speed-ups, compile time, GFLOP/s and GB/s with the
fraction of the measured peaks), log-log scaling charts with fitted exponents, and, given two or
more --bench files, a comparison of each with the first. Speed-ups come from interleaved rounds
(median of per-round ratios, with an interval) when the file has them, else from the ratio of
medians, and the report says which. Benchmarks marked noisy are greyed and kept out of the
headline, the exponents, the crossovers and the gate; the load average at the start and end of
the run is stated, with a banner when the machine was busy. Any input may be left out: what is
missing reads "not run". Exits 0 whenever the report was written, even if checks failed.

Several files (a CI matrix of shards and devices: pytest --shard I/N, --device D):
  A run is told by its files' environment: commit (and a dirty tree), machine (CPU, cores,
  GPU; for benchmarks
  also the host), Python and library versions, and for correctness the --device and the
  Hypothesis profile. Files of one run are its shards and merge into one: correctness results
  keyed by algorithm x check x dtype x device (and test), benchmarks by pytest's full name. A
  key in two shards must hold the same result (then it is kept once); different results for
  one key in one run are an error naming both files (exit 2). Files of different runs are
  shown side by side: one environment column per run, each check per run, and the benchmark
  runs compared with the first (the baseline). Two runs of one commit on one machine are not
  told apart: compare them with `python -m reports compare A B`."""

COMPARE = """\
Compare a baseline and a candidate run: two benchmark files (pytest-benchmark JSON or a baseline
from `python -m reports baseline`), or two correctness files. For benchmarks: per benchmark the
ratio of medians with a bootstrap confidence interval from the raw timings and a verdict
(faster / slower / no significant change), and how each within-run ratio numba / torch-cpu
changed. Runs from different machines get no absolute verdicts unless --allow-cross-machine.
For correctness files: the checks whose verdict changed. Prints markdown; --out also writes
DIR/compare.html and DIR/compare.md. Exits 0 when the comparison was made (use `gate` to fail)."""

GATE = """\
Exit 1 when any correctness check failed, or when a benchmark's within-run ratio numba / torch-cpu
grew over the baseline's both significantly (its 1-alpha bootstrap interval excludes 1) and by
more than max_slowdown; thresholds from [tool.refbench.gate] in pyproject.toml (per family or
algorithm overrides under [tool.refbench.gate.overrides]). The baseline is --baseline, else the
`baseline` path configured there. Within-run ratios cancel the machine, so a slower machine is not
a regression; when both runs timed the pair in interleaved rounds, the change compares the two
runs' per-round ratios. A pair with noisy timings in either run is listed as "not gated: noisy"
and never fails the gate, nor does one whose torch twin's code differs between the runs ("not
gated: twin changed": both files give a digest of the twin, and they differ). Several
--correctness files are merged as for `build` (shards of a
run into one; other runs side by side), and every check of every run counts; several --bench
files must be the shards of one run. Prints a summary; exits 0 when everything passed.

A within-run ratio also moves between processes of one commit (at the small CI sizes by up to
~1.3x, however quiet the machine), which no single run can see. --confirm FILE... gives later
runs of the same benchmarks, each from a fresh process: a regression then stands unless one of
them, not noisy there, measured the change within the limit (it is listed as "not confirmed",
with every run's figure); `confirm` uses it to judge this tree's runs against the baseline
code's runs measured beside them. --summary FILE writes the verdict as JSON (passed,
correctness_failures, regressions, regressed_pairs, not_confirmed) for such scripts."""

CONFIRM = """\
After `gate --summary FILE` failed on slow-downs alone: measure each regressed pair again on this
machine, at the baseline's own commit (checked out as a git worktree in a temporary directory)
and in this tree, in fresh processes that alternate, with the pytest options given after `--`
(the ones the baseline was measured with). This tree's runs are gated against the baseline
commit's runs: a pair fails only when it is slower than its own baseline code measured beside
it, in every run that could judge it. Exits 0 when no regression stands, 1 when one does, 2 when
the baseline's code cannot be measured (then the gate's first verdict stands)."""

BASELINE = """\
Write a compact baseline from a pytest-benchmark JSON file, for `gate --baseline` or
[tool.refbench.gate] baseline: per benchmark the quantiles of its timings, whether it was stable,
and per implementation it was timed with in interleaved rounds the within-run ratio, its interval
and the quantiles of the per-round ratios (what the gate compares). A few KB per algorithm.

Give several benchmark files of the same commit, each from its own process (`nox -s ci` run
N times): the first is the baseline, and each pair also keeps its ratio in every file
("replicates"). A within-run ratio drifts between processes of one machine (measured here:
up to 1.4x at small sizes, from code and memory placement, however quiet the machine), which
no interval of a single run can show. The gate then allows a pair max_slowdown beyond the
highest of its replicates, and leaves a pair whose replicates spread wider than
max_replicate_spread ungated, with that reason."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reports", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    b = sub.add_parser("build", help="write the HTML report and markdown summary",
                       description=BUILD, formatter_class=raw)
    b.add_argument("--correctness", metavar="FILE", nargs="+", action="extend", default=[],
                   help="correctness JSON (--results-json); several: shards of a run merge, "
                        "other machines, devices or versions are shown per run")
    b.add_argument("--bench", metavar="FILE", nargs="+", action="extend", default=[],
                   help="pytest-benchmark JSON; several: shards of a run (same commit, "
                        "machine and versions, disjoint benchmarks) merge, other runs are "
                        "compared with the first run (the baseline)")
    b.add_argument("--out", metavar="DIR", required=True, help="directory to write into")
    b.add_argument("--allow-cross-machine", action="store_true",
                   help="judge absolute time changes between runs from different machines")
    b.add_argument("--title", default="refbench report", help="the report's title")
    b.add_argument("--config", metavar="PYPROJECT", help="pyproject.toml with "
                   "[tool.refbench.gate] (default: the nearest one)")

    c = sub.add_parser("compare", help="compare a baseline run with a candidate run",
                       description=COMPARE, formatter_class=raw)
    c.add_argument("base", metavar="BASE.json")
    c.add_argument("candidate", metavar="CANDIDATE.json")
    c.add_argument("--out", metavar="DIR", help="also write DIR/compare.html and compare.md")
    c.add_argument("--allow-cross-machine", action="store_true",
                   help="judge absolute time changes even across different machines")
    c.add_argument("--config", metavar="PYPROJECT", help="pyproject.toml with "
                   "[tool.refbench.gate] (default: the nearest one)")

    g = sub.add_parser("gate", help="exit non-zero on a failed check or a real slow-down",
                       description=GATE, formatter_class=raw)
    g.add_argument("--correctness", metavar="FILE", nargs="+", action="extend", required=True,
                   help="correctness JSON (--results-json); several are merged as for "
                        "`build`, and every check of every run is gated")
    g.add_argument("--bench", metavar="FILE", nargs="+", action="extend",
                   help="pytest-benchmark JSON of this run; several: its shards (they must "
                        "merge into one run)")
    g.add_argument("--baseline", metavar="FILE",
                   help="benchmark or baseline file to compare with (default: "
                        "[tool.refbench.gate] baseline)")
    g.add_argument("--config", metavar="PYPROJECT", help="pyproject.toml with "
                   "[tool.refbench.gate] (default: the nearest one)")
    g.add_argument("--confirm", metavar="FILE", nargs="+", action="extend", default=[],
                   help="later runs of the same benchmarks, one file per fresh process: a "
                        "regression stands unless one of them measured it within the limit")
    g.add_argument("--summary", metavar="FILE", help="also write the verdict as JSON")
    g.add_argument("--then-confirm", action="store_true",
                   help="slow-downs alone will be measured again (reports confirm): say they "
                        "are flagged, not that the gate failed (the exit status is the same)")

    k = sub.add_parser("confirm", help="measure the gate's regressions against the baseline's "
                       "own commit, here", description=CONFIRM, formatter_class=raw)
    k.add_argument("--summary", metavar="FILE", required=True, help="the gate's --summary file")
    k.add_argument("--correctness", metavar="FILE", nargs="+", action="extend", required=True,
                   help="correctness JSON, gated again as by `gate`")
    k.add_argument("--baseline", metavar="FILE", help="the baseline the gate used (default: "
                   "[tool.refbench.gate] baseline)")
    k.add_argument("--out", metavar="DIR", required=True, help="where the runs' files go")
    k.add_argument("--runs", type=int, default=3, help="fresh processes per side (default 3)")
    k.add_argument("--base-tree", metavar="DIR", help="measure this tree as the baseline's "
                   "code instead of checking out the baseline's commit")
    k.add_argument("--head-env", metavar="NAME=VALUE", action="append", default=[],
                   help="environment for this tree's runs only (the selftest plants a "
                        "slow-down with it)")
    k.add_argument("--config", metavar="PYPROJECT", help="pyproject.toml with "
                   "[tool.refbench.gate] (default: the nearest one)")

    s = sub.add_parser("baseline", help="write a compact baseline from a benchmark file",
                       description=BASELINE, formatter_class=raw)
    s.add_argument("bench", metavar="BENCH.json", nargs="+",
                   help="one run, or several runs of one commit in separate processes")
    s.add_argument("--out", metavar="FILE", required=True, help="where to write it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["confirm"] and "--" in argv:  # what follows "--" goes to pytest
        argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = _parser().parse_args(argv)
    from reports import build as jobs
    from reports.config import load_config

    try:
        if args.command == "baseline":
            path = jobs.write_baseline(args.bench[0], args.out, args.bench[1:])
            print(path)
            return EXIT_OK
        config = load_config(args.config)
        if args.command == "build":
            t0 = time.perf_counter()
            built = jobs.build(args.correctness, args.bench, args.out,
                               args.allow_cross_machine, config, args.title)
            print(built.html)
            print()
            print(built.markdown.rstrip())
            print(f"\n(report built in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            return EXIT_OK
        if args.command == "compare":
            done = jobs.compare(args.base, args.candidate, args.out, args.allow_cross_machine,
                                config)
            print(done.markdown.rstrip())
            if done.html:
                print(f"\n{done.html}")
            return EXIT_OK
        if args.command == "confirm":
            from reports.confirm import confirm

            env = {}
            for item in args.head_env:
                name, eq, value = item.partition("=")
                if not eq or not name:
                    raise InputError(f"--head-env: expected NAME=VALUE, got {item!r}")
                env[name] = value
            baseline = args.baseline or config.baseline
            if baseline is None:
                raise InputError("confirm: no baseline (pass --baseline FILE or set "
                                 "[tool.refbench.gate] baseline in pyproject.toml)")
            result, said = confirm(args.summary, args.correctness, baseline, rest, args.out,
                                   config, args.runs, args.base_tree, env,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
            print("refbench confirm: " + ("no regression stands" if result.ok else
                                          "the regression stands" if len(result.regressions)
                                          == 1 else "regressions stand"))
            print("\n".join(["  " + ln for ln in said] + result.lines[1:]))
            return EXIT_OK if result.ok else EXIT_FAILED
        result = jobs.run_gate(args.correctness, args.bench, args.baseline, config,
                               args.confirm)
        lines = list(result.lines)
        if args.then_confirm and result.regressions and not result.failures and lines:
            n = len(result.regressions)
            lines[0] = (f"refbench gate: {n} slow-down(s) flagged, not yet a failure: "
                        f"measured again beside the baseline's own code next")
        print("\n".join(lines))
        if args.summary:
            import json
            from pathlib import Path

            out = Path(args.summary)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.summary(), indent=1) + "\n")
        return EXIT_OK if result.ok else EXIT_FAILED
    except InputError as exc:
        print(f"python -m reports {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # e.g. the output directory cannot be written
        print(f"python -m reports {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
