"""Batch norm and layer norm, forward and hand-written backward.

Statistics accumulate in float64: batch norm in two passes (mean, then the sum of squared
deviations), layer norm in one pass shifted by a data point (see _ln_rows_fwd); either way a
slice of values ~1e3 with spread ~1e-3 keeps its digits. ``x_hat = (x - mean) *
invstd`` with ``invstd = 1 / sqrt(var + eps)`` and the biased variance, as PyTorch normalizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward"]


def _affine(weight, bias, shape: tuple[int, ...], dtype, what: str):
    """Optional weight and bias of ``shape``; an absent weight becomes ones and an absent bias
    zeros, so the kernels run one branch-free loop (x * 1 + 0 is exact)."""
    out = []
    for a, name, fill in ((weight, "weight", 1.0), (bias, "bias", 0.0)):
        if a is None:
            out.append(np.full(shape, fill, dtype))  # 1 and 0 are exact in either dtype
            continue
        a = v.float_array(a, name, dtype=dtype)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} ({what}), got {a.shape}")
        out.append(a)
    return out[0], out[1], weight is not None, bias is not None


def _own(a: np.ndarray, given: tuple) -> np.ndarray:
    """``a`` as a ctx may keep it: a private copy if it shares memory with one of the caller's
    arrays ``given`` (see the module docstring on mutation after forward)."""
    for g in given:
        a = v.keep(a, g)
    return a


# ---------------------------------------------------------------------------------------------
# batch norm


class BatchNormCtx(NamedTuple):
    x3: np.ndarray      # (N, C, L): the input, spatial dims flattened
    mean: np.ndarray    # (C,) float64: batch mean (training) or running mean (eval)
    invstd: np.ndarray  # (C,) float64
    weight: np.ndarray  # (C,) or empty
    has_weight: bool
    has_bias: bool
    training: bool
    x_shape: tuple[int, ...]


@kernel(reduce=True)
def _bn_channel_fwd(x, y, w, b, training, momentum, eps, rm, rv, nrm, nrv, mean, invstd, c):
    n, _, l = x.shape
    m = n * l
    if training:
        s = 0.0
        for i in range(n):
            for j in range(l):
                s += x[i, c, j]
        mu = s / m
        ss = 0.0
        for i in range(n):
            for j in range(l):
                d = x[i, c, j] - mu
                ss += d * d
        var = ss / m
        nrm[c] = (1.0 - momentum) * rm[c] + momentum * mu
        nrv[c] = (1.0 - momentum) * rv[c] + momentum * (ss / (m - 1))  # unbiased
    else:
        mu = np.float64(rm[c])
        var = np.float64(rv[c])
        nrm[c] = rm[c]
        nrv[c] = rv[c]
    inv = 1.0 / math.sqrt(var + eps)
    mean[c] = mu
    invstd[c] = inv
    scale = inv * w[c]
    shift = b[c]
    for i in range(n):
        for j in range(l):
            y[i, c, j] = (x[i, c, j] - mu) * scale + shift


@kernel(parallel=True)
def _bn_fwd(x, y, w, b, training, momentum, eps, rm, rv, nrm, nrv, mean, invstd):
    channels = x.shape[1]
    if x.size < PARALLEL_MIN:
        for c in range(channels):
            _bn_channel_fwd(x, y, w, b, training, momentum, eps, rm, rv, nrm, nrv, mean,
                            invstd, c)
    else:
        for c in prange(channels):
            _bn_channel_fwd(x, y, w, b, training, momentum, eps, rm, rv, nrm, nrv, mean,
                            invstd, c)


@kernel(reduce=True)
def _bn_channel_bwd(x, g, mean, invstd, w, training, dx, dw, db, c):
    n, _, l = x.shape
    mu, inv = mean[c], invstd[c]
    sg = 0.0   # sum of g
    sgx = 0.0  # sum of g * x_hat
    for i in range(n):
        for j in range(l):
            gij = np.float64(g[i, c, j])
            sg += gij
            sgx += gij * (x[i, c, j] - mu) * inv
    dw[c] = sgx
    db[c] = sg
    k = inv * w[c]
    if training:
        m = n * l
        a, bb = sg / m, sgx / m
        for i in range(n):
            for j in range(l):
                xh = (x[i, c, j] - mu) * inv
                dx[i, c, j] = k * (g[i, c, j] - a - xh * bb)
    else:
        for i in range(n):
            for j in range(l):
                dx[i, c, j] = k * g[i, c, j]


@kernel(parallel=True)
def _bn_bwd(x, g, mean, invstd, w, training, dx, dw, db):
    channels = x.shape[1]
    if x.size < PARALLEL_MIN:
        for c in range(channels):
            _bn_channel_bwd(x, g, mean, invstd, w, training, dx, dw, db, c)
    else:
        for c in prange(channels):
            _bn_channel_bwd(x, g, mean, invstd, w, training, dx, dw, db, c)


def batch_norm(x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
               weight: np.ndarray | None = None, bias: np.ndarray | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    r"""Batch normalization over (N, C) or (N, C, *spatial) (``F.batch_norm``).

    Returns ``((y, new_running_mean, new_running_var), ctx)``; the running statistics are
    new arrays, the inputs are not touched. Per channel c, over the M = N * prod(spatial)
    values:

    .. math::
        \text{training: } \mu = \tfrac1M \textstyle\sum x, \quad \sigma^2 = \tfrac1M \sum
        (x - \mu)^2, \quad \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}, \quad
        y = \gamma \hat x + \beta

        \text{running: } \mu_r \leftarrow (1 - m) \mu_r + m \mu, \quad
        \sigma^2_r \leftarrow (1 - m) \sigma^2_r + m \tfrac{M}{M - 1} \sigma^2

        \text{eval: } \hat x = (x - \mu_r) / \sqrt{\sigma^2_r + \epsilon}, \text{ statistics
        unchanged}

    .. math::
        d\beta = \textstyle\sum dy, \quad d\gamma = \sum dy\, \hat x, \quad
        dx = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} \Big(dy - \tfrac1M \sum dy - \hat x\,
        \tfrac1M \sum dy\, \hat x\Big) \text{ (training)}, \quad
        dx = \frac{\gamma\, dy}{\sqrt{\sigma^2_r + \epsilon}} \text{ (eval)}

    Normalizing uses the biased variance, the running update the unbiased one (PyTorch's
    choice). Training on one value per channel (M = 1) raises ValueError, as PyTorch does: its
    variance is undefined. ``weight`` (gamma) and ``bias`` (beta) are optional (affine off);
    backward returns ``(dx, dgamma, dbeta)`` with None for an absent one. The running
    statistics are not differentiable outputs.

    ``running_mean = running_var = None`` in training (``track_running_stats=False``)
    normalizes with the batch statistics and returns None for both new statistics; in eval
    they are required. ``momentum`` must lie in [0, 1] and ``eps`` be >= 0, stricter than
    PyTorch on purpose: outside those ranges the running average extrapolates and the
    normalization can divide by an imaginary standard deviation, which no model means.
    """
    given = (x, weight)
    x = v.float_array(x, "x", min_ndim=2)
    n, c = x.shape[:2]
    training = v.boolean(training, "training")
    track = running_mean is not None or running_var is not None
    if not track and not training:
        raise ValueError("running_mean and running_var may be None only when training (as in "
                         "PyTorch: eval mode normalizes with them)")
    if track:
        rm = v.float_array(running_mean, "running_mean", ndim=1, dtype=x.dtype)
        rv = v.float_array(running_var, "running_var", ndim=1, dtype=x.dtype)
    else:  # no running statistics (track_running_stats=False): nothing to update
        rm = rv = np.zeros(c, x.dtype)
    for a, name in ((rm, "running_mean"), (rv, "running_var")):
        if a.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) (x's channels, dim 1), "
                             f"got {a.shape}")
    w, b, hw, hb = _affine(weight, bias, (c,), x.dtype, "x's channels, dim 1")
    momentum = v.real(momentum, "momentum", lo=0.0, hi=1.0)
    eps = v.real(eps, "eps", lo=0.0)
    m = x.size // c if c else 0
    if training and m <= 1:
        raise ValueError(f"x must have more than 1 value per channel when training (as in "
                         f"PyTorch), got shape {x.shape}")
    x3 = x.reshape(n, c, -1)
    y = np.empty_like(x3)
    nrm, nrv = np.empty_like(rm), np.empty_like(rv)
    mean, invstd = np.empty(c), np.empty(c)
    _bn_fwd(x3, y, w, b, training, momentum, eps, rm, rv, nrm, nrv, mean, invstd)
    ctx = BatchNormCtx(_own(x3, given), mean, invstd, _own(w, given), hw, hb, training, x.shape)
    if not track:
        nrm = nrv = None
    return (y.reshape(x.shape), nrm, nrv), ctx


def batch_norm_backward(ctx: BatchNormCtx, grad_out: np.ndarray):
    """``(dx, dgamma, dbeta)``; the formulas in ``batch_norm``'s docstring."""
    v.ctx_of(ctx, BatchNormCtx, "batch_norm")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.x3.dtype)
    if g.shape != ctx.x_shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.x_shape}, "
                         f"got {g.shape}")
    x3 = ctx.x3
    dx = np.empty_like(x3)
    c = x3.shape[1]
    dw, db = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    _bn_bwd(x3, g.reshape(x3.shape), ctx.mean, ctx.invstd, ctx.weight, ctx.training, dx, dw, db)
    return (dx.reshape(ctx.x_shape), dw if ctx.has_weight else None,
            db if ctx.has_bias else None)


