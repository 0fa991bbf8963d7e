"""2-d convolution (cross-correlation, as ``F.conv2d``), NCHW, forward and backward.

Stride, padding (ints, pairs, ``'same'``, ``'valid'``), dilation, groups (depthwise is
``groups = in_channels``) and an optional bias; odd and even, non-square kernels. The work is
im2col + GEMM in blocks: per sample and group, the input patches of a block of ``nb`` output
columns are unrolled into ``col`` (C_g * KH * KW, nb) and BLAS does the rest:

    forward     Y_g  = W_g @ col                       (C_out_g, nb)
    backward    dW_g += dY_g @ col^T,  dcol = W_g^T @ dY_g,  dx += col2im(dcol)

Samples run in parallel (one ``prange`` per pass), each block's products on the calling
thread: no BLAS threads beside Numba's. With MKL (sequential) a block's columns fill about
``COL_BYTES`` of cache; with OpenBLAS alone its products stay within ``SERIAL_MNK``, below
which OpenBLAS does not wake its threads. With stride 1 the columns are laid out on the padded
width (see "kernels"), so each row of ``col`` is one contiguous copy of the padded input.
Measured within one run (paired, medium (8, 16, 32, 32) with 32 3x3 filters, float32, a busy
2-core machine): forward+backward 4.77x torch's time with one serial im2col + a threaded
product per sample, 0.49x in blocks.

Two shapes get kernels of their own: depthwise (one input channel per group) is a direct
kernel, one item per (sample, channel), each tap one vectorised loop over the padded plane;
pointwise (1 x 1, stride 1, unpadded) needs no im2col (the input is the column matrix), one
product per sample in row blocks. (MobileNet block, medium, forward+backward, same run:
1.50x torch's time through the old im2col, 0.38x with these.)

Stride 1 over finite data skips the junk columns' bookkeeping: dy's junk columns are zero, so
they add nothing to dW unless the padded input holds inf or NaN (each sample's plane is checked;
only then are col's junk entries zeroed), and with finite weights ``W^T dy``'s junk columns
are exact zeros, so col2im adds each row of ``dcol`` whole, one contiguous loop, instead of
output row by output row. ``conv2d_backward(..., input_grad=False)`` skips dx (a first layer).
Measured on the small CNN's second and third convolutions ((64, 8, 14, 14) -> 16 and
(64, 16, 7, 7) -> 32, float32, one thread, CPU time, a loaded machine): backward 8.2 -> 4.4 ms
and 9.0 -> 3.9 ms (the latter also from balanced blocks, 31 + 30 columns instead of 56 + 5).

np.dot inside @njit calls SciPy's OpenBLAS (float32: sgemm, which accumulates in float32 as
torch does; the spec's float32 tolerance is derived from the sum length). dW sums each
block's product (nb-long float32 sums) into float64, per sample, then over the samples in
order; db sums in float64.

The context is a ``ConvCtx``; backward refuses any other object (TypeError naming ``ctx``)
and a ``grad_out`` without the output's shape and dtype. It keeps private copies of ``x`` and
``weight`` when they are the caller's arrays, so editing them in place between forward and
backward does not change the gradients; the copy is one pass over x and weight, small beside
the im2col + GEMM (measured within one run on the medium size, (8, 32, 32, 32) with 32 3x3
filters: the two copies take under 1% of the forward).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference._blas import HAVE_MKL, SERIAL_MNK, dot_one_thread
from reference._jit import kernel
from reference._rows import add_row, copy_row, zero_row

__all__ = ["conv2d", "conv2d_backward", "conv_output_size", "conv_padding"]

# Scratch buffers, reused across calls, one per thread and dtype. A fresh large buffer is
# page-faulted in on first touch, and faults inside a BLAS call are dear: measured here,
# (144 x 32) @ (32 x 8192) in float32 takes 3.4 ms into a fresh output, 1.1 ms into a reused
# one. Nothing in them outlives a call; buffers above WORKSPACE_MAX are not kept.
WORKSPACE_MAX = 64 << 20
_workspaces: dict[tuple[int, np.dtype], np.ndarray] = {}


def _workspace(n: int, dtype: np.dtype) -> np.ndarray:
    """A flat scratch array of at least ``n`` elements of ``dtype`` for this thread."""
    key = (threading.get_ident(), np.dtype(dtype))
    buf = _workspaces.get(key)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dtype)
        if buf.nbytes <= WORKSPACE_MAX:
            _workspaces[key] = buf
    return buf


class Geometry(NamedTuple):
    """Everything the kernels need about the shapes, as plain ints."""

    n: int
    c: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    oh: int
    ow: int
    sh: int
    sw: int
    pt: int  # padding top, bottom, left, right ('same' with an even kernel is asymmetric)
    pb: int
    pl: int
    pr: int
    dh: int
    dw: int
    groups: int
    hp: int      # padded height and width
    wp: int
    wide: bool   # stride 1: columns on the padded width (see the kernels)
    pitch: int   # columns per output row: wp when wide, else ow
    ncols: int   # columns per sample
    nb: int      # columns per block (one product)
    path: int    # GENERIC, DEPTHWISE or POINTWISE


class ConvCtx(NamedTuple):
    x: np.ndarray       # (N, C, H, W), batched
    weight: np.ndarray  # (C_out, C/groups, KH, KW)
    has_bias: bool
    geo: Geometry
    unbatched: bool


def conv_output_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int,
                     dilation: int) -> int:
    """``floor((size + pads - dilation (kernel - 1) - 1) / stride) + 1``."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def conv_padding(padding, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair, ``'valid'`` or ``'same'``.

    ``'same'`` pads ``dilation * (kernel - 1)`` in total per dim, the odd one extra at the
    bottom/right, as PyTorch does; like PyTorch it refuses a stride other than 1.
    """
    if isinstance(padding, str):
        mode = v.choice(padding, "padding", ("same", "valid"))
        if mode == "valid":
            return 0, 0, 0, 0
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride={stride}")
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = v.int_tuple(padding, "padding", 2, lo=0)
    return ph, ph, pw, pw


# ---------------------------------------------------------------------------------------------
# kernels
#
# The column space of one sample: column q stands for output pixel (a, b) = divmod(q, pitch).
# "Wide" (stride 1): pitch = WP, the padded width, so the input pixel of tap (i, j) sits at
# q + i dh WP + j dw in the flattened padded plane, a constant offset: every im2col row of a
# block is one contiguous copy. Columns with b >= OW ("junk", WP - OW per row) are computed
# and dropped. Otherwise pitch = OW and each output row's segment is a strided copy.


@kernel()
def _pad(src, plane, geo):
    """``plane`` (HP*WP,) = one channel ``src`` (H*W,) with its zero border."""
    wp = geo.wp
    zero_row(plane[:geo.pt * wp])
    for h in range(geo.h):
        r = (h + geo.pt) * wp
        zero_row(plane[r:r + geo.pl])
        copy_row(plane[r + geo.pl:r + geo.pl + geo.w], src[h * geo.w:(h + 1) * geo.w])
        zero_row(plane[r + geo.pl + geo.w:r + wp])
    zero_row(plane[(geo.pt + geo.h) * wp:])


@kernel()
def _unpad(plane, dst, geo):
    """``dst`` (H*W,) = the interior of ``plane`` (the adjoint of ``_pad``, border dropped)."""
    for h in range(geo.h):
        r = (h + geo.pt) * geo.wp + geo.pl
        copy_row(dst[h * geo.w:(h + 1) * geo.w], plane[r:r + geo.w])


@kernel()
def _segment(q, q1, geo):
    """Column q's output row a and column b, the end e of its row's run in [q, q1), and the end
    v <= e of the valid (non-junk) part."""
    a = q // geo.pitch
    b = q - a * geo.pitch
    e = min(q1, q + geo.pitch - b)
    v = min(e, q + geo.ow - b) if b < geo.ow else q
    return a, b, e, v


@kernel()
def _cols(planes, c0, cg, col, q0, q1, geo, zero_junk):
    """``col[(c KH + i) KW + j, q - q0]`` = padded input of channel c0 + c under tap (i, j)
    of output column q, for q in [q0, q1); junk columns zeroed when ``zero_junk``."""
    m = q1 - q0
    for c in range(cg):
        plane = planes[c0 + c]
        for i in range(geo.kh):
            for j in range(geo.kw):
                r = (c * geo.kh + i) * geo.kw + j
                if geo.wide:
                    off = i * geo.dh * geo.wp + j * geo.dw + q0
                    copy_row(col[r, :m], plane[off:off + m])
                    if zero_junk:
                        q = q0
                        while q < q1:
                            a, b, e, v = _segment(q, q1, geo)
                            zero_row(col[r, v - q0:e - q0])
                            q = e
                else:
                    q = q0
                    while q < q1:
                        a, b, e, v = _segment(q, q1, geo)
                        base = (a * geo.sh + i * geo.dh) * geo.wp + b * geo.sw + j * geo.dw
                        copy_row(col[r, q - q0:e - q0],
                              plane[base:base + (e - q - 1) * geo.sw + 1:geo.sw])
                        q = e


@kernel()
def _cols_add(dcol, dplanes, c0, cg, q0, q1, geo, whole):
    """The adjoint of ``_cols``: add each valid column's entries to their padded pixels.

    ``whole`` (wide columns only): ``dcol``'s junk columns hold exact zeros, so each row is
    added whole, one contiguous loop (a zero added to a pixel changes at most its sign of
    zero); otherwise the valid run of each output row apart."""
    for c in range(cg):
        plane = dplanes[c0 + c]
        for i in range(geo.kh):
            for j in range(geo.kw):
                r = (c * geo.kh + i) * geo.kw + j
                if whole:
                    off = i * geo.dh * geo.wp + j * geo.dw + q0
                    add_row(plane[off:off + q1 - q0], dcol[r, :q1 - q0])
                    continue
                q = q0
                while q < q1:
                    a, b, e, v = _segment(q, q1, geo)
                    if v > q:
                        base = (a * geo.sh + i * geo.dh) * geo.wp + b * geo.sw + j * geo.dw
                        if geo.sw == 1:
                            add_row(plane[base:base + v - q], dcol[r, q - q0:v - q0])
                        else:
                            add_row(plane[base:base + (v - q - 1) * geo.sw + 1:geo.sw],
                                     dcol[r, q - q0:v - q0])
                    q = e


@kernel(reduce=True)
def _all_finite(a):
    """Whether every entry of the C-contiguous ``a`` is finite: ``sum a * 0`` is 0 exactly
    then and NaN otherwise (``reassoc`` lets the sum vectorise; NaN still propagates)."""
    flat = a.reshape(a.size)
    s = 0.0
    for k in range(flat.size):
        s += np.float64(flat[k]) * 0.0
    return s == 0


@kernel()
def _copy_plus(dst, src, c):
    """``dst[:] = src + c`` (a loop: see reference/_rows.py)."""
    for k in range(dst.size):
        dst[k] = src[k] + c


@kernel()
def _put(out, y3n, co0, q0, q1, geo, b, has_bias):
    """Valid columns of ``out`` (g_out, q1 - q0) into ``y3n[co0 + o]`` (+ bias)."""
    for o in range(out.shape[0]):
        q = q0
        while q < q1:
            a, bb, e, v = _segment(q, q1, geo)
            t = a * geo.ow + bb
            if has_bias:
                _copy_plus(y3n[co0 + o, t:t + v - q], out[o, q - q0:v - q0], b[co0 + o])
            else:
                copy_row(y3n[co0 + o, t:t + v - q], out[o, q - q0:v - q0])
            q = e


@kernel()
def _take(g3n, co0, dy, q0, q1, geo):
    """The adjoint of ``_put``: ``dy`` (g_out, q1 - q0) from ``g3n``, junk columns zero."""
    for o in range(dy.shape[0]):
        q = q0
        while q < q1:
            a, bb, e, v = _segment(q, q1, geo)
            t = a * geo.ow + bb
            copy_row(dy[o, q - q0:v - q0], g3n[co0 + o, t:t + v - q])
            zero_row(dy[o, v - q0:e - q0])
            q = e


@kernel()
def _fwd_sample(n, x3, w3, b, has_bias, y3, geo, planes, cols, outs):
    g_in = geo.c // geo.groups
    g_out, kc = w3.shape[1], w3.shape[2]
    for c in range(geo.c):
        _pad(x3[n, c], planes[n, c], geo)
    for g in range(geo.groups):
        for q0 in range(0, geo.ncols, geo.nb):
            q1 = min(geo.ncols, q0 + geo.nb)
            m = q1 - q0
            col = cols[n, :kc * m].reshape(kc, m)
            out = outs[n, :g_out * m].reshape(g_out, m)
            _cols(planes[n], g * g_in, g_in, col, q0, q1, geo, False)
            dot_one_thread(w3[g], col, out)
            _put(out, y3[n], g * g_out, q0, q1, geo, b, has_bias)


@kernel(parallel=True)
def _conv_fwd(x3, w3, b, has_bias, y3, geo, planes, cols, outs, threaded):
    # x3 (N, C, H*W); w3 (groups, C_out_g, C_g*KH*KW); y3 (N, C_out, OH*OW);
    # per sample: planes (C, HP*WP), cols (kc*nb,), outs (g_out*nb,)
    if threaded:
        for n in prange(geo.n):
            _fwd_sample(n, x3, w3, b, has_bias, y3, geo, planes, cols, outs)
    else:
        for n in range(geo.n):
            _fwd_sample(n, x3, w3, b, has_bias, y3, geo, planes, cols, outs)


@kernel()
def _bwd_sample(n, x3, wt3, g3, dx3, dwp, geo, planes, dplanes, cols, dys, dcols, parts,
                w_finite):
    g_in = geo.c // geo.groups
    kc, g_out = wt3.shape[1], wt3.shape[2]
    want_dx = dx3.shape[0] > 0  # an empty dx3: input_grad=False
    for c in range(geo.c):
        _pad(x3[n, c], planes[n, c], geo)
    if want_dx:
        dplanes[n, :, :] = 0
    part = parts[n].reshape(kc, g_out)  # (col @ dy^T is faster than dy @ col^T: measured 1.4x)
    # Junk columns (wide layout): dy's are zero, so they add nothing to dW unless col's junk
    # entries (real padded pixels) are inf or NaN (0 * inf): then col's are zeroed too. With
    # finite weights, dcol's junk columns are exact zeros and col2im adds whole rows.
    zero_junk = geo.wide and not _all_finite(planes[n])
    whole = geo.wide and w_finite
    for g in range(geo.groups):
        for q0 in range(0, geo.ncols, geo.nb):
            q1 = min(geo.ncols, q0 + geo.nb)
            m = q1 - q0
            col = cols[n, :kc * m].reshape(kc, m)
            dy = dys[n, :g_out * m].reshape(g_out, m)
            dcol = dcols[n, :kc * m].reshape(kc, m)
            _cols(planes[n], g * g_in, g_in, col, q0, q1, geo, zero_junk)
            _take(g3[n], g * g_out, dy, q0, q1, geo)
            dot_one_thread(col, dy.T, part)                 # (kc, g_out) = dW^T, m-long sums
            add_row(dwp[n, g].reshape(kc * g_out), part.reshape(kc * g_out))  # float64 +=
            if want_dx:
                dot_one_thread(wt3[g], dy, dcol)            # (kc, m)
                _cols_add(dcol, dplanes[n], g * g_in, g_in, q0, q1, geo, whole)
    if want_dx:
        for c in range(geo.c):
            _unpad(dplanes[n, c], dx3[n, c], geo)


@kernel(parallel=True)
def _conv_bwd(x3, wt3, g3, dx3, dw3, db, has_bias, geo, planes, dplanes, cols, dys, dcols,
              parts, w_finite, threaded):
    # wt3 (groups, kc, C_out_g): each group's W^T, contiguous; dw3 (groups, C_out_g, kc)
    # per sample, float64, as dW^T (kc, g_out) like each block's part, so adding a part is one
    # contiguous loop (the transposed adds took 34 us a sample of the medium backward, the loop
    # 3); summed in sample order, then transposed once
    dwp = np.zeros((geo.n, dw3.shape[0], dw3.shape[2], dw3.shape[1]))
    if threaded:
        for n in prange(geo.n):
            _bwd_sample(n, x3, wt3, g3, dx3, dwp, geo, planes, dplanes, cols, dys, dcols, parts,
                        w_finite)
    else:
        for n in range(geo.n):
            _bwd_sample(n, x3, wt3, g3, dx3, dwp, geo, planes, dplanes, cols, dys, dcols, parts,
                        w_finite)
    _sum_samples_t(dwp, dw3)
    _bias_grad(g3, db, has_bias)


# Depthwise (one input channel per group, a depth multiplier m = C_out / C): a direct
# kernel, one item per (sample, channel), each output row accumulated over the taps in cache.


@kernel()
def _tap_rows(y, plane, wv, geo, i, j, adjoint):
    """Tap (i, j) over every output row: ``y[a OW + q] += wv * plane[pixel of (a, q)]``, or
    its adjoint ``plane[pixel of (a, q)] += wv * y[a OW + q]``. (Loops over views indexed
    from 0: Numba then drops its negative-index checks and the loops vectorise.)"""
    for a in range(geo.oh):
        base = (a * geo.sh + i * geo.dh) * geo.wp + j * geo.dw
        yr = y[a * geo.ow:(a + 1) * geo.ow]
        if geo.sw == 1:  # a contiguous view: the loops vectorise
            _fma(yr, plane[base:base + geo.ow], wv, adjoint)
        else:
            _fma(yr, plane[base:base + (geo.ow - 1) * geo.sw + 1:geo.sw], wv, adjoint)


@kernel()
def _fma(yr, pr, wv, adjoint):
    """``yr += wv * pr``, or ``pr += wv * yr`` when ``adjoint``."""
    if adjoint:
        for q in range(yr.size):
            pr[q] += wv * yr[q]
    else:
        for q in range(yr.size):
            yr[q] += wv * pr[q]


@kernel()
def _tap_wide(acc, plane, wv, off, n, adjoint):
    """Tap over the wide columns: ``acc[q] += wv * plane[off + q]`` for q < n, or its adjoint
    ``plane[off + q] += wv * acc[q]``: one contiguous loop for the whole plane."""
    av = acc[:n]
    pv = plane[off:off + n]
    if adjoint:
        for q in range(n):
            pv[q] += wv * av[q]
    else:
        for q in range(n):
            av[q] += wv * pv[q]


@kernel(reduce=True)
def _tap_dot(gy, plane, geo, i, j):
    """``sum_{a, q} gy[a OW + q] * plane[pixel of (a, q) under tap (i, j)]`` in float64
    (reassociated: vectorised)."""
    s = 0.0
    for a in range(geo.oh):
        base = (a * geo.sh + i * geo.dh) * geo.wp + j * geo.dw
        yr = gy[a * geo.ow:(a + 1) * geo.ow]
        if geo.sw == 1:
            s += _dot64(yr, plane[base:base + geo.ow])
        else:
            s += _dot64(yr, plane[base:base + (geo.ow - 1) * geo.sw + 1:geo.sw])
    return s


@kernel(reduce=True)
def _dot64(a, b):
    """``sum_k a[k] b[k]`` in float64 (reassociated: vectorised)."""
    s = 0.0
    for k in range(a.size):
        s += np.float64(a[k]) * np.float64(b[k])
    return s


@kernel()
def _dw_fwd_item(t, x3, w2, b, has_bias, y3, geo, planes, accs):
    n = t // geo.c
    c = t - n * geo.c
    mult = geo.c_out // geo.c
    plane, acc = planes[t], accs[t]
    _pad(x3[n, c], plane, geo)
    for o in range(mult):
        co = c * mult + o
        y = y3[n, co]
        if geo.wide:  # every tap one loop over the wide columns, then the valid ones to y
            acc[:] = 0
            for i in range(geo.kh):
                for j in range(geo.kw):
                    off = i * geo.dh * geo.wp + j * geo.dw
                    _tap_wide(acc, plane, w2[co, i * geo.kw + j], off, geo.ncols, False)
            for a in range(geo.oh):
                copy_row(y[a * geo.ow:(a + 1) * geo.ow], acc[a * geo.wp:a * geo.wp + geo.ow])
        else:
            y[:] = 0
            for i in range(geo.kh):
                for j in range(geo.kw):
                    _tap_rows(y, plane, w2[co, i * geo.kw + j], geo, i, j, False)
        if has_bias:
            y[:] += b[co]


@kernel(parallel=True)
def _dw_fwd(x3, w2, b, has_bias, y3, geo, planes, accs, threaded):
    # x3 (N, C, H*W); w2 (C_out, KH*KW); y3 (N, C_out, OH*OW); per (sample, channel) item:
    # planes (HP*WP), accs (ncols)
    if threaded:
        for t in prange(geo.n * geo.c):
            _dw_fwd_item(t, x3, w2, b, has_bias, y3, geo, planes, accs)
    else:
        for t in range(geo.n * geo.c):
            _dw_fwd_item(t, x3, w2, b, has_bias, y3, geo, planes, accs)


@kernel()
def _dw_bwd_item(t, x3, w2, g3, dx3, dwp, geo, planes, dplanes, accs):
    n = t // geo.c
    c = t - n * geo.c
    mult = geo.c_out // geo.c
    taps = geo.kh * geo.kw
    plane, dplane, acc = planes[t], dplanes[t], accs[t]
    want_dx = dx3.shape[0] > 0  # an empty dx3: input_grad=False
    _pad(x3[n, c], plane, geo)
    dplane[:] = 0
    # dW over the wide columns (dy in acc, junk columns zero) needs a finite plane (0 * inf);
    # dx over them, finite weights (0 * w adds nothing); otherwise row by row
    plane_finite = geo.wide and _all_finite(plane)
    for o in range(mult):
        co = c * mult + o
        gy = g3[n, co]
        if geo.wide:
            acc[:] = 0
            for a in range(geo.oh):
                copy_row(acc[a * geo.wp:a * geo.wp + geo.ow], gy[a * geo.ow:(a + 1) * geo.ow])
        for k in range(taps):
            if plane_finite:
                off = (k // geo.kw) * geo.dh * geo.wp + (k % geo.kw) * geo.dw
                dwp[t, o, k] += _dot64(acc[:geo.ncols], plane[off:off + geo.ncols])
            else:
                dwp[t, o, k] += _tap_dot(gy, plane, geo, k // geo.kw, k % geo.kw)
        if not want_dx:
            continue
        finite = True
        for k in range(taps):
            finite = finite and np.isfinite(w2[co, k])
        if geo.wide and finite:
            for k in range(taps):
                off = (k // geo.kw) * geo.dh * geo.wp + (k % geo.kw) * geo.dw
                _tap_wide(acc, dplane, w2[co, k], off, geo.ncols, True)
        else:
            for k in range(taps):
                _tap_rows(gy, dplane, w2[co, k], geo, k // geo.kw, k % geo.kw, True)
    if want_dx:
        _unpad(dplane, dx3[n, c], geo)


@kernel(parallel=True)
def _dw_bwd(x3, w2, g3, dx3, dw2, db, has_bias, geo, planes, dplanes, accs, threaded):
    mult = geo.c_out // geo.c
    taps = geo.kh * geo.kw
    dwp = np.zeros((geo.n * geo.c, mult, taps))  # per item, float64; summed in sample order
    if threaded:
        for t in prange(geo.n * geo.c):
            _dw_bwd_item(t, x3, w2, g3, dx3, dwp, geo, planes, dplanes, accs)
    else:
        for t in range(geo.n * geo.c):
            _dw_bwd_item(t, x3, w2, g3, dx3, dwp, geo, planes, dplanes, accs)
    for c in range(geo.c):
        for o in range(mult):
            for k in range(taps):
                s = 0.0
                for n in range(geo.n):
                    s += dwp[n * geo.c + c, o, k]
                dw2[c * mult + o, k] = s
    _bias_grad(g3, db, has_bias)


# Pointwise (1 x 1, stride 1, no padding): the input is already the column matrix, so each
# sample is one product per group, on the calling thread in row blocks (dot_one_thread).


@kernel()
def _pw_fwd_item(n, x3, w3, b, has_bias, y3, geo):
    g_in, g_out = geo.c // geo.groups, geo.c_out // geo.groups
    for g in range(geo.groups):
        yg = y3[n, g * g_out:(g + 1) * g_out]
        dot_one_thread(w3[g], x3[n, g * g_in:(g + 1) * g_in], yg)
        if has_bias:
            for o in range(g_out):
                yg[o] += b[g * g_out + o]


@kernel(parallel=True)
def _pw_fwd(x3, w3, b, has_bias, y3, geo, threaded):
    if threaded:
        for n in prange(geo.n):
            _pw_fwd_item(n, x3, w3, b, has_bias, y3, geo)
    else:
        for n in range(geo.n):
            _pw_fwd_item(n, x3, w3, b, has_bias, y3, geo)


@kernel()
def _pw_bwd_item(n, x3, wt3, g3, dx3, dwp, parts, geo):
    g_in, g_out = geo.c // geo.groups, geo.c_out // geo.groups
    part = parts[n].reshape(g_out, g_in)
    for g in range(geo.groups):
        gy = g3[n, g * g_out:(g + 1) * g_out]
        dot_one_thread(gy, x3[n, g * g_in:(g + 1) * g_in].T, part)   # OH*OW-long sums
        for o in range(g_out):
            for r in range(g_in):
                dwp[n, g, o, r] += part[o, r]
        if dx3.shape[0] > 0:  # else input_grad=False
            dot_one_thread(wt3[g], gy, dx3[n, g * g_in:(g + 1) * g_in])


@kernel(parallel=True)
def _pw_bwd(x3, wt3, g3, dx3, dw3, db, has_bias, geo, parts, threaded):
    dwp = np.zeros((geo.n,) + dw3.shape)
    if threaded:
        for n in prange(geo.n):
            _pw_bwd_item(n, x3, wt3, g3, dx3, dwp, parts, geo)
    else:
        for n in range(geo.n):
            _pw_bwd_item(n, x3, wt3, g3, dx3, dwp, parts, geo)
    _sum_samples(dwp, dw3)
    _bias_grad(g3, db, has_bias)


@kernel()
def _sum_samples(dwp, dw3):
    """``dw3`` = the float64 per-sample partials ``dwp`` summed in sample order."""
    acc = dwp[0].copy()
    for n in range(1, dwp.shape[0]):  # sample order per entry, the samples' rows in turn
        for g in range(dw3.shape[0]):
            for o in range(dw3.shape[1]):
                for r in range(dw3.shape[2]):
                    acc[g, o, r] += dwp[n, g, o, r]
    dw3[:] = acc


@kernel()
def _sum_samples_t(dwp, dw3):
    """``dw3[g, o, r]`` = the float64 per-sample partials ``dwp[:, g, r, o]`` summed in sample
    order (``_sum_samples`` on the transposed layout)."""
    acc = dwp[0].copy()
    flat = acc.reshape(acc.size)
    for n in range(1, dwp.shape[0]):
        add_row(flat, dwp[n].reshape(acc.size))
    for g in range(dw3.shape[0]):
        for o in range(dw3.shape[1]):
            for r in range(dw3.shape[2]):
                dw3[g, o, r] = acc[g, r, o]


@kernel()
def _bias_grad(g3, db, has_bias):
    """``db[co]`` = the float64 sum of ``g3[:, co, :]``."""
    if has_bias:
        for co in range(g3.shape[1]):
            s = 0.0
            for n in range(g3.shape[0]):
                for q in range(g3.shape[2]):
                    s += g3[n, co, q]
            db[co] = s


# ---------------------------------------------------------------------------------------------
# public functions


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride=1,
           padding=0, dilation=1, groups: int = 1) -> tuple[np.ndarray, ConvCtx]:
    r"""2-d cross-correlation over an (N, C, H, W) or (C, H, W) input (``F.conv2d``).

    Shapes: ``weight`` (C_out, C/groups, KH, KW), ``bias`` (C_out,) or None, output
    (N, C_out, OH, OW) with ``OH = floor((H + pads - d_h (KH - 1) - 1) / s_h) + 1``.

    .. math:: y_{n o a b} = b_o + \sum_{c \in g(o)} \sum_{i j}
              W_{o, c, i, j}\; x_{n, c, a s_h - p_t + i d_h,\ b s_w - p_l + j d_w}

    (input pixels outside the image read as zero; ``g(o)`` is the group of output channel o).

    .. math:: dx_{n c u v} = \sum_{o \in g(c)} \sum_{i j a b:\ \text{pixel}(a,b,i,j) = (u,v)}
              W_{o c i j}\, dy_{n o a b}, \quad dW_{o c i j} = \sum_{n a b} dy_{n o a b}\,
              x_{n, c, \ldots}, \quad db_o = \sum_{n a b} dy_{n o a b}

    ``stride``, ``dilation``: an int or a pair, at least 1. ``padding``: a non-negative int or
    pair, ``'valid'`` (no padding) or ``'same'`` (stride 1 only; the odd pixel of an even
    kernel's padding goes bottom/right, as in PyTorch). ``groups`` divides both channel
    counts. Backward returns ``(dx, dW, db)``, ``db = None`` without bias.
    """
    given = (x, weight)
    x = v.float_array(x, "x", ndim=(3, 4))
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    weight = v.float_array(weight, "weight", ndim=4, dtype=x.dtype)
    n, c, h, w = x.shape
    c_out, c_g, kh, kw = weight.shape
    groups = v.integer(groups, "groups", lo=1)
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels of x, {c}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels of weight "
                         f"(its dim 0), {c_out}")
    if c_g * groups != c:
        raise ValueError(f"weight must have {c // groups} input channels (x's {c} / groups="
                         f"{groups}) in its dim 1, got shape {weight.shape}")
    if kh == 0 or kw == 0 or c_out == 0:
        raise ValueError(f"weight must have non-zero output channels and kernel sizes, got "
                         f"shape {weight.shape}")
    has_bias = bias is not None
    if has_bias:
        bias = v.float_array(bias, "bias", ndim=1, dtype=x.dtype)
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must have shape ({c_out},) (weight's output channels), "
                             f"got {bias.shape}")
    else:
        bias = np.empty(0, x.dtype)
    s = v.int_tuple(stride, "stride", 2, lo=1)
    d = v.int_tuple(dilation, "dilation", 2, lo=1)
    pt, pb, pl, pr = conv_padding(padding, (kh, kw), s, d)
    eh, ew = d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1
    if eh > h + pt + pb or ew > w + pl + pr:
        raise ValueError(f"weight's kernel (dilated: {eh} x {ew}) is larger than the padded "
                         f"input ({h + pt + pb} x {w + pl + pr})")
    oh = conv_output_size(h, kh, s[0], pt, pb, d[0])
    ow = conv_output_size(w, kw, s[1], pl, pr, d[1])
    geo = _geometry(n, c, h, w, c_out, kh, kw, oh, ow, s, (pt, pb, pl, pr), d, groups,
                    x.dtype.itemsize)
    y = v.empty((n, c_out, oh * ow), x.dtype, "padding, stride and dilation")
    kc, g_out, plane = (c // groups) * kh * kw, c_out // groups, geo.hp * geo.wp
    x3, threaded = x.reshape(n, c, h * w), _threaded(geo)
    if geo.path == POINTWISE:
        _pw_fwd(x3, weight.reshape(groups, g_out, kc), bias, has_bias, y, geo, threaded)
    elif geo.path == DEPTHWISE:
        planes, accs = _carve(_workspace(n * c * (plane + geo.ncols), x.dtype), n * c,
                              (plane, geo.ncols))
        _dw_fwd(x3, weight.reshape(c_out, kc), bias, has_bias, y, geo, planes, accs, threaded)
    else:
        sizes = (c * plane, kc * geo.nb, g_out * geo.nb)
        planes, cols, outs = _carve(_workspace(n * sum(sizes), x.dtype), n, sizes)
        _conv_fwd(x3, weight.reshape(groups, g_out, kc), bias, has_bias, y, geo,
                  planes.reshape(n, c, plane), cols, outs, threaded)
    y = y.reshape(n, c_out, oh, ow)
    return (y[0] if unbatched else y), ConvCtx(_own(x, given), _own(weight, given), has_bias,
                                               geo, unbatched)


# With MKL, a block's column matrix (kc x nb) is held to about this many bytes (16 to 512
# columns). Measured within one run, paired with torch (3x3, stride 1, padding 1; ratios to
# torch's time, forward / forward+backward): medium (8, 16, 32, 32) -> 32 float32, nb 55 (the
# OpenBLAS rule's) 1.22 / 1.19, 128: 1.00 / 0.98, 218: 0.89 / 0.93, 362: 0.91 / 0.91, 543:
# 0.96 / 0.96, all 1086: 1.10 / 1.28; large (16, 32, 64, 64) -> 64 float32, nb 28 (OpenBLAS
# rule) 1.92 / 1.75, 113: 1.43 / 1.33, 227: 1.31 / 1.23, 455: 1.33 / 1.22; medium float64, nb
# 27: 0.52 / 1.04, 109: 0.38 / 0.81, 218: 0.38 / 0.80. 256 KiB gives 362, 227 and 218.
COL_BYTES = 256 << 10


def _geometry(n, c, h, w, c_out, kh, kw, oh, ow, s, pads, d, groups, itemsize) -> Geometry:
    pt, pb, pl, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    # wide columns when stride 1 and the junk columns cost at most as much as the real ones
    wide = s == (1, 1) and (oh - 1) * wp + ow <= 2 * oh * ow
    ncols = (oh - 1) * wp + ow if wide else oh * ow
    kc, g_out = (c // groups) * kh * kw, c_out // groups
    if HAVE_MKL:
        # every product runs on its caller's thread whatever its size: a block's columns
        # (kc x nb) sized for the core's cache, COL_BYTES
        nb = min(ncols, max(16, min(512, COL_BYTES // max(1, kc * itemsize))))
    else:
        # a block's three products ((g_out x kc) by (kc x nb) and its adjoints) each within
        # SERIAL_MNK multiply-adds, so that OpenBLAS runs each on its caller's thread
        nb = min(ncols, max(16, min(512, SERIAL_MNK // max(1, g_out * kc))))
    nb = -(-ncols // -(-ncols // max(nb, 1)))  # the same blocks, balanced (61: 31 + 30)
    path = GENERIC
    if c // groups == 1:
        path = DEPTHWISE
    elif (kh, kw, *s, *pads) == (1, 1, 1, 1, 0, 0, 0, 0) and max(kc, g_out) * oh * ow <= SERIAL_MNK:
        path = POINTWISE  # one row of each product within SERIAL_MNK: dot_one_thread applies
    return Geometry(n, c, h, w, c_out, kh, kw, oh, ow, s[0], s[1], pt, pb, pl, pr, d[0], d[1],
                    groups, hp, wp, wide, wp if wide else ow, ncols, max(nb, 1), path)


GENERIC, DEPTHWISE, POINTWISE = 0, 1, 2


# Below this many multiply-adds a pass runs its samples on one thread: the thread pool's
# launch (microseconds, milliseconds when the other core is busy) costs more than it saves.
THREADED_MACS = 1 << 20


def _threaded(geo: Geometry) -> bool:
    macs = geo.n * geo.c_out * (geo.c // geo.groups) * geo.kh * geo.kw * geo.oh * geo.ow
    items = geo.n * geo.c if geo.path == DEPTHWISE else geo.n
    return items > 1 and macs >= THREADED_MACS


def _carve(buf: np.ndarray, n: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive (n, size) views of the flat scratch ``buf``, one per entry of ``sizes``."""
    out, at = [], 0
    for size in sizes:
        out.append(buf[at:at + n * size].reshape(n, size))
        at += n * size
    return out


def _own(a: np.ndarray, given: tuple) -> np.ndarray:
    """``a`` as the ctx may keep it: a private copy if it shares memory with one of the
    caller's arrays (see the module docstring on mutation after forward)."""
    for g in given:
        a = v.keep(a, g)
    return a


def conv2d_backward(ctx: ConvCtx, grad_out: np.ndarray, *, input_grad: bool = True):
    r"""``(dx, dW, db)``; the formulas in ``conv2d``'s docstring:

    .. math:: dx = \operatorname{col2im}(W^T dy), \qquad
              dW = \sum_n dy_n \operatorname{im2col}(x_n)^T, \qquad db_o = \sum_{n a b} dy_{n o a b}

    ``input_grad=False`` skips dx (returned as None): for a first layer, whose input needs no
    gradient (a model's training step).
    """
    v.ctx_of(ctx, ConvCtx, "conv2d")
    input_grad = v.boolean(input_grad, "input_grad")
    geo = ctx.geo
    shape = (geo.n, geo.c_out, geo.oh, geo.ow)
    g = v.float_array(grad_out, "grad_out", dtype=ctx.x.dtype)
    if g.shape != (shape[1:] if ctx.unbatched else shape):
        raise ValueError(f"grad_out must have the forward output's shape, got {g.shape}")
    g3 = g.reshape(geo.n, geo.c_out, geo.oh * geo.ow)
    n, c = geo.n, geo.c
    dx = np.empty_like(ctx.x) if input_grad else np.empty((0,) + ctx.x.shape[1:], ctx.x.dtype)
    dw = np.empty_like(ctx.weight)
    db = np.empty(geo.c_out if ctx.has_bias else 0, ctx.x.dtype)
    g_out = geo.c_out // geo.groups
    kc, plane = dw[0].size, geo.hp * geo.wp
    x3, threaded = ctx.x.reshape(n, c, -1), _threaded(geo)
    dx3 = dx.reshape(len(dx), c, geo.h * geo.w)
    if geo.path == DEPTHWISE:
        planes, dplanes, accs = _carve(
            _workspace(n * c * (2 * plane + geo.ncols), ctx.x.dtype), n * c,
            (plane, plane, geo.ncols))
        _dw_bwd(x3, ctx.weight.reshape(geo.c_out, kc), g3, dx3, dw.reshape(geo.c_out, kc), db,
                ctx.has_bias, geo, planes, dplanes, accs, threaded)
        return _dx_out(dx, ctx, input_grad), dw, (db if ctx.has_bias else None)
    wt3 = np.ascontiguousarray(ctx.weight.reshape(geo.groups, g_out, kc).transpose(0, 2, 1))
    if geo.path == POINTWISE:
        (parts,) = _carve(_workspace(n * g_out * kc, ctx.x.dtype), n, (g_out * kc,))
        _pw_bwd(x3, wt3, g3, dx3, dw.reshape(geo.groups, g_out, kc), db, ctx.has_bias, geo,
                parts, threaded)
        return _dx_out(dx, ctx, input_grad), dw, (db if ctx.has_bias else None)
    sizes = (c * plane, c * plane, kc * geo.nb, g_out * geo.nb, kc * geo.nb, g_out * kc)
    planes, dplanes, cols, dys, dcols, parts = _carve(
        _workspace(n * sum(sizes), ctx.x.dtype), n, sizes)
    _conv_bwd(x3, wt3, g3, dx3, dw.reshape(geo.groups, g_out, kc), db, ctx.has_bias, geo,
              planes.reshape(n, c, plane), dplanes.reshape(n, c, plane), cols, dys, dcols,
              parts, bool(np.isfinite(ctx.weight).all()), threaded)
    return _dx_out(dx, ctx, input_grad), dw, (db if ctx.has_bias else None)


def _dx_out(dx: np.ndarray, ctx: ConvCtx, input_grad: bool) -> np.ndarray | None:
    if not input_grad:
        return None
    return dx[0] if ctx.unbatched else dx
