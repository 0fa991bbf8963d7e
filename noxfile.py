"""The sessions people and CI run. ``nox -l`` lists them.

    nox -s report    the main job: correctness + benchmarks + the HTML report
    nox -s tests     correctness checks and the harness's own tests (what CI runs first)
    nox -s bench     benchmarks only, pytest-benchmark JSON
    nox -s ci        tests with results, quick benchmarks, and the gate
    nox -s gpu       correctness and benchmarks with torch twins on CUDA
    nox -s lint      ruff

Every session installs the project and its dependency groups from pyproject.toml, with
constraints.txt pinning torch to the CPU wheel. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

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
PYTHON = "3.11"

# Benchmark timing: at least 5 timed rounds, at most ~0.5 s per benchmark after the two
# untimed first calls (the first is recorded as compile time), GC off while timing. Each round
# lasts at least 0.5 ms (tiny calls are repeated within a round), which caps a benchmark at
# ~1000 rounds: the raw timings the report's statistics use stay a few MB for the catalog.
BENCH_TIMING = ["--benchmark-min-rounds=5", "--benchmark-max-time=0.5",
                "--benchmark-min-time=0.0005",
                "--benchmark-warmup=off", "--benchmark-disable-gc", "--benchmark-sort=name"]


def _env() -> dict[str, str]:
    # torch.compile/inductor caches go under .nox/ rather than the shared /tmp.
    tmp = ROOT / ".nox" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp), "PYTHONHASHSEED": "0"}


def _install(session: nox.Session, *groups: str) -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    session.install("-c", "constraints.txt", "-e", ".", *deps)


def _pytest(session: nox.Session, *args: str, success_codes=(0,)) -> bool:
    code = session.run("python", "-m", "pytest", *args, env=_env(),
                       success_codes=list(success_codes) + [1])
    return code == 0


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Correctness checks (ci Hypothesis profile) and the harness's own tests."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "suites/correctness", "suites/selftest",
                "--hypothesis-profile=ci", f"--results-json={CORRECTNESS}", *session.posargs,
                env=_env())


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks of every algorithm: numba vs torch-cpu (and torch-cuda on a GPU)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "suites/performance", f"--benchmark-json={BENCH}",
                *BENCH_TIMING, *session.posargs, env=_env())


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """The main job: correctness + benchmarks, then one self-contained HTML report."""
    _install(session, "test")
    ok = _pytest(session, "suites/correctness", "--hypothesis-profile=ci", "-q",
                 f"--results-json={CORRECTNESS}")
    _pytest(session, "suites/performance", f"--benchmark-json={BENCH}", "-q", *BENCH_TIMING,
            *session.posargs)
    session.run("python", "-m", "reports", "build", "--correctness", str(CORRECTNESS),
                "--bench", str(BENCH), "--out", str(OUT))
    if not ok:
        session.warn("some correctness checks failed: see the report")


@nox.session(python=PYTHON)
def ci(session: nox.Session) -> None:
    """What CI gates on: quick benchmarks, the report and the gate (after `nox -s tests`)."""
    _install(session, "test")
    # `nox -s tests` has just written the correctness results in CI (.ci/run runs it first);
    # run the checks here only when there are none.
    if not CORRECTNESS.exists():
        _pytest(session, "suites/correctness", "--hypothesis-profile=ci", "-q",
                f"--results-json={CORRECTNESS}")
    # Small sizes and short timing: CI checks that every benchmark runs and records what it
    # must; the full-size figures come from `nox -s report` / `nox -s bench`.
    session.run("python", "-m", "pytest", "suites/performance", f"--benchmark-json={BENCH}",
                "-q", "--bench-sizes=small", *BENCH_TIMING, "--benchmark-max-time=0.05",
                env=_env())
    session.run("python", "-m", "reports", "build", "--correctness", str(CORRECTNESS),
                "--bench", str(BENCH), "--out", str(OUT))
    session.run("python", "-m", "reports", "gate", "--correctness", str(CORRECTNESS),
                "--bench", str(BENCH), *session.posargs)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """Correctness and benchmarks with torch twins on CUDA (needs a GPU and a CUDA torch)."""
    _install(session, "test")
    out = OUT / "gpu"
    _pytest(session, "suites/correctness", "--device=cuda", "--hypothesis-profile=ci", "-q",
            f"--results-json={out / 'correctness.json'}")
    _pytest(session, "suites/performance", "--bench-impls=numba,torch-cpu,torch-cuda",
            f"--benchmark-json={out / 'bench.json'}", "-q", *BENCH_TIMING, *session.posargs)
    session.run("python", "-m", "reports", "build", "--correctness",
                str(out / "correctness.json"), "--bench", str(out / "bench.json"),
                "--out", str(out))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)

