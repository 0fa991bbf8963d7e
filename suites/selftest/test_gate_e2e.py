"""The gate, end to end on real benchmarks: quiet on noise, loud on a real slow-down.

The same commit is benchmarked three times on two algorithms (their small forward pass, the
quick CI benchmark): once as it comes (the baseline), once while a CPU hog (a busy process per
core) runs, and once with one algorithm planted 1.5x slower (its numba side busy-waits for half
of each call's duration, see ``REFBENCH_PLANT`` in test_bench.py). The gate must pass the
second run (under the hog a pair may be judged noisy and left ungated, never failed) and fail
the third, naming the planted algorithm and only it.

The planted run is not under the hog: a machine that busy makes torch's and numba's
two-thread parallel regions stall for whole scheduler slices, the harness rightly calls such
pairs noisy, and a noisy pair is never gated (it cannot fail, so it cannot show a slow-down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Beside other tests on 2 cores, "quiet" is not quiet: an A/A ratio measured next to an xdist
# worker running gradient checks came out 2% biased in CI (the 99.9% interval [1.005, 1.041]).
pytestmark = pytest.mark.alone

ROOT = Path(__file__).resolve().parents[2]
PASSING = ROOT / "suites/selftest/data/reports/cpu_correctness.json"
# Elementwise ops on 64 floats: serial on both sides (below torch's and numba's parallel
# thresholds), so a busy machine preempts whole calls rather than stalling parallel regions.
ALGOS = ("relu", "tanh")
PLANTED = "relu"


def _bench(out: Path, env: dict | None = None) -> None:
    ids = [f"suites/performance/test_bench.py::test_bench[{a}-{impl}-small-float32-forward]"
           for a in ALGOS for impl in ("numba", "torch-cpu")]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *ids, "-q", "-p", "no:cacheprovider",
         "--bench-sizes=small", f"--benchmark-json={out}",
         "--benchmark-max-time=0.1", "--benchmark-min-time=0.0005", "--benchmark-min-rounds=10",
         "--benchmark-disable-gc"],
        cwd=ROOT, capture_output=True, text=True, env={**_own_session_env(), **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _own_session_env() -> dict:
    """This environment without the xdist worker's variables: the benchmark run is a session of
    its own (pytest-benchmark switches itself off when it believes it runs under xdist). The
    module-scoped baseline runs before conftest's function-scoped guard, hence this."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}


def _gate(bench: Path, baseline: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reports", "gate", "--correctness", str(PASSING),
         "--bench", str(bench), "--baseline", str(baseline)],
        cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gate")
    _bench(tmp / "quiet.json")
    base = tmp / "baseline.json"
    proc = subprocess.run([sys.executable, "-m", "reports", "baseline", str(tmp / "quiet.json"),
                           "--out", str(base)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return base


def test_same_commit_under_hog_passes(baseline, tmp_path, hog):
    _bench(tmp_path / "busy.json")
    gate = _gate(tmp_path / "busy.json", baseline)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "REGRESSION" not in gate.stdout
    assert "gated within-run ratios" in gate.stdout or "not gated: noisy" in gate.stdout, (
        gate.stdout)


def test_planted_slowdown_fails_naming_it(baseline, tmp_path):
    _bench(tmp_path / "planted.json", {"REFBENCH_PLANT": f"{PLANTED}=1.5"})
    gate = _gate(tmp_path / "planted.json", baseline)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    lines = [ln for ln in gate.stdout.splitlines() if "REGRESSION" in ln]
    assert lines and all(PLANTED in ln for ln in lines), gate.stdout
    assert not any(a in ln for a in ALGOS if a != PLANTED for ln in lines), gate.stdout


def _confirm(tmp: Path, head_env: list[str]) -> subprocess.CompletedProcess:
    """`python -m reports confirm` on the planted algorithm's pair, with this tree standing in
    for the baseline's commit (--base-tree): the same code on both sides unless ``head_env``
    plants a slow-down in this tree's runs."""
    summary = tmp / "gate.json"
    summary.write_text(json.dumps({"regressed_pairs": [
        {"algorithm": PLANTED, "size": "small", "dtype": "float32", "pass": "forward"}]}))
    return subprocess.run(
        [sys.executable, "-m", "reports", "confirm", "--summary", str(summary),
         "--correctness", str(PASSING), "--baseline", str(PASSING), "--out", str(tmp / "runs"),
         "--runs", "2", "--base-tree", str(ROOT), *(a for e in head_env for a in ("--head-env", e)),
         "--", "--bench-sizes=small", "--benchmark-max-time=0.1", "--benchmark-min-time=0.0005",
         "--benchmark-min-rounds=10", "--benchmark-disable-gc"],
        cwd=ROOT, capture_output=True, text=True, env=_own_session_env())


def test_confirm_dismisses_what_the_baseline_code_also_measures(tmp_path):
    """The same code measured beside itself: whatever the first gate saw, nothing stands."""
    run = _confirm(tmp_path, [])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("refbench confirm: no regression stands"), run.stdout
    assert f"{PLANTED} small float32 forward: numba/torch-cpu" in run.stdout, run.stdout
    assert len(list((tmp_path / "runs").glob("*.json"))) == 5  # 2 + 2 runs and the baseline


def test_confirm_keeps_a_real_slowdown(tmp_path):
    """A slow-down of this tree's code (planted 1.5x) is slower than the baseline's code
    measured beside it, in every run: it stands and is named."""
    run = _confirm(tmp_path, [f"REFBENCH_PLANT={PLANTED}=1.5"])
    assert run.returncode == 1, run.stdout + run.stderr
    lines = [ln for ln in run.stdout.splitlines() if "REGRESSION" in ln]
    assert len(lines) == 1 and f"REGRESSION {PLANTED} small float32 forward" in lines[0], (
        run.stdout)


def test_confirm_without_the_baseline_code_reruns_this_tree(baseline, tmp_path):
    """A baseline whose commit this clone lacks (a shallow checkout): the flagged pair is
    judged against the checked-in baseline in fresh runs of this tree instead, and says so."""
    doc = json.loads(baseline.read_text())
    doc["environment"].update(commit="f" * 40, dirty=False)
    lost = tmp_path / "lost.json"
    lost.write_text(json.dumps(doc))
    summary = tmp_path / "gate.json"
    summary.write_text(json.dumps({"regressed_pairs": [
        {"algorithm": PLANTED, "size": "small", "dtype": "float32", "pass": "forward"}]}))
    run = subprocess.run(
        [sys.executable, "-m", "reports", "confirm", "--summary", str(summary),
         "--correctness", str(PASSING), "--baseline", str(lost), "--out", str(tmp_path / "runs"),
         "--runs", "2", "--", "-k", f"{PLANTED} and small and float32 and not backward and not "
         "leaky", "--bench-sizes=small", "--benchmark-max-time=0.1",
         "--benchmark-min-time=0.0005", "--benchmark-min-rounds=10", "--benchmark-disable-gc"],
        cwd=ROOT, capture_output=True, text=True, env=_own_session_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "baseline code: not measured (cannot check out the baseline's commit ffff" in (
        run.stdout), run.stdout
    # judged on the flagged pair only (gated, or listed as noisy), not on the other algorithm
    assert f"{PLANTED} small float32 forward: numba/torch-cpu" in run.stdout, run.stdout
    assert not [a for a in ALGOS if a != PLANTED and a in run.stdout], run.stdout
