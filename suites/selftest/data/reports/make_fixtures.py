"""Writes the small result files the report tests read (run it to regenerate them):

    python suites/selftest/data/reports/make_fixtures.py

Files, in the formats conftest.py and pytest-benchmark write:
- cpu_correctness.json   a CPU run, every check passed (CUDA checks skipped with a reason)
- cpu_bench.json         its benchmarks: numba and torch-cpu, three sizes, two passes
- gpu_bench.json         another machine with a GPU: numba, torch-cpu, torch-cuda; one
                         benchmark crashed (absent), so its cell reads "not run"
- failing_correctness.json  failures with shrunk input and replay, and hostile names
- hostile_bench.json     benchmarks whose names carry <script>, quotes and unicode
- old_bench.json         pytest-benchmark 3.x style: no fullname, ops, stats.data, extra_info
- slower_bench.json      cpu_bench on a later commit (same machine), numba softmax 1.6x slower
                         relative to torch (gate: fail)
- noisy_bench.json       cpu_bench re-timed with noise only, on another host (gate: pass)

Paired files, in the format of the interleaved benchmarks (``extra_info``: group, paired,
ratios, stable, noise; ``machine_info.refbench``: load, threading, peaks with samples):
- paired_bench.json      a quiet run: every group timed in shared rounds, a geometric sweep
                         s1..s6 for gelu beside small/medium/large, one dispatch-bound
                         algorithm (scalar_step), and two noisy benchmarks: torch-cpu gelu
                         small forward (most rounds stalled for ms) and numba leaky_relu
                         medium forward (min 17 us, median in the ms)
- paired_busy_bench.json the same commit under a CPU hog: busy load, unstable peaks, heavier
                         shared load; numba relu large forward planted 1.5x slower AND noisy
                         (the gate must not fail on it)
- paired_slower_bench.json  a quiet re-run with numba softmax 1.5x slower (gate: fail)
- paired_correctness.json   cpu_correctness plus named figures on a check, two loss curves
                         on another (a list of numbers and the same as text), and a passed
                         gradcheck whose worst is "inf" (an older recorder's 0/0)
- compiled_bench.json    torch-compile beside numba and torch-cpu (one graph; graph breaks;
                         lstm eager in disguise; adam_step not compiled, with inductor's
                         reason), peers sklearn and torch-fused (nothing comparable for
                         forward+backward), torch-cuda asked for without a GPU: every
                         implementation not timed listed in machine_info.refbench.not_run

Files of a CI matrix (shards and devices, merged by ``reports build``):
- shard1_correctness.json, shard2_correctness.json  cpu_correctness split as ``--shard=I/2``
                         splits it (crc32 of the test id), each with its own start and duration
- shard1_bench.json, shard2_bench.json  cpu_bench split by benchmark group (a group's
                         implementations stay in one shard), each with its own start, load
                         average and measured peaks
- gpu_correctness.json   the same commit on a GPU box with --device cuda: another machine, a
                         CUDA torch; its twins ran on cuda, so its test_forward_cuda checks
                         passed where the CPU run skipped them (same key, another run)

``synthetic_bench``/``synthetic_correctness`` build catalog-sized inputs for the size and
speed tests. Everything is seeded: the same files every time.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parents[3]
if str(ROOT) not in sys.path:  # run as a script: reports.paired from this checkout
    sys.path.insert(0, str(ROOT))
SIZES = {"small": 64, "medium": 65536, "large": 16777216}
HOSTILE = '<script>alert("pwned")</script>'
HOSTILE_FAMILY = "évil \"family\" 'x' ∑😀"

ENV_CPU = {
    "python": "3.11.7", "platform": "Linux-6.18.44-x86_64-with-glibc2.36",
    "cpu": "Intel(R) Xeon(R) Processor", "cores": 2,
    "versions": {"numpy": "2.4.6", "numba": "0.68.1", "llvmlite": "0.50.0", "scipy": "1.17.1",
                 "torch": "2.13.0+cpu", "hypothesis": "6.155.2", "pytest-benchmark": "5.2.3"},
    "gpu": None, "commit": "dbf39841b07950c290e1eb140c3f0a4d708a36e8", "dirty": False,
}
ENV_GPU = {
    **ENV_CPU, "cpu": "AMD EPYC 9454 48-Core Processor", "cores": 16,
    "versions": {**ENV_CPU["versions"], "torch": "2.13.0+cu128"},
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "count": 1, "cuda": "12.8", "capability": "9.0",
            "driver": "570.124.06"},
    "commit": "5e0c1d2a9b8f7e6d5c4b3a29180f7e6d5c4b3a29", "dirty": True,
}
LATER_COMMIT = "a41f0c9e2d7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"  # a candidate after ENV_CPU's
PEAK_CPU = {"device": "cpu", "flops_per_s": 9.3e10, "bytes_per_s": 8.2e9,
            "method": "float32 matmul 2048x2048; copy of 256 MiB (read + write)"}
PEAK_GPU_CPU = {**PEAK_CPU, "flops_per_s": 1.9e12, "bytes_per_s": 6.1e10}
PEAK_CUDA = {"device": "cuda", "flops_per_s": 5.1e13, "bytes_per_s": 2.9e12,
             "method": "float32 matmul 8192x8192; copy of 1024 MiB (read + write)"}

# name -> (family, differentiable, flops per element, rows for softmax-like shapes)
ALGOS = {
    "relu": ("activations", True, 1.0),
    "leaky_relu": ("activations", True, 2.0),
    "softmax": ("activations", True, 5.0),
    "gelu": ("activations", True, 12.0),
    "step": ("activations", False, 1.0),
}


# -- correctness --------------------------------------------------------------------------------

def _record(algo, family, check, dtype, verdict="passed", worst=0.0, reason="", message="",
            case="", device="cpu", examples=30, extra=""):
    param = f"{algo}-{dtype}" if dtype else f"{algo}{extra}"
    test = {"forward": "test_forward", "gradient": "test_gradient",
            "gradcheck": "test_gradcheck", "invariants": "test_invariants",
            "invalid input": "test_invalid", "no derivative": "test_no_derivative"}[check]
    nodeid = f"suites/correctness/test_checks.py::{test}[{param}]"
    tol = {"float32": (1.3e-6, 1e-5), "float64": (1e-7, 1e-7)}.get(dtype)
    measured = check in ("forward", "gradient", "gradcheck")
    return {
        "nodeid": nodeid,
        "replay": f"python -m pytest '{nodeid}' --device=auto --hypothesis-profile=ci",
        "algorithm": algo, "family": family, "check": check, "dtype": dtype, "device": device,
        "examples": examples if verdict != "skipped" else 0,
        "max_abs": worst * (tol[1] if tol else 0) if measured else 0.0,
        "max_rel": worst * (tol[0] if tol else 0) if measured else 0.0,
        "worst": worst if measured else 0.0,
        "rtol": tol[0] if measured and tol else None, "atol": tol[1] if measured and tol else None,
        "verdict": verdict, "reason": reason, "message": message, "case": case,
        "duration_s": 0.25,
    }


def correctness(failing: bool = False) -> dict:
    rng = np.random.default_rng(1 if failing else 0)
    records = []
    for algo, (family, diff, _) in ALGOS.items():
        for dtype in ("float32", "float64"):
            checks = ["forward", "gradient", "gradcheck"] if diff else ["forward"]
            for check in checks:
                if check == "gradcheck" and dtype == "float32":
                    continue
                worst = float(rng.uniform(0.0, 0.3) if dtype == "float32" else rng.uniform(0, .05))
                records.append(_record(algo, family, check, dtype, worst=worst))
            records.append(_record(algo, family, "invariants", dtype))
        if not diff:
            records.append(_record(algo, family, "no derivative", "float64"))
        for i, what in enumerate(("wrong rank", "float16 input", "non-finite parameter")):
            records.append(_record(algo, family, "invalid input", "", examples=1,
                                   extra=f"-{i}-{what.replace(' ', '_')}"))
        records.append(_record(algo, family, "forward", "float32", verdict="skipped",
                               device="cuda",
                               reason="--device cuda: torch sees no CUDA device on this machine",
                               examples=0) | {"nodeid": f"suites/correctness/test_checks.py::"
                                                        f"test_forward_cuda[{algo}-float32]"})
    if failing:
        case = ("x: float32[3, 5] [ 1.0000000e+04, -1.0000000e+04,  0.0000000e+00,  "
                "1.5000000e+00, -2.5000000e+00, 3.0000000e+00] ... (+9); params: axis=-1")
        for r in records:
            if r["algorithm"] == "softmax" and r["check"] == "gradient" and r["dtype"] == "float32":
                r.update(verdict="failed", worst=37.5, max_abs=3.75e-4, max_rel=2.1e-2,
                         case=case, message=(
                             "softmax backward, float32, gradient of 'x' (1 of 1), on cpu: "
                             "worst element [1, 3]: reference 0.01234, twin 0.012715, |diff| "
                             "0.000375 > tolerance 1e-05 (atol 1e-05 + rtol 1.3e-06 * |twin|), "
                             "37.5x the tolerance; 4/15 elements out, max abs 0.000375, max rel "
                             f"0.021\n  case: {case}\n  replay: {r['replay']}\n"
                             "You can reproduce this example by temporarily adding "
                             "@reproduce_failure('6.155.2', b'AXicY2BgYAAAAAQAAQ==') as a "
                             "decorator on your test case"))
        bad = {"family": HOSTILE_FAMILY}
        records.append(_record(HOSTILE, HOSTILE_FAMILY, "forward", "float32", verdict="failed",
                               worst=float("inf"), message=(
                                   f"{HOSTILE} forward: reference returned <img src=x "
                                   f"onerror=\"window.__pwned=1\"> & 'quotes' \"double\" "
                                   f"unicode ∑ 😀 — ünïcödé\n  replay: python -m pytest "
                                   f"'x::test[{HOSTILE}]'"),
                               case="x: float32[2] [nan, inf]") | bad)
        # recording.py writes non-finite errors as strings
        records[-1].update(worst="inf", max_abs="inf", max_rel="nan")
        records.append(_record(HOSTILE, HOSTILE_FAMILY, "gradient", "float32",
                               verdict="skipped", reason=f"skipped because {HOSTILE} & ∑",
                               examples=0) | bad)
        records.append(_record("ß∑😀 relu \"quoted\"", "activations", "forward", "float64",
                               worst=0.5))
    env = dict(ENV_CPU)
    return {"schema": "refbench.correctness/1", "created": "2026-11-22T14:59:33+0000",
            "duration_s": 17.1, "device": "auto", "profile": "ci", "environment": env,
            "records": records}


# -- benchmarks ---------------------------------------------------------------------------------

def _stats(data: np.ndarray, old: bool = False) -> dict:
    q1, med, q3 = np.quantile(data, (0.25, 0.5, 0.75))
    iqr = q3 - q1
    s = {"min": float(data.min()), "max": float(data.max()), "mean": float(data.mean()),
         "stddev": float(data.std(ddof=1)), "rounds": int(data.size), "median": float(med),
         "iqr": float(iqr), "q1": float(q1), "q3": float(q3),
         "iqr_outliers": int(((data < q1 - 1.5 * iqr) | (data > q3 + 1.5 * iqr)).sum()),
         "stddev_outliers": 0, "outliers": "0;0",
         "ld15iqr": float(data[data >= q1 - 1.5 * iqr].min()),
         "hd15iqr": float(data[data <= q3 + 1.5 * iqr].max()),
         "total": float(data.sum()), "iterations": 1}
    if not old:
        s["ops"] = float(1.0 / data.mean())
        s["data"] = [float(f"{x:.6g}") for x in data]
    return s


def model_time(algo: str, impl: str, size: str, pass_: str, flops_per: float) -> float:
    """A plausible median: fixed call overhead plus work at a rate, per implementation."""
    n = SIZES[size]
    overhead = {"numba": 1.5e-6, "torch-cpu": 6e-6, "torch-cuda": 2.5e-5}[impl]
    rate = {"numba": 1.2e9, "torch-cpu": 1.6e9, "torch-cuda": 4e11}[impl]
    work = n * (flops_per + 2) / rate
    factor = 1.0 if pass_ == "forward" else 2.6
    if impl == "torch-cpu" and pass_ == "forward+backward":
        overhead *= 4  # autograd
    return (overhead + work) * factor


def bench_entry(algo, family, impl, size, dtype, pass_, median, rng, rounds, flops_per,
                old=False, spread=0.04, shapes=None) -> dict:
    data = median * np.exp(rng.normal(0, spread, rounds)) * (1 + rng.exponential(0.02, rounds))
    data *= median / np.median(data)
    n = SIZES[size]
    factor = 1.0 if pass_ == "forward" else 3.0
    pid = f"{algo}-{impl}-{size}-{dtype}-{pass_.replace('+', '_')}"
    entry = {
        "group": f"{algo} {size} {dtype} {pass_}",
        "name": f"test_bench[{pid}]",
        "fullname": f"suites/performance/test_bench.py::test_bench[{pid}]",
        "params": {"bench": [algo, impl, size, f"UNSERIALIZABLE[dtype('{dtype}')]", pass_]},
        "param": pid,
        "extra_info": {
            "algorithm": algo, "family": family, "implementation": impl,
            "device": "cuda" if impl == "torch-cuda" else "cpu", "dtype": dtype, "size": size,
            "shapes": shapes or {"x": [n // 64, 64] if algo == "softmax" else [n]},
            "flops": flops_per * n * factor, "bytes": 8.0 * n * factor,
            "first_call_s": (0.45 if impl == "numba" and size == "small" else 0.0) + median * 2,
            "compile_s": 0.45 if impl == "numba" and size == "small" else median * 0.1,
            "pass": pass_,
        },
        "options": {"disable_gc": True, "timer": "perf_counter", "min_rounds": 5,
                    "max_time": 0.5, "min_time": 5e-06, "warmup": False},
        "stats": _stats(data, old),
    }
    if old:
        for key in ("fullname", "params", "param", "extra_info"):
            entry.pop(key)
    return entry


def bench(machine: str = "cpu", seed: int = 0, tweak=None, impls=None, node="vm",
          drop=(), commit: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    impls = impls or (["numba", "torch-cpu", "torch-cuda"] if machine == "gpu"
                      else ["numba", "torch-cpu"])
    out = []
    for algo, (family, diff, flops_per) in ALGOS.items():
        for size in SIZES:
            for impl in impls:
                for pass_ in ("forward", "forward+backward") if diff else ("forward",):
                    key = (algo, impl, size, pass_)
                    if key in drop:
                        continue
                    med = model_time(algo, impl, size, pass_, flops_per)
                    if machine == "gpu" and impl != "torch-cuda":
                        med *= 0.6
                    if tweak:
                        med *= tweak(*key)
                    rounds = int(min(max(0.02 / med, 5), 40))
                    out.append(bench_entry(algo, family, impl, size, "float32", pass_, med, rng,
                                           rounds, flops_per))
    env = ENV_GPU if machine == "gpu" else ENV_CPU
    if commit:
        env = {**env, "commit": commit}
    return _bench_doc(out, env, {"cpu": PEAK_GPU_CPU, "cuda": PEAK_CUDA} if machine == "gpu"
                      else {"cpu": PEAK_CPU}, node)


def _bench_doc(benchmarks, env, peaks, node, version="5.2.3", refbench=True) -> dict:
    cpu = {"brand_raw": env["cpu"], "count": env["cores"], "arch": "X86_64"}
    mi = {"node": node, "processor": "", "machine": "x86_64", "python_implementation": "CPython",
          "python_version": env["python"], "release": "6.18.44", "system": "Linux", "cpu": cpu}
    if refbench:
        mi["refbench"] = {**env, "peaks": peaks}
        if env["gpu"]:
            mi["gpu"] = env["gpu"]
    return {"machine_info": mi,
            "commit_info": {"id": env["commit"], "time": "2026-11-22T14:58:19+00:00",
                            "dirty": env["dirty"], "project": "main", "branch": "main"},
            "benchmarks": benchmarks, "datetime": "2026-11-22T15:00:01.420626+00:00",
            "version": version}


def hostile_bench() -> dict:
    rng = np.random.default_rng(7)
    out = []
    for algo, family in ((HOSTILE, HOSTILE_FAMILY), ("ß∑😀 relu \"quoted\"", "activations")):
        for size in SIZES:
            for impl in ("numba", "torch-cpu"):
                med = model_time("relu", impl, size, "forward", 1.0)
                e = bench_entry(algo, family, impl, size, "float32", "forward", med, rng, 20, 1.0)
                e["extra_info"]["shapes"] = {f"<b>{HOSTILE}</b>": [SIZES[size]]}
                out.append(e)
    return _bench_doc(out, ENV_CPU, {"cpu": PEAK_CPU}, node="<i>host</i>")


def old_bench() -> dict:
    """pytest-benchmark 3.x: no fullname/params/extra_info, no ops, no raw data."""
    rng = np.random.default_rng(3)
    out = []
    for size in SIZES:
        for impl in ("numba", "torch-cpu"):
            med = model_time("relu", impl, size, "forward", 1.0)
            out.append(bench_entry("relu", "activations", impl, size, "float32", "forward", med,
                                   rng, 40, 1.0, old=True))
    # One benchmark that is not refbench's at all: kept under its own name.
    other = bench_entry("x", "y", "numba", "small", "float32", "forward", 1e-5, rng, 10, 1.0,
                        old=True)
    other["name"] = "test_something_else"
    out.append(other)
    doc = _bench_doc(out, ENV_CPU, {}, node="oldbox", version="3.2.3", refbench=False)
    return doc


# -- paired, interleaved benchmarks -------------------------------------------------------------

SWEEP = {f"s{k + 1}": 300 * 8**k for k in range(6)}  # 300 .. 9.8M elements, geometric
PAIRED_ALGOS = {**ALGOS, "scalar_step": ("optim", True, 1.0)}
THREADING = {"numba_threading_layer": "omp", "numba_threads": "2", "torch_threads": "2",
             "torch_interop_threads": "1", "OMP_WAIT_POLICY": "PASSIVE",
             "KMP_BLOCKTIME": "unset"}


def _paired_time(algo, impl, size, pass_, flops_per):
    n = SWEEP.get(size) or SIZES[size]
    if algo == "scalar_step":  # an optimizer step on a handful of scalars: all call overhead
        return {"numba": 2.5e-6, "torch-cpu": 9e-6}[impl] * (1 + 1e-9 * n)
    saved = dict(SIZES)
    SIZES[size] = n
    try:
        return model_time(algo, impl, size, pass_, flops_per)
    finally:
        SIZES.clear()
        SIZES.update(saved)


def paired_bench(seed: int, busy: bool = False, tweak=None, stalls=None, node="vm") -> dict:
    """Groups timed in shared rounds: round i of every implementation sees the same load.

    ``stalls``: {(algo, impl, size, pass): (fraction of rounds, stall seconds)} planted on one
    implementation only (a descheduled worker); ``tweak`` multiplies a true median.
    """
    from reports.paired import noise, paired_ratio

    rng = np.random.default_rng(seed)
    impls = ["numba", "torch-cpu"]
    stalls = stalls or {}
    out = []
    for algo, (family, diff, flops_per) in PAIRED_ALGOS.items():
        sizes = list(SIZES) + (list(SWEEP) if algo == "gelu" else [])
        for size in sizes:
            n = SWEEP.get(size) or SIZES[size]
            for pass_ in ("forward", "forward+backward") if diff else ("forward",):
                rounds = 30
                # The load every implementation of the group shares in a round.
                if busy:
                    shared = np.exp(rng.normal(0, 0.06, rounds)) * np.where(
                        rng.random(rounds) < 0.08, rng.uniform(1.3, 2.0, rounds), 1.0)
                else:
                    shared = np.exp(rng.normal(0, 0.03, rounds))
                data = {}
                for impl in impls:
                    med = _paired_time(algo, impl, size, pass_, flops_per)
                    if tweak:
                        med *= tweak(algo, impl, size, pass_)
                    t = med * shared * np.exp(rng.normal(0, 0.02, rounds))
                    if (algo, impl, size, pass_) in stalls:
                        frac, stall = stalls[(algo, impl, size, pass_)]
                        hit = rng.permutation(rounds)[: int(round(frac * rounds))]
                        t[hit] = stall * rng.uniform(0.8, 1.2, hit.size)
                    data[impl] = np.array([float(f"{x:.6g}") for x in t])
                group = f"{algo} {size} float32 {pass_}"
                for impl in impls:
                    shapes = {"x": [n]}
                    if algo == "softmax":
                        shapes = {"x": [n // 64, 64]}
                    elif algo == "scalar_step":
                        shapes = {"params": [n // 64], "grads": [n // 64]}
                    e = bench_entry(algo, family, impl, "small", "float32", pass_, 1.0, rng,
                                    rounds, flops_per, shapes=shapes)
                    pid = f"{algo}-{impl}-{size}-float32-{pass_.replace('+', '_')}"
                    e["name"] = f"test_bench[{pid}]"
                    e["fullname"] = f"suites/performance/test_bench.py::test_bench[{pid}]"
                    e["param"] = pid
                    e["group"] = group
                    e["stats"] = _stats(data[impl])
                    e["stats"]["data"] = [float(x) for x in data[impl]]
                    info = e["extra_info"]
                    factor = 1.0 if pass_ == "forward" else 3.0
                    info.update(
                        size=size, flops=flops_per * n * factor, bytes=8.0 * n * factor,
                        group=group,
                        paired={"rounds": rounds, "partners": impls, "attempts": 1,
                                "order": "random per round",
                                "warmup": "one untimed call before each timed round"},
                        ratios={}, compile_s=0.45 if impl == "numba" else 0.0,
                        first_call_s=0.46 if impl == "numba" else 2e-4)
                    for other in impls:
                        if other != impl:
                            v, lo, hi = paired_ratio(data[impl], data[other])
                            info["ratios"][other] = {"value": v, "lo": lo, "hi": hi,
                                                     "level": 0.95}
                    nz = noise(data[impl])
                    info["stable"] = nz.pop("stable")
                    info["noise"] = nz
                    if not info["stable"]:
                        info["paired"]["attempts"] = 3  # re-measured twice, still noisy
                    out.append(e)
    load = ({"start": [4.12, 3.95, 3.2], "end": [4.31, 4.02, 3.35], "cpus": 2, "busy": True}
            if busy else
            {"start": [0.31, 0.42, 0.5], "end": [1.08, 0.93, 0.61], "cpus": 2, "busy": False})
    if busy:
        peak = {**PEAK_CPU, "flops_per_s": 4.8e10, "bytes_per_s": 1.5e10, "stable": False,
                "samples": {"flops_per_s": [4.8e10, 1.1e11, 1.9e11, 7.5e10, 2.0e11],
                            "bytes_per_s": [1.5e10, 9e9, 1.4e10, 6e9, 1.2e10]},
                "method": "best of 5: float32 matmul 2048x2048; copy of 256 MiB"}
    else:
        peak = {**PEAK_CPU, "flops_per_s": 2.05e11, "bytes_per_s": 1.5e10, "stable": True,
                "samples": {"flops_per_s": [2.01e11, 2.05e11, 1.98e11, 2.03e11, 2.04e11],
                            "bytes_per_s": [1.49e10, 1.5e10, 1.47e10, 1.5e10, 1.48e10]},
                "method": "best of 5: float32 matmul 2048x2048; copy of 256 MiB"}
    doc = _bench_doc(out, ENV_CPU, {"cpu": peak}, node)
    doc["machine_info"]["refbench"].update(load=load, threading=THREADING)
    return doc


# torch.compile as a third timed implementation, peers beside it, and what was not run.
# name -> (family, differentiable, flops per element, implementations timed, how dynamo
# captured the twin (None: inductor could not compile it, so torch-compile is never timed))
COMPILED_ALGOS = {
    "relu": ("activations", True, 1.0, ["numba", "torch-cpu", "torch-compile"], "one graph"),
    "lstm": ("sequence", True, 8.0, ["numba", "torch-cpu", "torch-compile"],
             "no graph (eager in disguise): dynamo does not trace nn.LSTM (cuDNN/mkldnn RNN "
             "module)"),
    "kmeans_assign": ("classical", False, 4.0,
                      ["numba", "torch-cpu", "torch-compile", "sklearn"],
                      "2 graphs, 1 breaks: Tensor.item() call with capture_scalar_outputs=False"),
    "adam_step": ("optim", True, 3.0, ["numba", "torch-cpu", "torch-fused"], None),
}
COMPILE_FAILURE = ("torch-compile: inductor could not compile the twin: "
                   "BackendCompilerFailed: backend='inductor' raised: <lowering> "
                   "aten._foreach_addcdiv")
NO_CUDA = "torch-cuda: torch sees no CUDA device on this machine"
PEER_SPEED = {"torch-compile": 0.7, "sklearn": 1.4, "torch-fused": 0.8}


def compiled_bench(seed: int = 30) -> dict:
    """A CPU run with --bench-impls=all,torch-compile: numba, torch-cpu, torch-compile and the
    specs' peers timed in shared rounds. lstm's torch-compile is eager in disguise (dynamo made
    no graph); adam_step's twin does not compile (not run, with inductor's reason), its
    torch-fused peer has nothing comparable for forward+backward; torch-cuda was asked for but
    the machine has no GPU. Every not-timed implementation is in machine_info.refbench.not_run.
    """
    from reports.paired import noise, paired_ratio

    rng = np.random.default_rng(seed)
    out, not_run = [], []
    for algo, (family, diff, flops_per, impls, how) in COMPILED_ALGOS.items():
        for size in SIZES:
            n = SIZES[size]
            for pass_ in ("forward", "forward+backward") if diff else ("forward",):
                group = f"{algo} {size} float32 {pass_}"
                timed = [i for i in impls if not (i == "torch-fused" and pass_ != "forward")]
                for impl in impls:
                    if impl not in timed:
                        not_run.append({"group": group, "implementation": impl, "reason":
                                        f"{impl}: nothing comparable to the reference's "
                                        f"{pass_} pass"})
                if how is None:
                    not_run.append({"group": group, "implementation": "torch-compile",
                                    "reason": COMPILE_FAILURE})
                not_run.append({"group": group, "implementation": "torch-cuda",
                                "reason": NO_CUDA})
                rounds = 30
                shared = np.exp(rng.normal(0, 0.03, rounds))
                data = {}
                for impl in timed:
                    base = "torch-cpu" if impl in PEER_SPEED else impl
                    med = model_time(algo if algo in ALGOS else "relu", base, size, pass_,
                                     flops_per)
                    if impl == "torch-compile" and "eager" in how:
                        med *= 1.02  # eager in disguise: torch-cpu's time, and a guard check
                    elif impl in PEER_SPEED:
                        med *= PEER_SPEED[impl]
                    t = med * shared * np.exp(rng.normal(0, 0.02, rounds))
                    data[impl] = np.array([float(f"{x:.6g}") for x in t])
                for impl in timed:
                    e = bench_entry(algo, family, impl, size, "float32", pass_, 1.0, rng,
                                    rounds, flops_per, shapes={"x": [n]})
                    e["stats"] = _stats(data[impl])
                    e["stats"]["data"] = [float(x) for x in data[impl]]
                    info = e["extra_info"]
                    med = float(np.median(data[impl]))
                    compile_s = {"numba": 0.8 if size == "small" else 0.0,
                                 "torch-compile": {"small": 4.2, "medium": 5.1,
                                                   "large": 6.3}[size]}.get(impl, 0.0)
                    if impl == "torch-compile" and "eager" in how:
                        compile_s = 0.35  # dynamo looked and gave up: no inductor compile
                    info.update(
                        group=group, compile_s=compile_s, first_call_s=compile_s + 2 * med,
                        paired={"rounds": rounds, "partners": timed, "attempts": 1,
                                "order": "random per round",
                                "warmup": "one untimed call before each timed round"},
                        ratios={})
                    if impl == "torch-compile":
                        info["compiled"] = how
                    for other in timed:
                        if other != impl:
                            v, lo, hi = paired_ratio(data[impl], data[other])
                            info["ratios"][other] = {"value": v, "lo": lo, "hi": hi,
                                                     "level": 0.95}
                    nz = noise(data[impl])
                    info["stable"] = nz.pop("stable")
                    info["noise"] = nz
                    out.append(e)
    peak = {**PEAK_CPU, "stable": True}
    doc = _bench_doc(out, ENV_CPU, {"cpu": peak}, "vm")
    doc["machine_info"]["refbench"].update(
        load={"start": [0.4, 0.5, 0.5], "end": [1.1, 0.9, 0.6], "cpus": 2, "busy": False},
        threading=THREADING, not_run=not_run)
    return doc


# Curves a check recorded (a model's mean loss per epoch): one as a list of numbers, the
# other as the text the models helper writes.
CURVE_LIST = [2.302, 1.104, 0.5213, 0.3127, 0.2218, 0.1806]
CURVE_TEXT = "2.301 1.112 0.530 0.318 0.224 0.183"


def paired_correctness() -> dict:
    doc = correctness()
    for r in doc["records"]:
        if r["algorithm"] == "softmax" and r["check"] == "invariants" and r["dtype"] == "float64":
            r["figures"] = {"rows summing to 1 within 4 ulp": 1.0, "max |sum - 1|": 2.2e-16,
                            "real-data accuracy (iris)": 0.9733, "note": "<b>not markup</b>"}
        if r["algorithm"] == "gelu" and r["check"] == "gradient" and r["dtype"] == "float32":
            r["figures"] = {"loss per epoch reference": CURVE_LIST,
                            "loss per epoch torch": CURVE_TEXT, "final loss reference": 0.1806}
        if r["algorithm"] == "relu" and r["check"] == "gradcheck":
            # written by an older recorder: an empty case made 0/0 into inf
            r.update(worst="inf", max_rel="inf", max_abs=0.0)
    return doc


# -- a CI matrix: shards and devices ------------------------------------------------------------

def shard_of(key: str, i: int, n: int) -> bool:
    """Whether ``key`` falls in shard ``i`` of ``n`` (1-based), as ``pytest --shard`` decides."""
    return zlib.crc32(key.encode()) % n == i - 1


def shard_correctness(i: int, n: int) -> dict:
    doc = correctness()
    doc["records"] = [r for r in doc["records"] if shard_of(r["nodeid"], i, n)]
    doc["created"] = f"2026-11-22T14:5{i}:00+0000"
    doc["duration_s"] = 8.0 + i
    return doc


def shard_bench(i: int, n: int) -> dict:
    """cpu_bench's groups in shard ``i`` of ``n``: the shard's own start, load and peaks."""
    doc = bench("cpu", seed=0)
    doc["benchmarks"] = [b for b in doc["benchmarks"]
                         if shard_of("bench " + b["group"], i, n)]
    doc["datetime"] = f"2026-11-22T15:0{i}:00.000000+00:00"
    refbench = doc["machine_info"]["refbench"]
    refbench["load"] = {"start": [0.2 * i, 0.3, 0.4], "end": [0.5 * i, 0.4, 0.4], "cpus": 2,
                        "busy": False}
    refbench["peaks"] = {"cpu": {**PEAK_CPU, "bytes_per_s": PEAK_CPU["bytes_per_s"] * (1 + i / 10)}}
    return doc


def gpu_correctness() -> dict:
    """The CPU run's commit on the GPU box, twins on cuda."""
    doc = correctness()
    for r in doc["records"]:
        r["device"] = "cuda"
        r["replay"] = r["replay"].replace("--device=auto", "--device=cuda")
        if r["verdict"] == "skipped":  # the CUDA checks the CPU box could not run
            r.update(verdict="passed", reason="", examples=30, worst=0.02, max_abs=2e-7,
                     max_rel=1.5e-8, rtol=1.3e-6, atol=1e-5)
    doc.update(device="cuda", created="2026-11-22T15:02:11+0000", duration_s=9.4,
               environment={**ENV_GPU, "commit": ENV_CPU["commit"], "dirty": False})
    return doc