# ---------------------------------------------------------------------------------------------
# layer norm


LN_BLOCKS = 16  # row blocks of layer norm: parallel work, and the backward's dw, db partials


class LayerNormCtx(NamedTuple):
    x2: np.ndarray      # (M, D): leading dims x normalized dims
    mean: np.ndarray    # (M,) float64
    invstd: np.ndarray  # (M,) float64
    weight: np.ndarray  # (D,) or empty
    has_weight: bool
    has_bias: bool
    x_shape: tuple[int, ...]
    norm_shape: tuple[int, ...]


@kernel(reduce=True)
def _ln_rows_fwd(x, y, w, b, eps, mean, invstd, r0, r1, single, xs):
    # Rows [r0, r1), their loops inline in one function (a call per row measured 15% slower).
    # One pass for the moments, shifted by the row's first value x0: a data point lies within
    # sqrt(D - 1) standard deviations of the mean, so E[t^2] - E[t]^2 with t = x - x0 loses at
    # most a factor D of float64's precision (no catastrophic cancellation).
    d = x.shape[1]
    for r in range(r0, r1):
        x0 = np.float64(x[r, 0])
        s = 0.0
        ss = 0.0
        for j in range(d):
            t = x[r, j] - x0
            s += t
            ss += t * t
        m = s / d
        mu = x0 + m
        inv = 1.0 / math.sqrt(max(ss / d - m * m, 0.0) + eps)
        mean[r] = mu
        invstd[r] = inv
        if single:
            # float32: the output pass in float32 (twice float64's lanes), the mean split in two
            # floats so that x - mean loses nothing to it: each step rounds relative to its own
            # terms, within 5 u of |x_hat w| + |b| (torch's x a + c form errs by u |mean| a).
            mh = np.float32(mu)
            ml = np.float32(mu - mh)
            a = np.float32(inv)
            for j in range(d):
                y[r, j] = ((x[r, j] - mh) - ml) * a * w[j] + b[j]
        else:
            for j in range(d):
                y[r, j] = (x[r, j] - mu) * inv * w[j] + b[j]
        for j in range(d):  # its own loop: in the one above it costs the vectoriser alias checks
            xs[r, j] = x[r, j]


