"""Scaled dot-product attention, as ``F.scaled_dot_product_attention``: broadcast batch
dimensions, grouped-query attention, bool/float/causal masks (a float mask is differentiated),
``scale``, dropout by an explicit keep-mask. Conventions: ``reference.attention``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from reference import _validate as v
from reference.attention._core import (
    _NO_BIAS,
    _NO_DPROBS,
    _NO_KEEP,
    _as_bias,
    _attn_bwd,
    _attn_dropout,
    _attn_fwd,
    _private,
    _threads,
)

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_backward"]


# ---------------------------------------------------------------------------------------------
# scaled dot-product attention


class SDPACtx(NamedTuple):
    q: np.ndarray       # (N, L, D), broadcast to the common batch shape
    k: np.ndarray       # (N, S, D), broadcast (and its heads repeated with enable_gqa)
    v: np.ndarray
    probs: np.ndarray   # (N, L, S)
    scale: float
    lead: tuple         # the common leading (batch) shape
    dq_shape: tuple     # query's own shape
    dk_shape: tuple = ()  # key's and value's own shapes (before broadcasting and GQA)
    dv_shape: tuple = ()
    kept: np.ndarray | None = None   # probs after dropout (None: no dropout)
    keep: np.ndarray | None = None   # (N, L, S) keep-mask
    keep_scale: float = 1.0
    mask_shape: tuple | None = None  # a float attn_mask's shape (its gradient's); else None


SDPACtx.__doc__ = "What scaled_dot_product_attention() keeps for its backward."


def _lead_shapes(q, k, value, gqa: bool = False):
    """Checked query, key, value and their common batch shape (broadcast, as torch's; with
    ``gqa`` the key/value heads, axis -3, are first repeated up to the query's)."""
    q = v.float_array(q, "query", min_ndim=3 if gqa else 2)
    k = v.float_array(k, "key", min_ndim=3 if gqa else 2, dtype=q.dtype)
    value = v.float_array(value, "value", min_ndim=3 if gqa else 2, dtype=q.dtype)
    if q.shape[-2] == 0:
        raise ValueError(f"query must hold a sequence of length >= 1 (..., L, E), got {q.shape}")
    if k.shape[-2] == 0:
        raise ValueError(f"key must hold a sequence of length >= 1 (..., S, E), got {k.shape}")
    if q.shape[-1] == 0 or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"key must have the query's embedding size E = {q.shape[-1]} >= 1 "
                         f"(..., S, E), got {k.shape}")
    if value.shape[-2] != k.shape[-2]:
        raise ValueError(f"value must have the key's length S = {k.shape[-2]} (..., S, Ev), "
                         f"got {value.shape}")
    kl, vl = k.shape[:-2], value.shape[:-2]
    if gqa:
        hq = q.shape[-3]
        for a, name in ((k, "key"), (value, "value")):
            if a.shape[-3] == 0 or hq % a.shape[-3]:
                raise ValueError(f"{name}'s heads (axis -3) must divide the query's {hq} with "
                                 f"enable_gqa, got {a.shape[-3]} in shape {a.shape}")
        kl, vl = kl[:-1] + (hq,), vl[:-1] + (hq,)
    try:
        lead = np.broadcast_shapes(q.shape[:-2], kl, vl)
    except ValueError:
        raise ValueError(f"query, key and value must have broadcastable leading (batch) "
                         f"dimensions, got {q.shape}, {k.shape}, {value.shape}") from None
    return q, k, value, tuple(lead)


