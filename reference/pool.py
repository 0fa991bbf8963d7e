"""2-d max and average pooling over (N, C, H, W) or (C, H, W) inputs, forward and backward.

Output size, per spatial dim, as PyTorch computes it::

    out = floor_or_ceil((size + 2 pad - dilation (kernel - 1) - 1) / stride) + 1
    ceil_mode: drop the last window if it would start in the bottom/right padding

Each (n, c) plane is independent: the kernels run planes in parallel on large inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"]


class PoolGeometry(NamedTuple):
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int


class MaxPoolCtx(NamedTuple):
    argmax: np.ndarray  # (planes, OH*OW) int64: flat index ih*W + iw of each window's max
    geo: PoolGeometry
    x_shape: tuple[int, ...]
    dtype: np.dtype


class AvgPoolCtx(NamedTuple):
    geo: PoolGeometry
    count_include_pad: bool
    divisor: int  # divisor_override, or 0
    x_shape: tuple[int, ...]
    dtype: np.dtype


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    x = v.float_array(x, "x", ndim=(3, 4))
    k = v.int_tuple(kernel_size, "kernel_size", 2, lo=1)
    s = k if stride is None else v.int_tuple(stride, "stride", 2, lo=1)
    p = v.int_tuple(padding, "padding", 2, lo=0)
    d = v.int_tuple(dilation, "dilation", 2, lo=1)
    ceil_mode = v.boolean(ceil_mode, "ceil_mode")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size (as in PyTorch), got "
                         f"padding={p} for kernel_size={k}")
    h, w = x.shape[-2:]
    oh = _out_size(h, k[0], s[0], p[0], d[0], ceil_mode)
    ow = _out_size(w, k[1], s[1], p[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel_size {k} (dilation {d}) is larger than x's padded input "
                         f"{(h + 2 * p[0], w + 2 * p[1])}: the output would be {oh} x {ow}")
    planes = math.prod(x.shape[:-2])
    return x, planes, PoolGeometry(h, w, oh, ow, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])


def _grad(grad_out, x_shape, dtype, geo_out: tuple[int, int]):
    g = v.float_array(grad_out, "grad_out", dtype=dtype)
    want = tuple(x_shape[:-2]) + geo_out
    if g.shape != want:
        raise ValueError(f"grad_out must have the forward output's shape {want}, got {g.shape}")
    return g


# ---------------------------------------------------------------------------------------------
# max pooling


@kernel()
def _max_plane(x, y, am, pl, geo):
    for oh in range(geo.oh):
        h0 = oh * geo.sh - geo.ph
        h1 = min(h0 + (geo.kh - 1) * geo.dh + 1, geo.h)
        while h0 < 0:
            h0 += geo.dh
        for ow in range(geo.ow):
            w0 = ow * geo.sw - geo.pw
            w1 = min(w0 + (geo.kw - 1) * geo.dw + 1, geo.w)
            while w0 < 0:
                w0 += geo.dw
            best = -1  # an empty window (all padding, from dilation): -inf and no gradient
            m = -np.inf
            for ih in range(h0, h1, geo.dh):
                for iw in range(w0, w1, geo.dw):
                    val = np.float64(x[pl, ih, iw])
                    # first maximum in scan order; a NaN wins (the last one), as in PyTorch
                    if val > m or val != val or best < 0:
                        m = val
                        best = ih * geo.w + iw
            y[pl, oh, ow] = m
            am[pl, oh * geo.ow + ow] = best


@kernel(parallel=True)
def _max_fwd(x, y, am, geo):
    planes = x.shape[0]
    if x.size < PARALLEL_MIN:
        for pl in range(planes):
            _max_plane(x, y, am, pl, geo)
    else:
        for pl in prange(planes):
            _max_plane(x, y, am, pl, geo)


@kernel(parallel=True)
def _max_bwd(g, am, dx):
    # g (planes, OH*OW); dx (planes, H*W) zeroed
    planes, q = g.shape
    if dx.size < PARALLEL_MIN:
        for pl in range(planes):
            for i in range(q):
                if am[pl, i] >= 0:
                    dx[pl, am[pl, i]] += g[pl, i]
    else:
        for pl in prange(planes):
            for i in range(q):
                if am[pl, i] >= 0:
                    dx[pl, am[pl, i]] += g[pl, i]


def max_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False) -> tuple[np.ndarray, MaxPoolCtx]:
    r"""2-d max pooling (``F.max_pool2d``); padding counts as -inf, never as a maximum.

    .. math:: y_{a b} = \max_{i, j} x_{a s_h - p_h + i d_h,\ b s_w - p_w + j d_w}, \qquad
              dx_{u v} = \sum_{(a, b):\ \operatorname{argmax}(a, b) = (u, v)} dy_{a b}

    Ties: the window is scanned row by row and the gradient goes to the FIRST maximum, as in
    PyTorch; a NaN in the window is the maximum (the last NaN). A window that holds no pixel
    (padding and dilation can do that) gives -inf and passes no gradient. Overlapping windows
    (stride < kernel) add their gradients. ``stride`` defaults to ``kernel_size``; ``padding``
    is at most half the kernel. Backward returns ``(dx,)``.
    """
    x, planes, geo = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    x3 = x.reshape(planes, geo.h, geo.w)
    y = np.empty((planes, geo.oh, geo.ow), x.dtype)
    am = np.empty((planes, geo.oh * geo.ow), np.int64)
    _max_fwd(x3, y, am, geo)
    return y.reshape(x.shape[:-2] + (geo.oh, geo.ow)), MaxPoolCtx(am, geo, x.shape, x.dtype)


def max_pool2d_backward(ctx: MaxPoolCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    geo = ctx.geo
    g = _grad(grad_out, ctx.x_shape, ctx.dtype, (geo.oh, geo.ow))
    planes, q = ctx.argmax.shape
    dx = np.zeros((planes, geo.h * geo.w), ctx.dtype)
    _max_bwd(g.reshape(planes, q), ctx.argmax, dx)
    return (dx.reshape(ctx.x_shape),)


# ---------------------------------------------------------------------------------------------
# average pooling


@kernel()
def _avg_window(oh, ow, geo, include_pad, divisor):
    # (h0, h1, w0, w1, divisor) of window (oh, ow), clipped to the image, as PyTorch does
    h0 = oh * geo.sh - geo.ph
    w0 = ow * geo.sw - geo.pw
    h1 = min(h0 + geo.kh, geo.h + geo.ph)
    w1 = min(w0 + geo.kw, geo.w + geo.pw)
    pool = (h1 - h0) * (w1 - w0)  # counts padding, not the ceil_mode overhang beyond it
    h0, w0 = max(h0, 0), max(w0, 0)
    h1, w1 = min(h1, geo.h), min(w1, geo.w)
    if divisor == 0:
        divisor = pool if include_pad else (h1 - h0) * (w1 - w0)
    return h0, h1, w0, w1, divisor


@kernel()
def _avg_plane(x, y, pl, geo, include_pad, divisor):
    for oh in range(geo.oh):
        for ow in range(geo.ow):
            h0, h1, w0, w1, div = _avg_window(oh, ow, geo, include_pad, divisor)
            s = 0.0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    s += x[pl, ih, iw]
            y[pl, oh, ow] = s / div if h0 < h1 and w0 < w1 else 0.0


@kernel()
def _avg_plane_bwd(g, dx, pl, geo, include_pad, divisor):
    for oh in range(geo.oh):
        for ow in range(geo.ow):
            h0, h1, w0, w1, div = _avg_window(oh, ow, geo, include_pad, divisor)
            if h0 < h1 and w0 < w1:
                share = np.float64(g[pl, oh, ow]) / div
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dx[pl, ih, iw] += share


@kernel(parallel=True)
def _avg_fwd(x, y, geo, include_pad, divisor):
    planes = x.shape[0]
    if x.size < PARALLEL_MIN:
        for pl in range(planes):
            _avg_plane(x, y, pl, geo, include_pad, divisor)
    else:
        for pl in prange(planes):
            _avg_plane(x, y, pl, geo, include_pad, divisor)


@kernel(parallel=True)
def _avg_bwd(g, dx, geo, include_pad, divisor):
    planes = dx.shape[0]
    if dx.size < PARALLEL_MIN:
        for pl in range(planes):
            _avg_plane_bwd(g, dx, pl, geo, include_pad, divisor)
    else:
        for pl in prange(planes):
            _avg_plane_bwd(g, dx, pl, geo, include_pad, divisor)


def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None,
               ) -> tuple[np.ndarray, AvgPoolCtx]:
    r"""2-d average pooling (``F.avg_pool2d``).

    .. math:: y_{a b} = \frac{1}{D_{ab}} \sum_{(u, v) \in R_{ab}} x_{u v}, \qquad
              dx_{u v} = \sum_{(a, b):\ (u, v) \in R_{ab}} dy_{a b} / D_{ab}

    ``R_ab`` is the window clipped to the image. The divisor ``D_ab`` is ``divisor_override``
    when given; else with ``count_include_pad`` the window's size counting zero padding (but
    not the ceil_mode overhang past the padding, as in PyTorch), without it the number of
    image pixels in the window. Sums accumulate in float64. Backward returns ``(dx,)``.
    """
    x, planes, geo = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    include = v.boolean(count_include_pad, "count_include_pad")
    divisor = 0 if divisor_override is None else v.integer(divisor_override,
                                                          "divisor_override", lo=1)
    x3 = x.reshape(planes, geo.h, geo.w)
    y = np.empty((planes, geo.oh, geo.ow), x.dtype)
    _avg_fwd(x3, y, geo, include, divisor)
    ctx = AvgPoolCtx(geo, include, divisor, x.shape, x.dtype)
    return y.reshape(x.shape[:-2] + (geo.oh, geo.ow)), ctx


def avg_pool2d_backward(ctx: AvgPoolCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    geo = ctx.geo
    g = _grad(grad_out, ctx.x_shape, ctx.dtype, (geo.oh, geo.ow))
    planes = math.prod(ctx.x_shape[:-2])
    dx = np.zeros((planes, geo.h, geo.w))  # float64: overlapping windows add up
    _avg_bwd(g.reshape(planes, geo.oh, geo.ow), dx, geo, ctx.count_include_pad, ctx.divisor)
    return (dx.astype(ctx.dtype).reshape(ctx.x_shape),)
