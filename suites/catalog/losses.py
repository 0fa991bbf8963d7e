"""Specs of the loss functions.

Strategies draw every reduction ('mean' only where the batch is non-empty), optional weights
(left out, or of a broadcastable shape), and the values where losses are delicate: exact
probabilities 0 and 1 and float32 subnormals for BCE (torch clamps each log at -100), logits
of magnitude 1e4, exact kinks (x = t for L1, y f = 1 for the hinge, z = 0 for the multi-class
margin), ignored labels and label smoothing. ``smooth=`` moves cases off kinks and domain edges
for the float64 finite-difference gradcheck only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from reference import activations as A
from reference import losses as L
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import (
    DEFAULT_TOL,
    Case,
    Cost,
    Invalid,
    Invariant,
    Spec,
    Tol,
    elementwise_cost,
)

FAMILY = "losses"
REDUCTIONS = ("none", "mean", "sum")


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _exact(dtype, values) -> list[float]:
    """Values rounded to float32 (so exactly representable in both dtypes), as Python floats."""
    return [float(np.float32(x)) for x in values]


@st.composite
def _reduction(draw, size: int):
    """Any reduction; 'mean' of an empty batch is refused by design (see reference.losses)."""
    return draw(st.sampled_from(REDUCTIONS if size else ("none", "sum")))


@st.composite
def _broadcastable(draw, shape: tuple[int, ...]):
    """A shape that broadcasts to ``shape``: leading dims dropped, others possibly set to 1."""
    drop = draw(st.integers(0, len(shape)))
    return tuple(draw(st.sampled_from([d, 1])) for d in shape[drop:])


def _first_float(case: Case) -> np.ndarray:
    return next(a for a in case.inputs.values() if a.dtype.kind == "f")


def _bad(description, error, match, **inputs_and_params) -> Invalid:
    inputs = {k: a for k, a in inputs_and_params.items() if isinstance(a, np.ndarray | list)}
    params = {k: a for k, a in inputs_and_params.items() if k not in inputs}
    return Invalid(description, lambda: Case(inputs, params), error, match)


def _reduce_torch(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


# ---------------------------------------------------------------------------------------------
# invariants shared by the losses


def _nonnegative(case: Case, outs) -> None:
    y = outs[0]
    bad = ~(y >= 0) & ~np.isnan(y)
    assert not bad.any(), f"negative loss {y[bad][:4]}"


def reduction_invariant(forward, denominator) -> Invariant:
    """'none', 'sum' and 'mean' of the same case agree (see the bounds below)."""

    def check(case: Case, outs) -> None:
        args = tuple(case.inputs.values())
        params = {k: p for k, p in case.params.items() if k != "reduction"}
        dtype = _first_float(case).dtype
        eps = _eps(dtype)
        none = forward(*args, reduction="none", **params)[0].astype(np.float64)
        total = float(forward(*args, reduction="sum", **params)[0])
        # Each 'none' value and 'sum' are rounded once from float64 (eps/2 relative each); the
        # two float64 sums add in different orders (up to n eps64 of sum|none| each).
        # Results in the subnormal range round to a multiple of the smallest subnormal instead.
        n = max(none.size, 1)
        tiny = float(np.finfo(dtype).smallest_subnormal)
        bound = (eps + 2 * n * _eps(np.float64)) * float(np.abs(none).sum()) + n * tiny
        assert abs(none.sum() - total) <= bound, (
            f"sum of 'none' {none.sum()!r} != 'sum' {total!r} (bound {bound:.3g})")
        d = denominator(case)
        if none.size and d != 0:
            mean = float(forward(*args, reduction="mean", **params)[0])
            # 'mean' and 'sum' round the same float64 total once each, and mean * d rounds once
            # more in float64: 2 eps * |sum| between them; d (a float64 sum of weights, in
            # another order than the kernel's) adds up to n eps64 relative.
            bound = (3 * eps + 2 * n * _eps(np.float64)) * abs(total) + (abs(d) + 1) * tiny
            assert abs(mean * d - total) <= bound, (
                f"'mean' {mean!r} * {d!r} != 'sum' {total!r} (bound {bound:.3g})")

    return Invariant("'none', 'sum' and 'mean' agree", check)


def _count(case: Case) -> float:
    return float(_first_float(case).size)


# ---------------------------------------------------------------------------------------------
# elementwise losses: shapes, sizes, common invalid inputs

# Sizes from the pipeline issue: 64 elements, 65536 (256x256), 16.7M (4096x4096).
_ELEMENTWISE_SHAPES = {"small": (64,), "medium": (256, 256), "large": (4096, 4096)}


def _pair_sizes(make):
    """Benchmark cases from ``make(rng, shape, dtype) -> (input, target)``, reduction 'mean'."""

    def builder(shape):
        def build(dtype):
            x, t = make(np.random.default_rng(0), shape, dtype)
            return Case({"input": x, "target": t}, {"reduction": "mean"})

        return build

    return {k: builder(shape) for k, shape in _ELEMENTWISE_SHAPES.items()}


def _pair_invalid(x=None, t=None) -> tuple[Invalid, ...]:
    """Invalid calls every elementwise loss shares; ``x``/``t`` are valid float32 arrays."""
    x = np.full(3, 0.5) if x is None else x
    t = np.full(3, 0.5) if t is None else t
    return (
        _bad("a list as input", TypeError, r"\binput\b", input=[0.5, 0.5, 0.5], target=t),
        _bad("an integer input", TypeError, r"\binput\b", input=np.arange(3), target=t),
        _bad("a target of another shape", ValueError, r"\btarget\b", input=x, target=t[:2]),
        _bad("a target of another dtype", TypeError, r"\btarget\b", input=x,
             target=t.astype(np.float32)),
        _bad("an unknown reduction", ValueError, "reduction", input=x, target=t,
             reduction="average"),
        _bad("'mean' of an empty batch", ValueError, "reduction", input=x[:0], target=t[:0],
             reduction="mean"),
    )


@st.composite
def _regression_cases(draw, dtype):
    """Any shape (0-d and empty included), values up to 1e3, and exact ties x = t."""
    shape = draw(S.shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    x = draw(S.arrays(dtype, shape, elements=S.stress(dtype, 1e3)))
    t = draw(S.arrays(dtype, shape, elements=S.stress(dtype, 1e3)))
    tie = draw(S.arrays(np.bool_, shape, elements=st.booleans()))
    t = np.where(tie, x, t).astype(dtype)
    return Case({"input": x, "target": t}, {"reduction": draw(_reduction(x.size))})


def _l1_off_kink(case: Case) -> Case:
    """Move x away from the kink x = t by 0.1 where they are within 0.05 (gradcheck only)."""
    x, t = case.inputs["input"].copy(), case.inputs["target"]
    near = np.abs(x - t) < 0.05
    x[near] = t[near] + 0.1
    return Case({"input": x, "target": t}, case.params)


def _normal_pair(rng, shape, dtype):
    return S.normal(rng, shape, dtype), S.normal(rng, shape, dtype)


register(Spec(
    name="mse_loss", family=FAMILY, summary="mean squared error (x - t)^2, reduced",
    forward=L.mse_loss, backward=L.mse_loss_backward, grad_inputs=("input", "target"),
    torch=F.mse_loss,
    cases=_regression_cases, sizes=_pair_sizes(_normal_pair),
    cost=elementwise_cost(3, arrays_touched=2),
    invariants=(Invariant("loss >= 0", _nonnegative),
                reduction_invariant(L.mse_loss, _count)),
    invalid=_pair_invalid(),
))

register(Spec(
    name="l1_loss", family=FAMILY, summary="mean absolute error |x - t|; l1'(0) = 0",
    forward=L.l1_loss, backward=L.l1_loss_backward, grad_inputs=("input", "target"),
    torch=F.l1_loss,
    cases=_regression_cases, sizes=_pair_sizes(_normal_pair),
    cost=elementwise_cost(3, arrays_touched=2),
    smooth=_l1_off_kink,
    invariants=(Invariant("loss >= 0", _nonnegative),
                reduction_invariant(L.l1_loss, _count)),
    invalid=_pair_invalid(),
))


# ---------------------------------------------------------------------------------------------
# binary cross-entropy on probabilities

def _probabilities(dtype):
    # Exact 0 and 1, a float32 subnormal whose log (-92.1) is above torch's -100 clamp, the
    # smallest float32 subnormal (log -103.3, clamped), and values next to 1.
    edges = _exact(dtype, [0.0, 1.0, 1e-40, 2.0**-149, 1e-7, 1 - 2.0**-24, 0.5])
    return st.one_of(S.floats(dtype, 0.0, 1.0), st.sampled_from(edges))


@st.composite
def _bce_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    x = draw(S.arrays(dtype, shape, elements=_probabilities(dtype)))
    t = draw(S.arrays(dtype, shape, elements=_probabilities(dtype)))
    inputs = {"input": x, "target": t}
    if draw(st.booleans()):
        wshape = draw(_broadcastable(shape))
        inputs["weight"] = draw(S.arrays(dtype, wshape, 0.0, 3.0))
    return Case(inputs, {"reduction": draw(_reduction(x.size))})


def _bce_inside(case: Case) -> Case:
    """Clip probabilities and targets into [0.05, 0.95] (gradcheck only): central differences
    must not step out of [0, 1], and near 0 and 1 the derivatives of log x grow as 1/x^k, so
    the h^4 term of the Richardson estimate (~ h^4 f^(5) / 480, f^(5) ~ 24 / x^5) would exceed
    the check's tolerance below about x = 0.02."""
    inputs = dict(case.inputs)
    inputs["input"] = np.clip(inputs["input"], 0.05, 0.95)
    inputs["target"] = np.clip(inputs["target"], 0.05, 0.95)
    return Case(inputs, case.params)


