"""Specs of the non-spatial layers: dense (linear), dropout, channel dropout (1-d, 2-d),
embedding.

Optional inputs (the bias) are left out of some cases. Dropout masks are explicit inputs,
drawn with the library's own sampler; its keep rate is tested statistically in
suites/selftest/test_dropout_sampler.py. Dropout cases are in training mode or not
(evaluation mode: torch's own F.dropout* with training=False is the twin, the mask is left
out or given and unused).
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from hypothesis import strategies as st

from reference import layers as L
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import FAMILY, bilinear_tol, small_floats
from suites.catalog.spec import Case, Cost, Invalid, Invariant, Spec


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bad(description, inputs, error, match, **params) -> Invalid:
    return Invalid(description, lambda: Case(dict(inputs()), params), error, match)


# ---------------------------------------------------------------------------------------------
# linear


@st.composite
def _linear_cases(draw, dtype):
    """Any leading batch dims (none, empty, ones), in/out features from 1, bias or not."""
    lead = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    k, n = draw(st.integers(1, 9)), draw(st.integers(1, 7))
    inputs = {"x": draw(small_floats(dtype, lead + (k,))),
              "weight": draw(small_floats(dtype, (n, k)))}
    if draw(st.booleans()):
        inputs["bias"] = draw(small_floats(dtype, (n,)))
    return Case(inputs)


def _linear_size(m, k, n):
    def build(dtype):
        rng = _rng()
        return Case({"x": S.normal(rng, (m, k), dtype),
                     "weight": S.normal(rng, (n, k), dtype, 1 / math.sqrt(k)),
                     "bias": S.normal(rng, (n,), dtype)})
    return build


def _linear_cost(case: Case) -> Cost:
    x, w = case.inputs["x"], case.inputs["weight"]
    m = x.size // x.shape[-1]
    n, k = w.shape
    return Cost(flops=2.0 * m * k * n + m * n, bytes=(x.size + w.size + m * n + n) * x.itemsize)


def _linear_length(case: Case) -> int:
    # the longest sums: K (+1 for the bias) in y and dx's N, the batch M in dW and db
    x, w = case.inputs["x"], case.inputs["weight"]
    return max(w.shape[1] + 1, w.shape[0], x.size // x.shape[-1], 1)


def _bias_adds_b(case: Case, outs) -> None:
    if "bias" not in case.inputs:
        return
    y0, _ = L.linear(case.inputs["x"], case.inputs["weight"])
    y, b = outs[0].astype(np.float64), case.inputs["bias"].astype(np.float64)
    # y and y0 hold the same products; the bias adds one rounding of the output's dtype.
    eps = float(np.finfo(outs[0].dtype).eps)
    bound = eps * (np.abs(y) + np.abs(b)) + 1e-300
    assert np.all(np.abs(y - y0 - b) <= bound), "linear(x, W, b) - linear(x, W) != b"


register(Spec(
    name="linear", family=FAMILY, summary="dense layer y = x W^T + b over any leading dims",
    forward=L.linear, backward=L.linear_backward, grad_inputs=("x", "weight", "bias"),
    torch=F.linear,
    cases=_linear_cases,
    sizes={"small": _linear_size(16, 64, 32), "medium": _linear_size(256, 512, 512),
           "large": _linear_size(1024, 1024, 1024)},
    cost=_linear_cost,
    case_tol=bilinear_tol(L.linear, L.linear_backward, _linear_length),
    invariants=(Invariant("the bias adds b", _bias_adds_b),),
    invalid=(
        _bad("weight of the wrong in_features", lambda: {"x": np.ones((2, 3)),
             "weight": np.ones((4, 5))}, ValueError, "weight"),
        _bad("bias of the wrong length", lambda: {"x": np.ones((2, 3)), "weight": np.ones((4, 3)),
             "bias": np.ones(5)}, ValueError, "bias"),
        _bad("a 0-d x", lambda: {"x": np.array(1.0), "weight": np.ones((1, 1))}, ValueError,
             r"\bx\b"),
        _bad("weight in float32, x in float64", lambda: {"x": np.ones((2, 3)),
             "weight": np.ones((4, 3), np.float32)}, TypeError, "weight"),
    ),
))


# ---------------------------------------------------------------------------------------------
# dropout and dropout2d

# p = 0 (identity), the p -> 1 edge (scale 1000) and p = 1 (all dropped: 0 * x), and any p.
_P = st.one_of(st.sampled_from([0.0, 0.5, 0.999, 1.0]), st.floats(0.0, 1.0))


def _torch_dropout(x, mask=None, *, p, training=True):
    # torch's dropout with a given mask: x * mask / (1 - p); p = 1 gives x * 0, as F.dropout.
    # Evaluation mode is torch's own F.dropout (the identity), mask or not.
    if not training:
        return F.dropout(x, p, training=False)
    return x * 0 if p == 1 else x * mask / (1 - p)


def _torch_dropout1d(x, mask=None, *, p, training=True):
    if not training:
        return F.dropout1d(x, p, training=False)
    return x * 0 if p == 1 else x * mask[..., None] / (1 - p)


def _torch_dropout2d(x, mask=None, *, p, training=True):
    if not training:
        return F.dropout2d(x, p, training=False)
    return x * 0 if p == 1 else x * mask[:, :, None, None] / (1 - p)


@st.composite
def _mask_and_mode(draw, mask_shape, p):
    """Inputs after x and the params: training (3 in 4) with a drawn mask, or evaluation mode
    with the mask left out or given (checked, unused)."""
    training = draw(st.sampled_from([True, True, True, False]))
    params = {"p": p, "training": training}
    if not training and draw(st.booleans()):
        return {}, params
    return {"mask": L.dropout_mask(draw(S.seeds()), mask_shape, p)}, params


@st.composite
def _dropout_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    rest, params = draw(_mask_and_mode(shape, draw(_P)))
    return Case({"x": draw(small_floats(dtype, shape, -1e3, 1e3)), **rest}, params)


@st.composite
def _dropout1d_cases(draw, dtype):
    """(C, L) with a (C,) mask or (N, C, L) with (N, C); sides from 0."""
    shape = draw(S.shapes(min_dims=2, max_dims=3, min_side=0, max_side=6))
    rest, params = draw(_mask_and_mode(shape[:-1], draw(_P)))
    return Case({"x": draw(small_floats(dtype, shape, -1e3, 1e3)), **rest}, params)


@st.composite
def _dropout2d_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=4, max_dims=4, min_side=1, max_side=5))
    rest, params = draw(_mask_and_mode(shape[:2], draw(_P)))
    return Case({"x": draw(small_floats(dtype, shape, -1e3, 1e3)), **rest}, params)


def _dropout_size(shape, mask_dims: int):
    """``mask_dims``: how many leading axes of x the mask has (x.ndim for plain dropout)."""
    def build(dtype):
        rng = _rng()
        mask = L.dropout_mask(rng, shape[:mask_dims], 0.5)
        return Case({"x": S.normal(rng, shape, dtype), "mask": mask},
                    {"p": 0.5, "training": True})
    return build


def _kept_scaled(case: Case, outs) -> None:
    x, p = case.inputs["x"], case.params["p"]
    y = outs[0].astype(np.float64)
    if not case.params.get("training", True):
        assert np.array_equal(outs[0], x, equal_nan=True), "training=False is not the identity"
        return
    mask = case.inputs["mask"]
    mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
    if p == 1:
        assert np.all(y == 0), "p = 1 must drop everything"
        return
    want = x.astype(np.float64) / (1 - p)
    # 1/(1 - p) and the product each rounded in float64, then once to the output dtype: a
    # relative error below 2 eps for a normal result; a subnormal one is rounded to a multiple
    # of the smallest subnormal, an absolute error up to half of it.
    eps = float(np.finfo(outs[0].dtype).eps)
    tiny = float(np.finfo(outs[0].dtype).smallest_subnormal)
    assert np.all(np.abs(y[mask] - want[mask]) <= 2 * eps * np.abs(want[mask]) + tiny), \
        "kept elements are not x / (1 - p)"
    assert np.all(y[~mask] == 0), "dropped elements are not 0"


def _eval_backward_is_identity(forward, backward):
    """training=False: backward returns the upstream gradient itself (values), for any p."""

    def check(case: Case, outs) -> None:
        x = case.inputs["x"]
        _, ctx = forward(x, None, p=case.params["p"], training=False)
        g = np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype)
        (dx,) = backward(ctx, g)
        assert np.array_equal(dx, g), "the backward of training=False is not the identity"

    return Invariant("training=False: backward is the identity", check)


def _dropout_invalid(name: str):
    def x():
        return {"dropout": np.ones((2, 3)), "dropout1d": np.ones((2, 3, 5)),
                "dropout2d": np.ones((2, 3, 2, 2))}[name]

    def good():
        return np.ones((2, 3), bool)

    return (
        _bad("a float mask", lambda: {"x": x(), "mask": good().astype(np.float64)}, TypeError,
             "mask", p=0.5),
        _bad("a mask of the wrong shape", lambda: {"x": x(), "mask": np.ones((3, 2), bool)},
             ValueError, "mask", p=0.5),
        _bad("p > 1", lambda: {"x": x(), "mask": good()}, ValueError, r"\bp\b", p=1.5),
        _bad("p NaN", lambda: {"x": x(), "mask": good()}, ValueError, r"\bp\b", p=float("nan")),
        _bad("no mask while training", lambda: {"x": x()}, TypeError, "mask", p=0.5),
        _bad("training not a bool", lambda: {"x": x(), "mask": good()}, TypeError, "training",
             p=0.5, training="no"),
        _bad("p > 1 in evaluation mode (torch checks it too)", lambda: {"x": x()}, ValueError,
             r"\bp\b", p=1.5, training=False),
    )


register(Spec(
    name="dropout", family=FAMILY,
    summary="inverted dropout with an explicit mask; training=False is the identity",
    forward=L.dropout, backward=L.dropout_backward, grad_inputs=("x",),
    torch=_torch_dropout,
    cases=_dropout_cases,
    sizes={"small": _dropout_size((64,), 1), "medium": _dropout_size((256, 256), 2),
           "large": _dropout_size((2048, 2048), 2)},
    cost=lambda case: Cost(case.inputs["x"].size,
                           case.inputs["x"].size * (2 * case.inputs["x"].itemsize + 1)),
    invariants=(Invariant("kept = x / (1 - p), dropped = 0", _kept_scaled),
                _eval_backward_is_identity(L.dropout, L.dropout_backward)),
    invalid=_dropout_invalid("dropout"),
))

register(Spec(
    name="dropout1d", family=FAMILY,
    summary="channel dropout of (N, C, L) or (C, L), explicit mask; training=False",
    forward=L.dropout1d, backward=L.dropout1d_backward, grad_inputs=("x",),
    torch=_torch_dropout1d,
    cases=_dropout1d_cases,
    sizes={"small": _dropout_size((4, 16, 64), 2),
           "medium": _dropout_size((16, 64, 256), 2),
           "large": _dropout_size((32, 256, 1024), 2)},
    cost=lambda case: Cost(case.inputs["x"].size, 2 * case.inputs["x"].nbytes),
    invariants=(Invariant("kept = x / (1 - p), dropped = 0", _kept_scaled),
                _eval_backward_is_identity(L.dropout1d, L.dropout1d_backward)),
    invalid=_dropout_invalid("dropout1d") + (
        _bad("a 4-d x", lambda: {"x": np.ones((2, 3, 4, 5)), "mask": np.ones((2, 3), bool)},
             ValueError, r"\bx\b", p=0.5),
        _bad("a (C, L) x with an (N, C) mask", lambda: {"x": np.ones((3, 4)),
             "mask": np.ones((2, 3), bool)}, ValueError, "mask", p=0.5),
    ),
))

register(Spec(
    name="dropout2d", family=FAMILY,
    summary="channel dropout of (N, C, H, W), explicit mask; training=False",
    forward=L.dropout2d, backward=L.dropout2d_backward, grad_inputs=("x",),
    torch=_torch_dropout2d,
    cases=_dropout2d_cases,
    sizes={"small": _dropout_size((4, 8, 8, 8), 2),
           "medium": _dropout_size((8, 32, 32, 32), 2),
           "large": _dropout_size((16, 64, 64, 64), 2)},
    cost=lambda case: Cost(case.inputs["x"].size, 2 * case.inputs["x"].nbytes),
    invariants=(Invariant("kept = x / (1 - p), dropped = 0", _kept_scaled),
                _eval_backward_is_identity(L.dropout2d, L.dropout2d_backward)),
    invalid=_dropout_invalid("dropout2d") + (
        _bad("a 3-d x", lambda: {"x": np.ones((2, 3, 4)), "mask": np.ones((2, 3), bool)},
             ValueError, r"\bx\b", p=0.5),
    ),
))


# ---------------------------------------------------------------------------------------------
# embedding


_NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]


def _clear_of_boundary(idx, w, max_norm: float, norm_type: float) -> float:
    """``max_norm``, raised by half until no referenced row's norm lies within 1e-4 of it
    (relative): at norm = max_norm the rescaling switches on, and torch's float32 norm and
    ours in float64 may fall on either side there (a measure-zero edge of the convention)."""
    rows = w[np.unique(idx)].astype(np.float64)
    if rows.size == 0:
        return max_norm
    if norm_type == math.inf:
        norms = np.abs(rows).max(axis=1)
    else:
        norms = (np.abs(rows) ** norm_type).sum(axis=1) ** (1 / norm_type)
    while np.any(np.abs(norms - max_norm) <= 1e-4 * max_norm):
        max_norm *= 1.5
    return max_norm


@st.composite
def _embedding_cases(draw, dtype):
    """Few rows, so indices repeat (the scatter-add, and counts > 1 for scale_grad_by_freq);
    padding_idx none, positive or negative; max_norm left out or set below, near or above the
    rows' norms, with any norm_type (2, 1, inf, 3, 0.5)."""
    num, dim = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    rng = draw(S.seeds())
    indices = rng.integers(0, num, size=shape, dtype=np.int64)
    pad = draw(st.one_of(st.none(), st.integers(-num, num - 1)))
    w = draw(small_floats(dtype, (num, dim)))
    params = {"padding_idx": pad}
    if draw(st.booleans()):
        norm_type = draw(st.sampled_from(_NORM_TYPES))
        max_norm = draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]) | st.floats(0.01, 10.0))
        params |= {"max_norm": _clear_of_boundary(indices, w, max_norm, norm_type),
                   "norm_type": norm_type}
    if draw(st.booleans()):
        params["scale_grad_by_freq"] = draw(st.booleans())
    return Case({"indices": indices, "weight": w}, params)


