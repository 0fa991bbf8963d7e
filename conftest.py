"""pytest options, Hypothesis profiles, and the recording of check results for the report.

Options:
  --device auto|cpu|cuda   where torch twins run (auto: CUDA when available)
  --results-json PATH      write one record per correctness check (see suites/recording.py)
  --bench-sizes, --bench-impls, --bench-dtypes   narrow the benchmark matrix
  --bench-budget SECONDS   share a total timing budget among the benchmark groups

Hypothesis profiles (``--hypothesis-profile NAME`` or ``REFBENCH_PROFILE=NAME``):
  ci        deterministic and quick: what CI and ``nox -s tests`` run
  report    deterministic, a third of ci's examples: the main job, ``nox -s report``
  dev       random, a few more examples: the default for local runs
  thorough  thousands of examples per check, for nightly runs
"""

from __future__ import annotations

import json
import os
import shlex
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import reference  # fixes Numba's vector width (reference/_jit.py) before a suite compiles

pytest_plugins = ["pytester"]  # the harness tests run pytest-benchmark in a subprocess

_COMMON = dict(
    deadline=None,  # the first call of a kernel compiles (or loads from cache)
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile("ci", derandomize=True, max_examples=30, database=None, **_COMMON)
# The main job's checks (`nox -s report`): CI's deterministic examples, fewer of them, so that the
# job is quick enough to run after every change; its report shows how many each check tried.
settings.register_profile("report", derandomize=True, max_examples=10, database=None, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("REFBENCH_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("refbench")
    g.addoption("--device", default="auto", choices=("auto", "cpu", "cuda"),
                help="where torch twins run; auto = CUDA when available (default: auto)")
    g.addoption("--results-json", default=None, metavar="PATH",
                help="write the correctness records to PATH (JSON)")
    g.addoption("--shard", default=None, metavar="I/N",
                help="run only the I-th of N shards of the collected tests (1 <= I <= N): "
                     "a test's shard comes from a hash of its id, so every machine of a CI "
                     "matrix agrees without talking; merge the results with `reports build`")
    g.addoption("--bench-sizes", default="small,medium,large",
                help="comma-separated benchmark sizes (default: small,medium,large)")
    g.addoption("--bench-impls", default="all",
                help="comma-separated implementations to benchmark (default: all: numba, "
                     "torch-cpu, torch-cuda and every spec's peers such as sklearn)")
    g.addoption("--bench-dtypes", default="default",
                help="comma-separated dtypes to benchmark: float32, float64, or default (each "
                     "spec's first dtype: float32, float64 for classical ML) (default: default)")
    g.addoption("--bench-budget", type=float, default=None,
                help="total seconds of timed rounds for the whole benchmark run: each group "
                     "gets an equal share of what is left (never more than "
                     "--benchmark-max-time per implementation, never fewer than "
                     "--benchmark-min-rounds rounds); first calls, compilation and calibration "
                     "are outside it (default: none, --benchmark-max-time alone)")


_CONFIG: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config
    config._refbench_records = []  # type: ignore[attr-defined]
    config._refbench_start = time.time()  # type: ignore[attr-defined]
    config._refbench_load_start = _loadavg()  # type: ignore[attr-defined]
    # pytest-benchmark writes --benchmark-json at the end without creating its folder: in a
    # fresh clone `nox -s compile` (or `bench`) ran 17 minutes, then failed on the missing
    # reports/out/.
    bench_json = config.getoption("benchmark_json", None)
    if bench_json is not None:
        Path(bench_json).parent.mkdir(parents=True, exist_ok=True)


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _threading() -> dict:
    """The thread configuration both runtimes were timed in (their defaults unless set)."""
    import numba
    import torch

    facts = {"numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(),
             "torch_interop_threads": torch.get_num_interop_threads()}
    try:
        facts["numba_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        facts["numba_layer"] = f"not initialised (configured: {numba.config.THREADING_LAYER})"
    target = reference._jit.target()
    facts["numba_vectors"] = f"{target['vector_bits']}-bit (LLVM cpu {target['cpu']})"
    facts["torch_vectors"] = torch.backends.cpu.get_cpu_capability()
    from reference import _blas

    facts["numba_blas"] = _blas.BACKEND
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER"):
        facts[var] = os.environ.get(var, "unset")
    return facts


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The torch device for twins; CUDA requested without a GPU skips with a reason."""
    import torch

    from suites.twin import resolve_device

    name = resolve_device(request.config.getoption("--device"))
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda: torch sees no CUDA device on this machine")
        # Parity checks compare IEEE float32 arithmetic, not TF32's 10-bit mantissa.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return name


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard: expected I/N such as 2/4, got {text!r}") from None
    if not 1 <= i <= n:
        raise pytest.UsageError(f"--shard: expected 1 <= I <= N, got {text!r}")
    return i, n


def _shard_key(item: pytest.Item) -> str:
    """The test id; for a benchmark, its group, so implementations timed together stay together."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "bench" in params:
        name, _impl, size, dtype, pass_ = params["bench"]
        return f"bench {name} {size} {dtype} {pass_}"
    return item.nodeid


# pytest-xdist (``--dist loadgroup``): the tests that compile the same Numba kernels run on one
# worker, so that a kernel is compiled once and the other tests load it from the cache. Without
# this, the forward check of an algorithm ran on one worker while its gradient check ran on the
# other, both compiling the same kernels at once: in a cold run of the correctness suite on 2
# workers, 103 of 302 compiled functions were compiled by both, 1073 of 1753 compile-seconds
# (numba's compile events, reference/ kernels and what they call). Families whose algorithms
# share kernels (the convolutions of the layers and blocks, the RNN and attention kernels of the
# sequence models, the optimizers, the models) are one group each; an algorithm of any other
# family is its own group. Files of tests that are not per algorithm join their family's group.
_SHARED_KERNEL_FAMILIES = ("layers", "sequence", "optim", "models")
_FILE_GROUPS = {"test_conv.py": "layers", "test_rnn.py": "sequence",
                "test_composition.py": "sequence", "test_optim.py": "optim",
                "test_models.py": "models", "test_models_gen.py": "models"}


def _compile_group(item: pytest.Item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    spec = params.get("spec")
    if spec is not None and hasattr(spec, "family"):
        return spec.family if spec.family in _SHARED_KERNEL_FAMILIES else spec.name
    return _FILE_GROUPS.get(item.path.name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _compile_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(name=f"kernels-{group}"))
    text = config.getoption("--shard")
    if not text:
        return
    i, n = _parse_shard(text)
    keep, drop = [], []
    for item in items:
        (keep if zlib.crc32(_shard_key(item).encode()) % n == i - 1 else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


_REC_KEY = pytest.StashKey["object"]()


def _replay_command(item: pytest.Item) -> str:
    config = item.config
    profile = settings.get_current_profile_name()
    args = ["python", "-m", "pytest", item.nodeid, f"--device={config.getoption('--device')}",
            f"--hypothesis-profile={profile}"]
    return shlex.join(args)


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """The CheckRecord of this test item; every Hypothesis example updates the same one."""
    from suites.recording import CheckRecord

    rec = CheckRecord(nodeid=request.node.nodeid, replay=_replay_command(request.node))
    request.node.stash[_REC_KEY] = rec
    return rec


_USER_PROPERTY = "refbench_record"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the check's record to the test report (as a user property, so that pytest-xdist
    carries it from a worker to the controller, which alone writes the results file)."""
    report = yield
    rec = item.stash.get(_REC_KEY, None)
    if rec is None or not rec.check:
        return report
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        rec.duration_s += report.duration
        rec.verdict = report.outcome
        if report.skipped:
            rec.reason = _skip_reason(report)
        elif report.failed and not rec.message:
            rec.message = str(report.longreprtext)[-4000:]
        # Plain JSON types only: xdist's channel cannot carry numpy scalars.
        plain = json.loads(json.dumps(rec.to_json(), default=_plain))
        report.user_properties.append((_USER_PROPERTY, plain))
    return report


def _plain(x):
    """numpy scalars and arrays as Python numbers and lists (for JSON)."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"a check record holds a {type(x).__name__}, which JSON cannot carry")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == _USER_PROPERTY:
            _CONFIG._refbench_records.append(value)  # type: ignore[union-attr]


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--results-json")
    if not path or hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
        return
    from suites.environment import collect
    from suites.recording import SCHEMA

    records = session.config._refbench_records  # type: ignore[attr-defined]
    doc = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - session.config._refbench_start, 3),
        "device": session.config.getoption("--device"),
        "profile": settings.get_current_profile_name(),
        "environment": collect(),
        # Sorted, so that the file's content does not depend on how many workers ran it.
        "records": sorted(records, key=lambda r: r["nodeid"]),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add GPU facts, library versions and the commit to pytest-benchmark's machine_info."""
    from suites.environment import collect
    from suites.performance import peaks

    env = collect()
    start, end = config._refbench_load_start, _loadavg()  # type: ignore[attr-defined]
    cpus = os.cpu_count() or 1
    # Busy: another runnable task per core on average, over the last minute, at either end
    # of the run (the run itself keeps about one core busy).
    busy = any(x is not None and x[0] >= cpus + 1 for x in (start, end))
    env["load"] = {"start": start, "end": end, "cpus": cpus, "busy": busy}
    env["threading"] = _threading()
    env["peaks"] = {"cpu": peaks.measure("cpu")}
    from suites.performance.test_bench import NOT_RUN

    env["not_run"] = list(NOT_RUN)
    if env["gpu"]:
        machine_info["gpu"] = env["gpu"]
        env["peaks"]["cuda"] = peaks.measure("cuda", n=8192, copy_mib=1024)
    machine_info["refbench"] = env