@kernel()
def _ln_row_fwd(x, y, w, b, eps, mean, invstd, r, single, xs):
    # One row (composite kernels, e.g. reference/attention/encoder.py, call this).
    _ln_rows_fwd(x, y, w, b, eps, mean, invstd, r, r + 1, single, xs)


@kernel(parallel=True)
def _ln_fwd(x, y, w, b, eps, mean, invstd, single, xs):
    # xs: the ctx's private copy of x, copied row by row while the row is in cache.
    # Rows in LN_BLOCKS chunks spread over the threads.
    rows = x.shape[0]
    if x.size < PARALLEL_MIN:
        _ln_rows_fwd(x, y, w, b, eps, mean, invstd, 0, rows, single, xs)
    else:
        k = min(rows, LN_BLOCKS)
        for c in prange(k):
            _ln_rows_fwd(x, y, w, b, eps, mean, invstd, c * rows // k, (c + 1) * rows // k,
                         single, xs)


@kernel(reduce=True)
def _ln_block_bwd(x, g, mean, invstd, w, dx, pw, pb, k, r0, r1):
    # Rows [r0, r1): dx, and this block's partial sums of dw, db (row k of pw, pb).
    # g' = g * w;  dx = invstd * (g' - mean(g') - x_hat * mean(g' * x_hat))
    # g' and x_hat are stored once, so both loops use the same rounded values: for D = 1,
    # where the exact dx is 0, it is exactly 0.
    # The sums run in the loop that stores g' and x_hat (one pass over the row, not two).
    # w is widened to float64 once per block, not once per row.
    d = x.shape[1]
    gw = np.empty(d)
    xh = np.empty(d)
    w64 = np.empty(d)
    for j in range(d):
        w64[j] = w[j]
    for r in range(r0, r1):
        mu, inv = mean[r], invstd[r]
        a = 0.0
        bb = 0.0
        for j in range(d):
            gv = np.float64(g[r, j]) * w64[j]
            xv = (x[r, j] - mu) * inv
            gw[j] = gv
            xh[j] = xv
            a += gv
            bb += gv * xv
        a /= d
        bb /= d
        for j in range(d):
            dx[r, j] = inv * (gw[j] - a - xh[j] * bb)
            pw[k, j] += g[r, j] * xh[j]
            pb[k, j] += g[r, j]


