"""reference.cuda's kernels against the CPU references (and torch on CUDA, on a real GPU).

Run alone, in its own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest suites/cudasim``.
Each algorithm is checked on:

- the catalog's own Hypothesis cases (``spec.cases``: the CPU checks' parameter space, edge
  sizes, stress values), forward and backward, float32 and float64, against the CPU reference
  with the spec's tolerances (``spec.tolerance``: torch's defaults or the spec's derived ones);
- "long" cases: rows, channels and products longer than a block (the simulator's blocks are
  ``_launch.SIM_THREADS`` = 16 wide, tiles 4 x 4, grids at most 4 blocks), odd lengths, and
  one-element rows, so grid-stride loops wrap and every reduction runs its whole tree;
- one case with the GPU's launch geometry (256-thread blocks, 16 x 16 tiles);
- invalid inputs (host arrays, wrong dtype, shape, parameters, labels).

The simulator is slow (each CUDA thread is a Python thread), so each property test tries
``EXAMPLES`` cases. On a real GPU the same tests run, and the torch twin on CUDA (through the
catalog's specs, inputs shared without copies via ``__cuda_array_interface__``) is a second
oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

from reference.cuda import _launch as L
from reference.cuda import elementwise as E
from reference.cuda import linear as Li
from reference.cuda import norm as Nm
from reference.cuda import softmax as Sm
from suites import catalog
from suites.catalog import strategies as S
from suites.catalog.spec import DTYPES, Case, as_tuple, case_dtype
from suites.recording import compare

SIMULATED = L.simulated()
DEVICE = "cuda-sim" if SIMULATED else "cuda"
EXAMPLES = min(settings().max_examples, 5 if SIMULATED else 30)


def _to_device(case: Case) -> dict:
    return {k: cuda.to_device(np.require(a, requirements='C')) for k, a in case.inputs.items()}


def _host(a):
    return None if a is None else a.copy_to_host()


# The CUDA side of each algorithm, called like the catalog spec's forward: (device inputs in
# the spec's order, the case's params) -> (out, ctx).


def _ln(x, weight=None, bias=None, *, normalized_shape, eps):
    return Nm.layer_norm(x, normalized_shape, weight, bias, eps)


CUDA = {
    "sigmoid": (E.sigmoid, E.sigmoid_backward),
    "tanh": (E.tanh, E.tanh_backward),
    "relu": (E.relu, E.relu_backward),
    "leaky_relu": (E.leaky_relu, E.leaky_relu_backward),
    "gelu": (E.gelu, E.gelu_backward),
    "softmax": (Sm.softmax, Sm.softmax_backward),
    "log_softmax": (Sm.log_softmax, Sm.log_softmax_backward),
    # (d_input, None) like the CPU reference after class labels; the catalog's labels spec
    # differentiates the input only, so its checks see the first gradient
    "cross_entropy": (Sm.cross_entropy, lambda ctx, g: Sm.cross_entropy_backward(ctx, g)[:1]),
    "batch_norm": (Nm.batch_norm, Nm.batch_norm_backward),
    "layer_norm": (_ln, Nm.layer_norm_backward),
    "linear": (Li.linear, Li.linear_backward),
}
NAMES = sorted(CUDA)


# ---------------------------------------------------------------------------------------------
# long cases: beyond one block


def _floats(draw, dtype, shape, magnitude=10.0):
    return draw(S.arrays(dtype, shape, -magnitude, magnitude))


@st.composite
def _long_case(draw, name, dtype):
    long = st.integers(L.SIM_THREADS + 1, 3 * L.SIM_THREADS - 1)  # 17..47: 2-3 block trips
    side = st.one_of(st.just(1), long)
    if name in ("sigmoid", "tanh", "relu", "leaky_relu", "gelu"):
        # more elements than 4 blocks x 16 threads: the grid-stride loop wraps
        n = draw(st.integers(SIM_GRID + 1, 3 * SIM_GRID))
        params = {}
        if name == "leaky_relu":
            params = {"negative_slope": draw(st.sampled_from([0.01, 0.3, -0.5]))}
        if name == "gelu":
            params = {"approximate": draw(st.sampled_from(["none", "tanh"]))}
        return Case({"x": _floats(draw, dtype, (n,))}, params)
    if name in ("softmax", "log_softmax"):
        rows, n = draw(st.integers(1, 5)), draw(side)
        if draw(st.booleans()):
            return Case({"x": _floats(draw, dtype, (rows, n), 50.0)}, {"axis": -1})
        return Case({"x": _floats(draw, dtype, (n, rows), 50.0)}, {"axis": 0})
    if name == "cross_entropy":
        rows, c = draw(st.integers(1, 5)), draw(side)
        y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=rows, max_size=rows)))
        inputs = {"input": _floats(draw, dtype, (rows, c), 30.0), "target": y}
        if draw(st.booleans()):
            inputs["weight"] = draw(S.arrays(dtype, (c,), 0.125, 2.0))
        params = {"reduction": draw(st.sampled_from(["mean", "sum", "none"])),
                  "label_smoothing": draw(st.sampled_from([0.0, 0.2]))}
        return Case(inputs, params)
    if name == "batch_norm":
        n, c, l = draw(st.integers(2, 5)), draw(st.integers(1, 3)), draw(st.integers(4, 11))
        inputs = {"x": _floats(draw, dtype, (n, c, l)),
                  "running_mean": _floats(draw, dtype, (c,)),
                  "running_var": draw(S.arrays(dtype, (c,), 0.5, 2.0))}
        if draw(st.booleans()):
            inputs["weight"] = _floats(draw, dtype, (c,))
            inputs["bias"] = _floats(draw, dtype, (c,))
        return Case(inputs, {"training": draw(st.booleans()), "momentum": 0.1, "eps": 1e-5})
    if name == "layer_norm":
        rows, d = draw(st.integers(1, 4)), draw(side)
        inputs = {"x": _floats(draw, dtype, (rows, d))}
        if draw(st.booleans()):
            inputs["weight"] = _floats(draw, dtype, (d,))
            inputs["bias"] = _floats(draw, dtype, (d,))
        return Case(inputs, {"normalized_shape": (d,), "eps": 1e-5})
    assert name == "linear"
    m, k, n = (draw(st.integers(1, 3 * L.SIM_TILE + 1)) for _ in range(3))
    inputs = {"x": _floats(draw, dtype, (m, k), 2.0), "weight": _floats(draw, dtype, (n, k), 2.0)}
    if draw(st.booleans()):
        inputs["bias"] = _floats(draw, dtype, (n,), 2.0)
    return Case(inputs, {})


SIM_GRID = L.SIM_BLOCKS * L.SIM_THREADS


# ---------------------------------------------------------------------------------------------
# the comparison


def _check(name: str, case: Case, rng: np.random.Generator, record, *, grad: bool,
           oracle: str = "cpu") -> None:
    """CUDA forward (and backward) of ``case`` against the CPU reference or the torch twin."""
    spec = catalog.get(name)
    fwd, bwd = CUDA[name]
    dtype = case_dtype(case)
    desc = case.describe()
    dev = _to_device(case)
    if name in ("softmax", "log_softmax") and (case.params.get("dtype") is not None
                                               or np.ndim(case.inputs["x"]) == 0):
        # Outside these kernels' scope (a wider compute dtype, 0-d input): a clear refusal.
        record.examples += 1
        with pytest.raises(ValueError, match=r"^(dtype|x):"):
            fwd(*dev.values(), **case.params)
        return
    out, ctx = fwd(*dev.values(), **case.params)
    outs = tuple(_host(o) for o in as_tuple(out))
    if oracle == "cpu":
        want, ref_ctx = spec.run_forward(case)
    else:
        from suites import twin

        want = twin.forward(spec, case, "cuda")
    record.examples += 1
    tol = spec.tolerance(dtype, case=case)
    for i, (a, e) in enumerate(zip(outs, want, strict=True)):
        compare(a, np.asarray(e), tol.rtol, tol.atol, label=f"{name} output {i}",
                record=record, case=desc)
    if not grad:
        return
    diff = tuple(np.asarray(w) for w in want[: spec.n_diff_outputs])
    ups = tuple(S.normal(rng, w.shape, w.dtype) for w in diff)
    dev_ups = [cuda.to_device(u) for u in ups]
    got = bwd(ctx, dev_ups[0] if spec.n_diff_outputs == 1 else tuple(dev_ups))
    if oracle == "cpu":
        expected = spec.run_backward(ref_ctx, ups)
    else:
        expected = twin.gradients(spec, case, "cuda", ups)
    gtol = spec.tolerance(dtype, grad=True, case=case, upstream=ups)
    for gname, a, e in zip(spec.grad_inputs, got, expected, strict=True):
        if gname not in case.inputs:
            assert a is None, f"{name}: gradient of the absent {gname} must be None"
            continue
        assert a is not None, f"{name}: no gradient for {gname}"
        compare(_host(a), np.asarray(e), gtol.rtol, gtol.atol, label=f"{name} d{gname}",
                record=record, case=desc)


def _family(name: str) -> str:
    return catalog.get(name).family


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_cpu(name, dtype, record):
    record.bind(name, _family(name), "numba-cuda forward", dtype, DEVICE)

    @settings(max_examples=EXAMPLES)
    @given(case=catalog.get(name).cases(dtype))
    def run(case):
        _check(name, case, None, record, grad=False)

    run()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_cpu(name, dtype, record):
    record.bind(name, _family(name), "numba-cuda gradient", dtype, DEVICE)

    @settings(max_examples=EXAMPLES)
    @given(case=catalog.get(name).cases(dtype), rng=S.seeds())
    def run(case, rng):
        _check(name, case, rng, record, grad=True)

    run()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_long_rows_match_cpu(name, dtype, record):
    """Rows, channels, products and arrays longer than a block or a grid (odd lengths, and
    one-element rows), forward and backward."""
    record.bind(name, _family(name), "numba-cuda beyond one block", dtype, DEVICE)

    @settings(max_examples=EXAMPLES)
    @given(case=_long_case(name, dtype), rng=S.seeds())
    def run(case, rng):
        _check(name, case, rng, record, grad=True)

    run()


GPU_GEOMETRY = {
    # one case per row kernel, longer than a GPU block (256 threads) or tile (16)
    "softmax": lambda r: Case({"x": S.normal(r, (2, 300), np.float32, 8.0)}, {"axis": -1}),
    "cross_entropy": lambda r: Case({"input": S.normal(r, (2, 300), np.float64, 8.0),
                                     "target": np.array([3, 299])}, {"label_smoothing": 0.1}),
    "layer_norm": lambda r: Case({"x": S.normal(r, (1, 300), np.float32),
                                  "weight": S.normal(r, (300,), np.float32),
                                  "bias": S.normal(r, (300,), np.float32)},
                                 {"normalized_shape": (300,), "eps": 1e-5}),
    "batch_norm": lambda r: Case({"x": S.normal(r, (3, 1, 100), np.float64),
                                  "running_mean": np.zeros(1), "running_var": np.ones(1)},
                                 {"training": True, "momentum": 0.1, "eps": 1e-5}),
    "linear": lambda r: Case({"x": S.normal(r, (17, 18), np.float32),
                              "weight": S.normal(r, (19, 18), np.float32),
                              "bias": S.normal(r, (19,), np.float32)}, {}),
}


@pytest.mark.parametrize("name", sorted(GPU_GEOMETRY))
def test_gpu_launch_geometry(name, record, monkeypatch):
    """The GPU's block width and tile size, also under the simulator (one case each)."""
    monkeypatch.setattr(L, "SIM_THREADS", L.GPU_THREADS)
    monkeypatch.setattr(L, "SIM_TILE", L.TILE)
    rng = np.random.default_rng(12)
    case = GPU_GEOMETRY[name](rng)
    record.bind(name, _family(name), "numba-cuda GPU launch geometry", case_dtype(case), DEVICE)
    _check(name, case, rng, record, grad=True)


