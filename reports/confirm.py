"""Is a regression the gate found a slow-down of the code, or a change of the machine?

The checked-in baseline was measured on another day, maybe on another host of the same kind,
and at the small CI sizes (calls of ~10-100 us, where both numba and torch are bound by call
overhead) a within-run ratio moves with the machine's state. Measured: logistic_objective
small float64 forward+backward read 0.192-0.219 in the baseline's four runs and 0.25-0.29 a
day later on the same kind of machine, both at the baseline's own commit and at a commit that
changed only docstrings; cross_entropy small float32 forward read 0.76-0.85 then 0.96-1.07. No run
of this tree alone can tell that from a slow-down.

So each pair the gate flagged is measured again on this machine, against the code the baseline
measured: the baseline's commit is checked out beside this tree (a git worktree in a temporary
directory) and both are benchmarked on the flagged pairs only, in fresh processes that
alternate (base, head, head, base, ...) with the same benchmark options. The head runs are then
gated against a baseline made of the base runs (the spread of the base runs is their replicate
drift, see comparison.py): the first head run is the candidate and the others confirm it
(gate.py). A pair fails only if it is slower than its own baseline code measured beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reports.build import load_file, run_gate, write_baseline
from reports.config import GateConfig
from reports.gate import GateResult
from reports.loading import InputError

ROOT = Path(__file__).resolve().parents[1]
BENCH_FILE = "suites/performance/test_bench.py"
PAIR = ("numba", "torch-cpu")


def node_ids(pairs: Sequence[dict]) -> list[str]:
    """pytest's ids of both sides of each pair (``{"algorithm", "size", "dtype", "pass"}``)."""
    return [f"{BENCH_FILE}::test_bench[{p['algorithm']}-{impl}-{p['size']}-{p['dtype']}-"
            f"{p['pass'].replace('+', '_')}]" for p in pairs for impl in PAIR]


def _label(pair: dict) -> str:
    return f"{pair['algorithm']} {pair['size']} {pair['dtype']} {pair['pass']}"


def _ratios(loaded: dict, pair: dict, files: list[str]) -> str:
    """The pair's within-run ratio in each file, "-" where it was not measured."""
    said = []
    for f in files:
        num, den = (loaded[f].find((pair["algorithm"], impl, pair["size"], pair["dtype"],
                                    pair["pass"])) for impl in PAIR)
        r = num.ratio_to(den) if num is not None and den is not None else None
        said.append("-" if r is None else f"{r.value:.3g}")
    return ", ".join(said)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def check_out(commit: str) -> Path:
    """A worktree of ``commit`` in a new temporary directory (remove with ``remove``)."""
    where = Path(tempfile.mkdtemp(prefix="refbench-base-"))
    done = _git("worktree", "add", "--detach", "--force", str(where), commit)
    if done.returncode:
        shutil.rmtree(where, ignore_errors=True)
        why = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        raise InputError(f"cannot check out the baseline's commit {commit} to measure it beside "
                         f"this tree ({why}; a shallow clone lacks it)")
    return where


def remove(tree: Path) -> None:
    _git("worktree", "remove", "--force", str(tree))
    shutil.rmtree(tree, ignore_errors=True)
    _git("worktree", "prune")


def _bench(tree: Path, ids: list[str], pytest_args: Sequence[str], out: Path,
           env: dict[str, str]) -> None:
    # Without xdist's variables: a benchmark run is a session of its own (pytest-benchmark
    # switches itself off when it believes it runs under xdist).
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *ids, "-q", "-p", "no:cacheprovider", *pytest_args,
         f"--benchmark-json={out}"],
        cwd=tree, capture_output=True, text=True, env={**clean, **env})
    if proc.returncode or not out.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise InputError(f"the confirmation benchmarks failed in {tree} (exit status "
                         f"{proc.returncode}): " + " | ".join(tail))