def _bce_torch(input, target, weight=None, reduction="mean"):
    return F.binary_cross_entropy(input, target, weight, reduction=reduction)


def _probability_pair(rng, shape, dtype):
    x = 1.0 / (1.0 + np.exp(-rng.standard_normal(shape)))
    return x.astype(dtype), rng.uniform(0.0, 1.0, shape).astype(dtype)


_half = np.full(3, 0.5)
register(Spec(
    name="binary_cross_entropy", family=FAMILY,
    summary="BCE of probabilities, logs clamped at -100 (torch's convention)",
    forward=L.binary_cross_entropy, backward=L.binary_cross_entropy_backward,
    grad_inputs=("input", "target"),
    torch=_bce_torch,
    cases=_bce_cases, sizes=_pair_sizes(_probability_pair),
    cost=elementwise_cost(8, arrays_touched=2),
    smooth=_bce_inside,
    invariants=(Invariant("loss >= 0", _nonnegative),
                reduction_invariant(L.binary_cross_entropy, _count)),
    invalid=_pair_invalid() + (
        _bad("a probability above 1", ValueError, r"\binput\b",
             input=np.array([0.5, 1.5]), target=np.array([0.5, 0.5])),
        _bad("a negative probability", ValueError, r"\binput\b",
             input=np.array([-1e-9, 0.5]), target=np.array([0.5, 0.5])),
        _bad("a NaN probability", ValueError, r"\binput\b",
             input=np.array([np.nan, 0.5]), target=np.array([0.5, 0.5])),
        _bad("a target above 1", ValueError, r"\btarget\b",
             input=np.array([0.5, 0.5]), target=np.array([0.5, 2.0])),
        _bad("a weight that does not broadcast", ValueError, r"\bweight\b",
             input=_half, target=_half, weight=np.ones(2)),
        _bad("a float16 weight", TypeError, r"\bweight\b",
             input=_half, target=_half, weight=np.ones(3, np.float16)),
    ),
))


