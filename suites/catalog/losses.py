"""Specs of the loss functions.

Strategies draw every reduction ('mean' only where the batch is non-empty), optional weights
(left out, or of a broadcastable shape), and the values where losses are delicate: exact
probabilities 0 and 1 and float32 subnormals for BCE (torch clamps each log at -100), logits
of magnitude 1e4, exact kinks (x = t for L1, y f = 1 for the hinge, z = 0 for the multi-class
margin), ignored labels and label smoothing. ``smooth=`` moves cases off kinks and domain edges
for the float64 finite-difference gradcheck only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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


def _exact(values) -> list[float]:
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


def _weights(dtype):
    """Weights: exactly 0 or 1, or in [2^-10, 3]. Not subnormal: a weight of 1e-320 underflows the
    loss itself, where the float64 gradcheck's model of relative rounding error does not hold."""
    return st.one_of(st.sampled_from([0.0, 1.0]), S.floats(dtype, 2.0**-10, 3.0))


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


def _reduction_invariant(forward, denominator) -> Invariant:
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


def _off_ties(case: Case) -> Case:
    """Move x away from t by 0.1 where they are within 0.05 (gradcheck only). For L1 that is
    its kink; for MSE it is the minimum, where loss and gradient are both ~0: the gradcheck's
    allowance scales with the output and cannot absorb the rounding of the perturbed inputs
    x + h v (seen: a difference quotient of 2e-17 against an exact 0 at x = t = 1)."""
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
    smooth=_off_ties,
    invariants=(Invariant("loss >= 0", _nonnegative),
                _reduction_invariant(L.mse_loss, _count)),
    invalid=_pair_invalid(),
))

register(Spec(
    name="l1_loss", family=FAMILY, summary="mean absolute error |x - t|; l1'(0) = 0",
    forward=L.l1_loss, backward=L.l1_loss_backward, grad_inputs=("input", "target"),
    torch=F.l1_loss,
    cases=_regression_cases, sizes=_pair_sizes(_normal_pair),
    cost=elementwise_cost(3, arrays_touched=2),
    smooth=_off_ties,
    invariants=(Invariant("loss >= 0", _nonnegative),
                _reduction_invariant(L.l1_loss, _count)),
    invalid=_pair_invalid(),
))


# ---------------------------------------------------------------------------------------------
# binary cross-entropy on probabilities

def _probabilities(dtype):
    # Exact 0 and 1, a float32 subnormal whose log (-92.1) is above torch's -100 clamp, the
    # smallest float32 subnormal (log -103.3, clamped), and values next to 1.
    edges = _exact([0.0, 1.0, 1e-40, 2.0**-149, 1e-7, 1 - 2.0**-24, 0.5])
    return st.one_of(S.floats(dtype, 0.0, 1.0), st.sampled_from(edges))


@st.composite
def _bce_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    x = draw(S.arrays(dtype, shape, elements=_probabilities(dtype)))
    t = draw(S.arrays(dtype, shape, elements=_probabilities(dtype)))
    inputs = {"input": x, "target": t}
    if draw(st.booleans()):
        wshape = draw(_broadcastable(shape))
        inputs["weight"] = draw(S.arrays(dtype, wshape, elements=_weights(dtype)))
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
                _reduction_invariant(L.binary_cross_entropy, _count)),
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
        inputs["weight"] = draw(S.arrays(dtype, draw(_broadcastable(shape)),
                                         elements=_weights(dtype)))
        if draw(st.booleans()):
            inputs["pos_weight"] = draw(S.arrays(dtype, draw(_broadcastable(shape)),
                                                 elements=_weights(dtype)))
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
                _reduction_invariant(L.binary_cross_entropy_with_logits, _count),
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
                _reduction_invariant(L.hinge_loss, _count)),
    invalid=_pair_invalid(np.ones(3), np.ones(3)) + (
        _bad("a label that is not +-1", ValueError, r"\btarget\b",
             input=np.ones(3), target=np.array([1.0, 0.0, -1.0])),
    ),
))


# ---------------------------------------------------------------------------------------------
# classification losses over integer labels: cross-entropy, NLL, multi-class margin

# Logits from the pipeline issue: 64x10, 64x1024, 4096x4096.
_LOGIT_SHAPES = {"small": (64, 10), "medium": (64, 1024), "large": (4096, 4096)}


