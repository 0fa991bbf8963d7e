"""2-d convolution (cross-correlation, as ``F.conv2d``), NCHW, forward and backward.

Stride, padding (ints, pairs, ``'same'``, ``'valid'``), dilation, groups (depthwise is
``groups = in_channels``) and an optional bias; odd and even, non-square kernels. The work is
im2col + GEMM: for each group, the input patches are unrolled into a matrix ``col`` of shape
(C_g * KH * KW, n * OH * OW) for a chunk of n samples, and one BLAS product does the rest:

    forward     Y_g  = W_g @ col                       (C_out_g, n*OH*OW)
    backward    dW_g = dY_g @ col^T,  dcol = W_g^T @ dY_g,  dx = col2im(dcol)

np.dot inside @njit calls SciPy's OpenBLAS (float32: sgemm, which accumulates in float32 as
torch does; the spec's float32 tolerance is derived from the sum length). BLAS threads itself,
so none of these kernels is parallel: numba's threads and OpenBLAS's would fight for the cores.
Chunks keep ``col`` under ``COL_BYTES``.

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

from reference import _validate as v
from reference._jit import kernel

__all__ = ["conv2d", "conv2d_backward", "conv_output_size", "conv_padding"]

COL_BYTES = 16 << 20  # the largest im2col buffer a chunk may use
# Samples per chunk: enough for MIN_COLS output pixels per product. At and above it each
# sample is its own product, written straight into y (no scatter), its im2col matrix small
# enough to stay in cache (medium: 144 x 1024 floats, 0.6 MB).
MIN_COLS = 1024

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
    chunk: int  # samples per im2col chunk


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


@kernel()
def _valid_columns(geo, j):
    """For kernel column j: the input offset, and the output columns [lo, hi) whose input
    column ow*sw + off_w lies in [0, W) (the rest read padding)."""
    off_w = j * geo.dw - geo.pl
    lo = 0
    while lo < geo.ow and lo * geo.sw + off_w < 0:
        lo += 1
    hi = geo.ow
    while hi > lo and (hi - 1) * geo.sw + off_w >= geo.w:
        hi -= 1
    return off_w, lo, hi


@kernel()
def _im2col(x, col, geo, n0, n1, c0):
    # col[(c*KH + i)*KW + j, (n - n0)*P + oh*OW + ow] = x[n, c0 + c, oh*sh - pt + i*dh, ...]
    cg = col.shape[0] // (geo.kh * geo.kw)
    p = geo.oh * geo.ow
    for c in range(cg):
        for i in range(geo.kh):
            for j in range(geo.kw):
                r = (c * geo.kh + i) * geo.kw + j
                off_w, lo, hi = _valid_columns(geo, j)
                for n in range(n0, n1):
                    base = (n - n0) * p
                    for oh in range(geo.oh):
                        ih = oh * geo.sh - geo.pt + i * geo.dh
                        k = base + oh * geo.ow
                        if ih < 0 or ih >= geo.h:
                            col[r, k:k + geo.ow] = 0
                        else:
                            col[r, k:k + lo] = 0
                            if geo.sw == 1:  # a contiguous run: a vectorised copy
                                col[r, k + lo:k + hi] = x[n, c0 + c, ih, lo + off_w:hi + off_w]
                            else:
                                for ow in range(lo, hi):
                                    col[r, k + ow] = x[n, c0 + c, ih, ow * geo.sw + off_w]
                            col[r, k + hi:k + geo.ow] = 0


@kernel()
def _col2im(dcol, dx, geo, n0, n1, c0):
    # the adjoint of _im2col: scatter-add each patch entry back to its input pixel
    cg = dcol.shape[0] // (geo.kh * geo.kw)
    p = geo.oh * geo.ow
    for c in range(cg):
        for i in range(geo.kh):
            for j in range(geo.kw):
                r = (c * geo.kh + i) * geo.kw + j
                off_w, lo, hi = _valid_columns(geo, j)
                for n in range(n0, n1):
                    base = (n - n0) * p
                    for oh in range(geo.oh):
                        ih = oh * geo.sh - geo.pt + i * geo.dh
                        if 0 <= ih < geo.h:
                            k = base + oh * geo.ow
                            if geo.sw == 1:
                                dx[n, c0 + c, ih, lo + off_w:hi + off_w] += dcol[r, k + lo:k + hi]
                            else:
                                for ow in range(lo, hi):
                                    dx[n, c0 + c, ih, ow * geo.sw + off_w] += dcol[r, k + ow]


@kernel()
def _conv_fwd(x, w3, b, has_bias, y, geo, ws_col, ws_out):
    # x (N, C, H, W); w3 (groups, C_out_g, C_g*KH*KW); y (N, C_out, OH*OW)
    g_in = geo.c // geo.groups
    g_out = w3.shape[1]
    p = geo.oh * geo.ow
    kc = w3.shape[2]
    for n0 in range(0, geo.n, geo.chunk):
        n1 = min(geo.n, n0 + geo.chunk)
        cols = (n1 - n0) * p
        col = ws_col[:kc * cols].reshape(kc, cols)
        for g in range(geo.groups):
            _im2col(x, col, geo, n0, n1, g * g_in)
            if n1 - n0 == 1:  # one sample: the product lands in y directly
                np.dot(w3[g], col, y[n0, g * g_out:(g + 1) * g_out])
            else:             # several: through a buffer, then to each sample
                out = ws_out[:g_out * cols].reshape(g_out, cols)
                np.dot(w3[g], col, out)                      # (g_out, cols)
                for o in range(g_out):
                    for n in range(n0, n1):
                        k = (n - n0) * p
                        for q in range(p):
                            y[n, g * g_out + o, q] = out[o, k + q]
    if has_bias:
        for n in range(geo.n):
            for co in range(geo.c_out):
                for q in range(p):
                    y[n, co, q] += b[co]


@kernel()
def _conv_bwd(x, w3, g3, dx, dw3, db, has_bias, geo, ws_col, ws_dy, ws_dcol):
    # g3 (N, C_out, OH*OW); dx (N, C, H, W) zeroed; dw3 like w3
    g_in = geo.c // geo.groups
    g_out = w3.shape[1]
    p = geo.oh * geo.ow
    kc = w3.shape[2]
    dw_acc = np.zeros(dw3.shape)  # float64 across chunks
    for n0 in range(0, geo.n, geo.chunk):
        n1 = min(geo.n, n0 + geo.chunk)
        cols = (n1 - n0) * p
        col = ws_col[:kc * cols].reshape(kc, cols)
        dcol = ws_dcol[:kc * cols].reshape(kc, cols)
        for g in range(geo.groups):
            if n1 - n0 == 1:
                dy = np.ascontiguousarray(g3[n0, g * g_out:(g + 1) * g_out])
            else:
                dy = ws_dy[:g_out * cols].reshape(g_out, cols)
                for o in range(g_out):
                    for n in range(n0, n1):
                        k = (n - n0) * p
                        for q in range(p):
                            dy[o, k + q] = g3[n, g * g_out + o, q]
            _im2col(x, col, geo, n0, n1, g * g_in)
            part = np.dot(dy, col.T)                         # (g_out, kc)
            for o in range(g_out):
                for r in range(kc):
                    dw_acc[g, o, r] += part[o, r]
            np.dot(w3[g].T, dy, dcol)                        # (kc, cols)
            _col2im(dcol, dx, geo, n0, n1, g * g_in)
    for g in range(geo.groups):
        for o in range(g_out):
            for r in range(kc):
                dw3[g, o, r] = dw_acc[g, o, r]
    if has_bias:
        for co in range(geo.c_out):
            s = 0.0
            for n in range(geo.n):
                for q in range(p):
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
    per_sample = (c // groups) * kh * kw * oh * ow * x.itemsize
    chunk = max(1, min(n, -(-MIN_COLS // max(oh * ow, 1)), COL_BYTES // max(per_sample, 1)))
    geo = Geometry(n, c, h, w, c_out, kh, kw, oh, ow, s[0], s[1], pt, pb, pl, pr, d[0], d[1],
                   groups, chunk)
    y = v.empty((n, c_out, oh * ow), x.dtype, "padding, stride and dilation")
    kc, cols = (c // groups) * kh * kw, chunk * oh * ow
    ws = _workspace((kc + c_out // groups) * cols, x.dtype)
    _conv_fwd(x, weight.reshape(groups, c_out // groups, kc), bias, has_bias, y, geo,
              ws[:kc * cols], ws[kc * cols:])
    y = y.reshape(n, c_out, oh, ow)
    return (y[0] if unbatched else y), ConvCtx(_own(x, given), _own(weight, given), has_bias,
                                               geo, unbatched)


def _own(a: np.ndarray, given: tuple) -> np.ndarray:
    """``a`` as the ctx may keep it: a private copy if it shares memory with one of the
    caller's arrays (see the module docstring on mutation after forward)."""
    for g in given:
        a = v.keep(a, g)
    return a