# ---------------------------------------------------------------------------------------------
# binary cross-entropy with logits

@st.composite
def _bcel_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    x = draw(S.arrays(dtype, shape, elements=S.stress(dtype, 1e4)))
    t = draw(S.arrays(dtype, shape, elements=_probabilities(dtype)))
    inputs = {"input": x, "target": t}
    if draw(st.booleans()):  # weight, then maybe pos_weight (inputs are positional)
        inputs["weight"] = draw(S.arrays(dtype, draw(_broadcastable(shape)), 0.0, 3.0))
        if draw(st.booleans()):
            inputs["pos_weight"] = draw(S.arrays(dtype, draw(_broadcastable(shape)), 0.0, 3.0))
    return Case(inputs, {"reduction": draw(_reduction(x.size))})


def _bcel_torch(input, target, weight=None, pos_weight=None, reduction="mean"):
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                              pos_weight=pos_weight)


def _bcel_tol(case: Case, upstream) -> Tol | None:
    """torch computes (1 - t) x - (1 + (p - 1) t) log sigma(x) in the input's dtype: the two
    terms can be ~|x| = 1e4 while the loss is ~10 (t near 0, x << 0), so its result carries an
    absolute error up to ~2 ulp of the larger term: 2 eps M per element, with
    M = w (|(1 - t) x| + |(1 + (p - 1) t) log sigma(x)|); for 'sum' the errors add up (for
    'mean' divided by n). Our float64 result is right to a few ulp, so this bounds the
    difference. Gradients have no such cancellation (one of the two terms is tiny whenever
    |x| is large): the default tolerance."""
    x = case.inputs["input"]
    if upstream is not None or x.size == 0:
        return None
    xf, t = x.astype(np.float64), case.inputs["target"].astype(np.float64)
    w = case.inputs.get("weight", np.ones(1)).astype(np.float64)
    pw = case.inputs.get("pos_weight", np.ones(1)).astype(np.float64)
    log_sig = np.minimum(xf, 0) - np.log1p(np.exp(-np.abs(xf)))
    m = np.abs(w) * (np.abs((1 - t) * xf) + np.abs((1 + (pw - 1) * t) * log_sig))
    reduction = case.params.get("reduction", "mean")
    if reduction == "none":
        err = 2 * _eps(x.dtype) * float(m.max())
    else:
        err = 2 * _eps(x.dtype) * float(m.sum()) / (m.size if reduction == "mean" else 1)
    tol = DEFAULT_TOL[x.dtype]
    return Tol(tol.rtol, max(tol.atol, err))


