"""Classification losses: cross-entropy (integer labels or class probabilities), negative
log-likelihood and the multi-class margin loss, forward and hand-written backward.

The conventions (``reduction``, float64 sums, contexts, private copies) are those of
``reference.losses``, which re-exports every public name here.

Cross-entropy takes either kind of target PyTorch's ``F.cross_entropy`` takes: integer class
labels (shape of the input without its class axis), or class probabilities (a float array of
the input's shape, "soft labels"). The kind is the target's dtype. With probabilities the target
is differentiable too. ``cross_entropy_backward`` always returns ``(d_input, d_target)``, with
``d_target = None`` after integer labels (PyTorch gives no gradient for them): one fixed arity
per function, ``None`` where an input is not differentiable in this call, as ``linear``'s
``db`` without a bias and ``scaled_dot_product_attention``'s ``d attn_mask`` for a bool mask.

``nll_loss`` takes integer labels only: PyTorch 2.13 refuses probability targets for it
("multi-target not supported"), so there is nothing to mirror, and a float target is refused
here with a TypeError naming ``target``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference import _vmath as vm
from reference._jit import PARALLEL_MIN, inline, kernel
from reference._loss_common import _class_weight, _own, _reduced, _reduction, _upstream

__all__ = [
    "cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward",
    "multi_margin_loss", "multi_margin_loss_backward",
]


# ---------------------------------------------------------------------------------------------
# classification losses over integer labels: shapes and labels
#
# Inputs are (C,) with a 0-d target (one sample), (N, C) with target (N,), or, for
# cross_entropy and nll_loss, (N, C, d1, ...) with target (N, d1, ...).


def _class_input(input, name: str, max_ndim: int | None):
    x = v.float_array(input, "input", min_ndim=1)
    if max_ndim is not None and x.ndim > max_ndim:
        raise ValueError(f"input must be 1- or 2-dimensional ((C,) or (N, C)) for {name}, "
                         f"got shape {x.shape}")
    if x.shape[0 if x.ndim == 1 else 1] == 0:
        raise ValueError(f"input must have at least one class, got shape {x.shape}")
    return x


def _class_target(target, x: np.ndarray) -> np.ndarray:
    """Check the labels' shape against the input's; return them flat, int64."""
    if isinstance(target, np.integer):  # what indexing a label array returns: a 0-d label
        target = np.asarray(target)
    y = v.int_array(target, "target")
    want = _out_shape(x)
    if target.shape != want:
        raise ValueError(f"target must have shape {want} (the input's {x.shape} without its "
                         f"class axis), got {target.shape}")
    return y if y.ndim == 1 else y.reshape(-1)


_INT64 = np.dtype(np.int64)


def _class_args(input, target, weight, name: str, max_ndim: int | None = None):
    """Validated (x, y, n_classes, w, has_w) for a classification loss.

    The common call, C-contiguous (N, C) floats with (N,) int64 labels, is recognised first:
    at 64 x 10 the checks are most of the call's time.
    """
    if (type(input) is np.ndarray and type(target) is np.ndarray and input.ndim == 2
            and input.dtype in v.FLOAT_DTYPES and input.flags.c_contiguous
            and input.shape[1] > 0 and target.dtype == _INT64 and target.ndim == 1
            and target.shape[0] == input.shape[0] and target.flags.c_contiguous):
        x, y = input, target
    else:
        x = _class_input(input, name, max_ndim)
        y = _class_target(target, x)
    n_classes = x.shape[0 if x.ndim == 1 else 1]
    w, has_w = _class_weight(weight, n_classes, x.dtype)
    return x, y, n_classes, w, has_w


def _int_param(value, name: str) -> int:
    return value if type(value) is int else v.integer(value, name)


def _bad_label(y: np.ndarray, n_classes: int, ignore_index: int | None) -> None:
    """Raise for the labels a kernel counted as out of range (it skipped them)."""
    v.labels(y, "target", n_classes, ignore_index=ignore_index)
    raise ValueError(f"target has labels outside [0, {n_classes})")  # not reached


def _out_shape(x: np.ndarray) -> tuple[int, ...]:
    return () if x.ndim == 1 else x.shape[:1] + x.shape[2:]


# ---------------------------------------------------------------------------------------------
# cross-entropy from logits
#
# Rows: the input is viewed as (R, C), one row of class logits per sample (an (N, C, d...)
# input is moved to (N * d..., C) first, one copy). Forward keeps logsumexp per row, so the
# backward recomputes softmax with one exp per element and nothing of size (R, C) is saved.


class ClassCtx(NamedTuple):
    x: np.ndarray  # (R, C) logits or log-probabilities, or (N, C, K) for nll_loss
    y: np.ndarray  # (R,) labels
    w: np.ndarray  # (C,) class weights or a placeholder
    has_w: bool
    ignore_index: int
    reduction: str
    out: np.ndarray
    denom: float  # the 'mean' denominator: the sum of the weights of non-ignored targets
    shape: tuple[int, ...]  # the input's shape
    lse: np.ndarray | None = None  # (R, 2): max and log-sum-exp(x - max) per row (cross_entropy)
    smoothing: float = 0.0
    margin: float = 0.0
    p: int = 1


CrossEntropyCtx = v.ctx_type(ClassCtx, "CrossEntropyCtx", "cross_entropy")
NLLCtx = v.ctx_type(ClassCtx, "NLLCtx", "nll_loss")
MultiMarginCtx = v.ctx_type(ClassCtx, "MultiMarginCtx", "multi_margin_loss")


# Rows are processed in blocks of _CE_BLOCK, each with one scratch row: the exps of a row go
# there in a loop that vectorises (vm.exp is branch-free arithmetic), then vm.fsum adds them in
# float64 (its own reduce=True kernel: a kernel that inlines vm.exp must not carry reassoc).
# float32 logits take float32 lanes (twice as many per register) for the max and the exps, as
# the float32 softmax rows do: e^(x - m) 2^64 by vm.exp_f32_scaled (<= 0.9 ulp), x - m rounded
# to float32; the error this adds to log-sum-exp is bounded in the catalog's invariant
# "float32 rows within the derived bound". float64 logits keep the float64 exp.
_CE_BLOCK = 16
_TWO_M64 = 2.0**-64
_NO_ROWS = {np.dtype(np.float32): np.empty((0, 0), np.float32),  # xs when nothing is kept
            np.dtype(np.float64): np.empty((0, 0), np.float64)}


@inline()
def _row_max_lse(x, r, buf, buf32, single, xs, keep):
    # (m, log sum_c e^(x_c - m)) of row r; buf (float64) or buf32 (float32) is the scratch.
    # keep: copy the row into xs, the ctx's private copy (cheaper here, from L1, than a copy
    # of the whole input apart).
    n_classes = x.shape[1]
    xr = x[r]  # the row as a 1-d view: indices from range(C) need no wraparound test
    if keep:
        xsr = xs[r]
        for c in range(n_classes):
            xsr[c] = xr[c]
    if single:
        m32 = xr[0]
        for c in range(n_classes):
            m32 = vm.maxnum(m32, xr[c])  # ignores NaN; a NaN logit still gives NaN below
        for c in range(n_classes):
            buf32[c] = vm.exp_f32_scaled(xr[c] - m32)
        return np.float64(m32), math.log(vm.fsum(buf32[:n_classes]) * _TWO_M64)
    m = -np.inf
    for c in range(n_classes):
        m = vm.maxnum(m, np.float64(xr[c]))
    for c in range(n_classes):
        buf[c] = vm.exp(np.float64(xr[c]) - m, x.dtype)
    return m, math.log(vm.fsum(buf[:n_classes]))


@inline()
def _ce_row(x, y, w, has_w, wsum, ignore, eps, rowloss, lse, buf, buf32, single, xs, keep,
            r):
    # Returns (loss of row r, its weight in the mean's denominator, 1 if its label is bad).
    n_classes = x.shape[1]
    yr = y[r]
    if yr == ignore:
        rowloss[r] = 0.0
        lse[r, 0] = 0.0
        lse[r, 1] = 0.0
        return 0.0, 0.0, 0
    if yr < 0 or yr >= n_classes:
        rowloss[r] = 0.0
        return 0.0, 0.0, 1
    xr = x[r]
    m, ls = _row_max_lse(x, r, buf, buf32, single, xs, keep)
    lse[r, 0] = m  # kept apart: x - (m + ls) would round m + ls to an ulp of m (1e-12 at 1e4)
    lse[r, 1] = ls
    wy = np.float64(w[yr]) if has_w else 1.0
    loss = (1.0 - eps) * wy * ((m - np.float64(xr[yr])) + ls)
    if eps != 0.0:
        # sum_c w_c (m - x_c): every term >= 0, no cancellation
        for c in range(n_classes):
            buf[c] = (np.float64(w[c]) if has_w else 1.0) * (m - np.float64(xr[c]))
        loss += eps / n_classes * (wsum * ls + vm.fsum(buf))
    rowloss[r] = loss
    return loss, wy, 0


@kernel()
def _ce_block(x, y, w, has_w, wsum, ignore, eps, rowloss, lse, xs, keep, r0, r1):
    single = x.itemsize == 4
    buf = np.empty(x.shape[1])  # float64 scratch (also label smoothing's, for float32 rows)
    buf32 = np.empty(x.shape[1] if single else 0, np.float32)
    total = 0.0
    denom = 0.0
    bad = 0
    for r in range(r0, r1):
        lr, dr, br = _ce_row(x, y, w, has_w, wsum, ignore, eps, rowloss, lse, buf, buf32,
                             single, xs, keep, r)
        total += lr
        denom += dr
        bad += br
    return total, denom, bad


@inline()
def _class_weight_sum(w, has_w, n_classes):
    if not has_w:
        return np.float64(n_classes)
    wsum = 0.0
    for c in range(n_classes):
        wsum += np.float64(w[c])
    return wsum


@kernel(parallel=True)
def _ce_fwd(x, y, w, has_w, ignore, eps, rowloss, lse, xs, keep):
    rows, n_classes = x.shape
    wsum = _class_weight_sum(w, has_w, n_classes)
    if x.size < PARALLEL_MIN:
        return _ce_block(x, y, w, has_w, wsum, ignore, eps, rowloss, lse, xs, keep, 0, rows)
    total = 0.0
    denom = 0.0
    bad = 0
    for b in prange((rows + _CE_BLOCK - 1) // _CE_BLOCK):
        lr, dr, br = _ce_block(x, y, w, has_w, wsum, ignore, eps, rowloss, lse, xs, keep,
                               b * _CE_BLOCK, min(rows, (b + 1) * _CE_BLOCK))
        total += lr
        denom += dr
        bad += br
    return total, denom, bad


@inline()
def _ce_bwd_row(x, y, w, has_w, wsum, ignore, eps, lse, gr, dx, r):
    # dx_c = gr (A p_c - B w_c - [c = y] (1 - eps) w_y),
    # A = (1 - eps) w_y + eps W / C, B = eps / C, p = softmax(x_r), W = sum_c w_c.
    n_classes = x.shape[1]
    yr = y[r]
    if yr == ignore:
        for c in range(n_classes):
            dx[r, c] = 0.0
        return
    wy = np.float64(w[yr]) if has_w else 1.0
    a = (1.0 - eps) * wy + eps * wsum / n_classes
    b = eps / n_classes
    m, ls = lse[r, 0], lse[r, 1]
    xr, dr = x[r], dx[r]  # 1-d views: indices from range(C) need no wraparound test
    if has_w:
        for c in range(n_classes):
            p = vm.exp((np.float64(xr[c]) - m) - ls, x.dtype)
            dr[c] = gr * (a * p - b * np.float64(w[c]))
    else:
        for c in range(n_classes):
            p = vm.exp((np.float64(xr[c]) - m) - ls, x.dtype)
            dr[c] = gr * (a * p - b)
    # The label's entry as (1 - eps) w_y (p_y - 1) + (eps / C)(W p_y - w_y), with p_y - 1 by
    # expm1: the form above would cancel 1 against 1 and lose an eps-sized remainder.
    d = (np.float64(xr[yr]) - m) - ls
    dr[yr] = gr * ((1.0 - eps) * wy * math.expm1(d) + b * (wsum * math.exp(d) - wy))


@kernel(parallel=True)
def _ce_bwd(x, y, w, has_w, ignore, eps, lse, g, c, each, dx):
    rows, n_classes = x.shape
    wsum = _class_weight_sum(w, has_w, n_classes)
    if x.size < PARALLEL_MIN:
        for r in range(rows):
            gr = np.float64(g[r]) * c if each else c
            _ce_bwd_row(x, y, w, has_w, wsum, ignore, eps, lse, gr, dx, r)
    else:
        for r in prange(rows):
            gr = np.float64(g[r]) * c if each else c
            _ce_bwd_row(x, y, w, has_w, wsum, ignore, eps, lse, gr, dx, r)


def _rows(x: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C); (N, C) stays; (N, C, d...) -> (N * d..., C) (a copy)."""
    if x.ndim == 1:
        return x.reshape(1, x.shape[0])
    if x.ndim == 2:
        return x
    n, c, k = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    return np.ascontiguousarray(np.moveaxis(x.reshape(n, c, k), 1, 2)).reshape(n * k, c)