def conv2d_backward(ctx: ConvCtx, grad_out: np.ndarray):
    """``(dx, dW, db)``; the formulas in ``conv2d``'s docstring (col2im of ``W^T dy``)."""
    v.ctx_of(ctx, ConvCtx, "conv2d")
    geo = ctx.geo
    shape = (geo.n, geo.c_out, geo.oh, geo.ow)
    g = v.float_array(grad_out, "grad_out", dtype=ctx.x.dtype)
    if g.shape != (shape[1:] if ctx.unbatched else shape):
        raise ValueError(f"grad_out must have the forward output's shape, got {g.shape}")
    g3 = g.reshape(geo.n, geo.c_out, geo.oh * geo.ow)
    dx = np.zeros_like(ctx.x)
    dw = np.empty_like(ctx.weight)
    db = np.empty(geo.c_out if ctx.has_bias else 0, ctx.x.dtype)
    g_out = geo.c_out // geo.groups
    kc, cols = dw[0].size, geo.chunk * geo.oh * geo.ow
    ws = _workspace((2 * kc + g_out) * cols, ctx.x.dtype)
    shape3 = (geo.groups, g_out, kc)
    _conv_bwd(ctx.x, ctx.weight.reshape(shape3), g3, dx, dw.reshape(shape3), db, ctx.has_bias,
              geo, ws[:kc * cols], ws[kc * cols:(kc + g_out) * cols], ws[(kc + g_out) * cols:])
    return (dx[0] if ctx.unbatched else dx), dw, (db if ctx.has_bias else None)