# -- catalog-sized synthetic inputs -------------------------------------------------------------

def synthetic_bench(n_algos: int = 80, rounds: int = 1000, gpu: bool = True,
                    seed: int = 11, paired: bool = False) -> dict:
    """``paired``: the groups say they were timed in shared rounds (the report pairs their raw
    timings itself: no ``ratios`` written), and one benchmark in 20 is noisy."""
    rng = np.random.default_rng(seed)
    impls = ["numba", "torch-cpu", "torch-cuda"] if gpu else ["numba", "torch-cpu"]
    out = []
    families = ("activations", "losses", "regularizers", "layers", "sequence", "optim",
                "models", "classical")
    for i in range(n_algos):
        algo, family = f"algorithm_{i:02d}", families[i % len(families)]
        flops_per = float(1 + i % 13)
        for size in SIZES:
            for impl in impls:
                for pass_ in ("forward", "forward+backward"):
                    med = model_time(algo, impl, size, pass_, flops_per) * math.exp(
                        rng.normal(0, 0.3))
                    out.append(bench_entry(algo, family, impl, size, "float32", pass_, med, rng,
                                           rounds, flops_per))
                    if paired:
                        noisy = len(out) % 20 == 0
                        out[-1]["extra_info"].update(
                            paired={"rounds": rounds, "partners": impls, "attempts": 1},
                            stable=not noisy,
                            noise={"reasons": ["stalls: 30% of rounds"] if noisy else []})
    env = ENV_GPU if gpu else ENV_CPU
    peaks = {"cpu": PEAK_GPU_CPU, "cuda": PEAK_CUDA} if gpu else {"cpu": PEAK_CPU}
    return _bench_doc(out, env, peaks, node="gpu-box" if gpu else "vm")