def _unrows(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) <= 2:
        return d.reshape(shape)
    n, c, k = shape[0], shape[1], math.prod(shape[2:])
    return np.ascontiguousarray(np.moveaxis(d.reshape(n, k, c), 2, 1)).reshape(shape)


# Class-probability targets ("soft labels"): the target is (R, C) like the logits. Forward
# keeps (max, log-sum-exp) per row as for labels; backward recomputes log p_c from them.


class ProbsCtx(NamedTuple):
    x: np.ndarray  # (R, C) logits
    t: np.ndarray  # (R, C) class probabilities
    w: np.ndarray  # (C,) class weights or a placeholder
    has_w: bool
    reduction: str
    out: np.ndarray
    denom: float  # the 'mean' denominator: R, the number of samples
    shape: tuple[int, ...]
    lse: np.ndarray  # (R, 2)
    smoothing: float


CrossEntropyProbsCtx = v.ctx_type(ProbsCtx, "CrossEntropyProbsCtx", "cross_entropy")


@inline()
def _cep_row(x, t, w, has_w, eps, rowloss, lse, buf, r):
    n_classes = x.shape[1]
    xr, tr = x[r], t[r]
    m = -np.inf
    for c in range(n_classes):
        m = vm.maxnum(m, np.float64(xr[c]))
    for c in range(n_classes):
        buf[c] = vm.exp(np.float64(xr[c]) - m, x.dtype)
    ls = math.log(vm.fsum(buf))
    lse[r, 0] = m
    lse[r, 1] = ls
    u = eps / n_classes
    for c in range(n_classes):
        tc = (1.0 - eps) * np.float64(tr[c]) + u
        wc = np.float64(w[c]) if has_w else 1.0
        buf[c] = wc * tc * ((m - np.float64(xr[c])) + ls)  # -log p_c = (m - x_c) + ls >= 0
    loss = vm.fsum(buf)
    rowloss[r] = loss
    return loss