def _label_sizes(make_input, params):
    """Benchmark cases: ``make_input(rng, shape, dtype)`` and uniform labels, no weights."""

    def builder(shape):
        def build(dtype):
            rng = np.random.default_rng(0)
            x = make_input(rng, shape, dtype)
            y = rng.integers(0, shape[1], shape[0])
            return Case({"input": x, "target": y}, dict(params))

        return build

    return {k: builder(shape) for k, shape in _LOGIT_SHAPES.items()}


def _class_cost(flops_per_element: float):
    def cost(case: Case) -> Cost:
        x, y = case.inputs["input"], case.inputs["target"]
        return Cost(flops=flops_per_element * x.size, bytes=x.nbytes + y.nbytes)

    return cost


@st.composite
def _labelled(draw, dtype, values, *, spatial: bool, ignore: bool, min_batch: int = 0):
    """(C,) with a 0-d label, (N, C) with (N,) labels, or (N, C, d1[, d2]) with (N, d1[, d2]);
    labels in [0, C) or ``ignore_index`` (-100, or a class index, or one beyond the classes);
    optional class weights. Returns (inputs, ignore_index)."""
    kinds = ["single", "batch"] + (["spatial"] if spatial else [])
    kind = draw(st.sampled_from(kinds))
    n_classes = draw(st.integers(1, 7))
    if kind == "single":
        shape, tshape = (n_classes,), ()
    elif kind == "batch":
        n = draw(st.integers(min_batch, 6))
        shape, tshape = (n, n_classes), (n,)
    else:
        n = draw(st.integers(min_batch, 3))
        dims = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
        shape, tshape = (n, n_classes) + dims, (n,) + dims
    x = draw(S.arrays(dtype, shape, elements=values))
    ignore_index = (draw(st.sampled_from([-100, 0, n_classes - 1, n_classes + 2]))
                    if ignore else None)
    label = st.integers(0, n_classes - 1)
    if ignore:
        label = st.one_of(label, st.just(ignore_index))
    y = draw(hnp.arrays(np.int64, tshape, elements=label))
    inputs = {"input": x, "target": y}
    if draw(st.booleans()):
        inputs["weight"] = draw(S.arrays(dtype, (n_classes,), elements=_weights(dtype)))
    return inputs, ignore_index


def _weight_of_labels(case: Case) -> float:
    """The 'mean' denominator of cross_entropy / nll_loss: the weights of non-ignored labels."""
    y = case.inputs["target"].reshape(-1)
    keep = y != case.params.get("ignore_index", -100)
    if "weight" not in case.inputs:
        return float(keep.sum())
    return float(case.inputs["weight"].astype(np.float64)[y[keep]].sum())


@st.composite
def _ce_like_cases(draw, dtype, smoothing: bool):
    """Cross-entropy / NLL cases. For 'mean' at least one non-ignored label has a positive
    weight: a zero denominator is 0/0 (NaN in torch and here, tested by an invariant), where
    the float64 gradcheck has nothing to check."""
    values = S.stress(dtype, 1e4)
    inputs, ignore_index = draw(_labelled(dtype, values, spatial=True, ignore=True))
    params = {"ignore_index": ignore_index, "reduction": draw(_reduction(inputs["target"].size))}
    if smoothing:
        # Smoothing 0, 1, or in [2^-20, 1]: below that it is 0 in float32, and its terms
        # eps / C * w end up subnormal, where the gradcheck's relative rounding model fails.
        params["label_smoothing"] = draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]),
                                                   st.floats(2.0**-20, 1.0)))
    case = Case(inputs, params)
    if params["reduction"] == "mean" and _weight_of_labels(case) == 0:
        n_classes = inputs["input"].shape[0 if inputs["input"].ndim == 1 else 1]
        usable = [c for c in range(n_classes) if c != ignore_index]
        if not usable:  # one class, and it is ignored: 'mean' is 0/0 whatever the draw
            params["reduction"] = "sum"
        else:
            first = usable[0]
            y = inputs["target"].copy()
            y.reshape(-1)[0] = first
            inputs["target"] = y
            if "weight" in inputs:
                w = inputs["weight"].copy()
                w[first] = max(w[first], 1.0)
                inputs["weight"] = w
    return Case(inputs, params)


