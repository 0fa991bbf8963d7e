r"""Batch norm and layer norm on the GPU, forward and backward.

Same contract as ``reference.norm``. Statistics accumulate in float64 in shared-memory block
reductions (``_launch.block_sum``):

- batch norm: one block per channel (block-stride over channels), its threads striding over
  the channel's N * L values; two passes for the moments (mean, then squared deviations), as
  the CPU reference;
- layer norm: one block per row; one pass for the moments shifted by the row's first value
  (a data point lies within sqrt(D - 1) standard deviations of the mean, so
  E[t^2] - E[t]^2 with t = x - x0 cannot cancel catastrophically);
- the layer-norm weight and bias gradients are column sums over rows: ``_col_partials`` sums
  fixed chunks of rows per column (threads of a block on neighbouring columns: coalesced
  reads), ``_col_finish`` adds the chunks in order, so the result does not depend on timing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import cuda, types

from reference import _validate as v
from reference.cuda import _launch as L

__all__ = ["batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward"]

# Shared buffers: their size and dtype must be compile-time constants (a global of this module
# is; an attribute of another module is typed as a plain int).
_THREADS = L.MAX_THREADS
_SHARED = types.float64

_F64 = np.float64


def _affine(weight, bias, shape, dtype, what: str):
    out = []
    for a, name in ((weight, "weight"), (bias, "bias")):
        if a is None:
            out.append(L.placeholder(dtype))
            continue
        a = L.float_array(a, name, dtype=np.dtype(dtype))
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), "
                             f"got {tuple(a.shape)}")
        out.append(L.flat(a))
    return out[0], out[1], weight is not None, bias is not None


# ---------------------------------------------------------------------------------------------
# batch norm: x viewed as (N, C, L); channel c holds x[i * C * L + c * L + j]


@cuda.jit(cache=True)
def _bn_fwd(x, y, w, b, has_w, has_b, n, c_count, l, training, momentum, eps, rm, rv, nrm, nrv,
            mean, invstd):
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    m = n * l
    for c in range(cuda.blockIdx.x, c_count, cuda.gridDim.x):
        ss = 0.0
        if training:
            s = 0.0
            for k in range(t, m, step):
                s += np.float64(x[(k // l) * c_count * l + c * l + k % l])
            mu = L.block_sum(sh, s) / m
            for k in range(t, m, step):
                d = np.float64(x[(k // l) * c_count * l + c * l + k % l]) - mu
                ss += d * d
            ss = L.block_sum(sh, ss)
            var = ss / m
        else:
            mu = np.float64(rm[c])
            var = np.float64(rv[c])
        inv = np.float64(1.0) / math.sqrt(var + eps)  # a numpy scalar: 1/0 = inf, as on a GPU
        if t == 0:
            if training:
                nrm[c] = (1.0 - momentum) * np.float64(rm[c]) + momentum * mu
                nrv[c] = (1.0 - momentum) * np.float64(rv[c]) + momentum * (ss / (m - 1))
            else:
                nrm[c] = rm[c]
                nrv[c] = rv[c]
            mean[c] = mu
            invstd[c] = inv
        scale = inv * (np.float64(w[c]) if has_w else 1.0)
        shift = np.float64(b[c]) if has_b else 0.0
        for k in range(t, m, step):
            i = (k // l) * c_count * l + c * l + k % l
            y[i] = (np.float64(x[i]) - mu) * scale + shift


@cuda.jit(cache=True)
def _bn_bwd(x, g, mean, invstd, w, has_w, n, c_count, l, training, dx, dw, db):
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    m = n * l
    for c in range(cuda.blockIdx.x, c_count, cuda.gridDim.x):
        mu, inv = mean[c], invstd[c]
        sg = 0.0
        sgx = 0.0
        for k in range(t, m, step):
            i = (k // l) * c_count * l + c * l + k % l
            gi = np.float64(g[i])
            sg += gi
            sgx += gi * (np.float64(x[i]) - mu) * inv
        sg = L.block_sum(sh, sg)
        sgx = L.block_sum(sh, sgx)
        if t == 0:
            dw[c] = sgx
            db[c] = sg
        k_c = inv * (np.float64(w[c]) if has_w else 1.0)
        a, bb = sg / m, sgx / m
        for k in range(t, m, step):
            i = (k // l) * c_count * l + c * l + k % l
            if training:
                xh = (np.float64(x[i]) - mu) * inv
                dx[i] = k_c * (np.float64(g[i]) - a - xh * bb)
            else:
                dx[i] = k_c * np.float64(g[i])


class BatchNormCtx(NamedTuple):
    x: object        # the input (device array)
    mean: object     # (C,) float64 device: batch mean (training) or running mean (eval)
    invstd: object   # (C,) float64 device
    weight: object
    has_weight: bool
    has_bias: bool
    training: bool


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    r"""Batch normalization over (N, C) or (N, C, *spatial), as ``reference.norm.batch_norm``.

    Returns ``((y, new_running_mean, new_running_var), ctx)`` (new device arrays; the inputs
    are not touched). Per channel, over its M = N * prod(spatial) values:

    .. math::
        \mu = \tfrac1M \textstyle\sum x, \quad \sigma^2 = \tfrac1M \sum (x - \mu)^2, \quad
        y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta

        \mu_r \leftarrow (1 - m) \mu_r + m \mu, \quad
        \sigma^2_r \leftarrow (1 - m) \sigma^2_r + m \tfrac{M}{M - 1} \sigma^2

    (training; eval normalizes by the running statistics and returns them unchanged).
    """
    x = L.float_array(x, "x", min_ndim=2)
    dt = np.dtype(x.dtype)
    shape = tuple(x.shape)
    n, c = shape[:2]
    rm = L.float_array(running_mean, "running_mean", ndim=1, dtype=dt)
    rv = L.float_array(running_var, "running_var", ndim=1, dtype=dt)
    for a, name in ((rm, "running_mean"), (rv, "running_var")):
        if tuple(a.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},) (x's channels, dim 1), "
                             f"got {tuple(a.shape)}")
    w, b, hw, hb = _affine(weight, bias, (c,), dt, "x's channels, dim 1")
    training = v.boolean(training, "training")
    momentum = v.real(momentum, "momentum", lo=0.0, hi=1.0)
    eps = v.real(eps, "eps", lo=0.0)
    l = math.prod(shape[2:])
    if training and n * l <= 1:
        raise ValueError(f"x must have more than 1 value per channel when training (as in "
                         f"PyTorch), got shape {shape}")
    y = L.empty(shape, dt)
    nrm, nrv = L.empty((c,), dt), L.empty((c,), dt)
    mean, invstd = L.empty((c,), _F64), L.empty((c,), _F64)
    if c:
        _bn_fwd[L.grid(c), L.threads()](L.flat(x), L.flat(y), w, b, hw, hb, n, c, l, training,
                                        momentum, eps, rm, rv, nrm, nrv, mean, invstd)
    return (y, nrm, nrv), BatchNormCtx(x, mean, invstd, w, hw, hb, training)


def batch_norm_backward(ctx: BatchNormCtx, grad_out):
    r"""Returns ``(dx, dgamma, dbeta)`` (None for an absent weight or bias).

    .. math::
        d\beta = \textstyle\sum dy, \quad d\gamma = \sum dy\, \hat x, \quad
        dx = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} \Big(dy - \tfrac1M \sum dy - \hat x\,
        \tfrac1M \sum dy\, \hat x\Big) \text{ (training)}, \quad
        dx = \frac{\gamma\, dy}{\sqrt{\sigma^2_r + \epsilon}} \text{ (eval)}
    """
    x = ctx.x
    g = L.grad_like(grad_out, "grad_out", x)
    shape = tuple(x.shape)
    n, c = shape[:2]
    l = math.prod(shape[2:])
    dx = L.empty(shape, x.dtype)
    dw, db = L.empty((c,), x.dtype), L.empty((c,), x.dtype)
    if c:
        _bn_bwd[L.grid(c), L.threads()](L.flat(x), L.flat(g), ctx.mean, ctx.invstd, ctx.weight,
                                        ctx.has_weight, n, c, l, ctx.training, L.flat(dx), dw,
                                        db)
    return dx, (dw if ctx.has_weight else None), (db if ctx.has_bias else None)


# ---------------------------------------------------------------------------------------------
# layer norm: x viewed as (M, D)


@cuda.jit(cache=True)
def _ln_fwd(x, y, w, b, has_w, has_b, rows, d, eps, mean, invstd):
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        base = r * d
        x0 = np.float64(x[base])
        s = 0.0
        ss = 0.0
        for j in range(t, d, step):
            u = np.float64(x[base + j]) - x0
            s += u
            ss += u * u
        s = L.block_sum(sh, s)
        ss = L.block_sum(sh, ss)
        m = s / d
        mu = x0 + m
        inv = np.float64(1.0) / math.sqrt(max(ss / d - m * m, 0.0) + eps)
        if t == 0:
            mean[r] = mu
            invstd[r] = inv
        for j in range(t, d, step):
            wj = np.float64(w[j]) if has_w else 1.0
            bj = np.float64(b[j]) if has_b else 0.0
            y[base + j] = (np.float64(x[base + j]) - mu) * inv * wj + bj


@cuda.jit(cache=True)
def _ln_bwd(x, g, mean, invstd, w, has_w, rows, d, dx):
    # g' = g w;  dx = invstd (g' - mean(g') - x_hat mean(g' x_hat))
    sh = cuda.shared.array(_THREADS, _SHARED)
    t, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        base = r * d
        mu, inv = mean[r], invstd[r]
        a = 0.0
        bb = 0.0
        for j in range(t, d, step):
            gw = np.float64(g[base + j]) * (np.float64(w[j]) if has_w else 1.0)
            a += gw
            bb += gw * ((np.float64(x[base + j]) - mu) * inv)
        a = L.block_sum(sh, a) / d
        bb = L.block_sum(sh, bb) / d
        for j in range(t, d, step):
            gw = np.float64(g[base + j]) * (np.float64(w[j]) if has_w else 1.0)
            xh = (np.float64(x[base + j]) - mu) * inv
            dx[base + j] = inv * (gw - a - xh * bb)


@cuda.jit(cache=True)
def _col_partials(g, x, mean, invstd, rows, d, chunks, with_xhat, part):
    # part[p, j] = sum over rows r of chunk p of g[r, j] (times x_hat[r, j] if with_xhat).
    # Grid: (column blocks, chunks); a thread walks one column down its chunk's rows.
    p = cuda.blockIdx.y
    r0 = p * rows // chunks
    r1 = (p + 1) * rows // chunks
    for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, d,
                   cuda.gridDim.x * cuda.blockDim.x):
        s = 0.0
        for r in range(r0, r1):
            gv = np.float64(g[r * d + j])
            if with_xhat:
                gv *= (np.float64(x[r * d + j]) - mean[r]) * invstd[r]
            s += gv
        part[p, j] = s


@cuda.jit(cache=True)
def _col_finish(part, out):
    for j in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        s = 0.0
        for p in range(part.shape[0]):
            s += part[p, j]
        out[j] = s


def column_sums(g, x, mean, invstd, rows: int, d: int, with_xhat: bool, dtype):
    """Per-column sums of the (rows, d) flat ``g`` (times x_hat when ``with_xhat``), in float64
    partials over fixed chunks of rows, rounded once to ``dtype``. Shared with ``linear``."""
    out = L.empty((d,), dtype)
    if d == 0:
        return out
    chunks = max(1, min(rows, 4 if L.simulated() else 64))
    part = L.empty((chunks, d), _F64)
    n = L.threads()
    blocks_x = max(1, min(-(-d // n), max(1, L.max_blocks() // chunks)))
    _col_partials[(blocks_x, chunks), n](g, x, mean, invstd, rows, d, chunks, with_xhat, part)
    _col_finish[L.grid(d, n), n](part, out)
    return out


class LayerNormCtx(NamedTuple):
    x: object        # the input (device array)
    mean: object     # (M,) float64 device
    invstd: object   # (M,) float64 device
    weight: object
    has_weight: bool
    has_bias: bool
    norm_shape: tuple


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    r"""Layer normalization over the trailing ``normalized_shape`` dims, as
    ``reference.norm.layer_norm``.

    .. math:: \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}, \qquad y = w \hat x + b

    with the mean and biased variance of each slice of D = prod(normalized_shape) values.
    """
    x = L.float_array(x, "x", min_ndim=1)
    shape = tuple(x.shape)
    k = len(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else 1
    norm_shape = v.int_tuple(normalized_shape, "normalized_shape", k, lo=1)
    if not 1 <= len(norm_shape) <= x.ndim or shape[x.ndim - len(norm_shape):] != norm_shape:
        raise ValueError(f"normalized_shape {norm_shape} must equal the trailing dims of x, "
                         f"got x of shape {shape}")
    dt = np.dtype(x.dtype)
    w, b, hw, hb = _affine(weight, bias, norm_shape, dt, "normalized_shape")
    eps = v.real(eps, "eps", lo=0.0)
    d = math.prod(norm_shape)
    rows = x.size // d
    y = L.empty(shape, dt)
    mean, invstd = L.empty((rows,), _F64), L.empty((rows,), _F64)
    if rows:
        _ln_fwd[L.grid(rows), L.threads()](L.flat(x), L.flat(y), w, b, hw, hb, rows, d, eps,
                                           mean, invstd)
    return y, LayerNormCtx(x, mean, invstd, w, hw, hb, norm_shape)


def layer_norm_backward(ctx: LayerNormCtx, grad_out):
    r"""Returns ``(dx, dw, db)`` (None for an absent weight or bias).

    .. math:: g' = dy\, w, \quad dx = \frac{1}{\sqrt{\sigma^2 + \epsilon}} \Big(g' -
              \tfrac1D \textstyle\sum g' - \hat x\, \tfrac1D \sum g' \hat x\Big), \quad
              dw = \sum_i dy\, \hat x, \quad db = \sum_i dy
    """
    x = ctx.x
    g = L.grad_like(grad_out, "grad_out", x)
    d = math.prod(ctx.norm_shape)
    rows = x.size // d
    dt = np.dtype(x.dtype)
    dx = L.empty(x.shape, dt)
    xf, gf = L.flat(x), L.flat(g)
    if rows:
        _ln_bwd[L.grid(rows), L.threads()](xf, gf, ctx.mean, ctx.invstd, ctx.weight,
                                           ctx.has_weight, rows, d, L.flat(dx))
    dw = db = None
    if ctx.has_weight:
        dw = column_sums(gf, xf, ctx.mean, ctx.invstd, rows, d, True, dt).reshape(ctx.norm_shape)
    if ctx.has_bias:
        db = column_sums(gf, xf, ctx.mean, ctx.invstd, rows, d, False, dt).reshape(ctx.norm_shape)
    return dx, dw, db
