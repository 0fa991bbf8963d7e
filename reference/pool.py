"""2-d max and average pooling over (N, C, H, W) or (C, H, W) inputs, forward and backward.

Output size, per spatial dim, as PyTorch computes it::

    out = floor_or_ceil((size + 2 pad - dilation (kernel - 1) - 1) / stride) + 1
    ceil_mode: drop the last window if it would start in the bottom/right padding

Each (n, c) plane is independent: the kernels run planes in parallel on large inputs.

Contexts: each forward returns its own context type; each backward refuses any other (a
TypeError naming ``ctx``) and a ``grad_out`` without the forward output's shape and dtype.
Neither context keeps an array of the caller's (max pooling keeps its own argmax table,
average pooling only the geometry), so editing the input after forward cannot change the
gradient, at no cost.
"""

from __future__ import annotations

import functools
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
    tables: tuple  # per output row and column: clipped window [lo, hi) and count
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
               ceil_mode: bool = False, return_indices: bool = False):
    r"""2-d max pooling (``F.max_pool2d``); padding counts as -inf, never as a maximum.

    .. math:: y_{a b} = \max_{i, j} x_{a s_h - p_h + i d_h,\ b s_w - p_w + j d_w}, \qquad
              dx_{u v} = \sum_{(a, b):\ \operatorname{argmax}(a, b) = (u, v)} dy_{a b}

    Ties: the window is scanned row by row and the gradient goes to the FIRST maximum, as in
    PyTorch; a NaN in the window is the maximum (the last NaN). A window that holds no pixel
    (padding and dilation can do that) gives -inf and passes no gradient (its index is -1;
    PyTorch 2.13's backward writes out of bounds for such a window, so there is no torch
    answer to mirror). Overlapping windows (stride < kernel) add their gradients. ``stride``
    defaults to ``kernel_size``; ``padding`` is at most half the kernel. ``x`` is (N, C, H, W)
    or (C, H, W).

    ``return_indices=True`` returns ``(y, indices)`` instead of ``y``, as PyTorch: ``indices``
    (int64, ``y``'s shape) holds each window's maximum as the flat index ``u * W + v`` into its
    own (n, c) plane of ``x`` (PyTorch's convention, what ``F.max_unpool2d`` reads). The
    indices are not differentiable; backward takes the gradient of ``y`` alone and returns
    ``(dx,)`` either way.
    """
    x, planes, geo = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    with_indices = v.boolean(return_indices, "return_indices")
    x3 = x.reshape(planes, geo.h, geo.w)
    y = np.empty((planes, geo.oh, geo.ow), x.dtype)
    am = np.empty((planes, geo.oh * geo.ow), np.int64)
    _max_fwd(x3, y, am, geo)
    out_shape = x.shape[:-2] + (geo.oh, geo.ow)
    ctx = MaxPoolCtx(am, geo, x.shape, x.dtype)
    if with_indices:  # a copy: the caller may edit it, the ctx's table must not change
        return (y.reshape(out_shape), am.reshape(out_shape).copy()), ctx
    return y.reshape(out_shape), ctx