def _embedding_size(num, dim, shape, **extra):
    def build(dtype):
        rng = _rng()
        return Case({"indices": rng.integers(0, num, size=shape, dtype=np.int64),
                     "weight": S.normal(rng, (num, dim), dtype)}, {"padding_idx": 0, **extra})
    return build


def _torch_embedding(indices, weight, padding_idx=None, max_norm=None, norm_type=2.0,
                     scale_grad_by_freq=False):
    """F.embedding; with max_norm also the weight it renormalised in place, as the
    reference's second output."""
    y = F.embedding(indices, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)
    return y if max_norm is None else (y, weight.detach().clone())


def _counts_rows(case: Case, outs) -> None:
    """Backward of all-ones counts how often each row is looked up (1 for each looked-up row
    with scale_grad_by_freq); the padding row gets 0."""
    idx, w = case.inputs["indices"], case.inputs["weight"]
    _, ctx = L.embedding(idx, w, **case.params)
    (dw,) = L.embedding_backward(ctx, np.ones(outs[0].shape, w.dtype))
    counts = np.bincount(idx.reshape(-1), minlength=w.shape[0]).astype(np.float64)
    if case.params.get("scale_grad_by_freq"):
        counts = (counts > 0).astype(np.float64)
    pad = case.params["padding_idx"]
    if pad is not None:
        counts[pad % w.shape[0]] = 0
    assert np.array_equal(dw, np.repeat(counts[:, None], w.shape[1], axis=1)), \
        f"row gradients {dw[:, 0]} are not the lookup counts {counts}"