def _weight_scales(case: Case, outs) -> None:
    """With reduction 'none', a weight multiplies the unweighted loss (this also runs the
    pos_weight-without-weight path, which positional cases cannot reach)."""
    if "weight" not in case.inputs:
        return
    x, t, w = case.inputs["input"], case.inputs["target"], case.inputs["weight"]
    pw = case.inputs.get("pos_weight")
    weighted = L.binary_cross_entropy_with_logits(x, t, w, pw, reduction="none")[0]
    plain = L.binary_cross_entropy_with_logits(x, t, None, pw, reduction="none")[0]
    expect = np.broadcast_to(w, x.shape).astype(np.float64) * plain.astype(np.float64)
    # each side rounded once from float64, and plain once more before the product: 2 eps;
    # results in the subnormal range round to a multiple of the smallest subnormal s instead.
    tiny = float(np.finfo(x.dtype).smallest_subnormal)
    bound = 2 * _eps(x.dtype) * np.abs(expect) + tiny * (1 + np.abs(w))
    diff = np.abs(weighted.astype(np.float64) - expect)
    assert np.all(diff <= bound), f"weight * loss != weighted loss: {diff.max():.3g}"


register(Spec(
    name="binary_cross_entropy_with_logits", family=FAMILY,
    summary="BCE of logits, stable for |x| = 1e4; weight and pos_weight",
    forward=L.binary_cross_entropy_with_logits,
    backward=L.binary_cross_entropy_with_logits_backward,
    grad_inputs=("input", "target"),
    torch=_bcel_torch,
    cases=_bcel_cases, sizes=_pair_sizes(_normal_pair),
    cost=elementwise_cost(10, arrays_touched=2),
    case_tol=_bcel_tol,
    invariants=(Invariant("loss >= 0", _nonnegative),
                reduction_invariant(L.binary_cross_entropy_with_logits, _count),
                Invariant("weight scales the loss", _weight_scales)),
    invalid=_pair_invalid() + (
        _bad("a pos_weight that does not broadcast", ValueError, r"\bpos_weight\b",
             input=np.zeros((2, 3)), target=np.zeros((2, 3)), weight=np.ones(3),
             pos_weight=np.ones(2)),
        _bad("an integer weight", TypeError, r"\bweight\b",
             input=np.zeros(3), target=np.zeros(3), weight=np.ones(3, np.int64)),
    ),
))