@kernel()
def _cep_block(x, t, w, has_w, eps, rowloss, lse, r0, r1):
    buf = np.empty(x.shape[1])
    total = 0.0
    for r in range(r0, r1):
        total += _cep_row(x, t, w, has_w, eps, rowloss, lse, buf, r)
    return total


@kernel(parallel=True)
def _cep_fwd(x, t, w, has_w, eps, rowloss, lse):
    rows = x.shape[0]
    if x.size < PARALLEL_MIN:
        return _cep_block(x, t, w, has_w, eps, rowloss, lse, 0, rows)
    total = 0.0
    for b in prange((rows + _CE_BLOCK - 1) // _CE_BLOCK):
        total += _cep_block(x, t, w, has_w, eps, rowloss, lse, b * _CE_BLOCK,
                            min(rows, (b + 1) * _CE_BLOCK))
    return total


@inline()
def _cep_bwd_row(x, t, w, has_w, eps, lse, gr, dx, dt, buf, r):
    # With a_c = w_c t'_c and S = sum_c a_c:  dx_c = gr (S p_c - a_c), written as
    # gr (p_c (S - a_c) + a_c (p_c - 1)) with p_c - 1 by expm1, so that a one-hot target loses
    # nothing where p_c is near 1 (S - a_c is then exactly 0). dt_c = gr (1 - eps) w_c (-log p_c).
    n_classes = x.shape[1]
    xr, tr, dxr, dtr = x[r], t[r], dx[r], dt[r]
    u = eps / n_classes
    for c in range(n_classes):
        buf[c] = (np.float64(w[c]) if has_w else 1.0) * ((1.0 - eps) * np.float64(tr[c]) + u)
    s = vm.fsum(buf)
    m, ls = lse[r, 0], lse[r, 1]
    for c in range(n_classes):
        d = (np.float64(xr[c]) - m) - ls  # log p_c
        a = buf[c]
        dxr[c] = gr * (vm.exp(d, x.dtype) * (s - a) + a * vm.expm1(d, x.dtype))
        dtr[c] = gr * (1.0 - eps) * (np.float64(w[c]) if has_w else 1.0) * -d


@kernel()
def _cep_bwd_block(x, t, w, has_w, eps, lse, g, c, each, dx, dt, r0, r1):
    buf = np.empty(x.shape[1])
    for r in range(r0, r1):
        gr = np.float64(g[r]) * c if each else c
        _cep_bwd_row(x, t, w, has_w, eps, lse, gr, dx, dt, buf, r)


@kernel(parallel=True)
def _cep_bwd(x, t, w, has_w, eps, lse, g, c, each, dx, dt):
    rows = x.shape[0]
    if x.size < PARALLEL_MIN:
        _cep_bwd_block(x, t, w, has_w, eps, lse, g, c, each, dx, dt, 0, rows)
    else:
        for b in prange((rows + _CE_BLOCK - 1) // _CE_BLOCK):
            _cep_bwd_block(x, t, w, has_w, eps, lse, g, c, each, dx, dt, b * _CE_BLOCK,
                           min(rows, (b + 1) * _CE_BLOCK))


def _probs_args(input, target, weight, ignore_index):
    """Validated (x, t, w, has_w) for cross-entropy with class-probability targets."""
    x = _class_input(input, "cross_entropy", None)
    t = v.float_array(target, "target", dtype=x.dtype)
    if t.shape != x.shape:
        raise ValueError(f"target of class probabilities (a float target) must have the "
                         f"input's shape {x.shape}, got {t.shape}; integer class labels have "
                         f"the shape {_out_shape(x)}")
    ignore = _int_param(ignore_index, "ignore_index")
    if ignore >= 0:
        raise ValueError(f"ignore_index must be negative (unused) with class-probability "
                         f"targets, as in PyTorch, got {ignore}")
    w, has_w = _class_weight(weight, x.shape[0 if x.ndim == 1 else 1], x.dtype)
    return x, t, w, has_w


def _cross_entropy_probs(input, target, weight, ignore_index, reduction, eps):
    x, t, w, has_w = _probs_args(input, target, weight, ignore_index)
    rows = math.prod(_out_shape(x))
    r = _reduction(reduction, rows)
    xr, tr = _rows(x), _rows(t)
    rowloss = np.empty(rows)
    lse = np.empty((rows, 2))
    total = _cep_fwd(xr, tr, w, has_w, eps, rowloss, lse)
    if r == "none":
        out = rowloss.astype(x.dtype).reshape(_out_shape(x))
    else:
        out = _reduced(total, rows, r, x.dtype)
    return out, CrossEntropyProbsCtx(_own(xr, input), _own(tr, target), _own(w, weight), has_w,
                                     r, out, float(rows), x.shape, lse, eps)


def cross_entropy(input: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, *,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0):
    r"""Cross-entropy of logits against integer class labels or class probabilities, as
    ``F.cross_entropy``.

    With :math:`\log p_{ic} = x_{ic} - \operatorname{logsumexp}_c x_{ic}` (max-shifted, so
    logits of magnitude 1e4 stay finite), class weights :math:`w` (ones when absent), label
    smoothing :math:`\varepsilon` and :math:`C` classes. With integer labels, float32 logits
    take the max and the exps in float32 lanes (``vm.exp_f32_scaled``; sums, logs and the
    rest in float64): log-sum-exp is then off by at most :math:`\sum_c p_c (0.9 \cdot 2^{-23}
    + |x_c - m| 2^{-24})` before the final rounding (derived and checked in the catalog).

    **Integer labels** :math:`y`, for every sample whose label is not ``ignore_index``:

    .. math::
        \ell_i = -(1 - \varepsilon)\, w_{y_i} \log p_{i y_i}
                 - \frac{\varepsilon}{C} \sum_c w_c \log p_{ic}

        \partial x_{ic} = g_i \left(\left((1 - \varepsilon) w_{y_i} + \frac{\varepsilon}{C}
            \textstyle\sum_k w_k\right) p_{ic} - \frac{\varepsilon}{C} w_c
            - (1 - \varepsilon) w_{y_i} [c = y_i]\right)

    Ignored samples have loss and gradient 0. 'mean' divides by :math:`\sum_i w_{y_i}` over the
    non-ignored samples (both terms, as PyTorch); if every target is ignored that is 0/0 = NaN
    (the gradient is then 0, as PyTorch's). Shapes: input (C,), (N, C) or (N, C, d1, ...);
    target (), (N,) or (N, d1, ...), int; weight (C,), not differentiated. Labels outside
    [0, C) other than ``ignore_index`` raise. Backward returns ``(d_input, None)``: labels are
    not differentiable (as in PyTorch).

    **Class probabilities** :math:`t` (a float target of the input's shape and dtype; any
    real values are taken, as PyTorch takes them, rows need not sum to 1), smoothed to
    :math:`t'_{ic} = (1 - \varepsilon) t_{ic} + \varepsilon / C`, with
    :math:`a_{ic} = w_c t'_{ic}` and :math:`S_i = \sum_c a_{ic}`:

    .. math::
        \ell_i = -\sum_c w_c\, t'_{ic} \log p_{ic}, \qquad
        \partial x_{ic} = g_i \left(S_i\, p_{ic} - a_{ic}\right), \qquad
        \partial t_{ic} = -g_i (1 - \varepsilon)\, w_c \log p_{ic}

    'mean' divides by the number of samples (N d1 ..., not by weights, as PyTorch).
    ``ignore_index`` must stay negative (it is unused; PyTorch refuses one >= 0 with a
    probability target). Backward returns ``(d_input, d_target)``: the target is
    differentiable here, as in PyTorch. Either way backward returns a pair.
    """
    eps = (label_smoothing if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0
           else v.real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0))
    if isinstance(target, np.ndarray) and target.dtype.kind not in "iuf":
        raise TypeError(f"target must hold integer class labels or float class probabilities, "
                        f"got dtype {target.dtype}")
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        return _cross_entropy_probs(input, target, weight, ignore_index, reduction, eps)
    if (isinstance(target, np.ndarray) and isinstance(input, np.ndarray) and target.ndim >= 1
            and target.shape == input.shape):
        raise TypeError(f"target of the input's shape {input.shape} must hold class "
                        f"probabilities as float32 or float64, got dtype {target.dtype} "
                        f"(integer class labels have the input's shape without its class axis)")
    x, y, n_classes, w, has_w = _class_args(input, target, weight, "cross_entropy")
    ignore = _int_param(ignore_index, "ignore_index")
    r = _reduction(reduction, y.size)
    xr = _rows(x)
    rowloss = np.empty(y.size)
    lse = np.empty((y.size, 2))
    # The ctx's private copy of the logits (see reference.losses on mutation after forward) is
    # written by the kernel as it reads each row; rows the backward skips (ignored) are left
    # unwritten. An (N, C, d...) input was already copied by _rows.
    keep = xr is input or (isinstance(input, np.ndarray) and np.may_share_memory(xr, input))
    xs = np.empty_like(xr) if keep else _NO_ROWS[xr.dtype]
    total, denom, bad = _ce_fwd(xr, y, w, has_w, ignore, eps, rowloss, lse, xs, keep)
    if bad:
        _bad_label(y, n_classes, ignore)
    if r == "none":
        out = rowloss.astype(x.dtype).reshape(_out_shape(x))
    else:
        out = _reduced(total, denom, r, x.dtype)
    return out, CrossEntropyCtx(xs if keep else xr, y.copy() if y is target else _own(y, target),
                                _own(w, weight), has_w, ignore, r, out, denom, x.shape, lse, eps)


def cross_entropy_backward(ctx, grad_out: np.ndarray):
    r"""``(d_input, d_target)`` of ``cross_entropy``; ``d_target`` is None after integer
    labels. With :math:`p_{ic} = \operatorname{softmax}(x_i)_c` and :math:`W = \sum_c w_c`:

    .. math::
        \text{labels:}\quad \partial x_{ic} = g_i \left(\left((1 - \varepsilon) w_{y_i}
            + \tfrac{\varepsilon}{C} W\right) p_{ic} - \tfrac{\varepsilon}{C} w_c
            - (1 - \varepsilon) w_{y_i} [c = y_i]\right)

        \text{probabilities:}\quad \partial x_{ic} = g_i (S_i p_{ic} - a_{ic}), \qquad
            \partial t_{ic} = -g_i (1 - \varepsilon) w_c \log p_{ic}

    with :math:`a_{ic} = w_c ((1 - \varepsilon) t_{ic} + \varepsilon / C)`, :math:`S_i =
    \sum_c a_{ic}`; :math:`g_i` is ``grad_out`` per sample ('none'), or ``grad_out`` divided by
    the 'mean' denominator (the weight of the non-ignored labels, or the number of samples
    for probabilities). Ignored samples get 0. :math:`p_{iy} - 1` comes from ``expm1``, so
    nothing cancels where the label's probability is near 1.
    """
    if type(ctx) is CrossEntropyProbsCtx:
        g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.denom)
        dx = np.empty_like(ctx.x)
        dt = np.empty_like(ctx.t)
        _cep_bwd(ctx.x, ctx.t, ctx.w, ctx.has_w, ctx.smoothing, ctx.lse, g, c, each, dx, dt)
        return _unrows(dx, ctx.shape), _unrows(dt, ctx.shape)
    v.ctx_of(ctx, CrossEntropyCtx, "cross_entropy")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.denom)
    dx = np.empty_like(ctx.x)
    _ce_bwd(ctx.x, ctx.y, ctx.w, ctx.has_w, ctx.ignore_index, ctx.smoothing, ctx.lse,
            g, c, each, dx)
    return _unrows(dx, ctx.shape), None