def _renormalised(case: Case, outs) -> None:
    """With max_norm: the input table is untouched; rows looked up have norm <= max_norm
    (up to rounding), the others are the input's; the lookup reads the new table."""
    if case.params.get("max_norm") is None:
        assert len(outs) == 1, "a second output without max_norm"
        return
    idx, w = case.inputs["indices"], case.inputs["weight"]
    y, table = outs
    mn, nt = case.params["max_norm"], case.params["norm_type"]
    used = np.zeros(w.shape[0], bool)
    used[idx.reshape(-1)] = True
    assert np.array_equal(table[~used], w[~used]), "a row nobody looked up was changed"
    rows = table[used].astype(np.float64)
    norms = (np.abs(rows).max(axis=1) if nt == math.inf
             else (np.abs(rows) ** nt).sum(axis=1) ** (1 / nt))
    # each entry rounded once to the dtype: the norm moves by at most eps relative
    eps = float(np.finfo(w.dtype).eps)
    assert np.all(norms <= mn * (1 + 2 * eps)), f"row norms {norms} above max_norm {mn}"
    assert np.array_equal(y, table[idx]), "the lookup does not read the renormalised table"


def _conventions_off(case: Case) -> Case:
    """For the gradcheck: padding_idx freezes a row and scale_grad_by_freq rescales its
    gradient by convention, and max_norm's rescaling is not differentiated (as torch): none is
    a derivative of the forward. Without them the gradcheck checks the scatter-add of every
    row; parity with torch and the invariants above check the conventions."""
    params = {**case.params, "padding_idx": None}
    for name in ("max_norm", "norm_type", "scale_grad_by_freq"):
        params.pop(name, None)
    return Case(case.inputs, params)