def _ce_torch(input, target, weight=None, **params):
    return F.cross_entropy(input, target, weight, **params)


def _nll_torch(input, target, weight=None, **params):
    return F.nll_loss(input, target, weight, **params)


def _equals_nll_of_log_softmax(case: Case, outs) -> None:
    """cross_entropy(x) = nll_loss(log_softmax(x)) without label smoothing, per sample."""
    if case.params.get("label_smoothing", 0.0) != 0.0:
        return
    x = case.inputs["input"]
    params = {k: p for k, p in case.params.items() if k not in ("label_smoothing", "reduction")}
    rest = tuple(case.inputs.values())[1:]
    ce = L.cross_entropy(x, *rest, reduction="none", **params)[0].astype(np.float64)
    logp = A.log_softmax(x, axis=0 if x.ndim == 1 else 1)[0]
    nll = L.nll_loss(logp, *rest, reduction="none", **params)[0].astype(np.float64)
    # Each rounds its float64 result once (2 eps |value| together); log_softmax is another
    # implementation whose log-sum-exp may carry an absolute error of a few eps (a relative
    # error of a few ulp in its sum of exps s becomes an absolute one in log s = ds / s),
    # weighted by w_y in nll: 8 eps w_y covers 4 ulp. Plus the smallest subnormal.
    y = case.inputs["target"].reshape(ce.shape)
    keep = y != case.params.get("ignore_index", -100)
    w = case.inputs.get("weight")
    wy = np.where(keep, 1.0 if w is None else w.astype(np.float64)[np.where(keep, y, 0)], 0.0)
    eps = _eps(x.dtype)
    bound = 2 * eps * np.abs(ce) + 8 * eps * wy + float(np.finfo(x.dtype).smallest_subnormal)
    diff = np.abs(ce - nll)
    assert np.all(diff <= bound), f"cross_entropy != nll_loss(log_softmax) by {diff.max():.3g}"


def _lse_err(e, d, s):
    """The bound on float32 lanes' log-sum-exp error of rows (last axis) with shifted logits
    d = x - max, e = e^d and s = sum e (keepdims): e^d from vm.exp_f32_scaled (<= 0.9 ulp,
    test_vmath) of d rounded to float32 (a relative error |d| 2^-24 in e^d), summed in float64:
    sum_c e_c (0.9 2^-23 + |d_c| 2^-24) / s."""
    return (e * (0.9 * 2.0**-23 + np.abs(d) * 2.0**-24)).sum(axis=-1, keepdims=True) / s


def _float32_rows_bound(case: Case, outs) -> None:
    """float32 logits: per-sample losses within the derived bound of the exact loss.

    The float32 rows take their max and exps in float32 lanes: e^(x_c - m) from
    vm.exp_f32_scaled (<= 0.9 ulp, test_vmath) of x_c - m rounded to float32 (a relative
    error |d_c| 2^-24 in e^(d_c)); the sum, the log and the rest run in float64. So
    log-sum-exp is off by at most sum_c e^(d_c) (0.9 2^-23 + |d_c| 2^-24) / sum_c e^(d_c),
    carried into the loss with the factor A = (1 - eps) w_y + eps W / C of its log-sum-exp
    terms; then one rounding to float32 (2^-24 relative). The float64 arithmetic adds far
    less (2^-40 of the terms' magnitudes covers it), exps below e^-130 are taken as e^-130
    (C e^-130 is under float32's smallest subnormal, added too)."""
    x = case.inputs["input"]
    if x.dtype != np.float32 or x.size == 0:
        return
    params = {k: p for k, p in case.params.items() if k != "reduction"}
    rest = tuple(case.inputs.values())[1:]
    got = L.cross_entropy(x, *rest, reduction="none", **params)[0].astype(np.float64).reshape(-1)
    axis = 0 if x.ndim == 1 else 1
    n_classes = x.shape[axis]
    rows = np.moveaxis(x, axis, -1).reshape(-1, n_classes).astype(np.longdouble)
    y = case.inputs["target"].reshape(-1)
    w = case.inputs.get("weight")
    w = np.ones(n_classes) if w is None else w.astype(np.float64)
    eps = float(case.params.get("label_smoothing", 0.0))
    keep = (y != case.params.get("ignore_index", -100)) & np.all(np.isfinite(rows), axis=1)
    if not np.any(keep):
        return
    rows, y, got = rows[keep], y[keep], got[keep]
    d = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(d)
    s = e.sum(axis=1)
    logp = d - np.log(s)[:, None]
    wy = w[y]
    exact = (-(1 - eps) * wy * logp[np.arange(len(y)), y]
             - eps / n_classes * (logp * w).sum(axis=1)).astype(np.float64)
    lse_err = _lse_err(e, d, s[:, None])[:, 0].astype(np.float64)
    a = (1 - eps) * wy + eps * w.sum() / n_classes
    scale = (a * np.abs(np.log(s)) + (1 - eps) * wy * np.abs(d[np.arange(len(y)), y])
             + eps / n_classes * (np.abs(d) * w).sum(axis=1)).astype(np.float64)
    bound = (a * lse_err + 2.0**-24 * np.abs(exact) + 2.0**-40 * scale
             + float(np.finfo(np.float32).smallest_subnormal))
    diff = np.abs(got - exact)
    worst = int(np.argmax(diff - bound))
    assert np.all(diff <= bound), (
        f"float32 loss off by {diff[worst]:.3g} > bound {bound[worst]:.3g} "
        f"(exact {exact[worst]!r})")


