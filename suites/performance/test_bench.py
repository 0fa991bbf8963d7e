"""One generic benchmark: catalog x implementation x size x dtype x pass.

Implementations: ``numba`` (the reference, CPU), ``torch-cpu`` and ``torch-cuda`` (the twin,
eager; CUDA is synchronised inside the timed call). Passes: ``forward`` (torch under
``no_grad``) and ``forward+backward`` (reference forward + backward; torch forward +
``torch.autograd.grad`` with the same random upstream gradient).

The first call of each benchmark is timed apart and stored as ``first_call_s`` (for numba it
includes JIT compilation or the on-disk cache load); ``compile_s`` is that first call minus a
second, warm one. pytest-benchmark then times only warm calls. Every benchmark stores
``extra_info``: algorithm, family, implementation, device, dtype, size, pass, shapes, flops,
bytes, first_call_s, compile_s. Narrow the matrix with --bench-sizes/--bench-impls/--bench-dtypes
and ``-k``.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from suites import twin
from suites.catalog import all_specs, get
from suites.catalog.spec import Case, Spec
from suites.correctness.checks import upstream

PASSES = ("forward", "forward+backward")
IMPLS = ("numba", "torch-cpu", "torch-cuda")
# Backward costs about twice the forward's flops and bytes (one product per input of each
# forward product): the usual rule for forward+backward = 3x forward.
BACKWARD_FACTOR = 2.0


def _option_list(config, name: str, allowed=None) -> list[str]:
    values = [v.strip() for v in config.getoption(name).split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise pytest.UsageError(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return values


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench" not in metafunc.fixturenames:
        return
    config = metafunc.config
    sizes = _option_list(config, "--bench-sizes", ("small", "medium", "large"))
    peers = sorted({p for spec in all_specs() for p in spec.peers})
    impls = _option_list(config, "--bench-impls", ("all",) + IMPLS + tuple(peers))
    if "all" in impls:
        impls = list(IMPLS) + peers
    dtypes = [np.dtype(d) for d in _option_list(config, "--bench-dtypes", ("float32", "float64"))]
    params = []
    for spec in all_specs():
        for dtype in (d for d in dtypes if d in spec.dtypes):
            for size in sizes:
                for impl in impls:
                    if impl not in IMPLS and impl not in spec.peers:
                        continue
                    if impl.startswith("torch") and impl in IMPLS and spec.torch is None:
                        continue
                    for pass_ in PASSES if spec.differentiable else PASSES[:1]:
                        pid = f"{spec.name}-{impl}-{size}-{dtype}-{pass_.replace('+', '_')}"
                        params.append(pytest.param((spec.name, impl, size, dtype, pass_), id=pid))
    metafunc.parametrize("bench", params)


@functools.lru_cache(maxsize=2)
def _case(name: str, size: str, dtype: np.dtype) -> tuple[Case, tuple[np.ndarray, ...]]:
    spec = get(name)
    case = spec.sizes[size](dtype)
    grads = ()
    if spec.differentiable:
        outs, _ = spec.run_forward(case)
        grads = upstream(spec, outs, np.random.default_rng(0))
    return case, grads


def _numba_call(spec: Spec, case: Case, grads, pass_: str):
    args, params = tuple(case.inputs.values()), case.params
    if pass_ == "forward":
        return lambda: spec.forward(*args, **params)

    def fwd_bwd():
        _, ctx = spec.run_forward(case)
        return spec.run_backward(ctx, grads)

    return fwd_bwd


def _torch_call(spec: Spec, case: Case, grads, pass_: str, device: str):
    if pass_ == "forward":
        inputs = twin.tensors(spec, case, device, grad=False)

        def fwd():
            with torch.no_grad():
                out = twin.call(spec, case, inputs)
            twin.synchronize(device)
            return out

        return fwd
    inputs = twin.tensors(spec, case, device, grad=True)
    leaves = [inputs[n] for n in spec.grad_inputs]
    up = [twin.to_tensor(g, device) for g in grads]

    def fwd_bwd():
        outs = twin.call(spec, case, inputs)[: spec.n_diff_outputs]
        got = torch.autograd.grad(outs, leaves, grad_outputs=up, allow_unused=True)
        twin.synchronize(device)
        return got

    return fwd_bwd


def test_bench(benchmark, bench):
    name, impl, size, dtype, pass_ = bench
    spec = get(name)
    if impl == "torch-cuda" and not torch.cuda.is_available():
        pytest.skip("torch-cuda: torch sees no CUDA device on this machine")
    case, grads = _case(name, size, dtype)
    if impl == "numba":
        fn = _numba_call(spec, case, grads, pass_)
    elif impl in spec.peers:
        fn = spec.peers[impl](case, pass_)
        if fn is None:
            pytest.skip(f"{impl}: nothing comparable to the reference's {pass_} pass")
    else:
        fn = _torch_call(spec, case, grads, pass_, "cuda" if impl == "torch-cuda" else "cpu")

    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    second = time.perf_counter() - t0

    cost = spec.cost(case)
    factor = 1.0 if pass_ == "forward" else 1.0 + BACKWARD_FACTOR
    benchmark.group = f"{name} {size} {dtype} {pass_}"
    benchmark.extra_info.update(
        algorithm=name,
        family=spec.family,
        implementation=impl,
        device="cuda" if impl == "torch-cuda" else "cpu",
        dtype=str(dtype),
        size=size,
        shapes={k: list(a.shape) for k, a in case.inputs.items()},
        flops=cost.flops * factor,
        bytes=cost.bytes * factor,
        first_call_s=first,
        compile_s=max(first - second, 0.0),
        **{"pass": pass_},
    )
    benchmark(fn)