# ---------------------------------------------------------------------------------------------
# binary hinge loss

@st.composite
def _hinge_cases(draw, dtype):
    """Scores up to 1e3 and exactly +-1 (the kink y f = 1), labels -1 and +1."""
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    f = draw(S.arrays(dtype, shape, elements=st.one_of(
        S.stress(dtype, 1e3), st.sampled_from([1.0, -1.0]))))
    y = draw(S.arrays(dtype, shape, elements=st.sampled_from([1.0, -1.0])))
    return Case({"input": f, "target": y}, {"reduction": draw(_reduction(f.size))})


def _hinge_torch(input, target, reduction="mean"):
    return _reduce_torch(torch.clamp(1 - target * input, min=0), reduction)


def _hinge_off_kink(case: Case) -> Case:
    """Move scores with |1 - y f| < 0.05 to y f = 0.9 (gradcheck only)."""
    f, y = case.inputs["input"].copy(), case.inputs["target"]
    near = np.abs(1 - y * f) < 0.05
    f[near] = 0.9 * y[near]
    return Case({"input": f, "target": y}, case.params)


def _hinge_zero_beyond_margin(case: Case, outs) -> None:
    if case.params["reduction"] != "none":
        return
    f, y = case.inputs["input"], case.inputs["target"]
    beyond = y.astype(np.float64) * f >= 1
    assert np.all(outs[0][beyond] == 0), "hinge loss is not 0 where y f >= 1"


def _signs(rng, shape, dtype):
    return S.normal(rng, shape, dtype), np.where(rng.random(shape) < 0.5, -1, 1).astype(dtype)


register(Spec(
    name="hinge_loss", family=FAMILY,
    summary="binary SVM hinge max(0, 1 - y f); gradient -y at the kink (torch.clamp's)",
    forward=L.hinge_loss, backward=L.hinge_loss_backward, grad_inputs=("input",),
    torch=_hinge_torch,
    cases=_hinge_cases, sizes=_pair_sizes(_signs),
    cost=elementwise_cost(3, arrays_touched=2),
    smooth=_hinge_off_kink,
    invariants=(Invariant("loss >= 0", _nonnegative),
                Invariant("0 where y f >= 1", _hinge_zero_beyond_margin),
                reduction_invariant(L.hinge_loss, _count)),
    invalid=_pair_invalid(np.ones(3), np.ones(3)) + (
        _bad("a label that is not +-1", ValueError, r"\btarget\b",
             input=np.ones(3), target=np.array([1.0, 0.0, -1.0])),
    ),
))
