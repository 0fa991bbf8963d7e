"""Layers without spatial structure: dense (linear), dropout, channel dropout (1-d and 2-d),
embedding.

Convolution is in ``reference.conv``, pooling in ``reference.pool``, batch and layer norm in
``reference.norm``, and the composite blocks (residual, MobileNet, Inception) in
``reference.blocks``. The convention is the library's::

    y, ctx = linear(x, weight, bias)           # forward
    dx, dw, db = linear_backward(ctx, dy)      # one gradient per differentiable input

An optional input left out (``bias=None``) gets ``None`` in its place. Randomness is an
explicit input: dropout takes its mask; ``dropout_mask`` draws one from a numpy Generator.

Contexts: each forward returns a context of its own type; each backward refuses any other
(TypeError naming ``ctx``) and a ``grad_out`` without the forward output's shape and dtype.
Mutation after forward: the context keeps private copies of the caller's arrays backward reads
(linear's x and weight, dropout's mask, embedding's indices), so editing them in place before
backward does not change the gradients. For linear the copies are O(inputs) beside an
O(inputs * out_features) GEMM; for dropout the mask copy is one byte per element (measured
within one run at 1M float32 elements on a loaded machine: not measurable, 0.9x +- noise).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _prims as P
from reference import _validate as v
from reference._blas import dot_serial
from reference._jit import PARALLEL_MIN, kernel

__all__ = [
    "linear", "linear_backward", "dropout", "dropout_backward", "dropout1d",
    "dropout1d_backward", "dropout2d", "dropout2d_backward", "dropout_mask", "embedding",
    "embedding_backward",
]


# ---------------------------------------------------------------------------------------------
# dense / linear
#
# The products go to BLAS (np.dot inside @njit calls SciPy's OpenBLAS): float64 uses dgemm and
# float32 sgemm, which accumulates in float32 as torch does; the spec derives its float32
# tolerance from the length K of these sums. BLAS threads itself, so these kernels are not
# parallel: np.dot inside a prange region makes OpenBLAS and numba's threads fight for the cores.
# The products go through ``_blas.dot_serial``: a small one (a CNN's classifier head, 64 x 1568
# by 1568 x 10) stays on the calling thread, where OpenBLAS's own threads cost more than the
# product (measured on this loaded 2-core machine, that head's backward: 56 ms through np.dot,
# 0.63 ms on one thread); a large one (over 2^22 multiply-adds) still uses BLAS's threads.


class LinearCtx(NamedTuple):
    x2: np.ndarray      # (M, K): the input with its leading dims flattened
    weight: np.ndarray  # (N, K)
    has_bias: bool
    x_shape: tuple[int, ...]


@kernel()
def _linear_fwd(x2, w, b, has_bias, y2):
    dot_serial(x2, w.T, y2)                    # (M, K) @ (K, N) -> (M, N)
    if has_bias:
        for i in range(y2.shape[0]):
            for j in range(y2.shape[1]):
                y2[i, j] += b[j]


@kernel()
def _linear_bwd(x2, w, g2, dx2, dw, db, has_bias):
    dot_serial(g2, w, dx2)                     # (M, N) @ (N, K) -> (M, K)
    dot_serial(np.ascontiguousarray(g2.T), x2, dw)  # (N, M) @ (M, K) -> (N, K)
    if has_bias:
        acc = np.zeros(g2.shape[1])            # float64 accumulator
        for i in range(g2.shape[0]):
            for j in range(g2.shape[1]):
                acc[j] += g2[i, j]
        for j in range(g2.shape[1]):
            db[j] = acc[j]


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
           ) -> tuple[np.ndarray, LinearCtx]:
    r"""Dense layer ``y = x W^T + b`` over any leading batch dims (``F.linear``).

    Shapes: ``x`` (..., K), ``weight`` (N, K), ``bias`` (N,) or None, ``y`` (..., N).

    .. math:: y_{\cdot n} = \sum_k x_{\cdot k} W_{nk} + b_n

    .. math:: dx = dy\,W, \qquad dW = \sum_{\cdot} dy^T x, \qquad db = \sum_{\cdot} dy

    (sums over all leading dims). Backward returns ``(dx, dW, db)``, ``db = None`` without bias.
    """
    x_given, w_given = x, weight
    x = v.float_array(x, "x", min_ndim=1)
    weight = v.float_array(weight, "weight", ndim=2, dtype=x.dtype)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[-1]}) to match the "
                         f"last dim of x {x.shape}, got {weight.shape}")
    has_bias = bias is not None
    if has_bias:
        bias = v.float_array(bias, "bias", ndim=1, dtype=x.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (out_features), "
                             f"got {bias.shape}")
    else:
        bias = np.empty(0, x.dtype)
    x2 = x.reshape(-1, x.shape[-1])
    y2 = np.empty((x2.shape[0], weight.shape[0]), x.dtype)
    _linear_fwd(x2, weight, bias, has_bias, y2)
    return y2.reshape(x.shape[:-1] + (weight.shape[0],)), LinearCtx(
        _own(x2, x_given), _own(weight, w_given), has_bias, x.shape)


def linear_backward(ctx: LinearCtx, grad_out: np.ndarray):
    """``(dx, dW, db)``: ``dy W``, ``dy^T x`` and ``dy`` summed over the leading dims."""
    v.ctx_of(ctx, LinearCtx, "linear")
    w = ctx.weight
    g = v.float_array(grad_out, "grad_out", dtype=w.dtype)
    v.same_shape(np.empty(ctx.x_shape[:-1] + (w.shape[0],), dtype=bool), "the forward output",
                 g, "grad_out")
    g2 = g.reshape(-1, w.shape[0])
    dx2 = np.empty_like(ctx.x2)
    dw = np.empty_like(w)
    db = np.empty(w.shape[0] if ctx.has_bias else 0, w.dtype)
    _linear_bwd(ctx.x2, w, g2, dx2, dw, db, ctx.has_bias)
    return dx2.reshape(ctx.x_shape), dw, (db if ctx.has_bias else None)


# ---------------------------------------------------------------------------------------------
# dropout with an explicit mask, and the mask sampler


class DropoutCtx(NamedTuple):
    mask: np.ndarray  # bool; (N, C) for channel dropout, else x's shape; a private copy
    scale: float      # 1 / (1 - p); 0 when p = 1
    all_dropped: bool  # p = 1
    out_shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    training: bool = True  # False: the identity, forward and backward
    inner: int = 1  # elements of x per mask entry (H * W, L, or 1)


Dropout1dCtx = v.ctx_type(DropoutCtx, "Dropout1dCtx", "dropout1d")
Dropout2dCtx = v.ctx_type(DropoutCtx, "Dropout2dCtx", "dropout2d")

_NO_MASK = np.zeros(0, np.bool_)  # what an evaluation-mode context keeps: backward reads none


def _own(a: np.ndarray, given) -> np.ndarray:
    """``a`` as a ctx may keep it: a private copy if it shares memory with the caller's
    ``given`` (see the module docstring on mutation after forward)."""
    return v.keep(a, given)


def _dropout_p(p) -> tuple[float, bool]:
    p = v.real(p, "p", lo=0.0, hi=1.0)
    return (0.0, True) if p == 1.0 else (1.0 / (1.0 - p), False)


@kernel()
def _scale_block(x, mask, scale, all_dropped, inner, y, i0, i1):
    # mask entries [i0, i1), each covering ``inner`` consecutive elements of x and y; the
    # element op is reference._prims.dropout (the encoder's and attention's dropout too).
    # p = 1 gives x * 0 (NaN and inf stay NaN), as torch.nn.functional.dropout does.
    s = 0.0 if all_dropped else scale
    if inner == 1:
        for i in range(i0, i1):
            y[i] = P.dropout(x[i], mask[i], s)
    else:
        for i in range(i0, i1):
            keep = mask[i]
            for j in range(i * inner, (i + 1) * inner):
                y[j] = P.dropout(x[j], keep, s)


@kernel(parallel=True)
def _scale_by_mask(x, mask, scale, all_dropped, inner, y):
    # x, y: flat (n * inner,); mask: flat (n,). Large inputs: 64 blocks over the threads.
    n = mask.size
    if n * inner < PARALLEL_MIN:
        _scale_block(x, mask, scale, all_dropped, inner, y, 0, n)
    else:
        blocks = min(n, 64)
        for k in prange(blocks):
            _scale_block(x, mask, scale, all_dropped, inner, y, k * n // blocks,
                         (k + 1) * n // blocks)


def _dropout_forward(cls, x, mask, p, training, mask_shape, like: str):
    """The three dropouts: ``mask_shape`` is the mask's shape, each entry covering
    ``x.size / mask.size`` consecutive elements of x."""
    scale, all_dropped = _dropout_p(p)
    train = v.boolean(training, "training")
    if mask is None and not train:
        m = _NO_MASK
    else:
        if mask is None:
            raise TypeError("mask must be a bool keep-mask when training=True (draw one with "
                            "dropout_mask), got None")
        m = v.bool_array(mask, "mask", shape=mask_shape, like=like)
    if not train:  # the identity (a copy: the caller may edit y without touching x)
        return x.copy(), cls(_NO_MASK, 1.0, False, x.shape, x.dtype, False, 1)
    inner = x.size // m.size if m.size else 1
    y = np.empty_like(x)
    _scale_by_mask(x.reshape(-1), m.reshape(-1), scale, all_dropped, inner, y.reshape(-1))
    return y, cls(_own(m, mask), scale, all_dropped, x.shape, x.dtype, True, inner)


def _dropout_backward(cls, name: str, ctx, grad_out):
    v.ctx_of(ctx, cls, name)
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    if g.shape != ctx.out_shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.out_shape}, "
                         f"got shape {g.shape}")
    if not ctx.training:
        return (g.copy(),)
    dx = np.empty_like(g)
    _scale_by_mask(g.reshape(-1), ctx.mask.reshape(-1), ctx.scale, ctx.all_dropped, ctx.inner,
                   dx.reshape(-1))
    return (dx,)


def dropout(x: np.ndarray, mask: np.ndarray | None = None, p: float = 0.5,
            training: bool = True) -> tuple[np.ndarray, DropoutCtx]:
    r"""Inverted dropout with an explicit keep-mask (``F.dropout``).

    ``mask`` is a bool array of x's shape, True where the element is kept (draw one with
    ``dropout_mask``). Kept elements are scaled by ``1/(1-p)`` so the expectation is unchanged.

    .. math:: y = x \cdot m / (1 - p), \qquad dx = dy \cdot m / (1 - p)

    ``p = 0`` with an all-True mask is the identity. ``p = 1`` drops everything: ``y = 0 \cdot x``
    (NaN stays NaN) and ``dx = 0``, as in PyTorch, whatever the mask.

    ``training=False`` is the identity, as PyTorch's evaluation mode: ``y = x`` (a copy) and
    ``dx = dy``; ``mask`` may then be None (one given is still checked, and unused), ``p`` is
    still checked.
    """
    x = v.float_array(x, "x")
    return _dropout_forward(DropoutCtx, x, mask, p, training, x.shape, " (the shape of x)")


def dropout_backward(ctx: DropoutCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy * m / (1 - p)`` (0 when ``p = 1``); ``dx = dy`` after ``training=False``."""
    return _dropout_backward(DropoutCtx, "dropout", ctx, grad_out)


