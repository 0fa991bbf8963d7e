"""The sessions people and CI run. ``nox -l`` lists them.

    nox -s report    the main job: correctness + benchmarks (+ scaling sweeps) + the HTML report
    nox -s tests     correctness checks, the harness's own tests and the CUDA-simulator tests
                     (what CI runs first)
    nox -s bench     benchmarks only, pytest-benchmark JSON
    nox -s ci        quick benchmarks, the report and the gate (after `tests`)
    nox -s cudasim   the numba-cuda kernels under numba's CUDA simulator
    nox -s compile   torch.compile as a third timed peer, medium size (slow: inductor)
    nox -s gpu       correctness and benchmarks with torch twins and numba-cuda on CUDA
    nox -s lint      ruff

Every session installs the project and its dependency groups from pyproject.toml, with
constraints.txt pinning torch to the CPU wheel. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import json
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
OUT = ROOT / PYPROJECT["tool"]["refbench"]["out_dir"]
CORRECTNESS = OUT / "correctness.json"
BENCH = OUT / "bench.json"
CUDASIM = OUT / "cudasim.json"
COMPILE = OUT / "compile.json"
PYTHON = "3.11"

# Benchmark timing (suites/performance/timing.py): the implementations of a group run in
# interleaved rounds of at least 0.5 ms (tiny calls are repeated within a round), at least 10
# rounds, about 0.2 s per implementation after the two untimed first calls (the first is
# recorded as compile time), GC off while timing. A group judged noisy is measured once more.
BENCH_TIMING = ["--benchmark-min-rounds=10", "--benchmark-max-time=0.2",
                "--benchmark-min-time=0.0005", "--benchmark-warmup=off",
                "--benchmark-disable-gc", "--benchmark-sort=name"]

# The main job's benchmarks: small and medium sizes and the scaling sweeps (~380 groups), sharing
# one budget of measuring time (first calls and compilation come on top; see --bench-budget in
# suites/performance/test_bench.py). The large sizes are left out: measured warm on 2 cores, the
# 188 large groups took 1719 of the benchmarks' 2076 s (a large group's slowest implementation
# takes up to seconds per call, and --benchmark-min-rounds rounds of it cannot fit a share of
# the budget). `nox -s report -- --bench-sizes=small,medium,large,sweep` measures them too.
# The budget: at 270 s the whole job took 903 s cold (fresh clone, virtualenv and every Numba
# kernel compiled) on 2 cores, over the 15 minutes it must fit in; at 210 s it took 372 s warm,
# with as many groups judged noisy (84 of 878 benchmarks, 90 at 270 s).
REPORT_BENCH = ["--bench-sizes=small,medium,sweep", *BENCH_TIMING, "--bench-budget=210"]

# CI's benchmarks: small sizes, ~0.05 s per implementation. The checked-in baseline
# (reports/baseline/ci.json) was measured with exactly these options.
CI_BENCH = ["--bench-sizes=small", *BENCH_TIMING, "--benchmark-max-time=0.05"]


def _env() -> dict[str, str]:
    # torch.compile/inductor caches go under .nox/ rather than the shared /tmp. TMPDIR stays
    # the system's: a browser or a server makes Unix sockets there, and a socket path longer
    # than 108 bytes fails, so it must not depend on where the project is cloned.
    return {"TORCHINDUCTOR_CACHE_DIR": str(ROOT / ".nox" / "inductor"), "PYTHONHASHSEED": "0"}


def _install(session: nox.Session, *groups: str) -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    session.install("-c", "constraints.txt", "-e", ".", *deps)


def _run(session: nox.Session, *args: str) -> int:
    """Run a command and return its exit status (nox's ``session.run`` does not)."""
    try:
        session.run(*args, env=_env())
    except nox.command.CommandFailed as exc:
        return exc.return_code if exc.return_code is not None else 1
    return 0


def _pytest_status(code: int, what: str) -> str | None:
    """What a pytest exit status means for a person; None when everything passed."""
    return {0: None, 1: f"{what}: some tests failed", 2: f"{what}: interrupted",
            3: f"{what}: internal error", 4: f"{what}: usage error",
            5: f"{what}: no tests collected"}.get(code, f"{what}: exit status {code}")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Correctness checks (ci Hypothesis profile) and the harness's own tests on all cores
    (pytest-xdist), then the timing harness's statistical tests alone, then the numba-cuda
    kernels under the CUDA simulator."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "suites/correctness", "suites/selftest",
                "--hypothesis-profile=ci", "-n", "auto", "--dist", "loadgroup", "-m", "not alone",
                f"--results-json={CORRECTNESS}", *session.posargs, env=_env())
    # The timing harness's statistical tests (A/A, planted slow-downs, the gate end to end)
    # need the machine to themselves: one process, after the parallel run.
    # (Exit status 5, nothing collected, is fine: `-- -k softmax` selects none of them.)
    session.run("python", "-m", "pytest", "suites/selftest", "-m", "alone", "-q",
                *session.posargs, env=_env(), success_codes=[0, 5])
    cudasim(session)