def _embedding_cost(case: Case) -> Cost:
    idx, w = case.inputs["indices"], case.inputs["weight"]
    return Cost(0.0, idx.nbytes + 2 * idx.size * w.shape[1] * w.itemsize)


register(Spec(
    name="embedding", family=FAMILY,
    summary="row lookup; padding_idx, max_norm (returns the new table), scale_grad_by_freq",
    forward=L.embedding, backward=L.embedding_backward, grad_inputs=("weight",),
    torch=_torch_embedding,
    cases=_embedding_cases,
    # The small size (the battery's) sets every option, so the battery probes each; the
    # larger ones time the plain lookup (max_norm adds a copy of the whole table).
    sizes={"small": _embedding_size(100, 16, (8, 16), max_norm=4.0, norm_type=2.0,
                                    scale_grad_by_freq=True),
           "medium": _embedding_size(10000, 128, (32, 128)),
           "large": _embedding_size(50000, 256, (64, 512))},
    cost=_embedding_cost,
    smooth=_conventions_off,
    invariants=(Invariant("backward of ones counts lookups", _counts_rows),
                Invariant("max_norm renormalises the rows looked up", _renormalised)),
    invalid=(
        _bad("an index out of range", lambda: {"indices": np.array([0, 4]),
             "weight": np.ones((4, 2))}, ValueError, "indices", padding_idx=None),
        _bad("a negative index", lambda: {"indices": np.array([-1, 0]),
             "weight": np.ones((4, 2))}, ValueError, "indices", padding_idx=None),
        _bad("float indices", lambda: {"indices": np.array([0.0, 1.0]),
             "weight": np.ones((4, 2))}, TypeError, "indices", padding_idx=None),
        _bad("padding_idx out of range", lambda: {"indices": np.array([0, 1]),
             "weight": np.ones((4, 2))}, ValueError, "padding_idx", padding_idx=4),
        _bad("a 1-d weight", lambda: {"indices": np.array([0, 1]), "weight": np.ones(4)},
             ValueError, "weight", padding_idx=None),
        _bad("max_norm 0", lambda: {"indices": np.array([0, 1]), "weight": np.ones((4, 2))},
             ValueError, "max_norm", max_norm=0.0),
        _bad("a negative norm_type", lambda: {"indices": np.array([0, 1]),
             "weight": np.ones((4, 2))}, ValueError, "norm_type", max_norm=1.0, norm_type=-2.0),
        _bad("scale_grad_by_freq not a bool", lambda: {"indices": np.array([0, 1]),
             "weight": np.ones((4, 2))}, TypeError, "scale_grad_by_freq",
             scale_grad_by_freq="yes"),
    ),
))
