r"""Dense layer on the GPU: ``y = x W^T + b``, forward and backward, by a tiled matrix product.

Same contract as ``reference.layers.linear``. ``_matmul`` computes ``C = op(A) op(B) (+ bias)``
(``op`` = identity or transpose, chosen per operand, so ``x W^T``, ``dy W`` and ``dy^T x`` are
one kernel): each block owns a T x T tile of C (block-stride over tiles) and walks K in steps
of T; per step its threads load one T x T tile of each operand into shared memory, wait at a
barrier, accumulate the T products of their element in float64, and wait again before the
next load overwrites the tiles. Tiles outside the matrices load as zeros, so any M, N, K
works. The sums accumulate in float64 (the CPU reference's float32 BLAS accumulates in
float32: this side is the more accurate one). ``db`` is a column sum of ``dy``
(``norm.column_sums``, fixed chunks added in order).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import cuda, types

from reference.cuda import _launch as L
from reference.cuda.norm import column_sums

__all__ = ["linear", "linear_backward"]

# Shared buffers: their size and dtype must be compile-time constants (a global of this module
# is; an attribute of another module is typed as a plain int).
_TILE = L.TILE
_SHARED = types.float64


@cuda.jit(cache=True)
def _matmul(a, b, c, m, n, k, trans_a, trans_b, bias, has_bias):
    # op(A): (m, k) from a (m, k) or, transposed, a (k, m); op(B): (k, n) from b (k, n) or
    # b (n, k). Row-major flat storage. Block (T, T): thread (tx, ty) owns C[row, col].
    sa = cuda.shared.array((_TILE, _TILE), _SHARED)
    sb = cuda.shared.array((_TILE, _TILE), _SHARED)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tsz = cuda.blockDim.x
    tiles_n = (n + tsz - 1) // tsz
    tiles_m = (m + tsz - 1) // tsz
    for tile in range(cuda.blockIdx.x, tiles_m * tiles_n, cuda.gridDim.x):
        row = (tile // tiles_n) * tsz + ty
        col = (tile % tiles_n) * tsz + tx
        acc = 0.0
        for k0 in range(0, k, tsz):
            ka = k0 + tx  # this thread loads op(A)[row, ka] and op(B)[kb, col]
            kb = k0 + ty
            if row < m and ka < k:
                sa[ty, tx] = a[ka * m + row] if trans_a else a[row * k + ka]
            else:
                sa[ty, tx] = 0.0
            if kb < k and col < n:
                sb[ty, tx] = b[col * k + kb] if trans_b else b[kb * n + col]
            else:
                sb[ty, tx] = 0.0
            cuda.syncthreads()
            for q in range(tsz):
                acc += sa[ty, q] * sb[q, tx]
            cuda.syncthreads()
        if row < m and col < n:
            c[row * n + col] = acc + (np.float64(bias[col]) if has_bias else 0.0)


def _product(a, b, m, n, k, trans_a, trans_b, dtype, bias=None):
    out = L.empty((m, n), dtype)
    if m * n == 0:
        return out
    t = L.tile()
    tiles = -(-m // t) * -(-n // t)
    has_bias = bias is not None
    _matmul[L.grid(tiles), (t, t)](a, b, L.flat(out), m, n, k, trans_a, trans_b,
                                   bias if has_bias else L.placeholder(dtype), has_bias)
    return out  # k = 0: the loop over K does not run, C = 0 (+ bias)


class LinearCtx(NamedTuple):
    x: object        # the input (device array), (..., K)
    weight: object   # (N, K)
    has_bias: bool


def linear(x, weight, bias=None):
    r"""Dense layer over any leading batch dims (``F.linear``).

    Shapes: ``x`` (..., K), ``weight`` (N, K), ``bias`` (N,) or None, ``y`` (..., N).

    .. math:: y_{\cdot n} = \sum_k x_{\cdot k} W_{nk} + b_n
    """
    x = L.float_array(x, "x", min_ndim=1)
    dt = np.dtype(x.dtype)
    w = L.float_array(weight, "weight", ndim=2, dtype=dt)
    shape = tuple(x.shape)  # (the simulator's shapes take no negative index)
    k = shape[-1]
    if w.shape[1] != k:
        raise ValueError(f"weight must have shape (out_features, {k}) to match the last dim "
                         f"of x {shape}, got {tuple(w.shape)}")
    n = w.shape[0]
    if bias is not None:
        bias = L.float_array(bias, "bias", ndim=1, dtype=dt)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},) (out_features), "
                             f"got {tuple(bias.shape)}")
    m = math.prod(shape[:-1])
    y = _product(L.flat(x), L.flat(w), m, n, k, False, True, dt, bias)
    return y.reshape(shape[:-1] + (n,)), LinearCtx(x, w, bias is not None)


def linear_backward(ctx: LinearCtx, grad_out):
    r"""Returns ``(dx, dW, db)``, ``db = None`` without bias (sums over all leading dims).

    .. math:: dx = dy\,W, \qquad dW = \sum_{\cdot} dy^T x, \qquad db = \sum_{\cdot} dy
    """
    x, w = ctx.x, ctx.weight
    n, k = w.shape
    g = L.float_array(grad_out, "grad_out", dtype=np.dtype(w.dtype))
    shape = tuple(x.shape)
    want = shape[:-1] + (n,)
    if tuple(g.shape) != want:
        raise ValueError(f"grad_out must have the same shape as the forward output {want}, "
                         f"got {tuple(g.shape)}")
    dt = np.dtype(x.dtype)
    m = math.prod(shape[:-1])
    gf, xf = L.flat(g), L.flat(x)
    dx = _product(gf, L.flat(w), m, k, n, False, False, dt).reshape(x.shape)  # (M,N)@(N,K)
    dw = _product(gf, xf, n, k, m, True, False, dt)                            # (N,M)@(M,K)
    db = None
    if ctx.has_bias:
        db = column_sums(gf, gf, L.placeholder(np.float64), L.placeholder(np.float64), m, n,
                         False, dt)
    return dx, dw, db