def _all_ignored(forward, backward):
    """Every label ignored: 'sum' is 0, 'mean' is 0/0 = NaN (as torch), the gradient is 0."""

    def check(case: Case, outs) -> None:
        y = case.inputs["target"]
        if y.size == 0:
            return
        ignore_index = case.params.get("ignore_index", -100)
        inputs = dict(case.inputs)
        inputs["target"] = np.full_like(y, ignore_index)
        args = tuple(inputs.values())
        params = {k: p for k, p in case.params.items() if k != "reduction"}
        total, _ = forward(*args, reduction="sum", **params)
        assert total == 0, f"'sum' over ignored labels is {total}, not 0"
        mean, ctx = forward(*args, reduction="mean", **params)
        assert np.isnan(mean), f"'mean' over ignored labels is {mean}, not NaN (0/0)"
        (dx,) = backward(ctx, np.asarray(1.0, mean.dtype))
        assert not np.any(dx), "the gradient over ignored labels is not 0"

    return Invariant("all labels ignored: sum 0, mean NaN, gradient 0", check)


def _class_invalid(name: str, with_ignore: bool = True,
                   float_target: type[Exception] = TypeError) -> tuple[Invalid, ...]:
    """``float_target``: the error for float labels of the labels' shape (cross_entropy reads a
    float target as class probabilities, which must then have the input's shape)."""
    x, y = np.zeros((2, 3)), np.array([0, 2])
    cases = [
        _bad("a list as input", TypeError, r"\binput\b", input=[[0.0, 1.0]], target=y[:1]),
        _bad("an integer input", TypeError, r"\binput\b", input=np.zeros((2, 3), np.int64),
             target=y),
        _bad("a 0-d input", ValueError, r"\binput\b", input=np.array(1.0), target=np.array(0)),
        _bad("no classes", ValueError, r"\binput\b", input=np.zeros((2, 0)), target=y),
        _bad("float labels", float_target, r"\btarget\b", input=x,
             target=np.array([0.0, 2.0])),
        _bad("a label equal to C", ValueError, r"\btarget\b", input=x, target=np.array([0, 3])),
        _bad("a negative label", ValueError, r"\btarget\b", input=x, target=np.array([-1, 0])),
        _bad("labels of another batch size", ValueError, r"\btarget\b", input=x,
             target=np.array([0, 1, 2])),
        _bad("labels of the wrong rank", ValueError, r"\btarget\b", input=x,
             target=np.array([[0], [1]])),
        _bad("a weight of the wrong length", ValueError, r"\bweight\b", input=x, target=y,
             weight=np.ones(2)),
        _bad("a weight of another dtype", TypeError, r"\bweight\b", input=x, target=y,
             weight=np.ones(3, np.float32)),
        _bad("an unknown reduction", ValueError, "reduction", input=x, target=y,
             reduction="avg"),
        _bad("'mean' of an empty batch", ValueError, "reduction", input=x[:0], target=y[:0],
             reduction="mean"),
    ]
    if with_ignore:
        cases.append(_bad("a non-integer ignore_index", TypeError, "ignore_index", input=x,
                          target=y, ignore_index=1.5))
    return tuple(cases)