@pytest.mark.skipif(SIMULATED, reason="torch's CUDA twin needs a real GPU; under the "
                    "simulator the CPU reference is the oracle")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_cuda(name, dtype, record):
    """On a GPU: the kernels against the catalog's torch twin on CUDA, forward and backward,
    with inputs given as torch CUDA tensors (shared through __cuda_array_interface__)."""
    import torch

    record.bind(name, _family(name), "numba-cuda vs torch-cuda", dtype, "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    @settings(max_examples=EXAMPLES)
    @given(case=catalog.get(name).cases(dtype), rng=S.seeds())
    def run(case, rng):
        _check(name, case, rng, record, grad=True, oracle="torch")

    run()


@pytest.mark.parametrize("slope", [None, 0.0, 0.01])  # None: relu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_edges_as_the_cpu_reference(dtype, slope):
    """relu and leaky_relu, forward and gradient, on -inf, inf, NaN, signed zeros and
    subnormals: as the CPU reference (which suites/correctness/test_activation_edges.py holds
    to torch): relu(-inf) = 0, relu's gradient at NaN is dy, leaky_relu's slope * dy."""
    from reference import activations as A

    x = np.array([-np.inf, np.inf, np.nan, -0.0, 0.0, -1e-40, 1e-40, -3.5, 2.25], dtype)
    dy = np.linspace(-1.5, 2.0, x.size).astype(dtype)
    if slope is None:
        (y, ctx), (want, wctx) = E.relu(_d(x)), A.relu(x)
        (dx,), (want_dx,) = E.relu_backward(ctx, _d(dy)), A.relu_backward(wctx, dy)
    else:
        (y, ctx), (want, wctx) = E.leaky_relu(_d(x), slope), A.leaky_relu(x, slope)
        (dx,), (want_dx,) = (E.leaky_relu_backward(ctx, _d(dy)),
                             A.leaky_relu_backward(wctx, dy))
    # both compute in float64 and round once to dtype: the same bits, NaN where NaN
    np.testing.assert_array_equal(y.copy_to_host(), want)
    np.testing.assert_array_equal(dx.copy_to_host(), want_dx)


def test_torch_tensors_are_shared_without_copies():
    """On a GPU: a torch CUDA tensor is read in place and a result is a numba device array."""
    if SIMULATED:
        pytest.skip("torch CUDA tensors need a real GPU")
    import torch

    x = torch.linspace(-3, 3, 1001, device="cuda", dtype=torch.float32)
    y, _ = E.relu(x)
    assert isinstance(y, cuda.cudadrv.devicearray.DeviceNDArray)
    assert L.device_array(x, "x").device_ctypes_pointer.value == x.data_ptr()
    np.testing.assert_array_equal(y.copy_to_host(), torch.relu(x).cpu().numpy())


# ---------------------------------------------------------------------------------------------
# invalid inputs


def _d(a):
    return cuda.to_device(np.asarray(a))


_F = np.float32


INVALID = [
    ("relu", "a host numpy array", lambda: E.relu(np.ones(3, _F)), TypeError, r"\bx\b.*device"),
    ("relu", "an integer array", lambda: E.relu(_d(np.arange(3))), TypeError, r"\bx\b"),
    ("sigmoid", "a list", lambda: E.sigmoid([1.0, 2.0]), TypeError, r"\bx\b"),
    ("gelu", "an unknown approximation", lambda: E.gelu(_d(np.ones(2, _F)), "erf"),
     ValueError, "approximate"),
    ("leaky_relu", "a non-finite slope", lambda: E.leaky_relu(_d(np.ones(2, _F)), np.inf),
     ValueError, "negative_slope"),
    ("tanh", "grad_out of the wrong shape",
     lambda: E.tanh_backward(E.tanh(_d(np.ones(3, _F)))[1], _d(np.ones(4, _F))),
     ValueError, "grad_out"),
    ("tanh", "grad_out of the wrong dtype",
     lambda: E.tanh_backward(E.tanh(_d(np.ones(3, _F)))[1], _d(np.ones(3))),
     TypeError, "grad_out"),
    ("softmax", "an axis out of range", lambda: Sm.softmax(_d(np.ones((2, 3))), 2),
     ValueError, "axis"),
    ("softmax", "a 0-d x", lambda: Sm.softmax(_d(np.array(1.0))), ValueError, r"\bx\b"),
    ("log_softmax", "a host array", lambda: Sm.log_softmax(np.ones(3)), TypeError, r"\bx\b"),
    ("log_softmax", "grad_out of the wrong shape",
     lambda: Sm.log_softmax_backward(Sm.log_softmax(_d(np.ones((2, 3))))[1], _d(np.ones(3))),
     ValueError, "grad_out"),
    ("cross_entropy", "a label out of range",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.array([0, 3]))), ValueError, "target"),
    ("cross_entropy", "float labels",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.zeros(2))), TypeError, "target"),
    ("cross_entropy", "labels of the wrong shape",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.zeros(3, np.int64))),
     ValueError, "target"),
    ("cross_entropy", "weight of the wrong length",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.array([0, 1])), _d(np.ones(4))),
     ValueError, "weight"),
    ("cross_entropy", "an unknown reduction",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.array([0, 1])), reduction="avg"),
     ValueError, "reduction"),
    ("cross_entropy", "label_smoothing above 1",
     lambda: Sm.cross_entropy(_d(np.zeros((2, 3))), _d(np.array([0, 1])), label_smoothing=1.5),
     ValueError, "label_smoothing"),
    ("batch_norm", "running_mean of the wrong length",
     lambda: Nm.batch_norm(_d(np.ones((2, 3))), _d(np.zeros(2)), _d(np.ones(3))),
     ValueError, "running_mean"),
    ("batch_norm", "one value per channel in training",
     lambda: Nm.batch_norm(_d(np.ones((1, 3))), _d(np.zeros(3)), _d(np.ones(3)), training=True),
     ValueError, r"\bx\b"),
    ("batch_norm", "a negative eps",
     lambda: Nm.batch_norm(_d(np.ones((2, 3))), _d(np.zeros(3)), _d(np.ones(3)), eps=-1.0),
     ValueError, "eps"),
    ("layer_norm", "normalized_shape not trailing",
     lambda: Nm.layer_norm(_d(np.ones((2, 3))), (2,)), ValueError, "normalized_shape"),
    ("layer_norm", "weight of the wrong shape",
     lambda: Nm.layer_norm(_d(np.ones((2, 3))), (3,), _d(np.ones(2))), ValueError, "weight"),
    ("linear", "weight of the wrong in_features",
     lambda: Li.linear(_d(np.ones((2, 3))), _d(np.ones((4, 5)))), ValueError, "weight"),
    ("linear", "bias of another dtype",
     lambda: Li.linear(_d(np.ones((2, 3))), _d(np.ones((4, 3))), _d(np.ones(4, _F))),
     TypeError, "bias"),
    ("linear", "a non-contiguous x",
     lambda: Li.linear(_d(np.ones((4, 6)))[:, ::2], _d(np.ones((2, 3)))), ValueError,
     r"\bx\b.*contiguous"),
]


@pytest.mark.parametrize("name", NAMES)
def test_invalid_inputs(name, record):
    """Bad input raises TypeError/ValueError naming the argument (never a Numba error)."""
    cases = [c for c in INVALID if c[0] == name]
    assert cases, f"no invalid inputs listed for {name}"
    record.bind(name, _family(name), "numba-cuda invalid inputs", None, DEVICE)
    for _, description, call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
            pytest.fail(f"{name}: {description} raised nothing")
        record.examples += 1
