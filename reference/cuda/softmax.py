r"""Softmax, log-softmax and cross-entropy on the GPU: one block per row.

Same contract as ``reference.activations.softmax``/``log_softmax`` (any axis) and
``reference.losses.cross_entropy`` (input (C,), (N, C) or (N, C, d1, ...), class weights,
``ignore_index``, ``reduction``, ``label_smoothing``). A C-contiguous array is viewed as
(outer, n, inner) with the reduced axis in the middle; "row" r = (o, i) holds the n elements
``o n inner + j inner + i`` (stride ``inner``; 1 for the last axis, where reads coalesce), so
no axis needs a transpose. A block takes one row at a time (block-stride over rows); its
threads stride over the row and combine in shared memory (``_launch.block_max``,
``block_sum``), all in float64:

- m = max_j x_j (NaN skipped; a NaN still reaches the output through x - m);
- ``rest = sum over x_j < m of e^{x_j - m}`` and ``ties`` = the number of x_j = m, so
  ``sum_j e^{x_j - m} = ties + rest`` and ``lse - m = log1p(rest + ties - 1)``, exact when one
  logit dominates (no ``log(1 + tiny)``);
- a third pass writes the output.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import cuda, types

from reference import _validate as v
from reference.cuda import _launch as L

__all__ = ["softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
           "cross_entropy", "cross_entropy_backward"]

# Shared buffers: their size and dtype must be compile-time constants (a global of this module
# is; an attribute of another module is typed as a plain int).
_THREADS = L.MAX_THREADS
_SHARED = types.float64

_F64 = np.float64


@cuda.jit(device=True, cache=True)
def _at(r, j, n, inner):
    # Flat index of element j of row r in the (outer, n, inner) view.
    return (r // inner) * n * inner + j * inner + r % inner


@cuda.jit(device=True, cache=True)
def _row_stats(x, r, n, inner, sh):
    # (m, log sum_j e^{x_j - m}) of row r, for the whole block.
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    m = -math.inf
    for j in range(t, n, step):
        xj = np.float64(x[_at(r, j, n, inner)])
        if xj > m:
            m = xj
    m = L.block_max(sh, m)
    rest = 0.0
    ties = 0.0
    for j in range(t, n, step):
        d = np.float64(x[_at(r, j, n, inner)]) - m
        if d == 0.0:
            ties += 1.0
        else:
            rest += math.exp(d)
    rest = L.block_sum(sh, rest)
    ties = L.block_sum(sh, ties)
    return m, math.log1p(rest + (ties - 1.0))


@cuda.jit(cache=True)
def _softmax_fwd(x, y, rows, n, inner, log):
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        m, ls = _row_stats(x, r, n, inner, sh)
        for j in range(t, n, step):
            k = _at(r, j, n, inner)
            d = np.float64(x[k]) - m
            y[k] = d - ls if log else math.exp(d - ls)


@cuda.jit(cache=True)
def _softmax_bwd(y, g, dx, rows, n, inner, log):
    # softmax: dx = y (g - sum_j g_j y_j); log-softmax: dx = g - e^y sum_j g_j.
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        s = 0.0
        for j in range(t, n, step):
            k = _at(r, j, n, inner)
            s += np.float64(g[k]) if log else np.float64(g[k]) * np.float64(y[k])
        s = L.block_sum(sh, s)
        for j in range(t, n, step):
            k = _at(r, j, n, inner)
            yk, gk = np.float64(y[k]), np.float64(g[k])
            dx[k] = gk - math.exp(yk) * s if log else yk * (gk - s)


class SoftmaxCtx(NamedTuple):
    y: object  # the forward output (device array, x's shape)
    axis: int


def _launch_rows(kernel, shape, axis, *arrays):
    outer, n, inner = L.rows_of(shape, axis)
    rows = outer * inner
    if rows * n == 0:
        return
    kernel[L.grid(rows), L.threads()](*(L.flat(a) for a in arrays[:-1]), rows, n, inner,
                                      arrays[-1])


def _softmax(x, axis, log: bool):
    x = L.float_array(x, "x", min_ndim=1)
    ax = v.axis(axis, "axis", x.ndim)
    y = L.empty(x.shape, x.dtype)
    _launch_rows(_softmax_fwd, x.shape, ax, x, y, log)
    return y, SoftmaxCtx(y, ax)


def _softmax_backward(ctx: SoftmaxCtx, grad_out, log: bool):
    g = L.grad_like(grad_out, "grad_out", ctx.y)
    dx = L.empty(ctx.y.shape, ctx.y.dtype)
    _launch_rows(_softmax_bwd, ctx.y.shape, ctx.axis, ctx.y, g, dx, log)
    return (dx,)


def _gpu_scope(x, dtype) -> None:
    """What the CPU softmax accepts and these kernels do not (yet): refused by name."""
    if dtype is not None:
        raise ValueError(f"dtype: the numba-cuda softmax computes in the input's dtype; "
                         f"dtype= (a wider compute type) is supported on the CPU only, got "
                         f"{dtype!r}")
    if len(getattr(x, "shape", ())) == 0:
        raise ValueError("x: the numba-cuda softmax needs at least 1 dimension, got a 0-d "
                         "array (the CPU reference accepts it)")


def softmax(x, axis: int = -1, dtype=None):
    r"""Softmax along ``axis``: :math:`y_i = e^{x_i - m} / \sum_j e^{x_j - m}`, m the max.
    ``dtype`` must be None and ``x`` at least 1-d here (the CPU reference has both)."""
    _gpu_scope(x, dtype)
    return _softmax(x, axis, False)


def softmax_backward(ctx: SoftmaxCtx, grad_out):
    r""":math:`dx_i = y_i (dy_i - \sum_j dy_j y_j)`."""
    return _softmax_backward(ctx, grad_out, False)


def log_softmax(x, axis: int = -1, dtype=None):
    r""":math:`y_i = (x_i - m) - \log \sum_j e^{x_j - m}`. ``dtype`` must be None and ``x`` at
    least 1-d here (the CPU reference has both)."""
    _gpu_scope(x, dtype)
    return _softmax(x, axis, True)


def log_softmax_backward(ctx: SoftmaxCtx, grad_out):
    r""":math:`dx_i = dy_i - e^{y_i} \sum_j dy_j`."""
    return _softmax_backward(ctx, grad_out, True)


# ---------------------------------------------------------------------------------------------
# cross-entropy: rows are samples, the class axis is axis 1 (inner = d1 * d2 ...)


@cuda.jit(cache=True)
def _ce_rows(x, y, w, has_w, ignore, eps, n, inner, rows, rowloss, roww, lse, bad, out, each):
    # Per sample r: its loss (rowloss, and out[r] for reduction 'none'), its weight in the mean
    # (roww), (m, lse - m) for backward and 1 in bad[r] for a label outside [0, C).
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        yr = y[r]
        if yr == ignore or yr < 0 or yr >= n:  # uniform over the block: no barrier skipped
            if t == 0:
                rowloss[r] = 0.0
                roww[r] = 0.0
                lse[r, 0] = 0.0
                lse[r, 1] = 0.0
                bad[r] = 0 if yr == ignore else 1
                if each:
                    out[r] = 0.0
            continue
        m, ls = _row_stats(x, r, n, inner, sh)
        # sum_c w_c (m - x_c) (every term >= 0) and W = sum_c w_c, for label smoothing.
        dev = 0.0
        wsum = 0.0
        for j in range(t, n, step):
            wj = np.float64(w[j]) if has_w else 1.0
            dev += wj * (m - np.float64(x[_at(r, j, n, inner)]))
            wsum += wj
        dev = L.block_sum(sh, dev)
        wsum = L.block_sum(sh, wsum)
        if t == 0:
            wy = np.float64(w[yr]) if has_w else 1.0
            loss = (1.0 - eps) * wy * ((m - np.float64(x[_at(r, yr, n, inner)])) + ls)
            if eps != 0.0:
                loss += eps / n * (wsum * ls + dev)
            rowloss[r] = loss
            roww[r] = wy
            lse[r, 0] = m
            lse[r, 1] = ls
            bad[r] = 0
            if each:
                out[r] = loss


@cuda.jit(cache=True)
def _ce_total(rowloss, roww, bad, mean, total, nbad, out):
    # One block: the sums over samples (fixed order), and the 0-d output of 'mean' or 'sum'.
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    s = 0.0
    d = 0.0
    b = 0.0
    for r in range(t, rowloss.size, step):
        s += rowloss[r]
        d += roww[r]
        b += bad[r]
    s = L.block_sum(sh, s)
    d = L.block_sum(sh, d)
    b = L.block_sum(sh, b)
    if t == 0:
        total[0] = s
        total[1] = d
        nbad[0] = b
        if mean:
            out[0] = np.float64(s) / np.float64(d)  # all ignored: 0/0 = NaN, as PyTorch
        else:
            out[0] = s


@cuda.jit(cache=True)
def _ce_bwd(x, y, w, has_w, ignore, eps, n, inner, rows, lse, total, g, mode, dx):
    # dx_c = gr (A p_c - B w_c - [c = y] (1 - eps) w_y), A = (1 - eps) w_y + eps W / C,
    # B = eps / C; the label's entry by expm1 (no 1 - 1 cancellation). mode: 0 'none',
    # 1 'mean', 2 'sum'.
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        yr = y[r]
        if yr == ignore:
            for j in range(t, n, step):
                dx[_at(r, j, n, inner)] = 0.0
            continue
        if mode == 0:
            gr = np.float64(g[r])
        elif mode == 1:
            gr = np.float64(g[0]) / np.float64(total[1])
        else:
            gr = np.float64(g[0])
        wsum = 0.0
        for j in range(t, n, step):
            wsum += np.float64(w[j]) if has_w else 1.0
        wsum = L.block_sum(sh, wsum)
        wy = np.float64(w[yr]) if has_w else 1.0
        a = (1.0 - eps) * wy + eps * wsum / n
        b = eps / n
        m, ls = lse[r, 0], lse[r, 1]
        for j in range(t, n, step):
            k = _at(r, j, n, inner)
            d = (np.float64(x[k]) - m) - ls
            wj = np.float64(w[j]) if has_w else 1.0
            if j == yr:
                dx[k] = gr * ((1.0 - eps) * wy * math.expm1(d) + b * (wsum * math.exp(d) - wy))
            else:
                dx[k] = gr * (a * math.exp(d) - b * wj)


class CrossEntropyCtx(NamedTuple):
    x: object        # the logits (device array)
    y: object        # labels, flat (device array)
    w: object        # class weights or a placeholder
    has_w: bool
    ignore_index: int
    reduction: str
    out: object      # the forward output
    total: object    # float64 device (2,): sum of losses, the 'mean' denominator
    lse: object      # float64 device (R, 2): max and log-sum-exp - max per sample
    smoothing: float


_REDUCTIONS = ("none", "mean", "sum")


def cross_entropy(input, target, weight=None, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    r"""Cross-entropy of logits against integer labels, as ``reference.losses.cross_entropy``.

    .. math::
        \ell_i = -(1 - \varepsilon)\, w_{y_i} \log p_{i y_i}
                 - \frac{\varepsilon}{C} \sum_c w_c \log p_{ic}, \qquad
        \log p_{ic} = x_{ic} - \operatorname{logsumexp}_c x_{ic}

    Ignored samples have loss 0 and weight 0; 'mean' divides by the sum of :math:`w_{y_i}`
    over the others (0/0 = NaN when all are ignored). Labels outside [0, C) other than
    ``ignore_index`` raise ``ValueError`` (the forward reads back their count: one sync).
    Backward returns ``(d_input,)``.
    """
    x = L.float_array(input, "input", min_ndim=1)
    shape = tuple(x.shape)
    n = shape[0] if x.ndim == 1 else shape[1]
    if n == 0:
        raise ValueError(f"input must have at least one class, got shape {shape}")
    want = () if x.ndim == 1 else shape[:1] + shape[2:]
    y = L.int_array(target, "target")
    if tuple(y.shape) != want:
        raise ValueError(f"target must have shape {want} (the input's {shape} without its "
                         f"class axis), got {tuple(y.shape)}")
    has_w = weight is not None
    if has_w:
        w = L.float_array(weight, "weight", ndim=1, dtype=np.dtype(x.dtype))
        if tuple(w.shape) != (n,):
            raise ValueError(f"weight must have one entry per class, shape ({n},), "
                             f"got shape {tuple(w.shape)}")
    else:
        w = L.placeholder(x.dtype)
    ignore = v.integer(ignore_index, "ignore_index")
    eps = v.real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    red = v.choice(reduction, "reduction", _REDUCTIONS)
    rows = y.size
    if red == "mean" and rows == 0:
        raise ValueError("reduction='mean' of an empty batch is 0/0; the input (and target) "
                         "must have at least one element, or use reduction='sum'")
    inner = 1 if x.ndim == 1 else math.prod(shape[2:])
    out = L.empty(want if red == "none" else (), x.dtype)
    rowloss, roww, bad = (L.empty((rows,), _F64) for _ in range(3))
    lse, total, nbad = L.empty((rows, 2), _F64), L.empty((2,), _F64), L.empty((1,), _F64)
    yf = L.flat(y)
    if rows:
        _ce_rows[L.grid(rows), L.threads()](L.flat(x), yf, w, has_w, ignore, eps, n, inner,
                                            rows, rowloss, roww, lse, bad, L.flat(out),
                                            red == "none")
    scratch = L.empty((1,), x.dtype) if red == "none" else L.flat(out)
    _ce_total[1, L.threads()](rowloss, roww, bad, red == "mean", total, nbad, scratch)
    if nbad.copy_to_host()[0]:
        labels = y.copy_to_host()
        v.labels(labels, "target", n, ignore_index=ignore)
    return out, CrossEntropyCtx(x, yf, w, has_w, ignore, red, out, total, lse, eps)


def cross_entropy_backward(ctx: CrossEntropyCtx, grad_out):
    r"""With :math:`p = \operatorname{softmax}(x_i)`, :math:`W = \sum_c w_c` and the upstream
    gradient :math:`g_i` (for 'mean', :math:`g / \sum_i w_{y_i}`):

    .. math::
        \partial x_{ic} = g_i \left(\left((1 - \varepsilon) w_{y_i} + \frac{\varepsilon}{C} W
        \right) p_{ic} - \frac{\varepsilon}{C} w_c - (1 - \varepsilon) w_{y_i} [c = y_i]\right)

    Returns ``(d_input, None)``, as the CPU ``cross_entropy_backward`` does after class-index
    targets (they have no gradient).
    """
    g = L.grad_like(grad_out, "grad_out", ctx.out)
    x = ctx.x
    dx = L.empty(x.shape, x.dtype)
    rows = ctx.y.size
    if rows:
        shape = tuple(x.shape)
        n = shape[0] if x.ndim == 1 else shape[1]
        inner = 1 if x.ndim == 1 else math.prod(shape[2:])
        mode = _REDUCTIONS.index(ctx.reduction)
        _ce_bwd[L.grid(rows), L.threads()](L.flat(x), ctx.y, ctx.w, ctx.has_w, ctx.ignore_index,
                                           ctx.smoothing, n, inner, rows, ctx.lse, ctx.total,
                                           L.flat(g), mode, L.flat(dx))
    return dx, None