def _log_probs(rng, shape, dtype):
    z = rng.standard_normal(shape) * 3
    return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(dtype)


def _ce_labels_backward(ctx, grad_out):
    """The reference's backward without its ``d_target``, None after integer labels (the
    invariant "one-hot targets = integer labels" asserts that None)."""
    return L.cross_entropy_backward(ctx, grad_out)[:1]


register(Spec(
    name="cross_entropy", family=FAMILY,
    summary="softmax cross-entropy of logits; weights, ignore_index, label smoothing",
    forward=L.cross_entropy, backward=_ce_labels_backward, grad_inputs=("input",),
    torch=_ce_torch,
    cases=lambda dtype: _ce_like_cases(dtype, smoothing=True),
    sizes=_label_sizes(lambda rng, shape, dtype: S.normal(rng, shape, dtype, 3.0),
                       {"reduction": "mean"}),
    cost=_class_cost(6),
    invariants=(Invariant("loss >= 0", _nonnegative),
                _reduction_invariant(L.cross_entropy, _weight_of_labels),
                Invariant("= nll_loss(log_softmax(x))", _equals_nll_of_log_softmax),
                Invariant("float32 rows within the derived bound", _float32_rows_bound),
                _all_ignored(L.cross_entropy, _ce_labels_backward)),
    invalid=_class_invalid("cross_entropy", float_target=ValueError) + (
        _bad("label_smoothing above 1", ValueError, "label_smoothing", input=np.zeros((2, 3)),
             target=np.array([0, 1]), label_smoothing=1.5),
        _bad("negative label_smoothing", ValueError, "label_smoothing", input=np.zeros((2, 3)),
             target=np.array([0, 1]), label_smoothing=-0.1),
    ),
))

# cross-entropy with class probabilities ------------------------------------------------------


@st.composite
def _probs_cases(draw, dtype):
    """Logits as for labels ((C,), (N, C) or (N, C, d1[, d2]), magnitudes up to 1e4), and a
    float target of the same shape: rows of a softmax (sum 1), one-hot rows, or independent
    values in [0, 1] including exact 0 and 1 (soft labels that need not sum to 1, as torch
    takes them). Targets stay non-negative, what class probabilities are: every term of the
    loss is then >= 0 and there is no cancellation for torch's float32 sum to amplify.
    Optional weights, any label smoothing, any reduction ('mean' with at least one sample)."""
    kind = draw(st.sampled_from(["single", "batch", "spatial"]))
    n_classes = draw(st.integers(1, 7))
    if kind == "single":
        shape = (n_classes,)
    elif kind == "batch":
        shape = (draw(st.integers(0, 6)), n_classes)
    else:
        dims = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
        shape = (draw(st.integers(0, 3)), n_classes) + dims
    x = draw(S.arrays(dtype, shape, elements=S.stress(dtype, 1e4)))
    axis = 0 if len(shape) == 1 else 1
    target_kind = draw(st.sampled_from(["softmax", "one-hot", "free"]))
    if target_kind == "free":
        t = draw(S.arrays(dtype, shape, elements=st.one_of(st.sampled_from([0.0, 1.0]),
                                                           S.floats(dtype, 0.0, 1.0))))
    else:
        z = draw(S.arrays(dtype, shape, elements=S.floats(dtype, -4.0, 4.0)))
        if target_kind == "softmax":
            e = np.exp(z.astype(np.float64) - z.max(axis=axis, keepdims=True, initial=-np.inf))
            t = (e / e.sum(axis=axis, keepdims=True)).astype(dtype)
        else:
            t = (z == z.max(axis=axis, keepdims=True, initial=-np.inf)).astype(dtype)
    inputs = {"input": x, "target": t}
    if draw(st.booleans()):
        inputs["weight"] = draw(S.arrays(dtype, (n_classes,), elements=_weights(dtype)))
    rows = int(np.prod(shape)) // n_classes
    params = {"reduction": draw(_reduction(rows)),
              "label_smoothing": draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]),
                                                st.floats(2.0**-20, 1.0)))}
    if draw(st.booleans()):
        params["ignore_index"] = draw(st.sampled_from([-100, -1]))  # accepted, unused
    return Case(inputs, params)