def dropout1d(x: np.ndarray, mask: np.ndarray | None = None, p: float = 0.5,
              training: bool = True) -> tuple[np.ndarray, DropoutCtx]:
    r"""Channel dropout of an (N, C, L) or (C, L) input (``F.dropout1d``).

    ``mask`` is a bool array of x's shape without its last axis, (N, C) or (C,), True where the
    whole channel ``x[n, c, :]`` is kept.

    .. math:: y_{nc\cdot} = x_{nc\cdot}\, m_{nc} / (1 - p), \qquad
              dx_{nc\cdot} = dy_{nc\cdot}\, m_{nc} / (1 - p)

    ``p = 1`` gives ``0 \cdot x`` and zero gradients, ``training=False`` the identity, as
    ``dropout``.
    """
    x = v.float_array(x, "x", ndim=(2, 3))
    return _dropout_forward(Dropout1dCtx, x, mask, p, training, x.shape[:-1],
                            " (x's shape without its last axis: (N, C) or (C,))")


def dropout1d_backward(ctx: DropoutCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx[n, c] = dy[n, c] * m[n, c] / (1 - p)`` (0 when ``p = 1``; ``dy`` after
    ``training=False``)."""
    return _dropout_backward(Dropout1dCtx, "dropout1d", ctx, grad_out)


def dropout2d(x: np.ndarray, mask: np.ndarray | None = None, p: float = 0.5,
              training: bool = True) -> tuple[np.ndarray, DropoutCtx]:
    r"""Channel (feature-map) dropout of an (N, C, H, W) input (``F.dropout2d``).

    ``mask`` is a bool (N, C) array, True where the whole channel ``x[n, c]`` is kept.

    .. math:: y_{nc\cdot\cdot} = x_{nc\cdot\cdot}\, m_{nc} / (1 - p), \qquad
              dx_{nc\cdot\cdot} = dy_{nc\cdot\cdot}\, m_{nc} / (1 - p)

    ``p = 1`` gives ``0 \cdot x`` and zero gradients, ``training=False`` the identity, as
    ``dropout``. (C, H, W) inputs are refused: PyTorch 2.13 reads them as (N, C, L) for
    ``dropout2d``, with a warning, so the rank does not say what is dropped; use
    ``dropout1d`` for channel dropout of 3-d inputs.
    """
    x = v.float_array(x, "x", ndim=4)
    return _dropout_forward(Dropout2dCtx, x, mask, p, training, x.shape[:2], " (N, C) of x")


def dropout2d_backward(ctx: DropoutCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx[n, c] = dy[n, c] * m[n, c] / (1 - p)`` (0 when ``p = 1``; ``dy`` after
    ``training=False``)."""
    return _dropout_backward(Dropout2dCtx, "dropout2d", ctx, grad_out)


def dropout_mask(rng: np.random.Generator, shape, p: float = 0.5) -> np.ndarray:
    """A keep-mask: each entry True (kept) independently with probability ``1 - p``.

    Entry ``i`` is ``u_i >= p`` with ``u_i`` uniform on [0, 1) from ``rng``, so ``p = 0`` keeps
    everything and ``p = 1`` nothing. For ``dropout2d`` draw shape (N, C); for ``dropout`` the
    input's shape; for ``dropout1d`` the input's shape without its last axis.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    p = v.real(p, "p", lo=0.0, hi=1.0)
    shape = v.int_tuple(shape, "shape", len(shape) if isinstance(shape, (tuple, list)) else 1,
                        lo=0)
    return np.asarray(rng.random(shape) >= p)


# ---------------------------------------------------------------------------------------------
# embedding


class EmbeddingCtx(NamedTuple):
    indices: np.ndarray  # int64, flat
    num_embeddings: int
    dim: int
    padding_idx: int     # normalised to [0, num_embeddings), or -1 for none
    out_shape: tuple[int, ...]
    dtype: np.dtype
    scale_by_freq: bool = False


@kernel()
def _embedding_fwd(idx, w, y):
    for i in range(idx.size):
        r = idx[i]
        for j in range(w.shape[1]):
            y[i, j] = w[r, j]


@kernel()
def _embedding_renorm(idx, w, max_norm, norm_type):
    # w: a private copy of the table; each row that idx references, once, scaled to
    # max_norm / (norm + 1e-7) when its norm exceeds max_norm (PyTorch's embedding_renorm_).
    # norm_type 0 stands for infinity (the largest |w|).
    seen = np.zeros(w.shape[0], np.bool_)
    for i in range(idx.size):
        r = idx[i]
        if seen[r]:
            continue
        seen[r] = True
        norm = 0.0
        if norm_type == 0.0:
            for j in range(w.shape[1]):
                norm = max(norm, abs(np.float64(w[r, j])))
        elif norm_type == 2.0:
            for j in range(w.shape[1]):
                norm += np.float64(w[r, j]) * np.float64(w[r, j])
            norm = math.sqrt(norm)
        elif norm_type == 1.0:
            for j in range(w.shape[1]):
                norm += abs(np.float64(w[r, j]))
        else:
            for j in range(w.shape[1]):
                norm += abs(np.float64(w[r, j])) ** norm_type
            norm = norm ** (1.0 / norm_type)
        if norm > max_norm:
            scale = max_norm / (norm + 1e-7)
            for j in range(w.shape[1]):
                w[r, j] = np.float64(w[r, j]) * scale


@kernel()
def _embedding_bwd(idx, g, pad, by_freq, dw):
    # dw zeroed. Indices sorted (stably), so each row's repeated lookups are summed together
    # in float64 and written once: no float64 copy of the whole table.
    order = np.argsort(idx, kind="mergesort")
    acc = np.zeros(g.shape[1])
    k = 0
    n = idx.size
    while k < n:
        r = idx[order[k]]
        acc[:] = 0.0
        start = k
        while k < n and idx[order[k]] == r:
            i = order[k]
            for j in range(g.shape[1]):
                acc[j] += g[i, j]
            k += 1
        if r != pad:
            inv = 1.0 / (k - start) if by_freq else 1.0
            for j in range(g.shape[1]):
                dw[r, j] = acc[j] * inv


def embedding(indices: np.ndarray, weight: np.ndarray, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False):
    r"""Row lookup ``y[...] = weight[indices[...]]`` (``F.embedding``).

    Shapes: ``indices`` any shape of integers in [0, num_embeddings), ``weight``
    (num_embeddings, dim), ``y`` indices.shape + (dim,).

    .. math:: y_{i\cdot} = W_{\mathrm{idx}_i \cdot}, \qquad
              dW_{r\cdot} = \frac{[r \ne \mathrm{padding\_idx}]}{c_r}
                  \sum_{i:\, \mathrm{idx}_i = r} dy_{i\cdot}

    Repeated indices accumulate (scatter-add, in float64); the ``padding_idx`` row gets a zero
    gradient, as in PyTorch (its forward lookup is an ordinary one). A negative
    ``padding_idx`` counts from the end. :math:`c_r = 1`, or with ``scale_grad_by_freq`` the
    number of times row r is looked up in this call (PyTorch's "inverse of frequency in the
    mini-batch"; a convention, not a derivative: the forward does not depend on it).

    ``max_norm``: each row that ``indices`` references and whose ``norm_type``-norm
    (``math.inf`` for the largest magnitude) exceeds ``max_norm`` is scaled by
    ``max_norm / (norm + 1e-7)`` before the lookup, as PyTorch does. PyTorch renormalises
    ``weight`` IN PLACE; this function never edits its input: it returns the renormalised
    table as a second output, ``(y, new_weight)`` (a new array) instead of ``y``, for the
    caller to keep as the new weight. The renormalisation is not differentiated (PyTorch runs
    it under no_grad): ``dW`` is the scatter-add above, taken at the renormalised rows.
    ``max_norm`` must be > 0 and ``norm_type`` > 0 (stricter than PyTorch, where a
    ``max_norm`` <= 0 rescales every row it meets by a negative or zero factor).

    Backward returns ``(dW,)``: indices are not differentiable.
    """
    given = indices
    indices = v.int_array(indices, "indices")
    weight = v.float_array(weight, "weight", ndim=2)  # backward reads no array of the caller
    num, dim = weight.shape
    v.labels(indices, "indices", num)
    pad = -1
    if padding_idx is not None:
        pad = v.integer(padding_idx, "padding_idx", lo=-num, hi=num - 1) % num
    by_freq = v.boolean(scale_grad_by_freq, "scale_grad_by_freq")
    flat = indices.reshape(-1).copy() if np.may_share_memory(indices, given) else \
        indices.reshape(-1)
    # norm_type is checked even without max_norm (PyTorch ignores it then); 0 stands for inf.
    nt = (0.0 if isinstance(norm_type, (float, np.floating)) and norm_type == math.inf
          else v.real(norm_type, "norm_type", lo=0.0, lo_open=True))
    table = weight
    if max_norm is not None:
        mn = v.real(max_norm, "max_norm", lo=0.0, lo_open=True)
        table = weight.copy()
        _embedding_renorm(flat, table, mn, nt)
    y = np.empty((flat.size, dim), weight.dtype)
    _embedding_fwd(flat, table, y)
    out_shape = indices.shape + (dim,)
    ctx = EmbeddingCtx(flat, num, dim, pad, out_shape, weight.dtype, by_freq)
    if max_norm is not None:
        return (y.reshape(out_shape), table), ctx
    return y.reshape(out_shape), ctx


def embedding_backward(ctx: EmbeddingCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``(dW,)``: each lookup's upstream row added into its table row (padding row zero),
    divided by the row's lookup count with ``scale_grad_by_freq``."""
    v.ctx_of(ctx, EmbeddingCtx, "embedding")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    if g.shape != ctx.out_shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.out_shape}, "
                         f"got {g.shape}")
    dw = np.zeros((ctx.num_embeddings, ctx.dim), ctx.dtype)
    _embedding_bwd(ctx.indices, g.reshape(-1, ctx.dim), ctx.padding_idx, ctx.scale_by_freq, dw)
    return (dw,)