def confirm(summary: str | Path, correctness: Sequence[str], baseline: str | Path,
            pytest_args: Sequence[str], out: str | Path, config: GateConfig, runs: int = 3,
            base_tree: str | Path | None = None,
            head_env: dict[str, str] | None = None,
            progress=print) -> tuple[GateResult, list[str]]:
    """Measure the gate's regressed pairs (its ``--summary`` file) at the baseline's commit and
    in this tree, ``runs`` fresh processes each, alternating; gate this tree's runs against
    the baseline commit's. ``base_tree``: an existing tree to use as the baseline code instead
    of checking out its commit. ``head_env``: extra environment for this tree's runs only (the
    selftest plants a slow-down this way). Returns the gate's verdict on those pairs and the
    lines that say what was measured."""
    if runs < 2:
        raise InputError(f"--runs must be at least 2 (one run to judge, one to confirm), got "
                         f"{runs}")
    try:
        pairs = json.loads(Path(summary).read_text())["regressed_pairs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{summary}: not a gate summary (python -m reports gate --summary "
                         f"FILE): {type(exc).__name__}: {exc}") from None
    if not pairs:
        raise InputError(f"{summary}: the gate found no regression to confirm")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = node_ids(pairs)
    lines = []
    tree = Path(base_tree) if base_tree else None
    made = False
    if tree is None:
        base = load_file(baseline, ("benchmark", "baseline"))
        commit, dirty = base.env.commit, base.env.dirty
        why = ""
        if not commit or dirty:
            why = (f"its commit is {commit or 'unknown'}"
                   f"{' with uncommitted changes' if dirty else ''}")
        else:
            try:
                tree, made = check_out(commit), True
            except InputError as exc:
                why = str(exc)
        if why:
            return _here_only(pairs, correctness, baseline, pytest_args, out, config, runs,
                              head_env or {}, progress, why)
        lines.append(f"baseline code: commit {commit[:12]} (the baseline's), checked out "
                     f"beside this tree")
    else:
        lines.append(f"baseline code: the tree at {tree}")
    try:
        heads, bases = [], []
        for i in range(runs):
            order = [("base", tree), ("head", ROOT)]
            for name, where in order if i % 2 == 0 else order[::-1]:
                path = out / f"{name}-{i + 1}.json"
                progress(f"confirm: {name} run {i + 1} of {runs} ({len(pairs)} pair(s))")
                _bench(where, ids, pytest_args, path, (head_env or {}) if name == "head"
                       else {})
                (heads if name == "head" else bases).append(str(path))
    finally:
        if made:
            remove(tree)
    lines.append(f"measured: {len(pairs)} pair(s) in {runs} fresh processes of each, "
                 f"alternating; this tree's first run judged against the baseline code's runs "
                 f"(their spread allowed as drift), its other runs confirming")
    loaded = {f: load_file(f, ("benchmark",)) for f in bases + heads}
    for p in pairs:
        lines.append(f"{_label(p)}: numba/torch-cpu {_ratios(loaded, p, bases)} with the "
                     f"baseline's code; {_ratios(loaded, p, heads)} with this tree")
    own = write_baseline(bases[0], out / "base.json", bases[1:])
    result = run_gate(list(correctness), heads[0], str(own), config, heads[1:])
    return result, lines


def _here_only(pairs, correctness, baseline, pytest_args, out: Path, config: GateConfig,
               runs: int, head_env: dict[str, str], progress, why: str
               ) -> tuple[GateResult, list[str]]:
    """Without the baseline's code: this tree's whole benchmark set again in ``runs`` fresh
    processes (the flagged pairs alone would run in another context than the baseline's full
    runs, and read differently: cross_entropy small float32 forward 0.93-1.15 alone against
    0.97 in a full run), judged against the checked-in baseline on the flagged pairs only.
    That tells a pair that drifted with its process from a slow-down; a change of the machine
    since the baseline it cannot tell."""
    ids = set(node_ids(pairs))
    heads = []
    for i in range(runs):
        path = out / f"head-{i + 1}.json"
        progress(f"confirm: run {i + 1} of {runs} of every benchmark (the baseline's code cannot "
                 f"be measured)")
        _bench(ROOT, ["suites/performance"], pytest_args, path, head_env)
        doc = json.loads(path.read_text())
        doc["benchmarks"] = [b for b in doc["benchmarks"] if b.get("fullname") in ids]
        path.write_text(json.dumps(doc))
        heads.append(str(path))
    lines = [f"baseline code: not measured ({why})",
             f"measured instead: this tree's benchmarks in {runs} more fresh processes, the "
             f"flagged pair(s) judged against the checked-in baseline {baseline} in each; this "
             f"tells drift between processes from a slow-down, not a change of the machine"]
    loaded = {f: load_file(f, ("benchmark",)) for f in heads}
    lines += [f"{_label(p)}: numba/torch-cpu {_ratios(loaded, p, heads)} in this tree's runs"
              for p in pairs]
    result = run_gate(list(correctness), heads[0], str(baseline), config, heads[1:])
    return result, lines