def _probs_rows(case: Case) -> float:
    x = case.inputs["input"]
    return float(x.size // x.shape[0 if x.ndim == 1 else 1])


def _one_hot_equals_labels(case: Case, outs) -> None:
    """One-hot probabilities give the loss and input gradient of the integer labels (the
    class with the largest target), per sample ('none'; the two 'mean's divide differently)."""
    x, t = case.inputs["input"], case.inputs["target"]
    axis = 0 if x.ndim == 1 else 1
    if x.size == 0:
        return
    y = np.argmax(t, axis=axis)
    hot = np.moveaxis(np.eye(x.shape[axis], dtype=x.dtype)[y], -1, axis)
    w = case.inputs.get("weight")
    params = {"label_smoothing": case.params.get("label_smoothing", 0.0), "reduction": "none"}
    extra = () if w is None else (w,)
    lp, cp = L.cross_entropy(x, hot, *extra, **params)
    ll, cl = L.cross_entropy(x, y, *extra, **params)
    g = np.random.default_rng(0).standard_normal(lp.shape).astype(x.dtype)
    dp, dtp = L.cross_entropy_backward(cp, g)
    dl, dtl = L.cross_entropy_backward(cl, g)
    # one fixed arity: (d_input, d_target), the target's None after labels
    assert dtp is not None and dtp.shape == x.shape and dtl is None, (
        f"backward's d_target: {type(dtp).__name__} after probabilities, "
        f"{type(dtl).__name__} after labels")
    dp, dl = dp.astype(np.float64), dl.astype(np.float64)
    eps = _eps(x.dtype)
    tiny = float(np.finfo(x.dtype).smallest_subnormal)
    # The same float64 terms (all >= 0) summed in other orders: C eps64 of the loss each, then
    # one rounding to the dtype each (eps/2 relative). The gradients are g (S p_c - a_c) by
    # two formulas whose float64 values differ by a few eps64 of |g| (S + w_max); each is
    # rounded once to the dtype.
    c = x.shape[axis]
    lp64, ll64 = lp.astype(np.float64), ll.astype(np.float64)
    wmax = 1.0 if w is None else max(1.0, float(np.abs(w).max()))
    bound = (eps + 4 * c * _eps(np.float64)) * np.abs(ll64) + tiny
    gw = np.expand_dims(np.abs(g.astype(np.float64)), axis) * wmax
    gbound = eps * np.abs(dl) + 8 * _eps(np.float64) * gw * (c + 1) + tiny
    if x.dtype == np.float32:
        # The labels' path takes its log-sum-exp from float32 lanes (_float32_rows_bound): the
        # loss carries its error times A <= wmax (x = [.., ..] with loss 0.0121 differed by
        # 1.9e-9, over the float64-only bound's 1.4e-9 and within A lse_err = 1.1e-7; found by
        # the dev profile), and its p_c = e^(x_c - lse) carries the error too, and so g (A p_c
        # - B w_c) (p_c near B w_c / A leaves that absolute error on a small gradient: 2 ulp
        # of it seen with label_smoothing=1).
        rows = np.moveaxis(x.astype(np.float64), axis, -1)
        d = rows - rows.max(axis=-1, keepdims=True)
        e = np.exp(d)
        s = e.sum(axis=-1, keepdims=True)
        lse_err = _lse_err(e, d, s)
        bound = bound + wmax * lse_err[..., 0]
        p_err = e / s * lse_err
        gbound = gbound + np.moveaxis(p_err, -1, axis) * gw
    assert np.all(np.abs(lp64 - ll64) <= bound), (
        f"one-hot loss != labels' loss by {np.abs(lp64 - ll64).max():.3g}")
    assert np.all(np.abs(dp - dl) <= gbound), (
        f"one-hot input gradient != labels' by {np.abs(dp - dl).max():.3g}")


def _probs_sizes():
    def builder(shape):
        def build(dtype):
            rng = np.random.default_rng(0)
            x = S.normal(rng, shape, dtype, 3.0)
            z = rng.standard_normal(shape)
            t = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(dtype)
            w = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
            return Case({"input": x, "target": t, "weight": w},
                        {"reduction": "mean", "label_smoothing": 0.1})

        return build

    return {k: builder(shape) for k, shape in _LOGIT_SHAPES.items()}


def _probs_cost(case: Case) -> Cost:
    x = case.inputs["input"]
    return Cost(flops=8 * x.size, bytes=2 * x.nbytes)


_X23, _T23 = np.zeros((2, 3)), np.full((2, 3), 1 / 3)

register(Spec(
    name="cross_entropy_probs", family=FAMILY,
    summary="softmax cross-entropy against class probabilities (soft labels); weights, "
            "label smoothing; differentiable target",
    forward=L.cross_entropy, backward=L.cross_entropy_backward,
    grad_inputs=("input", "target"),
    torch=_ce_torch,
    cases=_probs_cases,
    sizes=_probs_sizes(),
    cost=_probs_cost,
    invariants=(Invariant("loss >= 0", _nonnegative),
                _reduction_invariant(L.cross_entropy, _probs_rows),
                Invariant("one-hot targets = integer labels", _one_hot_equals_labels)),
    invalid=(
        _bad("a target of another shape", ValueError, r"\btarget\b", input=_X23,
             target=_T23[:, :2]),
        _bad("a target of another dtype", TypeError, r"\btarget\b", input=_X23,
             target=_T23.astype(np.float32)),
        _bad("a bool target", TypeError, r"\btarget\b", input=_X23,
             target=np.ones((2, 3), bool)),
        _bad("ignore_index >= 0 (torch refuses it with probabilities)", ValueError,
             "ignore_index", input=_X23, target=_T23, ignore_index=0),
        _bad("a weight of the wrong length", ValueError, r"\bweight\b", input=_X23,
             target=_T23, weight=np.ones(2)),
        _bad("'mean' of an empty batch", ValueError, "reduction", input=_X23[:0],
             target=_T23[:0], reduction="mean"),
        _bad("label_smoothing above 1", ValueError, "label_smoothing", input=_X23,
             target=_T23, label_smoothing=1.5),
    ),
))


def _nll_tol(case: Case, upstream) -> Tol | None:
    """'sum' and 'mean' add terms -w_y x of either sign (logits of 1e4 and -1e4 cancel);
    torch adds n of them in the input's dtype, a rounding error of at most
    n eps sum |w_y x| (the recursive-summation bound, eps/2 per addition and product, doubled
    for margin), divided by the denominator for 'mean', whose own float sum of n weights
    errs by n eps relative. Ours is a float64 sum. 'none' and gradients: the default."""
    reduction = case.params.get("reduction", "mean")
    if upstream is not None or reduction == "none":
        return None
    x = case.inputs["input"]
    y = case.inputs["target"].reshape(-1)
    keep = y != case.params.get("ignore_index", -100)
    if not keep.any():
        return None
    x3 = x.reshape(1, x.shape[0], 1) if x.ndim == 1 else x.reshape(x.shape[0], x.shape[1], -1)
    n_idx, k_idx = np.divmod(np.arange(y.size), x3.shape[2])
    w = case.inputs.get("weight")
    wy = np.ones(int(keep.sum())) if w is None else w.astype(np.float64)[y[keep]]
    terms = np.abs(wy * x3[n_idx[keep], y[keep], k_idx[keep]].astype(np.float64))
    n = int(keep.sum())
    eps = _eps(x.dtype)
    err = n * eps * float(terms.sum())
    tol = DEFAULT_TOL[x.dtype]
    if reduction == "mean":
        d = _weight_of_labels(case)
        if d == 0:
            return None
        return Tol(tol.rtol + n * eps, max(tol.atol, err / d))
    return Tol(tol.rtol, max(tol.atol, err))


register(Spec(
    name="nll_loss", family=FAMILY,
    summary="negative log-likelihood of log-probabilities; weights, ignore_index",
    forward=L.nll_loss, backward=L.nll_loss_backward, grad_inputs=("input",),
    torch=_nll_torch,
    cases=lambda dtype: _ce_like_cases(dtype, smoothing=False),
    sizes=_label_sizes(_log_probs, {"reduction": "mean"}),
    cost=_class_cost(1),
    case_tol=_nll_tol,
    invariants=(_reduction_invariant(L.nll_loss, _weight_of_labels),
                _all_ignored(L.nll_loss, L.nll_loss_backward)),
    invalid=_class_invalid("nll_loss") + (
        _bad("class probabilities (torch 2.13 refuses them for nll_loss)", TypeError,
             r"\btarget\b", input=np.zeros((2, 3)), target=np.full((2, 3), 1 / 3)),
    ),
))


# multi-class margin ---------------------------------------------------------------------------

# A coarse grid of logits and margins makes z = margin - x_y + x_j hit the kink 0 exactly.
_GRID = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]