@nox.session(python=PYTHON)
def cudasim(session: nox.Session) -> None:
    """The numba-cuda kernels under numba's CUDA simulator (no GPU needed), in their own
    processes (the simulator replaces numba.cuda for the whole interpreter), on all cores:
    the simulated kernels run in Python (serially 387 s of CI's 1826 s at stop 23; on 2 cores
    173 s wall for 308 s of CPU, the same 123 checks)."""
    if session.name == "cudasim":
        _install(session, "test")
    session.run("python", "-m", "pytest", "suites/cudasim", "--hypothesis-profile=ci", "-q",
                "-n", "auto", "--dist", "loadgroup", f"--results-json={CUDASIM}",
                env={**_env(), "NUMBA_ENABLE_CUDASIM": "1"})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks of every algorithm: numba vs torch-cpu (and torch-cuda on a GPU)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "suites/performance", f"--benchmark-json={BENCH}",
                *BENCH_TIMING, *session.posargs, env=_env())


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """The main job: correctness + benchmarks (with scaling sweeps), then the HTML report."""
    _install(session, "test")
    problems = [
        _pytest_status(_run(session, "python", "-m", "pytest", "suites/correctness",
                            "--hypothesis-profile=report", "-q", "-n", "auto", "--dist",
                            "loadgroup",
                            f"--results-json={CORRECTNESS}"), "correctness checks"),
        _pytest_status(_run(session, "python", "-m", "pytest", "suites/performance",
                            f"--benchmark-json={BENCH}", "-q", *REPORT_BENCH,
                            *session.posargs), "benchmarks"),
    ]
    built = _run(session, "python", "-m", "reports", "build", "--correctness", str(CORRECTNESS),
                 "--bench", str(BENCH), "--out", str(OUT))
    problems.append(f"the report build failed (exit status {built})" if built else None)
    problems = [p for p in problems if p]
    if problems:
        session.error("; ".join(problems) + f": see {OUT / 'index.html'}")
    session.log(f"all checks passed and every benchmark ran: {OUT / 'index.html'}")