@kernel(parallel=True)
def _ln_bwd(x, g, mean, invstd, w, dx, pw, pb):
    # Rows in pw.shape[0] fixed blocks (the same split whatever the thread count, so the
    # result is deterministic); the caller adds the blocks' partial dw, db in order.
    rows = x.shape[0]
    blocks = pw.shape[0]
    if x.size < PARALLEL_MIN:
        for k in range(blocks):
            _ln_block_bwd(x, g, mean, invstd, w, dx, pw, pb, k, k * rows // blocks,
                          (k + 1) * rows // blocks)
    else:
        for k in prange(blocks):
            _ln_block_bwd(x, g, mean, invstd, w, dx, pw, pb, k, k * rows // blocks,
                          (k + 1) * rows // blocks)


def layer_norm(x: np.ndarray, normalized_shape, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None, eps: float = 1e-5):
    r"""Layer normalization over the trailing ``normalized_shape`` dims (``F.layer_norm``).

    Each slice ``x[i, ...]`` over the last D = prod(normalized_shape) values is normalized by
    its own mean and biased variance; ``weight`` and ``bias`` (optional) have shape
    ``normalized_shape``.

    .. math:: \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}, \qquad y = w \hat x + b

    .. math:: g' = dy\, w, \quad dx = \frac{1}{\sqrt{\sigma^2 + \epsilon}} \Big(g' -
              \tfrac1D \textstyle\sum g' - \hat x\, \tfrac1D \sum g' \hat x\Big), \quad
              dw = \sum_i dy\, \hat x, \quad db = \sum_i dy

    Backward returns ``(dx, dw, db)``, None for an absent weight or bias.
    """
    given = (x, weight)
    x = v.float_array(x, "x", min_ndim=1)
    k = len(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else 1
    shape = v.int_tuple(normalized_shape, "normalized_shape", k, lo=1)
    if not 1 <= len(shape) <= x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"normalized_shape {shape} must equal the trailing dims of x, got "
                         f"x of shape {x.shape}")
    w, b, hw, hb = _affine(weight, bias, shape, x.dtype, "normalized_shape")
    eps = v.real(eps, "eps", lo=0.0)
    d = math.prod(shape)
    x2 = x.reshape(-1, d)
    y, xs = np.empty_like(x2), np.empty_like(x2)
    mean, invstd = np.empty(x2.shape[0]), np.empty(x2.shape[0])
    _ln_fwd(x2, y, w.reshape(-1), b.reshape(-1), eps, mean, invstd, x.dtype == np.float32, xs)
    ctx = LayerNormCtx(xs, mean, invstd, _own(w.reshape(-1), given), hw, hb, x.shape, shape)
    return y.reshape(x.shape), ctx


def layer_norm_backward(ctx: LayerNormCtx, grad_out: np.ndarray):
    """``(dx, dw, db)``; the formulas in ``layer_norm``'s docstring."""
    v.ctx_of(ctx, LayerNormCtx, "layer_norm")
    x2 = ctx.x2
    g = v.float_array(grad_out, "grad_out", dtype=x2.dtype)
    if g.shape != ctx.x_shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.x_shape}, "
                         f"got {g.shape}")
    dx = np.empty_like(x2)
    rows, d = x2.shape
    blocks = max(1, min(rows, LN_BLOCKS))
    pw, pb = np.zeros((blocks, d)), np.zeros((blocks, d))  # float64 partial sums
    _ln_bwd(x2, g.reshape(x2.shape), ctx.mean, ctx.invstd, ctx.weight, dx, pw, pb)
    dw, db = pw.sum(axis=0).astype(x2.dtype), pb.sum(axis=0).astype(x2.dtype)
    return (dx.reshape(ctx.x_shape),
            dw.reshape(ctx.norm_shape) if ctx.has_weight else None,
            db.reshape(ctx.norm_shape) if ctx.has_bias else None)