@st.composite
def _mm_cases(draw, dtype):
    """(C,) or (N, C) scores up to 1e3 or on a grid (exact kinks), p 1 or 2, any margin.
    An empty batch only with 'none': torch's 'sum' and 'mean' of it return uninitialised memory
    (seen: -6.7e-21), so there is nothing to compare; an invariant checks that ours is 0."""
    values = st.one_of(S.stress(dtype, 1e3), st.sampled_from(_GRID))
    inputs, _ = draw(_labelled(dtype, values, spatial=False, ignore=False))
    n = inputs["target"].size
    params = {
        "p": draw(st.sampled_from([1, 2])),
        "margin": draw(st.one_of(st.sampled_from([1.0, 0.0, 0.5, 2.0]), st.floats(-1.0, 3.0))),
        "reduction": draw(st.sampled_from(REDUCTIONS) if n else st.just("none")),
    }
    return Case(inputs, params)


def _mm_torch(input, target, weight=None, **params):
    return F.multi_margin_loss(input, target, weight=weight, **params)


def _mm_off_kink(case: Case) -> Case:
    """Raise x_j by 0.02 where z = margin - x_y + x_j is within 0.01 of the kink 0 (gradcheck
    only; p = 2 needs it too: its second derivative jumps at 0)."""
    x = case.inputs["input"].copy()
    rows = x.reshape(-1, x.shape[-1])
    y = case.inputs["target"].reshape(-1)
    margin = case.params.get("margin", 1.0)
    for r, label in enumerate(y):
        z = margin - rows[r, label] + rows[r]
        near = np.abs(z) < 0.01
        near[label] = False
        rows[r, near] += 0.02
    return Case({**case.inputs, "input": x}, case.params)