def _expand(a: np.ndarray, lead: tuple, gqa: bool) -> np.ndarray:
    """``a`` (..., T, D) with its heads repeated (GQA: each head serves ``Hq / H``
    consecutive query heads, torch's repeat_interleave) and broadcast to ``lead``, as an
    (N, T, D) C-contiguous array."""
    if gqa and a.shape[-3] != lead[-1]:
        a = np.repeat(a, lead[-1] // a.shape[-3], axis=-3)
    a = v.broadcast(a, lead + a.shape[-2:])
    return a.reshape((math.prod(lead),) + a.shape[-2:])


def _reduce_to(g: np.ndarray, shape: tuple, gqa_heads: bool = False) -> np.ndarray:
    """The gradient of a broadcast (and GQA-repeated) input: ``g`` summed, in float64, over
    the axes the forward broadcast and over each head's group of repeats."""
    if g.shape == tuple(shape):
        return g
    acc = g.astype(np.float64)
    extra = acc.ndim - len(shape)
    acc = acc.sum(axis=tuple(range(extra))) if extra else acc
    if gqa_heads and len(shape) >= 3 and acc.shape[-3] != shape[-3] and shape[-3] != 1:
        h = shape[-3]
        acc = acc.reshape(acc.shape[:-3] + (h, acc.shape[-3] // h) + acc.shape[-2:]).sum(-3)
    axes = tuple(i for i, (a, b) in enumerate(zip(acc.shape, shape, strict=True)) if a != b)
    if axes:
        acc = acc.sum(axis=axes, keepdims=True)
    return acc.reshape(shape).astype(g.dtype)


def scaled_dot_product_attention(query: np.ndarray, key: np.ndarray, value: np.ndarray,
                                 attn_mask: np.ndarray | None = None, *, dropout_p: float = 0.0,
                                 dropout_mask: np.ndarray | None = None,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> tuple[np.ndarray, SDPACtx]:
    r"""Attention of each query over all keys, as ``F.scaled_dot_product_attention``.

    ``query`` (..., L, E), ``key`` (..., S, E), ``value`` (..., S, Ev) -> (..., L, Ev). The
    leading (batch) dimensions broadcast against each other, as torch's. With ``enable_gqa``
    (grouped-query attention) axis -3 is the heads: key and value may have fewer heads than
    the query, dividing its count, and each of their heads serves that many consecutive query
    heads (torch's ``repeat_interleave``).

    .. math::
        P = \operatorname{softmax}_j(s Q K^T + M), \qquad
        O = (P \odot D / (1 - p)) V, \qquad s = 1/\sqrt{E}\ \text{unless}\ \texttt{scale}

    ``M``: 0 where attention is allowed, :math:`-\infty` where not (a bool ``attn_mask``
    True = allowed, broadcastable to (..., L, S); or a float mask added as it is;
    ``is_causal``: key j is allowed for query i iff ``j <= i``, top-left aligned as torch).
    A row with no allowed key gives zero weights and a zero output. ``D``: dropout of the
    weights, ``dropout_mask`` a bool keep-mask of shape (..., L, S) (the common batch shape),
    drawn by the caller, with ``dropout_p``; ``p = 1`` drops everything (zeros). Without
    dropout, ``D = 1``. Backward, with :math:`\bar P_D = \bar O V^T \odot D / (1 - p)`:

    .. math::
        \bar V = (P \odot D / (1-p))^T \bar O, \quad
        \bar M_{ij} = P_{ij}(\bar P_{D,ij} - \textstyle\sum_k \bar P_{D,ik} P_{ik}), \quad
        \bar Q = s \bar M K, \quad \bar K = s \bar M^T Q

    summed over what was broadcast (and over each key/value head's group with GQA), in
    float64. Backward returns ``(d query, d key, d value, d attn_mask)``; ``d attn_mask`` is
    :math:`\bar M` summed to the mask's shape for a float mask (torch differentiates it), None
    for a bool mask or none.
    """
    gqa = v.boolean(enable_gqa, "enable_gqa")
    q, k, val, lead = _lead_shapes(query, key, value, gqa)
    causal = v.boolean(is_causal, "is_causal")
    if causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (torch refuses both)")
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else v.real(scale, "scale")
    n = math.prod(lead)
    L, S = q.shape[-2], k.shape[-2]
    target = lead + (L, S)
    keep, keep_scale = _attn_dropout(dropout_p, dropout_mask, target)
    q3 = _expand(q, lead, False)
    k3, v3 = _expand(k, lead, gqa), _expand(val, lead, gqa)
    bias, div, has_bias, mask_shape = _NO_BIAS, 1, False, None
    if attn_mask is not None:
        b = _as_bias(attn_mask, "attn_mask", q.dtype, "allowed")
        try:
            ok = b.ndim <= len(target) and np.broadcast_shapes(b.shape, target) == target
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"attn_mask must be broadcastable to (..., L, S) = {target}, "
                             f"got shape {attn_mask.shape}")
        if b.ndim <= 2 or all(d == 1 for d in b.shape[:-2]):
            bias, div = np.broadcast_to(b.reshape(b.shape[-2:] if b.ndim >= 2 else b.shape),
                                        (L, S))[None].copy(), max(n, 1)
        else:
            bias, div = np.broadcast_to(b, target).reshape(n, L, S).copy(), 1
        has_bias = True
        if attn_mask.dtype != np.bool_:
            mask_shape = attn_mask.shape
    probs = np.empty((n, L, S), q.dtype)
    kept = probs if keep is None else np.empty_like(probs)
    out = np.empty((n, L, val.shape[-1]), q.dtype)
    _attn_fwd(q3, k3, v3, bias, div, has_bias, causal, _NO_KEEP if keep is None else keep,
              keep is not None, keep_scale, s, probs, kept, out, _threads(q3, v3, probs))
    given = (query, key, value)
    ctx = SDPACtx(_private(q3, *given), _private(k3, *given), _private(v3, *given), probs, s,
                  lead, q.shape, k.shape, val.shape, None if keep is None else kept,
                  None if keep is None else _private(keep, dropout_mask), keep_scale, mask_shape)
    return out.reshape(lead + out.shape[1:]), ctx


def scaled_dot_product_attention_backward(ctx: SDPACtx, grad_out: np.ndarray):
    r"""Gradients ``(d query, d key, d value, d attn_mask)`` for ``grad_out`` :math:`\bar O`.

    With the saved weights :math:`P`, the keep-mask :math:`D` (1 without dropout) and
    :math:`\bar P_D = (\bar O V^T) \odot D / (1 - p)`:

    .. math::
        \bar V = (P \odot D / (1-p))^T \bar O, \quad
        \bar M_{ij} = P_{ij}(\bar P_{D,ij} - \textstyle\sum_k \bar P_{D,ik} P_{ik}), \quad
        \bar Q = s \bar M K, \quad \bar K = s \bar M^T Q

    each summed (in float64) over the batch axes its input was broadcast along, and over each
    key/value head's group of query heads with GQA. ``d attn_mask`` is :math:`\bar M` summed
    to the mask's shape for a float mask, None for a bool mask or none.
    """
    v.ctx_of(ctx, SDPACtx, "scaled_dot_product_attention")
    shape = ctx.lead + (ctx.q.shape[1], ctx.v.shape[2])
    g = v.float_array(grad_out, "grad_out", dtype=ctx.q.dtype)
    if g.shape != shape:
        raise ValueError(f"grad_out must have the forward output's shape {shape}, got {g.shape}")
    g3 = g.reshape((-1,) + shape[-2:])
    dq, dk, dv = np.empty_like(ctx.q), np.empty_like(ctx.k), np.empty_like(ctx.v)
    has_keep = ctx.keep is not None
    has_db = ctx.mask_shape is not None
    db = np.empty(ctx.probs.shape) if has_db else _NO_DPROBS
    _attn_bwd(ctx.q, ctx.k, ctx.v, ctx.probs, ctx.kept if has_keep else ctx.probs,
              ctx.keep if has_keep else _NO_KEEP, has_keep, ctx.keep_scale, ctx.scale, g3,
              _NO_DPROBS.astype(g.dtype), 1, 0.0, False, dq, dk, dv, db, has_db,
              _threads(ctx.q, ctx.v, ctx.probs))
    lead = ctx.lead
    d_mask = None
    if has_db:
        d_mask = _reduce_to(db.reshape(lead + db.shape[1:]), ctx.mask_shape).astype(g.dtype)
    return (_reduce_to(dq.reshape(lead + dq.shape[1:]), ctx.dq_shape),
            _reduce_to(dk.reshape(lead + dk.shape[1:]), ctx.dk_shape, True),
            _reduce_to(dv.reshape(lead + dv.shape[1:]), ctx.dv_shape, True),
            d_mask)