def synthetic_correctness(n_algos: int = 80, seed: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_algos):
        algo = f"algorithm_{i:02d}"
        family = ("activations", "losses", "regularizers", "layers", "sequence", "optim",
                  "models", "classical")[i % 8]
        for dtype in ("float32", "float64"):
            for check in ("forward", "gradient", "gradcheck", "invariants"):
                records.append(_record(algo, family, check, dtype,
                                       worst=float(rng.uniform(0, 0.5))))
        for j in range(4):
            records.append(_record(algo, family, "invalid input", "", examples=1,
                                   extra=f"-{j}"))
    doc = correctness()
    doc["records"] = records
    return doc


# The two artefacts: torch's 64-element gelu with most rounds stalled for ~8 ms, and
# numba's leaky_relu medium forward with a 17 us minimum but most rounds stalled.
PAIRED_STALLS = {("gelu", "torch-cpu", "small", "forward"): (0.7, 8e-3),
                 ("leaky_relu", "numba", "medium", "forward"): (0.6, 8e-3)}


def planted(factor: float, algo: str, size: str | None = None, pass_: str | None = None):
    """A tweak: numba's true time of ``algo`` (at one size/pass, or all) times ``factor``."""
    def tweak(a, impl, s, p):
        hit = a == algo and impl == "numba" and size in (None, s) and pass_ in (None, p)
        return factor if hit else 1.0
    return tweak


