"""Specs of the activation functions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from reference import activations as A
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import DEFAULT_TOL, Case, Invalid, Invariant, Spec, Tol, elementwise_cost

FAMILY = "activations"


def _x_case(shape, dtype, seed=0, scale=3.0) -> Case:
    rng = np.random.default_rng(seed)
    return Case({"x": S.normal(rng, shape, dtype, scale)})


# Sizes from the pipeline issue: 64 elements, 65536 (256x256), 16.7M (4096x4096).
ELEMENTWISE_SIZES = {
    "small": lambda dtype: _x_case((64,), dtype),
    "medium": lambda dtype: _x_case((256, 256), dtype),
    "large": lambda dtype: _x_case((4096, 4096), dtype),
}
# Logits for softmax-like ops: 64x10, 64x1024, 4096x4096.
LOGIT_SIZES = {
    "small": lambda dtype: Case({"x": _x_case((64, 10), dtype).inputs["x"]}, {"axis": -1}),
    "medium": lambda dtype: Case({"x": _x_case((64, 1024), dtype).inputs["x"]}, {"axis": -1}),
    "large": lambda dtype: Case({"x": _x_case((4096, 4096), dtype).inputs["x"]}, {"axis": -1}),
}


@st.composite
def _elementwise(draw, dtype, magnitude=1e3, params=None):
    """Any shape (0-d and empty included) with values that reach saturation."""
    shape = draw(S.shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    x = draw(S.arrays(dtype, shape, elements=S.stress(dtype, magnitude)))
    return Case({"x": x}, draw(params) if params is not None else {})


@st.composite
def _logits(draw, dtype):
    """Logits of magnitude up to 1e4 along any axis, including axes of length 1 and 0-d
    inputs (axis -1 or 0, as torch allows); ``dtype=`` left out, None, float32 or float64
    (widening, narrowing or the same)."""
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=1, max_side=7))
    x = draw(S.arrays(dtype, shape, elements=S.stress(dtype, 1e4)))
    axis = draw(st.integers(-max(len(shape), 1), max(len(shape), 1) - 1))
    params = {"axis": axis}
    if draw(st.booleans()):
        params["dtype"] = draw(st.sampled_from([None, np.dtype(np.float32),
                                                np.dtype(np.float64)]))
    return Case({"x": x}, params)


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _torch_softmax(fn):
    def twin(x, axis, dtype=None):
        return fn(x, dim=axis, dtype=None if dtype is None else _TORCH_DTYPES[np.dtype(dtype)])
    return twin


def _softmax_tol(case: Case, upstream) -> Tol | None:
    """With ``dtype=``: the output is as accurate as the dtype computed in, the gradient
    (rounded back to x's dtype) as the narrower of the two. Without: the default."""
    dt = case.params.get("dtype")
    x_dt = case.inputs["x"].dtype
    if dt is None or np.dtype(dt) == x_dt:
        return None
    if upstream is None:
        return DEFAULT_TOL[np.dtype(dt)]
    return DEFAULT_TOL[np.dtype(np.float32)]


def _no_narrowing(case: Case) -> Case:
    """For the float64 gradcheck: a narrowing ``dtype=float32`` computes in float32, whose
    rounding the central differences cannot tell from a wrong derivative; the float64 case
    without it checks the same formula (parity checks the narrowing against torch)."""
    if case.params.get("dtype") is not None and np.dtype(case.params["dtype"]) == np.float32:
        return Case(case.inputs, {**case.params, "dtype": None})
    return case


def _off_zero(case: Case) -> Case:
    """Move inputs within 1e-3 of the kink at 0 to +-0.5, for finite differences."""
    x = case.inputs["x"].copy()
    near = np.abs(x) < 1e-3
    x[near] = np.where(np.signbit(x[near]), -0.5, 0.5)
    return Case({"x": x}, case.params)


def _bad_x(description, x, error, match=r"\bx\b", **params) -> Invalid:
    return Invalid(description, lambda: Case({"x": x}, params), error, match)


COMMON_INVALID = (
    _bad_x("a list instead of an array", [1.0, 2.0], TypeError),
    _bad_x("an integer array", np.arange(4), TypeError),
)


def _inv(name, predicate, message):
    def check(case, outs):
        x, y = case.inputs["x"], outs[0]
        ok = predicate(x.astype(np.float64), y.astype(np.float64), case.params)
        assert np.all(ok), f"{message}; x={x[~ok][:4]}, y={y[~ok][:4]}"

    return Invariant(name, check)


def _f32_ulp(y):
    return np.spacing(np.abs(y).astype(np.float32)).astype(np.float64)


register(Spec(
    name="sigmoid", family=FAMILY, summary="logistic sigmoid 1 / (1 + e^-x)",
    forward=A.sigmoid, backward=A.sigmoid_backward, grad_inputs=("x",),
    torch=torch.sigmoid,
    cases=lambda dtype: _elementwise(dtype),
    sizes=ELEMENTWISE_SIZES, cost=elementwise_cost(4),
    invariants=(
        _inv("range [0, 1]", lambda x, y, p: (y >= 0) & (y <= 1), "sigmoid left [0, 1]"),
        Invariant("sigma(-x) = 1 - sigma(x)", lambda case, outs: np.testing.assert_allclose(
            A.sigmoid(-case.inputs["x"])[0], 1 - outs[0],
            atol=2 * float(np.finfo(outs[0].dtype).eps))),
    ),
    invalid=COMMON_INVALID,
))

register(Spec(
    name="tanh", family=FAMILY, summary="hyperbolic tangent",
    forward=A.tanh, backward=A.tanh_backward, grad_inputs=("x",),
    torch=torch.tanh,
    cases=lambda dtype: _elementwise(dtype),
    sizes=ELEMENTWISE_SIZES, cost=elementwise_cost(6),
    invariants=(
        _inv("range [-1, 1]", lambda x, y, p: np.abs(y) <= 1, "tanh left [-1, 1]"),
        Invariant("odd: tanh(-x) = -tanh(x)", lambda case, outs: np.testing.assert_array_equal(
            A.tanh(-case.inputs["x"])[0], -outs[0])),
    ),
    invalid=COMMON_INVALID,
))

register(Spec(
    name="relu", family=FAMILY, summary="max(x, 0); relu'(0) = 0",
    forward=A.relu, backward=A.relu_backward, grad_inputs=("x",),
    torch=F.relu,
    cases=lambda dtype: _elementwise(dtype),
    sizes=ELEMENTWISE_SIZES, cost=elementwise_cost(1),
    smooth=_off_zero,
    invariants=(
        _inv("relu(x) = max(x, 0)", lambda x, y, p: y == np.maximum(x, 0), "relu != max(x, 0)"),
    ),
    invalid=COMMON_INVALID,
))

register(Spec(
    name="leaky_relu", family=FAMILY, summary="x if x > 0 else a*x",
    forward=A.leaky_relu, backward=A.leaky_relu_backward, grad_inputs=("x",),
    torch=F.leaky_relu,
    cases=lambda dtype: _elementwise(dtype, params=st.fixed_dictionaries(
        {"negative_slope": st.sampled_from([0.0, 0.01, 0.2, 1.0, -0.5, 3.0])})),
    sizes={k: (lambda dtype, b=b: Case(b(dtype).inputs, {"negative_slope": 0.01}))
           for k, b in ELEMENTWISE_SIZES.items()},
    cost=elementwise_cost(2),
    smooth=_off_zero,
    invalid=COMMON_INVALID + (
        _bad_x("a NaN slope", np.ones(3), ValueError, "negative_slope",
               negative_slope=float("nan")),
        Invalid("a string slope", lambda: Case({"x": np.ones(3)}, {"negative_slope": "0.1"}),
                TypeError, "negative_slope"),
    ),
))


def _torch_step(x, value_at_zero=0.0):
    return torch.heaviside(x, torch.tensor(value_at_zero, dtype=x.dtype, device=x.device))


register(Spec(
    name="step", family=FAMILY, summary="the perceptron's Heaviside step (not differentiable)",
    forward=A.step, torch=_torch_step,
    nondifferentiable="derivative 0 almost everywhere, undefined at 0; torch.heaviside has none",
    cases=lambda dtype: _elementwise(dtype, params=st.fixed_dictionaries(
        {"value_at_zero": st.sampled_from([0.0, 0.5, 1.0])})),
    sizes=ELEMENTWISE_SIZES, cost=elementwise_cost(1),
    invariants=(
        _inv("values in {0, value_at_zero, 1}",
             lambda x, y, p: (y == 0) | (y == 1) | (y == p.get("value_at_zero", 0.0)),
             "step gave a value outside {0, value_at_zero, 1}"),
    ),
    invalid=COMMON_INVALID + (
        _bad_x("an infinite value_at_zero", np.ones(3), ValueError, "value_at_zero",
               value_at_zero=float("inf")),
    ),
))


def _rows_sum_to_one(case, outs):
    y = outs[0].astype(np.float64)
    if y.ndim == 0:
        assert y == 1 or not np.isfinite(case.inputs["x"]), f"softmax of a 0-d x is {y}, not 1"
        return
    axis = case.params["axis"]
    s = y.sum(axis=axis)
    n = y.shape[axis]
    # Each of the n terms is rounded once to the output dtype: |error| <= n * eps / 2.
    bound = n * float(np.finfo(outs[0].dtype).eps)
    assert np.all(np.abs(s - 1) <= bound), f"softmax sums {s.ravel()[:4]} differ from 1"


def _logsumexp_zero(case, outs):
    y = outs[0].astype(np.float64)
    if y.ndim == 0:
        assert y == 0 or not np.isfinite(case.inputs["x"]), f"log_softmax of 0-d x is {y}, not 0"
        return
    axis = case.params["axis"]
    lse = np.log(np.exp(y).sum(axis=axis))
    bound = y.shape[axis] * float(np.finfo(outs[0].dtype).eps) * (1 + np.abs(y).max())
    assert np.all(np.abs(lse) <= bound), f"logsumexp of log_softmax is {lse.ravel()[:4]}, not 0"


def _output_dtype(case, outs):
    dt = case.params.get("dtype")
    want = case.inputs["x"].dtype if dt is None else np.dtype(dt)
    assert outs[0].dtype == want, f"output dtype {outs[0].dtype}, not {want}"


def _x_with(x, **params):
    return lambda: Case({"x": x}, params)


SOFTMAX_INVALID = COMMON_INVALID + (
    Invalid("an axis out of range", _x_with(np.ones((2, 3)), axis=2), ValueError, "axis"),
    Invalid("a 0-d input with axis 1", _x_with(np.array(1.0), axis=1), ValueError, "axis"),
    Invalid("dtype 'abc'", _x_with(np.ones(3), axis=0, dtype="abc"), TypeError, "dtype"),
    Invalid("an integer dtype", _x_with(np.ones(3), axis=0, dtype=np.int32), TypeError,
            "dtype"),
    Invalid("a float16 dtype", _x_with(np.ones(3), axis=0, dtype="float16"), TypeError,
            "dtype"),
)

# The benchmark and battery sizes pass dtype=None (the default) so the battery probes it.
SOFTMAX_SIZES = {k: (lambda dtype, b=b: Case(b(dtype).inputs, {**b(dtype).params,
                                                                  "dtype": None}))
                 for k, b in LOGIT_SIZES.items()}

register(Spec(
    name="softmax", family=FAMILY, summary="softmax along an axis (max-shifted); dtype=, 0-d",
    forward=A.softmax, backward=A.softmax_backward, grad_inputs=("x",),
    torch=_torch_softmax(torch.softmax),
    cases=_logits, sizes=SOFTMAX_SIZES,
    cost=elementwise_cost(5),
    case_tol=_softmax_tol, smooth=_no_narrowing,
    invariants=(
        Invariant("slices sum to 1", _rows_sum_to_one),
        Invariant("output in dtype= (or x's)", _output_dtype),
        _inv("range [0, 1]", lambda x, y, p: (y >= 0) & (y <= 1), "softmax left [0, 1]"),
    ),
    invalid=SOFTMAX_INVALID,
))

register(Spec(
    name="log_softmax", family=FAMILY, summary="log-softmax along an axis; dtype=, 0-d",
    forward=A.log_softmax, backward=A.log_softmax_backward, grad_inputs=("x",),
    torch=_torch_softmax(torch.log_softmax),
    cases=_logits, sizes=SOFTMAX_SIZES,
    cost=elementwise_cost(5),
    case_tol=_softmax_tol, smooth=_no_narrowing,
    invariants=(
        Invariant("logsumexp of the output is 0", _logsumexp_zero),
        Invariant("output in dtype= (or x's)", _output_dtype),
        _inv("non-positive", lambda x, y, p: y <= 0, "log_softmax gave a positive value"),
    ),
    invalid=SOFTMAX_INVALID,
))


def _gelu_odd_part(case, outs):
    # x*Phi(x) - (-x)*Phi(-x) = x (Phi(x) + Phi(-x)) = x, exactly, for the erf form.
    x = case.inputs["x"].astype(np.float64)
    if case.params.get("approximate", "none") != "none":
        return
    lhs = outs[0].astype(np.float64) - A.gelu(-case.inputs["x"])[0].astype(np.float64)
    eps = float(np.finfo(outs[0].dtype).eps)
    # Two results each rounded once (|x| eps / 2 each) plus float64 erf error (negligible).
    assert np.all(np.abs(lhs - x) <= 2 * eps * np.abs(x) + 1e-300), "gelu(x) - gelu(-x) != x"


register(Spec(
    name="gelu", family=FAMILY, summary="GELU, exact (erf) and tanh approximation",
    forward=A.gelu, backward=A.gelu_backward, grad_inputs=("x",),
    torch=F.gelu,
    cases=lambda dtype: _elementwise(dtype, magnitude=100.0, params=st.fixed_dictionaries(
        {"approximate": st.sampled_from(["none", "tanh"])})),
    sizes={k: (lambda dtype, b=b: Case(b(dtype).inputs, {"approximate": "none"}))
           for k, b in ELEMENTWISE_SIZES.items()},
    cost=elementwise_cost(20),
    invariants=(Invariant("gelu(x) - gelu(-x) = x", _gelu_odd_part),),
    invalid=COMMON_INVALID + (
        _bad_x("an unknown approximation", np.ones(3), ValueError, "approximate",
               approximate="fast"),
    ),
))
