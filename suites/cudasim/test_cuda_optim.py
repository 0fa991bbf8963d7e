"""reference.cuda.optim's in-place steps against the CPU in-place steps of reference.optim.

Run in its own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest suites/cudasim``. Checked:

- every combination of the flags that change the arithmetic (momentum / dampening / nesterov,
  weight decay, maximize, centred, amsgrad, lr decay, Adam vs AdamW, step 1 vs a later step),
  on a list of tensors: a 0-d one, an empty one, a small matrix with a zero gradient and a
  zero accumulator in it, and one longer than the simulated grid (4 blocks x 16 threads: the
  grid-stride loop wraps); the state is a reachable one (the CPU step run from the initial
  state), and at step 1 SGD's momentum buffer holds NaN (it must not be read);
- the catalog's Hypothesis cases (``spec.cases``: the CPU checks' parameter space, stress
  values), one tensor each;
- invalid inputs: refused by name, before anything is written;
- on a GPU only: the catalog's cases against torch.optim on CUDA (the catalog's twin, with the
  spec's tolerance), and torch CUDA tensors updated where they lie.

Under the simulator the kernels do numpy's float64 arithmetic, as the CPU kernels do, so the
results must be equal bit for bit (NaN where NaN). On a GPU, NVVM may fuse a multiply and an
add (see the module's docstring), so there the comparison uses torch.testing's default
tolerance for the dtype.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from numba import cuda

from reference import optim as cpu
from reference.cuda import _launch as L
from reference.cuda import optim as gpu
from suites import catalog
from suites.catalog.spec import DEFAULT_TOL, DTYPES, Case
from suites.recording import compare

SIMULATED = L.simulated()
DEVICE = "cuda-sim" if SIMULATED else "cuda"
EXAMPLES = min(settings().max_examples, 5 if SIMULATED else 30)
NAMES = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
SIM_GRID = L.SIM_BLOCKS * L.SIM_THREADS


def _tol(dtype):
    if SIMULATED:
        return 0.0, 0.0  # the same float64 arithmetic, rounded once: bit for bit
    tol = DEFAULT_TOL[np.dtype(dtype)]
    return tol.rtol, tol.atol


# ---------------------------------------------------------------------------------------------
# flag grids: (hyper-parameters, step)


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


_SGD_MOMENTUM = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                 dict(momentum=0.9, nesterov=True)]
FLAGS = {
    "sgd": [dict(m, lr=0.1, weight_decay=wd, maximize=mx, step=t)
            for m in _SGD_MOMENTUM for wd, mx, t in itertools.product((0.0, 0.1), (False, True),
                                                                     (1, 3))],
    "adagrad": _grid(lr=[0.1], lr_decay=[0.0, 0.1], weight_decay=[0.0, 0.1],
                     maximize=[False, True], step=[1, 3]),
    "rmsprop": _grid(lr=[0.01], momentum=[0.0, 0.5], centered=[False, True],
                     weight_decay=[0.0, 0.1], maximize=[False, True], step=[3]),
    "adam": _grid(lr=[0.01], amsgrad=[False, True], weight_decay=[0.0, 0.1],
                  maximize=[False, True], step=[1, 4]),
    "adamw": _grid(lr=[0.01], amsgrad=[False, True], weight_decay=[0.0, 0.1],
                   maximize=[False, True], step=[1, 4]),
}
SHAPES = [(), (0,), (3, 4), (SIM_GRID + 7,)]


def _init_state(name: str, params: list, hyper: dict) -> dict:
    if name == "sgd":
        return cpu.sgd_init_state(params, momentum=hyper.get("momentum", 0.0))
    if name == "adagrad":
        return cpu.adagrad_init_state(params)
    if name == "rmsprop":
        return cpu.rmsprop_init_state(params, momentum=hyper["momentum"],
                                      centered=hyper["centered"])
    return cpu.adam_init_state(params, amsgrad=hyper["amsgrad"])


def _setup(name: str, dtype, hyper: dict, step: int, rng: np.random.Generator):
    """Host params, grads and a state reached by ``step - 1`` CPU steps from the initial one."""
    params = [np.asarray(rng.standard_normal(s) * 3.0, dtype) for s in SHAPES]
    state = _init_state(name, params, hyper)
    inplace = getattr(cpu, f"{name}_")
    for t in range(1, step):
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        inplace(params, grads, state, t, **hyper)
    grads = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    grads[2][0, 0] = 0.0                    # a zero gradient (on a zero state at step 1)
    if name == "sgd" and step == 1 and state:
        for b in state["momentum_buffer"]:
            b[...] = np.nan                 # step 1 must not read the buffer
    return params, grads, state


def _device(arrs: list) -> list:
    return [cuda.to_device(a) for a in arrs]


def _compare_all(name, params, state, d_params, d_state, record, desc):
    dtype = params[0].dtype
    rtol, atol = _tol(dtype)
    for i, (p, dp) in enumerate(zip(params, d_params, strict=True)):
        compare(dp.copy_to_host(), p, rtol, atol, label=f"{name} params[{i}]", record=record,
                case=desc)
    for b in state:
        for i, (a, da) in enumerate(zip(state[b], d_state[b], strict=True)):
            compare(da.copy_to_host(), a, rtol, atol, label=f"{name} state[{b!r}][{i}]",
                    record=record, case=desc)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_flags_match_cpu(name, dtype, record):
    """Every flag combination, a list of tensors (0-d, empty, a matrix, one longer than the
    grid), one in-place step on the device and on the CPU: the same new params and buffers."""
    record.bind(name, catalog.get(name).family, "numba-cuda forward", dtype, DEVICE)
    step_gpu, step_cpu = getattr(gpu, f"{name}_"), getattr(cpu, f"{name}_")
    rng = np.random.default_rng(12)
    for flags in FLAGS[name]:
        hyper = {k: v for k, v in flags.items() if k != "step"}
        step = flags["step"]
        params, grads, state = _setup(name, np.dtype(dtype), hyper, step, rng)
        d_params, d_grads = _device(params), _device(grads)
        d_state = {b: _device(a) for b, a in state.items()}
        step_gpu(d_params, d_grads, d_state, step, **hyper)
        step_cpu(params, grads, state, step, **hyper)
        record.examples += 1
        _compare_all(name, params, state, d_params, d_state, record, f"step={step}, {hyper}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_catalog_cases_match_cpu(name, dtype, record):
    """The catalog's Hypothesis cases (one tensor: the CPU checks' parameter space, stress
    values, whole-tensor zero gradients), as one-array (not list) calls."""
    spec = catalog.get(name)
    record.bind(name, spec.family, "numba-cuda forward", dtype, DEVICE)
    step_gpu, step_cpu = getattr(gpu, f"{name}_"), getattr(cpu, f"{name}_")

    @settings(max_examples=EXAMPLES)
    @given(case=spec.cases(dtype))
    def run(case: Case):
        hyper = {k: v for k, v in case.params.items()
                 if k not in ("step", "initial_accumulator_value")}
        step = case.params["step"]
        names = [k for k in case.inputs if k not in ("params", "grads")]
        p = np.array(case.inputs["params"])
        g = np.array(case.inputs["grads"])
        state = {b: np.array(case.inputs[b]) for b in names}
        dp, dg = cuda.to_device(p), cuda.to_device(g)
        d_state = {b: cuda.to_device(a) for b, a in state.items()}
        step_gpu(dp, dg, d_state, step, **hyper)
        step_cpu(p, g, state, step, **hyper)
        record.examples += 1
        _compare_all(name, [p], {b: [a] for b, a in state.items()}, [dp],
                     {b: [a] for b, a in d_state.items()}, record, case.describe())

    run()


@pytest.mark.skipif(SIMULATED, reason="torch's CUDA twin needs a real GPU; under the "
                    "simulator the CPU reference is the oracle")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_catalog_cases_match_torch_cuda(name, dtype, record):
    """On a GPU: the catalog's cases against torch.optim's step on CUDA (the catalog's twin),
    with the spec's tolerance (torch's float32 step rounds after every operation; the spec
    derives how far that takes it)."""
    from suites import twin

    spec = catalog.get(name)
    record.bind(name, spec.family, "numba-cuda vs torch-cuda", dtype, "cuda")
    step_gpu = getattr(gpu, f"{name}_")

    @settings(max_examples=EXAMPLES)
    @given(case=spec.cases(dtype))
    def run(case: Case):
        hyper = {k: v for k, v in case.params.items()
                 if k not in ("step", "initial_accumulator_value")}
        dev = {k: cuda.to_device(np.array(a)) for k, a in case.inputs.items()}
        state = {k: a for k, a in dev.items() if k not in ("params", "grads")}
        step_gpu(dev["params"], dev["grads"], state, case.params["step"], **hyper)
        want = twin.forward(spec, case, "cuda")  # (params, *buffers), in the case's order
        got = [dev["params"], *state.values()]
        record.examples += 1
        tol = spec.tolerance(dtype, case=case)
        for label, a, e in zip(["params", *state], got, want, strict=True):
            compare(a.copy_to_host(), np.asarray(e), tol.rtol, tol.atol,
                    label=f"{name} {label}", record=record, case=case.describe())

    run()


@pytest.mark.skipif(SIMULATED, reason="torch CUDA tensors need a real GPU")
def test_torch_tensors_are_updated_in_place():
    """On a GPU: torch CUDA tensors given through __cuda_array_interface__ are updated where
    they lie, to the CPU step's values."""
    import torch

    rng = np.random.default_rng(3)
    p0, g0 = rng.standard_normal(1000), rng.standard_normal(1000)
    p, g = torch.tensor(p0, device="cuda"), torch.tensor(g0, device="cuda")
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    ptr = p.data_ptr()
    gpu.adam_(p, g, {"exp_avg": m, "exp_avg_sq": v}, 1, lr=0.1)
    cuda.synchronize()
    hp, hs = p0.copy(), {"exp_avg": np.zeros(1000), "exp_avg_sq": np.zeros(1000)}
    cpu.adam_(hp, g0, hs, 1, lr=0.1)
    assert p.data_ptr() == ptr
    tol = DEFAULT_TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(p.cpu().numpy(), hp, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(m.cpu().numpy(), hs["exp_avg"], rtol=tol.rtol, atol=tol.atol)


# ---------------------------------------------------------------------------------------------
# invalid inputs


def _d(a):
    return cuda.to_device(np.asarray(a))


def _ones(n=3, dtype=np.float64):
    return _d(np.ones(n, dtype))


def _adam_state(n=3, dtype=np.float64):
    return {"exp_avg": _ones(n, dtype), "exp_avg_sq": _ones(n, dtype)}


def _twice(call):
    a = _ones()
    return call(a, a)


INVALID = [
    ("sgd", "a host numpy array as params",
     lambda: gpu.sgd_(np.ones(3), _ones(), {}, 1, lr=0.1), TypeError, r"^params\b.*device"),
    ("sgd", "grads of another dtype",
     lambda: gpu.sgd_(_ones(), _ones(3, np.float32), {}, 1, lr=0.1), TypeError, r"^grads\b"),
    ("sgd", "a non-contiguous gradient",
     lambda: gpu.sgd_(_ones(), _ones(6)[::2], {}, 1, lr=0.1), ValueError, r"^grads\b.*contig"),
    ("sgd", "nesterov without momentum",
     lambda: gpu.sgd_(_ones(), _ones(), {}, 1, lr=0.1, nesterov=True), ValueError, "nesterov"),
    ("sgd", "a missing momentum buffer",
     lambda: gpu.sgd_(_ones(), _ones(), {}, 2, lr=0.1, momentum=0.9), ValueError,
     r"^state\b.*momentum_buffer"),
    ("sgd", "the buffer given as the param",
     lambda: _twice(lambda a, b: gpu.sgd_(a, _ones(), {"momentum_buffer": b}, 2, lr=0.1,
                                          momentum=0.9)),
     ValueError, "distinct"),
    ("sgd", "grads a list where params is one array",
     lambda: gpu.sgd_(_ones(), [_ones()], {}, 1, lr=0.1), ValueError, r"^grads\b.*structure"),
    ("adagrad", "step 0",
     lambda: gpu.adagrad_(_ones(), _ones(), {"sum": _ones()}, 0), ValueError, r"^step\b"),
    ("adagrad", "sum of another shape",
     lambda: gpu.adagrad_(_ones(), _ones(), {"sum": _ones(4)}, 1), ValueError,
     r"^state\['sum'\]"),
    ("adagrad", "a negative lr_decay",
     lambda: gpu.adagrad_(_ones(), _ones(), {"sum": _ones()}, 1, lr_decay=-1.0), ValueError,
     "lr_decay"),
    ("rmsprop", "a list of device arrays with a host array in it",
     lambda: gpu.rmsprop_([_ones(), np.ones(3)], [_ones(), _ones()],
                          {"square_avg": [_ones(), _ones()]}, 1), TypeError, r"^params\[1\]"),
    ("rmsprop", "grad_avg missing when centred",
     lambda: gpu.rmsprop_(_ones(), _ones(), {"square_avg": _ones()}, 1, centered=True),
     ValueError, "grad_avg"),
    ("rmsprop", "a NaN lr",
     lambda: gpu.rmsprop_(_ones(), _ones(), {"square_avg": _ones()}, 1, lr=float("nan")),
     ValueError, r"^lr\b"),
    ("adam", "beta1 = 1",
     lambda: gpu.adam_(_ones(), _ones(), _adam_state(), 1, betas=(1.0, 0.999)), ValueError,
     r"betas\[0\]"),
    ("adam", "exp_avg_sq of another dtype",
     lambda: gpu.adam_(_ones(), _ones(), {"exp_avg": _ones(), "exp_avg_sq": _ones(3, np.float32)},
                       1), TypeError, r"^state\['exp_avg_sq'\]"),
    ("adam", "an empty list of params",
     lambda: gpu.adam_([], [], {"exp_avg": [], "exp_avg_sq": []}, 1), ValueError, r"^params\b"),
    ("adamw", "max_exp_avg_sq missing with amsgrad",
     lambda: gpu.adamw_(_ones(), _ones(), _adam_state(), 1, amsgrad=True), ValueError,
     "max_exp_avg_sq"),
    ("adamw", "a float step",
     lambda: gpu.adamw_(_ones(), _ones(), _adam_state(), 1.5), TypeError, r"^step\b"),
    ("adamw", "a state that is not a dict",
     lambda: gpu.adamw_(_ones(), _ones(), [_ones(), _ones()], 1), TypeError, r"^state\b"),
]


@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs(name, record):
    """Bad input raises TypeError/ValueError naming the argument (never a Numba error)."""
    cases = [c for c in INVALID if c[0] == name]
    assert cases, f"no invalid inputs listed for {name}"
    record.bind(name, catalog.get(name).family, "numba-cuda invalid inputs", None,
                DEVICE)
    for _, description, call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
            pytest.fail(f"{name}: {description} raised nothing")
        record.examples += 1


def test_refusal_writes_nothing():
    """A list whose last tensor is refused leaves the earlier ones untouched (every array is
    checked before the first launch)."""
    p = [_d(np.arange(4.0)), _d(np.arange(3.0))]
    g = [_d(np.ones(4)), _d(np.ones(3))]
    state = {"exp_avg": [_d(np.zeros(4)), _d(np.zeros(3))],
             "exp_avg_sq": [_d(np.zeros(4)), _d(np.zeros(2))]}
    with pytest.raises(ValueError, match=r"state\['exp_avg_sq'\]\[1\]"):
        gpu.adam_(p, g, state, 1, lr=0.1)
    np.testing.assert_array_equal(p[0].copy_to_host(), np.arange(4.0))
    np.testing.assert_array_equal(state["exp_avg"][0].copy_to_host(), np.zeros(4))