def _mm_empty_is_zero(case: Case, outs) -> None:
    x = case.inputs["input"]
    if x.ndim != 2:
        return
    rest = {k: a for k, a in case.inputs.items() if k == "weight"}
    params = {k: p for k, p in case.params.items() if k != "reduction"}
    total = L.multi_margin_loss(x[:0], case.inputs["target"][:0], *rest.values(),
                                reduction="sum", **params)[0]
    assert total == 0, f"'sum' over an empty batch is {total}, not 0"


register(Spec(
    name="multi_margin_loss", family=FAMILY,
    summary="multi-class hinge (p = 1, 2), margin, class weights; 0 at the kink z = 0",
    forward=L.multi_margin_loss, backward=L.multi_margin_loss_backward, grad_inputs=("input",),
    torch=_mm_torch,
    cases=_mm_cases,
    sizes=_label_sizes(lambda rng, shape, dtype: S.normal(rng, shape, dtype),
                       {"reduction": "mean"}),
    cost=_class_cost(4),
    smooth=_mm_off_kink,
    invariants=(Invariant("loss >= 0", _nonnegative),
                _reduction_invariant(L.multi_margin_loss,
                                    lambda case: float(case.inputs["target"].size)),
                Invariant("'sum' of an empty batch is 0", _mm_empty_is_zero)),
    invalid=_class_invalid("multi_margin_loss", with_ignore=False) + (
        _bad("p = 3", ValueError, r"\bp\b", input=np.zeros((2, 3)), target=np.array([0, 1]),
             p=3),
        _bad("a NaN margin", ValueError, "margin", input=np.zeros((2, 3)),
             target=np.array([0, 1]), margin=float("nan")),
        _bad("a 3-d input", ValueError, r"\binput\b", input=np.zeros((2, 3, 4)),
             target=np.zeros((2, 4), np.int64)),
    ),
))