@nox.session(python=PYTHON)
def ci(session: nox.Session) -> None:
    """What CI gates on: quick benchmarks, the report and the gate (after `nox -s tests`). A
    slow-down the gate flags is measured again beside the baseline's own code before it fails
    (reports/confirm.py). Arguments after ``--`` go to the gate."""
    _install(session, "test")
    # `nox -s tests` has just written the correctness results in CI (.ci/run runs it first);
    # run the checks here only when there are none.
    if not CORRECTNESS.exists():
        _run(session, "python", "-m", "pytest", "suites/correctness", "--hypothesis-profile=ci",
             "-q", "-n", "auto", "--dist", "loadgroup", f"--results-json={CORRECTNESS}")
    # Small sizes and short timing: CI checks that every benchmark runs and records what it
    # must, and gates the within-run ratios against the checked-in baseline (measured with
    # these same options); the full-size figures come from `nox -s report` / `nox -s bench`.
    session.run("python", "-m", "pytest", "suites/performance", f"--benchmark-json={BENCH}",
                "-q", *CI_BENCH, env=_env())
    correctness = [str(CORRECTNESS)] + ([str(CUDASIM)] if CUDASIM.exists() else [])
    session.run("python", "-m", "reports", "build", "--correctness", *correctness,
                "--bench", str(BENCH), "--out", str(OUT), env=_env())
    summary = OUT / "gate.json"
    code = _run(session, "python", "-m", "reports", "gate", "--correctness", *correctness,
                "--bench", str(BENCH), "--summary", str(summary), "--then-confirm",
                *session.posargs)
    verdict = json.loads(summary.read_text()) if code == 1 and summary.exists() else {}
    if verdict.get("regressions") and not verdict["correctness_failures"]:
        # The baseline was measured on another day (maybe another host of the same kind), and
        # small-size ratios move with the machine: measure the flagged pairs again here at the
        # baseline's own commit and at this one, alternating fresh processes (reports/confirm.py).
        session.log(f"the gate flagged {len(verdict['regressions'])} slow-down(s); measuring "
                    f"them beside the baseline's own code on this machine")
        code = _run(session, "python", "-m", "reports", "confirm", "--summary", str(summary),
                    "--correctness", *correctness, "--out", str(OUT / "confirm"), "--",
                    *CI_BENCH)
    if code:
        session.error("the gate failed: see above")


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """Correctness and benchmarks with torch twins on CUDA (needs a GPU and a CUDA torch)."""
    _install(session, "test")
    out = OUT / "gpu"
    problems = [
        _pytest_status(_run(session, "python", "-m", "pytest", "suites/correctness",
                            "--device=cuda", "--hypothesis-profile=ci", "-q",
                            f"--results-json={out / 'correctness.json'}"), "correctness checks"),
        _pytest_status(_run(session, "python", "-m", "pytest", "suites/cudasim",
                            "--hypothesis-profile=ci", "-q",
                            f"--results-json={out / 'numba-cuda.json'}"), "numba-cuda checks"),
        _pytest_status(_run(session, "python", "-m", "pytest", "suites/performance",
                            f"--benchmark-json={out / 'bench.json'}", "-q", *BENCH_TIMING,
                            *session.posargs), "benchmarks"),
    ]
    built = _run(session, "python", "-m", "reports", "build", "--correctness",
                 str(out / "correctness.json"), str(out / "numba-cuda.json"),
                 "--bench", str(out / "bench.json"), "--out", str(out))
    problems.append(f"the report build failed (exit status {built})" if built else None)
    problems = [p for p in problems if p]
    if problems:
        session.error("; ".join(problems) + f": see {out / 'index.html'}")


@nox.session(python=PYTHON)
def compile(session: nox.Session) -> None:
    """torch.compile as a third timed peer: every algorithm at medium size, numba vs torch-cpu
    vs torch-compile (inductor, default mode), compile time apart; then the report again with
    these figures beside the main job's. Not part of `report` or `ci`: inductor takes seconds
    to tens of seconds per graph on 2 cores (~25 min for the catalog), beyond their budgets."""
    _install(session, "test")
    code = _run(session, "python", "-m", "pytest", "suites/performance",
                f"--benchmark-json={COMPILE}", "-q", "--bench-sizes=medium",
                "--bench-impls=numba,torch-cpu,torch-compile", *BENCH_TIMING, *session.posargs)
    benches = [str(p) for p in (BENCH, COMPILE) if p.exists()]
    correctness = ["--correctness", str(CORRECTNESS)] if CORRECTNESS.exists() else []
    built = _run(session, "python", "-m", "reports", "build", *correctness,
                 *[a for b in benches for a in ("--bench", b)], "--out", str(OUT))
    problems = [_pytest_status(code, "torch-compile benchmarks"),
                f"the report build failed (exit status {built})" if built else None]
    problems = [p for p in problems if p]
    if problems:
        session.error("; ".join(problems))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)

