"""The benchmark's numba-cuda callables (suites/performance/test_bench.py), run under the
simulator: each algorithm of ``CUDA_KERNELS`` at the benchmark's small size (forward+backward,
or the forward of an in-place optimizer step) gives the CPU reference's values, so the bench's
argument plumbing (positional order, the layer-norm signature, the optimizers' state, upstream
gradients) is right before a GPU machine times it. The row kernels' small cases keep only
their first rows (``ROWS``): the simulator takes seconds per 64 rows, and the plumbing does
not depend on how many there are.

The torch CUDA tensors the bench shares with numba (``__cuda_array_interface__``) do not exist
here: torch tensors stand in for them and ``numba.cuda.as_cuda_array`` becomes a copy to the
simulator's device (the fake device arrays are recorded, so an in-place step can be read).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import cuda

from reference import optim as cpu_optim
from reference.cuda import _launch as L
from suites import catalog, twin
from suites.catalog.spec import Case
from suites.correctness.checks import upstream
from suites.performance import test_bench as tb
from suites.recording import compare

SIMULATED = L.simulated()
# algorithm -> rows kept (along axis 0) of the inputs named
ROWS = {"softmax": (4, ("x",)), "log_softmax": (4, ("x",)), "layer_norm": (4, ("x",)),
        "cross_entropy": (4, ("input", "target")), "linear": (3, ("x",)),
        "batch_norm": (2, ("x",))}
# forward+backward where there is a backward (its forward call is the forward pass's, with the
# same arguments): one simulated run per algorithm
CASES = [(name, "forward+backward" if bwd else "forward")
         for name, (_, _, bwd) in sorted(tb.CUDA_KERNELS.items())]


@pytest.fixture
def plumbing(monkeypatch):
    """Host torch tensors for the CUDA ones; as_cuda_array copies to the (simulated) device
    and records what it made."""
    made: list = []

    def as_cuda_array(t):
        a = cuda.to_device(np.require(t.numpy(), requirements="C"))
        made.append(a)
        return a

    monkeypatch.setattr(tb, "_cuda_tensors", lambda spec, case: {
        k: torch.from_numpy(np.array(a)) for k, a in case.inputs.items()})
    monkeypatch.setattr(twin, "to_tensor",
                        lambda a, device, requires_grad=False: torch.from_numpy(np.array(a)))
    monkeypatch.setattr(cuda, "as_cuda_array", as_cuda_array, raising=False)  # not simulated
    return made


@pytest.mark.skipif(not SIMULATED, reason="on a GPU the benchmark itself runs these callables")
@pytest.mark.parametrize("name,pass_", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_bench_callable_matches_cpu(name, pass_, plumbing, record):
    spec = catalog.get(name)
    dtype = spec.dtypes[0]
    record.bind(name, spec.family, "numba-cuda benchmark callable", dtype, "cuda-sim")
    case, grads = tb._case(name, "small", dtype)
    if name in ROWS:
        keep, names = ROWS[name]
        case = Case({k: a[:keep] if k in names else a for k, a in case.inputs.items()},
                    case.params)
        grads = upstream(spec, spec.run_forward(case)[0], np.random.default_rng(0))
    fn = tb._numba_cuda_call(spec, case, grads, pass_)
    got = fn()
    record.examples += 1
    if tb.CUDA_KERNELS[name][2] is None:
        # an in-place step: the clones it was given, against the CPU step on copies
        step_cpu = getattr(cpu_optim, f"{name}_")
        hyper = {k: v for k, v in case.params.items()
                 if k not in ("step", "initial_accumulator_value")}
        host = {k: np.array(a) for k, a in case.inputs.items()}
        state = {k: a for k, a in host.items() if k not in ("params", "grads")}
        step_cpu(host["params"], host["grads"], state, case.params["step"], **hyper)
        assert got is None
        dev = dict(zip(case.inputs, plumbing, strict=True))
        for k, a in host.items():
            compare(dev[k].copy_to_host(), a, 0.0, 0.0, label=f"{name} {k}", record=record)
        return
    _, ctx = spec.run_forward(case)
    expected = spec.run_backward(ctx, grads)
    gtol = spec.tolerance(dtype, grad=True, case=case, upstream=grads)
    # cross_entropy's backward returns (d_input, None) after class labels, like the CPU one;
    # its labels spec differentiates the input only
    extra = got[len(spec.grad_inputs):]
    assert all(a is None for a in extra), f"{name}: unexpected gradients {extra}"
    got = got[:len(spec.grad_inputs)]
    for gname, a, e in zip(spec.grad_inputs, got, expected, strict=True):
        if gname in case.inputs:
            compare(a.copy_to_host(), np.asarray(e), gtol.rtol, gtol.atol,
                    label=f"{name} d{gname}", record=record)
