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
    # 1/(1 - p) and the product each rounded in float64, then once to the output dtype
    eps = float(np.finfo(outs[0].dtype).eps)
    assert np.all(np.abs(y[mask] - want[mask]) <= 2 * eps * np.abs(want[mask])), \
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


@st.composite
def _embedding_cases(draw, dtype):
    """Few rows, so indices repeat (the scatter-add); padding_idx none, positive or negative."""
    num, dim = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    rng = draw(S.seeds())
    indices = rng.integers(0, num, size=shape, dtype=np.int64)
    pad = draw(st.one_of(st.none(), st.integers(-num, num - 1)))
    return Case({"indices": indices, "weight": draw(small_floats(dtype, (num, dim)))},
                {"padding_idx": pad})


def _embedding_size(num, dim, shape):
    def build(dtype):
        rng = _rng()
        return Case({"indices": rng.integers(0, num, size=shape, dtype=np.int64),
                     "weight": S.normal(rng, (num, dim), dtype)}, {"padding_idx": 0})
    return build


def _counts_rows(case: Case, outs) -> None:
    """Backward of all-ones counts how often each row is looked up; the padding row gets 0."""
    idx, w = case.inputs["indices"], case.inputs["weight"]
    _, ctx = L.embedding(idx, w, case.params["padding_idx"])
    (dw,) = L.embedding_backward(ctx, np.ones(outs[0].shape, w.dtype))
    counts = np.bincount(idx.reshape(-1), minlength=w.shape[0]).astype(np.float64)
    pad = case.params["padding_idx"]
    if pad is not None:
        counts[pad % w.shape[0]] = 0
    assert np.array_equal(dw, np.repeat(counts[:, None], w.shape[1], axis=1)), \
        f"row gradients {dw[:, 0]} are not the lookup counts {counts}"


def _no_padding(case: Case) -> Case:
    """For the gradcheck: padding_idx freezes a row by convention (forward reads it, backward
    gives it zero), which is not a derivative; without it the gradcheck checks the scatter-add
    of every row. Parity with torch and the invariant above check the padding convention."""
    return Case(case.inputs, {**case.params, "padding_idx": None})


def _embedding_cost(case: Case) -> Cost:
    idx, w = case.inputs["indices"], case.inputs["weight"]
    return Cost(0.0, idx.nbytes + 2 * idx.size * w.shape[1] * w.itemsize)


register(Spec(
    name="embedding", family=FAMILY, summary="row lookup; padding_idx; scatter-add backward",
    forward=L.embedding, backward=L.embedding_backward, grad_inputs=("weight",),
    torch=lambda indices, weight, padding_idx: F.embedding(indices, weight, padding_idx),
    cases=_embedding_cases,
    sizes={"small": _embedding_size(100, 16, (8, 16)),
           "medium": _embedding_size(10000, 128, (32, 128)),
           "large": _embedding_size(50000, 256, (64, 512))},
    cost=_embedding_cost,
    smooth=_no_padding,
    invariants=(Invariant("backward of ones counts lookups", _counts_rows),),
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
    ),
))