def max_pool2d_backward(ctx: MaxPoolCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``(dx,)``: each window's upstream value added at its (first) maximum."""
    v.ctx_of(ctx, MaxPoolCtx, "max_pool2d")
    geo = ctx.geo
    g = _grad(grad_out, ctx.x_shape, ctx.dtype, (geo.oh, geo.ow))
    planes, q = ctx.argmax.shape
    dx = np.zeros((planes, geo.h * geo.w), ctx.dtype)
    _max_bwd(g.reshape(planes, q), ctx.argmax, dx)
    return (dx.reshape(ctx.x_shape),)


# ---------------------------------------------------------------------------------------------
# average pooling


def _avg_bounds(size: int, out: int, k: int, s: int, p: int, include_pad: bool):
    """Per output index along one dim: the window clipped to the image [lo, hi), and its
    count (padding included or not, never the ceil_mode overhang past the padding)."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    lo, hi = np.maximum(start, 0), np.minimum(end, size)
    count = (end - start) if include_pad else (hi - lo)
    return lo.astype(np.int64), hi.astype(np.int64), count.astype(np.float64)


@kernel()
def _avg_plane(x, y, pl, h0, h1, w0, w1, inv):
    for oh in range(y.shape[1]):
        for ow in range(y.shape[2]):
            s = 0.0
            for ih in range(h0[oh], h1[oh]):
                for iw in range(w0[ow], w1[ow]):
                    s += x[pl, ih, iw]
            y[pl, oh, ow] = s * inv[oh, ow]


@kernel()
def _avg_plane_bwd(g, dx, pl, h0, h1, w0, w1, inv, acc):
    # Scatter dy / D over each window into a float64 plane, then round once into dx.
    acc[:, :] = 0.0
    for oh in range(g.shape[1]):
        for ow in range(g.shape[2]):
            share = g[pl, oh, ow] * inv[oh, ow]
            for ih in range(h0[oh], h1[oh]):
                for iw in range(w0[ow], w1[ow]):
                    acc[ih, iw] += share
    for ih in range(dx.shape[1]):
        for iw in range(dx.shape[2]):
            dx[pl, ih, iw] = acc[ih, iw]


@kernel(parallel=True)
def _avg_fwd(x, y, h0, h1, w0, w1, inv):
    planes = x.shape[0]
    if x.size < PARALLEL_MIN:
        for pl in range(planes):
            _avg_plane(x, y, pl, h0, h1, w0, w1, inv)
    else:
        for pl in prange(planes):
            _avg_plane(x, y, pl, h0, h1, w0, w1, inv)


@kernel(parallel=True)
def _avg_bwd(g, dx, h0, h1, w0, w1, inv):
    planes, h, w = dx.shape
    if dx.size < PARALLEL_MIN:
        acc = np.empty((h, w))
        for pl in range(planes):
            _avg_plane_bwd(g, dx, pl, h0, h1, w0, w1, inv, acc)
    else:
        for pl in prange(planes):
            _avg_plane_bwd(g, dx, pl, h0, h1, w0, w1, inv, np.empty((h, w)))


@functools.lru_cache(maxsize=64)
def _avg_tables(geo: PoolGeometry, include_pad: bool, divisor: int):
    """Clipped window bounds per output row and column, and 1 / D per output pixel (an empty
    window, which ceil_mode never makes here, would give 0 as in PyTorch). Cached per
    geometry (a dozen numpy calls cost as much as a small pooling); the kernels only read
    them."""
    h0, h1, ch = _avg_bounds(geo.h, geo.oh, geo.kh, geo.sh, geo.ph, include_pad)
    w0, w1, cw = _avg_bounds(geo.w, geo.ow, geo.kw, geo.sw, geo.pw, include_pad)
    d = np.full((geo.oh, geo.ow), float(divisor)) if divisor else np.outer(ch, cw)
    nonempty = np.outer(h1 > h0, w1 > w0)
    inv = np.where(nonempty, 1.0 / np.where(nonempty, d, 1.0), 0.0)
    return h0, h1, w0, w1, inv


def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None,
               ) -> tuple[np.ndarray, AvgPoolCtx]:
    r"""2-d average pooling (``F.avg_pool2d``).

    .. math:: y_{a b} = \frac{1}{D_{ab}} \sum_{(u, v) \in R_{ab}} x_{u v}, \qquad
              dx_{u v} = \sum_{(a, b):\ (u, v) \in R_{ab}} dy_{a b} / D_{ab}

    ``R_ab`` is the window clipped to the image. The divisor ``D_ab`` is ``divisor_override``
    when given; else with ``count_include_pad`` the window's size counting zero padding (but
    not the ceil_mode overhang past the padding, as in PyTorch), without it the number of
    image pixels in the window. Sums accumulate in float64 and are multiplied by 1/D
    (one more rounding than dividing, in float64). Backward returns ``(dx,)``.
    """
    x, planes, geo = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    include = v.boolean(count_include_pad, "count_include_pad")
    divisor = 0 if divisor_override is None else v.integer(divisor_override,
                                                          "divisor_override", lo=1)
    x3 = x.reshape(planes, geo.h, geo.w)
    y = np.empty((planes, geo.oh, geo.ow), x.dtype)
    tables = _avg_tables(geo, include, divisor)
    _avg_fwd(x3, y, *tables)
    ctx = AvgPoolCtx(geo, tables, divisor, x.shape, x.dtype)
    return y.reshape(x.shape[:-2] + (geo.oh, geo.ow)), ctx


def avg_pool2d_backward(ctx: AvgPoolCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``(dx,)``: each window's upstream value divided by its divisor, spread over it."""
    v.ctx_of(ctx, AvgPoolCtx, "avg_pool2d")
    geo = ctx.geo
    g = _grad(grad_out, ctx.x_shape, ctx.dtype, (geo.oh, geo.ow))
    planes = math.prod(ctx.x_shape[:-2])
    dx = np.empty((planes, geo.h, geo.w), ctx.dtype)
    _avg_bwd(g.reshape(planes, geo.oh, geo.ow), dx, *ctx.tables)
    return (dx.reshape(ctx.x_shape),)