def main() -> None:
    def slower(algo, impl, size, pass_):
        return 1.6 if algo == "softmax" and impl == "numba" and size == "large" else 1.0

    def noise(algo, impl, size, pass_):
        h = (sum(map(ord, algo + impl + size + pass_)) % 11) / 100.0  # within +-5%
        return 0.95 + h

    files = {
        "cpu_correctness.json": correctness(),
        "failing_correctness.json": correctness(failing=True),
        "cpu_bench.json": bench("cpu", seed=0),
        "gpu_bench.json": bench("gpu", seed=1, node="gpu-box",
                                drop={("softmax", "numba", "large", "forward+backward")}),
        "hostile_bench.json": hostile_bench(),
        "old_bench.json": old_bench(),
        "slower_bench.json": bench("cpu", seed=2, tweak=slower, commit=LATER_COMMIT),
        "noisy_bench.json": bench("cpu", seed=3, tweak=noise, node="vm2"),
        "paired_bench.json": paired_bench(20, stalls=PAIRED_STALLS),
        "paired_busy_bench.json": paired_bench(
            21, busy=True, tweak=planted(1.5, "relu", size="large", pass_="forward"),
            stalls={**PAIRED_STALLS,
                    ("relu", "numba", "large", "forward"): (0.5, 0.2),
                    ("gelu", "numba", "s5", "forward+backward"): (0.3, 0.3)}),
        "paired_slower_bench.json": paired_bench(22, tweak=planted(1.5, "softmax"),
                                                 stalls=PAIRED_STALLS),
        "paired_correctness.json": paired_correctness(),
        "compiled_bench.json": compiled_bench(),
        "shard1_correctness.json": shard_correctness(1, 2),
        "shard2_correctness.json": shard_correctness(2, 2),
        "shard1_bench.json": shard_bench(1, 2),
        "shard2_bench.json": shard_bench(2, 2),
        "gpu_correctness.json": gpu_correctness(),
    }
    for name, doc in files.items():
        (HERE / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(name, file=sys.stderr)


if __name__ == "__main__":
    main()