# ---------------------------------------------------------------------------------------------
# negative log-likelihood
#
# The input is viewed as (N, C, K) (K = d1 * d2 ..., 1 for (N, C)); labels as (N, K). Each
# loss reads one element, so no copy is needed for the spatial case.


@inline()
def _nll_term(x, y, w, has_w, ignore, inner, i):
    """Sample-element i's loss -w_y x[y], its weight, and 1 if its label is out of range.
    An ignored or out-of-range label contributes nothing."""
    n_classes = x.shape[1]
    yi = y[i]
    if yi == ignore:
        return 0.0, 0.0, 0
    if yi < 0 or yi >= n_classes:
        return 0.0, 0.0, 1
    wy = np.float64(w[yi]) if has_w else 1.0
    return -wy * np.float64(x[i // inner, yi, i % inner]), wy, 0


@kernel(parallel=True)
def _nll_fwd(x, y, w, has_w, ignore, e):
    n, n_classes, inner = x.shape
    total = 0.0
    denom = 0.0
    bad = 0
    if n * inner < PARALLEL_MIN:  # one element read per sample: parallel only for many samples
        for i in range(n * inner):
            li, wy, b = _nll_term(x, y, w, has_w, ignore, inner, i)
            e[i] = li
            total += li
            denom += wy
            bad += b
    else:
        for i in prange(n * inner):
            li, wy, b = _nll_term(x, y, w, has_w, ignore, inner, i)
            e[i] = li
            total += li
            denom += wy
            bad += b
    return total, denom, bad


@kernel()
def _nll_bwd(y, w, has_w, ignore, g, c, each, dx):
    # dx is zero-filled; only the labelled element of each sample gets -w_y g.
    n, _, inner = dx.shape
    for i in range(n * inner):
        s = i // inner
        k = i % inner
        yi = y[i]
        if yi != ignore:
            gi = np.float64(g[i]) * c if each else c
            dx[s, yi, k] = -gi * (np.float64(w[yi]) if has_w else 1.0)


def _three(x: np.ndarray) -> np.ndarray:
    if x.ndim == 1:
        return x.reshape(1, x.shape[0], 1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def nll_loss(input: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, *,
             ignore_index: int = -100, reduction: str = "mean"):
    r"""Negative log-likelihood of log-probabilities ``input`` at integer labels, as ``F.nll_loss``.

    .. math:: \ell_i = -w_{y_i} x_{i y_i}, \qquad \partial x_{ic} = -g_i\, w_{y_i} [c = y_i]

    Ignored samples (label ``ignore_index``) have loss and gradient 0; 'mean' divides by
    :math:`\sum_i w_{y_i}` over the non-ignored samples (0/0 = NaN when all are ignored).
    Shapes as ``cross_entropy``: (C,), (N, C) or (N, C, d1, ...) with target (), (N,) or
    (N, d1, ...). ``cross_entropy(x) = nll_loss(log_softmax(x))`` without label smoothing.
    A float (class-probability) target is refused, as PyTorch 2.13 refuses it.
    Backward returns ``(d_input,)``.
    """
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        raise TypeError("target must hold integer class labels for nll_loss, got dtype "
                        f"{target.dtype}: PyTorch 2.13 refuses class probabilities here "
                        "('multi-target not supported'); use cross_entropy for those")
    x, y, n_classes, w, has_w = _class_args(input, target, weight, "nll_loss")
    ignore = _int_param(ignore_index, "ignore_index")
    r = _reduction(reduction, y.size)
    x3 = _three(x)
    e = np.empty(y.size)
    total, denom, bad = _nll_fwd(x3, y, w, has_w, ignore, e)
    if bad:
        _bad_label(y, n_classes, ignore)
    if r == "none":
        out = e.astype(x.dtype).reshape(_out_shape(x))
    else:
        out = _reduced(total, denom, r, x.dtype)
    # Backward reads only the labels and weights, not the input.
    return out, NLLCtx(np.empty((0, 0, 0), x.dtype), _own(y, target), _own(w, weight), has_w,
                       ignore, r, out, denom, x.shape)


def nll_loss_backward(ctx: ClassCtx, grad_out: np.ndarray):
    r"""``(d_input,)`` of ``nll_loss`` (labels are not differentiated):

    .. math:: \partial x_{ic} = -g_i\, w_{y_i} [c = y_i]

    0 for ignored samples; :math:`g_i` is ``grad_out`` per sample ('none'), or ``grad_out``
    divided by :math:`\sum_i w_{y_i}` ('mean') or as it is ('sum').
    """
    v.ctx_of(ctx, NLLCtx, "nll_loss")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.denom)
    sh = ctx.shape
    dx = np.zeros((1, sh[0], 1) if len(sh) == 1 else (sh[0], sh[1], math.prod(sh[2:])),
                  ctx.out.dtype)
    _nll_bwd(ctx.y, ctx.w, ctx.has_w, ctx.ignore_index, g, c, each, dx)
    return (dx.reshape(ctx.shape),)


# ---------------------------------------------------------------------------------------------
# multi-class margin loss (Crammer-Singer style hinge, as F.multi_margin_loss)


@inline()
def _mm_row(x, y, w, has_w, mt, p, e, r):
    # z_j = margin - x_y + x_j in the input's dtype, in torch's order, so that the kink test
    # z > 0 agrees bit for bit; the sum accumulates in float64.
    n_classes = x.shape[1]
    yr = y[r]
    if yr < 0 or yr >= n_classes:
        e[r] = 0.0
        return 0.0, 1
    xt = x[r, yr]
    s = 0.0
    for j in range(n_classes):
        z = mt - xt + x[r, j]
        if j != yr and z > 0:
            zf = np.float64(z)
            s += zf if p == 1 else zf * zf
    s *= (np.float64(w[yr]) if has_w else 1.0) / n_classes
    e[r] = s
    return s, 0


@kernel(parallel=True)  # no reduce=True: reassoc could regroup (margin - x_y) + x_j
def _mm_fwd(x, y, w, has_w, margin, p, e):
    rows = x.shape[0]
    mt = x.dtype.type(margin)  # rounded to the input's dtype, as torch does
    total = 0.0
    bad = 0
    if x.size < PARALLEL_MIN:
        for r in range(rows):
            lr, br = _mm_row(x, y, w, has_w, mt, p, e, r)
            total += lr
            bad += br
    else:
        for r in prange(rows):
            lr, br = _mm_row(x, y, w, has_w, mt, p, e, r)
            total += lr
            bad += br
    return total, bad


@inline()
def _mm_bwd_row(x, y, w, has_w, mt, p, gr, dx, r):
    # dx_j = gr w_y / C * (1 or 2 z_j) for j != y with z_j > 0; dx_y = -sum_j dx_j.
    n_classes = x.shape[1]
    yr = y[r]
    xt = x[r, yr]
    scale = gr * (np.float64(w[yr]) if has_w else 1.0) / n_classes
    acc = 0.0
    for j in range(n_classes):
        z = mt - xt + x[r, j]
        if j != yr and z > 0:
            d = scale if p == 1 else scale * 2.0 * np.float64(z)
            dx[r, j] = d
            acc += d
        else:
            dx[r, j] = 0.0
    dx[r, yr] = -acc


@kernel(parallel=True)
def _mm_bwd(x, y, w, has_w, margin, p, g, c, each, dx):
    rows = x.shape[0]
    mt = x.dtype.type(margin)
    if x.size < PARALLEL_MIN:
        for r in range(rows):
            gr = np.float64(g[r]) * c if each else c
            _mm_bwd_row(x, y, w, has_w, mt, p, gr, dx, r)
    else:
        for r in prange(rows):
            gr = np.float64(g[r]) * c if each else c
            _mm_bwd_row(x, y, w, has_w, mt, p, gr, dx, r)


def multi_margin_loss(input: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
                      *, p: int = 1, margin: float = 1.0, reduction: str = "mean"):
    r"""Multi-class hinge loss, as ``F.multi_margin_loss``.

    With :math:`z_{ij} = \text{margin} - x_{i y_i} + x_{ij}` and :math:`p \in \{1, 2\}`:

    .. math::
        \ell_i = \frac{w_{y_i}}{C} \sum_{j \ne y_i} \max(0, z_{ij})^p, \qquad
        \partial x_{ij} = g_i \frac{w_{y_i}}{C} p\, z_{ij}^{p-1} [z_{ij} > 0]\ (j \ne y_i),\quad
        \partial x_{i y_i} = -\sum_{j \ne y_i} \partial x_{ij}

    At the kink :math:`z = 0` the term and its gradient are 0 (PyTorch's ``z > 0``); ``z`` is
    computed in the input's dtype in PyTorch's order so the test agrees bit for bit. 'mean'
    divides by N (not by the weights). Shapes: input (C,) or (N, C), target () or (N,), int;
    weight (C,), not differentiated. Backward returns ``(d_input,)``.
    """
    x, y, n_classes, w, has_w = _class_args(input, target, weight, "multi_margin_loss", 2)
    pp = _int_param(p, "p")
    if pp not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {pp}")
    mg = margin if type(margin) is float and math.isfinite(margin) else v.real(margin, "margin")
    r = _reduction(reduction, y.size)
    xr = x if x.ndim == 2 else x.reshape(1, n_classes)
    e = np.empty(y.size)
    total, bad = _mm_fwd(xr, y, w, has_w, mg, pp, e)
    if bad:
        _bad_label(y, n_classes, None)
    if r == "none":
        out = e.astype(x.dtype).reshape(_out_shape(x))
    else:
        out = _reduced(total, y.size, r, x.dtype)
    return out, MultiMarginCtx(_own(xr, input), _own(y, target), _own(w, weight), has_w, 0, r,
                               out, float(y.size), x.shape, None, 0.0, mg, pp)


def multi_margin_loss_backward(ctx: ClassCtx, grad_out: np.ndarray):
    r"""``(d_input,)`` of ``multi_margin_loss`` (labels are not differentiated). With
    :math:`z_{ij} = \text{margin} - x_{i y_i} + x_{ij}`:

    .. math::
        \partial x_{ij} = g_i \frac{w_{y_i}}{C} p\, z_{ij}^{p-1} [z_{ij} > 0]\ (j \ne y_i),
        \qquad \partial x_{i y_i} = -\sum_{j \ne y_i} \partial x_{ij}

    (0 at the kink :math:`z = 0`, PyTorch's); :math:`g_i` is ``grad_out`` per sample ('none'),
    or ``grad_out / N`` ('mean') or as it is ('sum').
    """
    v.ctx_of(ctx, MultiMarginCtx, "multi_margin_loss")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.denom)
    dx = np.empty_like(ctx.x)
    _mm_bwd(ctx.x, ctx.y, ctx.w, ctx.has_w, ctx.margin, ctx.p, g, c, each, dx)
    return (dx.reshape(ctx.shape),)
