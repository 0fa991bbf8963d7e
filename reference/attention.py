"""Attention: scaled dot-product attention, multi-head self-attention, the transformer encoder
layer, and the sinusoidal positional encoding, forward and hand-written backward.

Conventions follow PyTorch (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer``): the same shapes, parameter layout and mask semantics, so a
module's parameters can be passed in as they are::

    out, ctx = scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
    dq, dk, dv, d_mask = scaled_dot_product_attention_backward(ctx, d_out)

Masks: for ``scaled_dot_product_attention`` a bool mask is True where a query may attend (as
torch's); for ``nn.MultiheadAttention``-style masks (``key_padding_mask``, ``attn_mask``) a bool
mask is True where attention is *forbidden* (as torch's). Float masks are added to the scores.
A query row that may attend to nothing gets all-zero weights and a zero output (torch's
``scaled_dot_product_attention`` convention; ``nn.MultiheadAttention`` with ``need_weights=True``
returns NaN there instead, with ``need_weights=False`` zeros: torch disagrees with itself, and
zeros are what its fused path and its training path give). Dropout takes explicit keep-masks
(bool, True = keep; kept values scaled by ``1/(1-p)``), drawn by the caller.

Implementation: per (batch, head) the two products ``Q K^T`` and ``P V`` go through BLAS on one
thread (``reference/_blas.py``) in the input's dtype, as torch's do; softmax, layer norm and
activations are float64 per element (row sums accumulate in float64) and rounded once. The
projections are one matrix product over all batch rows and positions.

Contexts: each forward returns a context of its own type (``SDPACtx``, ``MHAPublicCtx``,
``EncoderCtx``, ``PECtx``); each backward refuses any other (a TypeError naming ``ctx``) and a
``grad_out`` without the forward output's shape and dtype. The contexts keep private copies
of the caller's arrays backward reads (query/key/value, x, the weights, the dropout masks),
so editing them in place between forward and backward does not change the gradients; the
copies are a few passes over the inputs beside the O(L^2) attention and the projections
(not measured separately).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from reference import _validate as v
from reference import _vmath as Vm
from reference._blas import dot_serial
from reference._jit import inline, kernel

__all__ = [
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "multi_head_attention", "multi_head_attention_backward",
    "transformer_encoder_layer", "transformer_encoder_layer_backward",
    "ENCODER_PARAMETERS", "sinusoidal_positional_encoding", "add_positional_encoding",
    "add_positional_encoding_backward",
]

_NO_BIAS = np.zeros((1, 1, 1))
_NO_KEEP = np.ones((1, 1, 1), np.bool_)
_NO_KEEP2 = np.ones((1, 1), np.bool_)
_NO_DPROBS = np.zeros((1, 1, 1))


# ---------------------------------------------------------------------------------------------
# kernels: the attention core over N = batch * heads independent (L, S) problems


@kernel()
def _attn_fwd(q, k, v, bias, bias_div, has_bias, causal, keep, has_keep, keep_scale, scale,
              probs, kept, out):
    # q (N, L, D), k (N, S, D), v (N, S, Dv); bias (N / bias_div, L, S) added to the scores;
    # keep (N, L, S) dropout keep-mask. probs: softmax (N, L, S); kept: probs after dropout
    # (the same array when there is no dropout); out (N, L, Dv) = kept @ v.
    # Each softmax row is a few simple passes (map, max, map, sum, map) so that each vectorises:
    # the max through maxnum, the sum through a reassociating float64 sum (reference/_vmath).
    n_prob, n_q, n_k = probs.shape
    dt = probs.dtype
    scores = np.empty((n_q, n_k), q.dtype)
    row = np.empty(n_k)
    for n in range(n_prob):
        dot_serial(q[n], k[n].T, scores)
        for i in range(n_q):
            sr, pr = scores[i], probs[n, i]
            for j in range(n_k):
                row[j] = np.float64(sr[j]) * scale
            if has_bias:
                br = bias[n // bias_div, i]
                for j in range(n_k):
                    row[j] += br[j]
            if causal:
                row[i + 1:] = -np.inf
            m = -np.inf
            for j in range(n_k):
                m = Vm.maxnum(m, row[j])
            if m == -np.inf:  # nothing to attend (torch's convention: zeros), or all NaN
                nan = False
                for j in range(n_k):
                    nan |= row[j] != row[j]
                pr[:] = np.nan if nan else 0.0
            else:
                for j in range(n_k):
                    row[j] = Vm.exp(row[j] - m, dt)
                total = Vm.fsum(row)
                for j in range(n_k):
                    pr[j] = row[j] / total
            if has_keep:
                kr, keep_r = kept[n, i], keep[n, i]
                for j in range(n_k):
                    kr[j] = np.float64(pr[j]) * keep_scale if keep_r[j] else 0.0
        dot_serial(kept[n], v[n], out[n])


@kernel()
def _attn_bwd(q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out, d_probs, dp_div,
              dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias):
    # d_probs (N / dp_div, L, S): an upstream gradient of the kept probabilities themselves
    # (the attention weights an MHA returns, after dropout as torch's), times dp_scale. d_bias (N, L, S), when has_dbias:
    # the gradient of the additive mask, dS before the scale.
    n_prob, n_q, n_k = probs.shape
    dp = np.empty((n_q, n_k), q.dtype)
    ds = np.empty((n_q, n_k), q.dtype)
    row = np.empty(n_k)
    prow = np.empty(n_k)
    tr = np.empty((n_k, n_q), q.dtype)          # transposes, for one-thread products
    for n in range(n_prob):
        tr[:, :] = kept[n].T
        dot_serial(tr, d_out[n], dv[n])         # dV = P_kept^T dO
        dot_serial(d_out[n], v[n].T, dp)        # d P_kept = dO V^T
        for i in range(n_q):
            dpr, pr, dsr = dp[i], probs[n, i], ds[i]
            for j in range(n_k):
                row[j] = dpr[j]
                prow[j] = pr[j]
            if has_dprobs:   # the returned weights are P after dropout, as torch's MHA
                gr = d_probs[n // dp_div, i]
                for j in range(n_k):
                    row[j] += np.float64(gr[j]) * dp_scale
            if has_keep:
                keep_r = keep[n, i]
                for j in range(n_k):
                    row[j] = row[j] * keep_scale if keep_r[j] else 0.0
            acc = Vm.fdot(row, prow)
            for j in range(n_k):
                dsr[j] = prow[j] * (row[j] - acc) * scale
            if has_dbias:
                dbr = d_bias[n, i]
                for j in range(n_k):
                    dbr[j] = prow[j] * (row[j] - acc)
        dot_serial(ds, k[n], dq[n])             # dQ = dS K (scale folded into dS)
        tr[:, :] = ds.T
        dot_serial(tr, q[n], dk[n])             # dK = dS^T Q


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


def _private(a, *given):
    """``a`` as a context may keep it: a private copy if it shares memory with one of the
    caller's arrays ``given`` (see the module docstring)."""
    for g in given:
        a = v.keep(a, g)
    return a


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
    a = np.broadcast_to(a, lead + a.shape[-2:])
    return np.ascontiguousarray(a).reshape((math.prod(lead),) + a.shape[-2:])


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


def _as_bias(mask, name, dtype, true_means: str) -> np.ndarray:
    """A bool or float mask as an additive float64 bias of its own shape. ``true_means`` is
    "allowed" (torch's scaled_dot_product_attention) or "masked" (nn.MultiheadAttention)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of bool or {np.dtype(dtype)}, "
                        f"got {type(mask).__name__}")
    if not mask.dtype.isnative:
        mask = mask.astype(mask.dtype.newbyteorder("="))
    if mask.dtype != np.bool_ and mask.dtype != dtype:
        raise TypeError(f"{name} must have dtype bool or the input's {np.dtype(dtype)}, "
                        f"got {mask.dtype}")
    if mask.dtype == np.bool_:
        return np.where(mask if true_means == "masked" else ~mask, -np.inf, 0.0)
    return mask.astype(np.float64)


def _sdpa_dropout(dropout_p, dropout_mask, target):
    """(keep (N, L, S) or None, keep_scale) from dropout_p and the explicit keep-mask."""
    p = v.real(dropout_p, "dropout_p", lo=0.0, hi=1.0)
    if p == 0.0 and dropout_mask is None:
        return None, 1.0
    if dropout_mask is None:
        raise TypeError(f"dropout_mask must be a bool keep-mask of shape {target} when "
                        f"dropout_p > 0 (True = keep; draw one with "
                        f"reference.layers.dropout_mask), got None")
    keep = v.bool_array(dropout_mask, "dropout_mask", shape=target,
                        like=" (the attention weights' (..., L, S))")
    return keep.reshape((-1,) + target[-2:]), (0.0 if p == 1.0 else 1.0 / (1.0 - p))


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
    keep, keep_scale = _sdpa_dropout(dropout_p, dropout_mask, target)
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
              keep is not None, keep_scale, s, probs, kept, out)
    given = (query, key, value)
    ctx = SDPACtx(_private(q3, *given), _private(k3, *given), _private(v3, *given), probs, s,
                  lead, q.shape, k.shape, val.shape, None if keep is None else kept,
                  None if keep is None else _private(keep, dropout_mask), keep_scale, mask_shape)
    return out.reshape(lead + out.shape[1:]), ctx


def scaled_dot_product_attention_backward(ctx: SDPACtx, grad_out: np.ndarray):
    """Gradients ``(d query, d key, d value, d attn_mask)``; the formulas in the forward's
    docstring (``d attn_mask`` None unless the mask was a float one)."""
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
              _NO_DPROBS.astype(g.dtype), 1, 0.0, False, dq, dk, dv, db, has_db)
    lead = ctx.lead
    d_mask = None
    if has_db:
        d_mask = _reduce_to(db.reshape(lead + db.shape[1:]), ctx.mask_shape).astype(g.dtype)
    return (_reduce_to(dq.reshape(lead + dq.shape[1:]), ctx.dq_shape),
            _reduce_to(dk.reshape(lead + dk.shape[1:]), ctx.dk_shape, True),
            _reduce_to(dv.reshape(lead + dv.shape[1:]), ctx.dv_shape, True),
            d_mask)


# ---------------------------------------------------------------------------------------------
# dense helpers (private: one matrix product over all rows, the bias in float64)


@kernel()
def _linear(x, w, b, y):
    # y (R, O) = x (R, I) @ w^T (I, O) + b
    np.dot(x, w.T, y)
    for r in range(y.shape[0]):
        for o in range(y.shape[1]):
            y[r, o] = np.float64(y[r, o]) + b[o]


@kernel()
def _matmul_t(x, w, y):
    np.dot(x, w.T, y)  # y (R, O) = x (R, I) @ w^T


@kernel()
def _linear_bwd(x, w, g, dx, dw, db):
    # g (R, O): dx = g w, dw = g^T x, db = sum_r g
    np.dot(g, w, dx)
    np.dot(g.T, x, dw)
    acc = np.zeros(g.shape[1])
    for r in range(g.shape[0]):
        for o in range(g.shape[1]):
            acc[o] += g[r, o]
    for o in range(g.shape[1]):
        db[o] = acc[o]


def _project(x, w, b, out):
    """out = x w^T (+ b): a projection with or without its bias."""
    if b is None:
        _matmul_t(x, w, out)
    else:
        _linear(x, w, b, out)
    return out


@kernel()
def _split_rows(a, batch, heads, col0, out):
    # a (B*T, *), rows b*T + t -> out[b*heads + h, t, d] = a[b*T + t, col0 + h*Dh + d] for
    # t < T; out (B*heads, T', Dh) may have more rows (T' >= T), which are left alone.
    n_t, hd = a.shape[0] // batch, out.shape[2]
    for b in range(batch):
        for h in range(heads):
            for t in range(n_t):
                for d in range(hd):
                    out[b * heads + h, t, d] = a[b * n_t + t, col0 + h * hd + d]


@kernel()
def _merge_heads(parts, batch, heads, out, col0):
    # out[b*T + t, col0 + h*Dh + d] = parts[b*heads + h, t, d] for t < T = rows(out) / B; the
    # inverse of _split_rows (rows of parts beyond T are not read)
    n_t, hd = out.shape[0] // batch, parts.shape[2]
    for b in range(batch):
        for h in range(heads):
            for t in range(n_t):
                for d in range(hd):
                    out[b * n_t + t, col0 + h * hd + d] = parts[b * heads + h, t, d]


# ---------------------------------------------------------------------------------------------
# multi-head attention


class MHACtx(NamedTuple):
    xq: np.ndarray           # (B*L, Eq) query rows, batch-major (x in self-attention)
    xk: np.ndarray | None    # (B*S, Ek) key rows; None: packed self-attention (key = value = x)
    xv: np.ndarray | None    # (B*S, Ev)
    w_in: np.ndarray | None  # (3E, E) packed projection (self-attention)
    wq: np.ndarray | None    # (E, Eq), (E, Ek), (E, Ev): the three projections (otherwise)
    wk: np.ndarray | None
    wv: np.ndarray | None
    in_bias: bool            # the projections have biases
    w_out: np.ndarray
    out_bias: bool
    q: np.ndarray            # (B*heads, L, Dh)
    k: np.ndarray            # (B*heads, S', Dh), S' = S (+ 1 bias_k row) (+ 1 zero row)
    v: np.ndarray
    probs: np.ndarray        # (B*heads, L, S')
    kept: np.ndarray         # probs after attention dropout (probs itself without dropout)
    keep: np.ndarray
    has_keep: bool
    keep_scale: float
    o2: np.ndarray           # (B*L, E) heads concatenated, before the output projection
    batch: int
    heads: int
    scale: float
    weights: str             # "none", "average" or "per-head"
    src_len: int             # S, the key's own length
    bias_kv: bool


def _mha_bias(key_padding_mask, attn_mask, batch, heads, length, src_len, extra, dtype):
    """Both torch masks (bool: True = masked; or float) as one additive bias (M, L, S + extra)
    for the attention core, which reads row n // div of it; M = 1 or B * heads. The ``extra``
    columns (bias_k, the zero row) are allowed: torch pads both masks with 0 there."""
    n = batch * heads
    kb = ab = None
    if key_padding_mask is not None:
        kb = _as_bias(key_padding_mask, "key_padding_mask", dtype, "masked")
        if kb.shape != (batch, src_len):
            raise ValueError(f"key_padding_mask must have shape (B, S) = {(batch, src_len)}, "
                             f"got {kb.shape}")
    if attn_mask is not None:
        ab = _as_bias(attn_mask, "attn_mask", dtype, "masked")
        if ab.shape not in ((length, src_len), (n, length, src_len)):
            raise ValueError(f"attn_mask must have shape (L, S) = {(length, src_len)} or "
                             f"(B*num_heads, L, S) = {(n, length, src_len)}, got {ab.shape}")
    if kb is None and ab is None:
        return _NO_BIAS, 1, False
    width = src_len + extra
    if kb is None and ab.ndim == 2:
        total = np.zeros((1, length, width))
        total[0, :, :src_len] = ab
        return total, n, True
    total = np.zeros((batch, heads, length, width))
    if kb is not None:
        total[..., :src_len] += kb[:, None, None, :]
    if ab is not None:
        total[..., :src_len] += ab.reshape(batch, heads, length, src_len) if ab.ndim == 3 else ab
    return total.reshape(n, length, width), 1, True


def _mha_forward(xq, xk, xv, w_in, wq, wk, wv, b_in, w_out, b_out, batch, heads, bias_k,
                 bias_v, zero_attn, bias, div, has_bias, keep, keep_scale, weights):
    """The attention of nn.MultiheadAttention over batch-major rows: ``xq`` (B*L, Eq) and
    ``xk``, ``xv`` (B*S, Ek/Ev), or ``xk = xv = None`` with the packed ``w_in`` (3E, E) for
    self-attention (one product for the three projections); ``b_in`` (3E,) or None. Returns
    out (B*L, E) and the context."""
    dt = xq.dtype
    embed = w_out.shape[0]
    hd = embed // heads
    length = xq.shape[0] // batch
    if xk is None:
        qkv = _project(xq, w_in, b_in, np.empty((xq.shape[0], 3 * embed), dt))
        src_len = length
        sources = ((qkv, 0), (qkv, embed), (qkv, 2 * embed))
    else:
        src_len = xk.shape[0] // batch
        bq, bk, bv = (None, None, None) if b_in is None else (
            b_in[:embed], b_in[embed:2 * embed], b_in[2 * embed:])
        sources = ((_project(xq, wq, bq, np.empty((xq.shape[0], embed), dt)), 0),
                   (_project(xk, wk, bk, np.empty((xk.shape[0], embed), dt)), 0),
                   (_project(xv, wv, bv, np.empty((xv.shape[0], embed), dt)), 0))
    n = batch * heads
    width = src_len + (bias_k is not None) + bool(zero_attn)
    q = np.empty((n, length, hd), dt)
    k = np.zeros((n, width, hd), dt)   # rows past S: bias_k, then the zero row
    val = np.zeros((n, width, hd), dt)
    for (src, col), dst in zip(sources, (q, k, val), strict=True):
        _split_rows(src, batch, heads, col, dst)
    if bias_k is not None:
        k.reshape(batch, heads, width, hd)[:, :, src_len] = bias_k.reshape(heads, hd)
        val.reshape(batch, heads, width, hd)[:, :, src_len] = bias_v.reshape(heads, hd)
    probs = np.empty((n, length, width), dt)
    has_keep = keep is not None
    kept = np.empty_like(probs) if has_keep else probs
    attn = np.empty((n, length, hd), dt)
    scale = 1.0 / math.sqrt(hd)
    _attn_fwd(q, k, val, bias, div, has_bias, False, keep if has_keep else _NO_KEEP, has_keep,
              keep_scale, scale, probs, kept, attn)
    o2 = np.empty((xq.shape[0], embed), dt)
    _merge_heads(attn, batch, heads, o2, 0)
    out = _project(o2, w_out, b_out, np.empty_like(o2))
    ctx = MHACtx(xq, xk, xv, w_in, wq, wk, wv, b_in is not None, w_out, b_out is not None, q, k,
                 val, probs, kept, keep if has_keep else _NO_KEEP, has_keep, keep_scale, o2,
                 batch, heads, scale, weights, src_len, bias_k is not None)
    return out, ctx


def _mha_weights(ctx: MHACtx):
    """The returned attention weights: the probabilities after dropout (torch's), per head
    (B, heads, L, S') or their mean over heads (B, L, S')."""
    p = ctx.kept.reshape(ctx.batch, ctx.heads, *ctx.kept.shape[1:])
    if ctx.weights == "average":
        return (p.astype(np.float64).sum(axis=1) / ctx.heads).astype(p.dtype)
    return p.copy()


def _mha_backward(ctx: MHACtx, d_out2, d_weights):
    """d_out2 (B*L, E), d_weights (B, L, S') or (B, heads, L, S') or None -> the gradients:
    packed self-attention ``(dx, dw_in, db_in, dw_out, db_out)``; otherwise ``(dxq, dxk, dxv,
    dwq, dwk, dwv, db_in, dw_out, db_out, d bias_k, d bias_v)`` (None for absent biases)."""
    batch, heads = ctx.batch, ctx.heads
    embed = ctx.w_out.shape[0]
    dt = ctx.xq.dtype
    do2 = np.empty_like(ctx.o2)
    dw_out, db_out = np.empty_like(ctx.w_out), np.empty(embed, dt)
    _linear_bwd(ctx.o2, ctx.w_out, d_out2, do2, dw_out, db_out)
    db_out = db_out if ctx.out_bias else None
    dattn = np.empty_like(ctx.q)
    _split_rows(do2, batch, heads, 0, dattn)
    dq, dk, dv = np.empty_like(ctx.q), np.empty_like(ctx.k), np.empty_like(ctx.v)
    if d_weights is None:
        dprobs, dp_div, dp_scale, has_dp = _NO_DPROBS.astype(dt), 1, 0.0, False
    elif ctx.weights == "average":
        dprobs, dp_div, dp_scale, has_dp = d_weights, heads, 1.0 / heads, True
    else:
        dprobs = d_weights.reshape(batch * heads, *d_weights.shape[2:])
        dp_div, dp_scale, has_dp = 1, 1.0, True
    _attn_bwd(ctx.q, ctx.k, ctx.v, ctx.probs, ctx.kept, ctx.keep, ctx.has_keep, ctx.keep_scale,
              ctx.scale, dattn, dprobs, dp_div, dp_scale, has_dp, dq, dk, dv,
              _NO_DPROBS.astype(dt), False)
    if ctx.xk is None:
        dqkv = np.empty((ctx.xq.shape[0], 3 * embed), dt)
        for part, col in ((dq, 0), (dk, embed), (dv, 2 * embed)):
            _merge_heads(part, batch, heads, dqkv, col)
        dx2 = np.empty_like(ctx.xq)
        dw_in, db_in = np.empty_like(ctx.w_in), np.empty(3 * embed, dt)
        _linear_bwd(ctx.xq, ctx.w_in, dqkv, dx2, dw_in, db_in)
        return dx2, dw_in, db_in if ctx.in_bias else None, dw_out, db_out
    dxs, dws, dbs = [], [], []
    for part, x, w in ((dq, ctx.xq, ctx.wq), (dk, ctx.xk, ctx.wk), (dv, ctx.xv, ctx.wv)):
        dy = np.empty((x.shape[0], embed), dt)
        _merge_heads(part, batch, heads, dy, 0)      # rows past S (bias_k, zeros) dropped
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(embed, dt)
        _linear_bwd(x, w, dy, dx, dw, db)
        dxs.append(dx)
        dws.append(dw)
        dbs.append(db)
    db_in = np.concatenate(dbs) if ctx.in_bias else None
    d_bk = d_bv = None
    if ctx.bias_kv:  # bias_k's row S of every batch entry: summed over the batch, in float64
        s = ctx.src_len
        d_bk, d_bv = (
            d.reshape(batch, heads, d.shape[1], -1)[:, :, s].astype(np.float64).sum(axis=0)
            .reshape(1, 1, embed).astype(dt) for d in (dk, dv))
    return (*dxs, *dws, db_in, dw_out, db_out, d_bk, d_bv)


def _heads(num_heads, embed):
    heads = v.integer(num_heads, "num_heads", lo=1)
    if embed % heads:
        raise ValueError(f"num_heads must divide the embedding size E = {embed}, got {heads}")
    return heads


def _param(a, name, shape, dt, why, optional=False):
    """A parameter array of exactly ``shape`` (``why`` says what sets it), or None."""
    if a is None and optional:
        return None
    a = v.float_array(a, name, dtype=dt)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {why}, got {a.shape}")
    return a


def _check_mha_params(x3, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                      num_heads):
    embed = x3.shape[2]
    heads = _heads(num_heads, embed)
    why = f"for embedding size E = {embed}"
    dt = x3.dtype
    return (_param(in_proj_weight, "in_proj_weight", (3 * embed, embed), dt, why),
            _param(in_proj_bias, "in_proj_bias", (3 * embed,), dt, why),
            _param(out_proj_weight, "out_proj_weight", (embed, embed), dt, why),
            _param(out_proj_bias, "out_proj_bias", (embed,), dt, why), heads)


def _batch_major(x, name, batch_first, ndim=3):
    x = v.float_array(x, name, ndim=ndim)
    if x.ndim == 2:   # unbatched (L, E): one batch entry
        x = x[None] if batch_first else x[:, None]
    layout = "(B, L, E)" if batch_first else "(L, B, E)"
    if 0 in x.shape:
        what = "a sequence of length >= 1" if x.shape[1 if batch_first else 0] == 0 else \
            "sizes >= 1"
        raise ValueError(f"{name} must hold {what} {layout}, got shape {x.shape}")
    return x if batch_first else x.transpose(1, 0, 2).copy()


def _to_layout(y3, batch_first):
    return y3 if batch_first else y3.transpose(1, 0, 2).copy()


class MHAPublicCtx(NamedTuple):
    inner: MHACtx
    batch_first: bool
    length: int


def _check_grads(inner: MHACtx, grad_out, shape, unbatched=False):
    """(d_out (B*L, E) batch-major rows, d_weights or None) from ``grad_out``."""
    d_out, d_w = v.grad_out_tuple(grad_out, 2, "(d_attn_output, d_attn_weights)")
    dt = inner.xq.dtype
    d_out = v.float_array(d_out, "grad_out d_attn_output", dtype=dt)
    if d_out.shape != shape:
        raise ValueError(f"grad_out d_attn_output must have shape {shape}, got {d_out.shape}")
    batch, length, width = inner.batch, inner.q.shape[1], inner.k.shape[1]
    if d_w is not None:
        if inner.weights == "none":
            raise ValueError("grad_out d_attn_weights must be None: forward had need_weights="
                             "False")
        d_w = v.float_array(d_w, "grad_out d_attn_weights", dtype=dt)
        want = (batch, length, width) if inner.weights == "average" else (
            batch, inner.heads, length, width)
        if d_w.shape != (want[1:] if unbatched else want):
            raise ValueError(f"grad_out d_attn_weights must have shape "
                             f"{want[1:] if unbatched else want}, got {d_w.shape}")
        d_w = d_w.reshape(want)
    return d_out, d_w


def multi_head_attention(x: np.ndarray, in_proj_weight: np.ndarray, in_proj_bias: np.ndarray,
                         out_proj_weight: np.ndarray, out_proj_bias: np.ndarray,
                         key_padding_mask: np.ndarray | None = None,
                         attn_mask: np.ndarray | None = None, *, num_heads: int,
                         batch_first: bool = False, need_weights: bool = True,
                         average_attn_weights: bool = True):
    r"""Multi-head self-attention, as ``nn.MultiheadAttention(E, num_heads)(x, x, x, ...)``.

    Returns ``((attn_output, attn_weights), ctx)``; ``attn_weights`` is None when
    ``need_weights`` is False, else (B, L, S) averaged over heads or (B, heads, L, S).
    ``x`` (L, B, E), or (B, L, E) with ``batch_first``; ``in_proj_weight`` (3E, E) holds
    :math:`W_q, W_k, W_v` stacked, as torch's; ``key_padding_mask`` (B, S) and ``attn_mask``
    (L, S) or (B*heads, L, S): bool True = masked, or float added to the scores. The three
    projections are one matrix product. For cross-attention, separate or ``kdim``/``vdim``
    projections, ``bias=False``, ``add_bias_kv``, ``add_zero_attn`` and attention dropout
    see ``multi_head_attention_qkv``.

    .. math::
        [Q\ K\ V] = X W_{in}^T + b_{in}, \quad
        O_h = \operatorname{softmax}(Q_h K_h^T / \sqrt{d_h} + M) V_h, \quad
        Y = [O_1 \dots O_H] W_{out}^T + b_{out}

    Backward: ``multi_head_attention_backward``.
    """
    bf = v.boolean(batch_first, "batch_first")
    nw = v.boolean(need_weights, "need_weights")
    avg = v.boolean(average_attn_weights, "average_attn_weights")
    x3 = _batch_major(x, "x", bf)
    w_in, b_in, w_out, b_out, heads = _check_mha_params(
        x3, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads)
    given = (x, in_proj_weight, out_proj_weight)
    x3, w_in, w_out = (_private(a, *given) for a in (x3, w_in, w_out))
    batch, length, embed = x3.shape
    bias, div, has_bias = _mha_bias(key_padding_mask, attn_mask, batch, heads, length, length,
                                    0, x3.dtype)
    mode = "none" if not nw else ("average" if avg else "per-head")
    out2, ctx = _mha_forward(x3.reshape(batch * length, embed), None, None, w_in, None, None,
                             None, b_in, w_out, b_out, batch, heads, None, None, False, bias,
                             div, has_bias, None, 1.0, mode)
    out = _to_layout(out2.reshape(batch, length, embed), bf)
    weights = _mha_weights(ctx) if nw else None
    return (out, weights), MHAPublicCtx(ctx, bf, length)


def multi_head_attention_backward(ctx: MHAPublicCtx, grad_out):
    r"""Gradients ``(dx, d in_proj_weight, d in_proj_bias, d out_proj_weight, d out_proj_bias)``
    (the masks are not differentiable) for ``grad_out = (d_attn_output, d_attn_weights)``, a
    pair; ``d_attn_weights`` may be None (and must be, without ``need_weights``).

    With :math:`Z = [O_1 \dots O_H]` and :math:`\bar P_h` the upstream gradient of the weights
    (divided by H when they were averaged):

    .. math::
        \bar W_{out} = \bar Y^T Z, \quad \bar b_{out} = \textstyle\sum_{rows} \bar Y, \quad
        \bar Z = \bar Y W_{out}, \\
        \bar V_h = P_h^T \bar O_h, \quad
        \bar S_h = P_h \odot (\bar O_h V_h^T + \bar P_h - \operatorname{rowsum}(P_h \odot
        (\bar O_h V_h^T + \bar P_h))), \quad
        \bar Q_h = \bar S_h K_h / \sqrt{d_h}, \quad \bar K_h = \bar S_h^T Q_h / \sqrt{d_h}, \\
        \bar W_{in} = [\bar Q\ \bar K\ \bar V]^T X, \quad
        \bar b_{in} = \textstyle\sum_{rows} [\bar Q\ \bar K\ \bar V], \quad
        \bar X = [\bar Q\ \bar K\ \bar V] W_{in}
    """
    v.ctx_of(ctx, MHAPublicCtx, "multi_head_attention")
    inner = ctx.inner
    batch, length, embed = inner.batch, ctx.length, inner.xq.shape[1]
    shape = (batch, length, embed) if ctx.batch_first else (length, batch, embed)
    d_out, d_w = _check_grads(inner, grad_out, shape)
    d3 = d_out if ctx.batch_first else d_out.transpose(1, 0, 2)
    dx2, dw_in, db_in, dw_out, db_out = _mha_backward(
        inner, np.ascontiguousarray(d3).reshape(batch * length, embed), d_w)
    dx = _to_layout(dx2.reshape(batch, length, embed), ctx.batch_first)
    return dx, dw_in, db_in, dw_out, db_out


class MHAGradients(NamedTuple):
    """What ``multi_head_attention_qkv_backward`` returns, in this order; None for an input
    the forward did not have (the packed or the separate projections, the biases)."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    in_proj_weight: np.ndarray | None
    in_proj_bias: np.ndarray | None
    q_proj_weight: np.ndarray | None
    k_proj_weight: np.ndarray | None
    v_proj_weight: np.ndarray | None
    out_proj_weight: np.ndarray
    out_proj_bias: np.ndarray | None
    bias_k: np.ndarray | None
    bias_v: np.ndarray | None


class MHAQKVCtx(NamedTuple):
    inner: MHACtx
    batch_first: bool
    unbatched: bool
    packed: bool             # in_proj_weight (else q/k/v_proj_weight)
    shapes: tuple            # query's, key's and value's own shapes


def multi_head_attention_qkv(
        query: np.ndarray, key: np.ndarray, value: np.ndarray, *, num_heads: int,
        out_proj_weight: np.ndarray, in_proj_weight: np.ndarray | None = None,
        in_proj_bias: np.ndarray | None = None, q_proj_weight: np.ndarray | None = None,
        k_proj_weight: np.ndarray | None = None, v_proj_weight: np.ndarray | None = None,
        out_proj_bias: np.ndarray | None = None, bias_k: np.ndarray | None = None,
        bias_v: np.ndarray | None = None, add_zero_attn: bool = False,
        key_padding_mask: np.ndarray | None = None, attn_mask: np.ndarray | None = None,
        dropout_p: float = 0.0, dropout_mask: np.ndarray | None = None,
        batch_first: bool = False, need_weights: bool = True,
        average_attn_weights: bool = True):
    r"""Multi-head attention of ``query`` over ``key``/``value``, as ``nn.MultiheadAttention``
    in training mode (``F.multi_head_attention_forward``), every option of the module:

    - cross-attention: ``query`` (L, B, E), ``key`` (S, B, Ek), ``value`` (S, B, Ev); (B, ., .)
      with ``batch_first``; unbatched (L, E), (S, Ek), (S, Ev) as torch accepts;
    - projections: packed ``in_proj_weight`` (3E, E) (then Ek = Ev = E), or
      ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, Ek), ``v_proj_weight`` (E, Ev) (the
      module's ``kdim``/``vdim``); ``in_proj_bias`` (3E,) and ``out_proj_bias`` (E,) or None
      (``bias=False``); ``out_proj_weight`` (E, E);
    - ``bias_k``, ``bias_v`` (1, 1, E) (``add_bias_kv``): one more key and value row after the
      projected sequence, in every batch entry; ``add_zero_attn``: then one more of zeros
      (after the head split, as torch). Both masks are given for the S keys and padded with
      "allowed" for the added columns, as torch pads them; the weights have
      S' = S (+1) (+1) columns;
    - ``key_padding_mask`` (B, S), ``attn_mask`` (L, S) or (B*heads, L, S): bool True =
      masked, or float added to the scores;
    - attention dropout by an explicit keep-mask ``dropout_mask`` (B, heads, L, S') (bool,
      True = keep; (heads, L, S') unbatched) with ``dropout_p``: kept weights are scaled by
      1/(1-p), p = 1 keeps nothing (zeros). The returned weights are the weights after
      dropout, as torch's (``need_weights=True`` path).

    .. math::
        Q = X_q W_q^T + b_q,\quad K = [X_k W_k^T + b_k;\ b_K;\ 0],\quad
        V = [X_v W_v^T + b_v;\ b_V;\ 0] \\
        P_h = \operatorname{softmax}(Q_h K_h^T / \sqrt{d_h} + M),\quad
        O_h = (P_h \odot D_h / (1-p))\, V_h,\quad Y = [O_1 \dots O_H] W_{out}^T + b_{out}

    A query row with no allowed key gets zero weights and a zero attention output (see the
    module docstring: torch's ``need_weights=True`` path gives NaN there).

    Returns ``((attn_output, attn_weights), ctx)``, ``attn_weights`` None without
    ``need_weights``, else averaged over heads (B, L, S') or per head (B, heads, L, S').
    Backward: ``multi_head_attention_qkv_backward``.
    """
    bf = v.boolean(batch_first, "batch_first")
    nw = v.boolean(need_weights, "need_weights")
    avg = v.boolean(average_attn_weights, "average_attn_weights")
    zero_attn = v.boolean(add_zero_attn, "add_zero_attn")
    q_in = v.float_array(query, "query", ndim=(2, 3))
    unbatched = q_in.ndim == 2
    dt = q_in.dtype
    q3 = _batch_major(q_in, "query", bf or unbatched, q_in.ndim)
    k3 = _batch_major(v.float_array(key, "key", ndim=q_in.ndim, dtype=dt), "key",
                      bf or unbatched, q_in.ndim)
    v3 = _batch_major(v.float_array(value, "value", ndim=q_in.ndim, dtype=dt), "value",
                      bf or unbatched, q_in.ndim)
    batch, length, embed = q3.shape
    src_len = k3.shape[1]
    if k3.shape[0] != batch:
        raise ValueError(f"key must have the query's batch size {batch}, got shape {key.shape}")
    if v3.shape[:2] != k3.shape[:2]:
        raise ValueError(f"value must have the key's batch size and length {k3.shape[:2]} "
                         f"(batch-major), got shape {value.shape}")
    heads = _heads(num_heads, embed)
    why = f"for embedding size E = {embed}"
    packed = in_proj_weight is not None
    separate = (q_proj_weight, k_proj_weight, v_proj_weight)
    w_in = wq = wk = wv = None
    if not packed and all(a is None for a in separate):
        raise TypeError(f"in_proj_weight ({3 * embed}, {embed}) or q_proj_weight, "
                        f"k_proj_weight and v_proj_weight must be given, got None")
    if packed:
        for a, name in zip(separate, ("q_proj_weight", "k_proj_weight", "v_proj_weight"),
                           strict=True):
            if a is not None:
                raise ValueError(f"{name} must be None when in_proj_weight is given (the "
                                 f"packed projection), got {v._describe(a)}")
        w_in = _param(in_proj_weight, "in_proj_weight", (3 * embed, embed), dt, why)
        for a, name in ((k3, "key"), (v3, "value")):
            if a.shape[2] != embed:
                raise ValueError(f"{name} must have the query's embedding size E = {embed} "
                                 f"with the packed in_proj_weight (else give q_proj_weight, "
                                 f"k_proj_weight, v_proj_weight), got shape {a.shape}")
        wq, wk, wv = (np.ascontiguousarray(w_in[i * embed:(i + 1) * embed]) for i in range(3))
    else:
        wq = _param(q_proj_weight, "q_proj_weight", (embed, embed), dt,
                    f"{why} (or give in_proj_weight)")
        wk = _param(k_proj_weight, "k_proj_weight", (embed, k3.shape[2]), dt,
                    f"(E, kdim) for E = {embed} and the key's kdim = {k3.shape[2]}")
        wv = _param(v_proj_weight, "v_proj_weight", (embed, v3.shape[2]), dt,
                    f"(E, vdim) for E = {embed} and the value's vdim = {v3.shape[2]}")
    b_in = _param(in_proj_bias, "in_proj_bias", (3 * embed,), dt, why, optional=True)
    w_out = _param(out_proj_weight, "out_proj_weight", (embed, embed), dt, why)
    b_out = _param(out_proj_bias, "out_proj_bias", (embed,), dt, why, optional=True)
    if (bias_k is None) != (bias_v is None):
        name = "bias_v" if bias_v is None else "bias_k"
        raise ValueError(f"{name} must be given together with "
                         f"{'bias_k' if name == 'bias_v' else 'bias_v'} (add_bias_kv), got None")
    bk = _param(bias_k, "bias_k", (1, 1, embed), dt, why, optional=True)
    bv = _param(bias_v, "bias_v", (1, 1, embed), dt, why, optional=True)
    width = src_len + (bk is not None) + zero_attn
    if unbatched:
        key_padding_mask = _unbatched_mask(key_padding_mask, "key_padding_mask", 1)
        dropout_mask = _unbatched_mask(dropout_mask, "dropout_mask", 3)
    keep, keep_scale = _sdpa_dropout(dropout_p, dropout_mask, (batch, heads, length, width))
    bias, div, has_bias = _mha_bias(key_padding_mask, attn_mask, batch, heads, length,
                                    src_len, width - src_len, dt)
    given = (query, key, value, in_proj_weight, q_proj_weight, k_proj_weight, v_proj_weight,
             out_proj_weight, dropout_mask)
    q3, k3, v3, wq, wk, wv, w_out = (_private(a, *given) for a in (q3, k3, v3, wq, wk, wv,
                                                                    w_out))
    if keep is not None:
        keep = _private(keep, *given)
    mode = "none" if not nw else ("average" if avg else "per-head")
    out2, ctx = _mha_forward(q3.reshape(batch * length, embed),
                             k3.reshape(batch * src_len, -1), v3.reshape(batch * src_len, -1),
                             None, wq, wk, wv, b_in, w_out, b_out, batch, heads, bk, bv,
                             zero_attn, bias, div, has_bias, keep, keep_scale, mode)
    out = _to_layout(out2.reshape(batch, length, embed), bf or unbatched)
    weights = _mha_weights(ctx) if nw else None
    if unbatched:
        out, weights = out[0], (None if weights is None else weights[0])
    shapes = (np.shape(query), np.shape(key), np.shape(value))
    return (out, weights), MHAQKVCtx(ctx, bf, unbatched, packed, shapes)


def _unbatched_mask(mask, name, ndim):
    """An unbatched input's (S,) key_padding_mask or (heads, L, S') dropout mask, with its
    batch axis of one added."""
    if isinstance(mask, np.ndarray) and mask.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional for an unbatched query, got "
                         f"shape {mask.shape}")
    return mask[None] if isinstance(mask, np.ndarray) else mask


def multi_head_attention_qkv_backward(ctx: MHAQKVCtx, grad_out) -> MHAGradients:
    r"""Gradients of every input and parameter (``MHAGradients``, a tuple in that order)
    for ``grad_out = (d_attn_output, d_attn_weights)``; ``d_attn_weights`` may be None (and
    must be, without ``need_weights``). The masks are not differentiable. With
    :math:`Z = [O_1 \dots O_H]`, :math:`\bar P_h` the upstream gradient of the returned
    (dropped) weights (divided by H when averaged) and :math:`\tilde D = D/(1-p)`:

    .. math::
        \bar W_{out} = \bar Y^T Z,\quad \bar b_{out} = \textstyle\sum_{rows} \bar Y,\quad
        \bar Z = \bar Y W_{out},\quad \bar V_h = (P_h \odot \tilde D_h)^T \bar O_h \\
        G_h = (\bar O_h V_h^T + \bar P_h) \odot \tilde D_h,\quad
        \bar S_h = P_h \odot (G_h - \operatorname{rowsum}(P_h \odot G_h)),\quad
        \bar Q_h = \bar S_h K_h / \sqrt{d_h},\quad \bar K_h = \bar S_h^T Q_h / \sqrt{d_h} \\
        \bar W_q = \bar Q^T X_q,\quad \bar b_q = \textstyle\sum_{rows} \bar Q,\quad
        \bar X_q = \bar Q W_q \quad (\text{and the same for } K, V \text{ on their first S
        rows}),\quad \bar b_K = \textstyle\sum_{batch} \bar K_{S},\quad
        \bar b_V = \textstyle\sum_{batch} \bar V_{S}

    The zero row's gradient is dropped (it is a constant). With the packed projection,
    ``d in_proj_weight`` stacks :math:`\bar W_q, \bar W_k, \bar W_v`; when one array is given
    as query, key and value (self-attention), its gradient is the sum of the three.
    """
    v.ctx_of(ctx, MHAQKVCtx, "multi_head_attention_qkv")
    inner = ctx.inner
    batch, length, embed = inner.batch, inner.q.shape[1], inner.w_out.shape[0]
    if ctx.unbatched:
        shape = (length, embed)
    else:
        shape = (batch, length, embed) if ctx.batch_first else (length, batch, embed)
    d_out, d_w = _check_grads(inner, grad_out, shape, ctx.unbatched)
    d3 = d_out[None] if ctx.unbatched else (
        d_out if ctx.batch_first else d_out.transpose(1, 0, 2))
    dxq, dxk, dxv, dwq, dwk, dwv, db_in, dw_out, db_out, d_bk, d_bv = _mha_backward(
        inner, np.ascontiguousarray(d3).reshape(batch * length, embed), d_w)
    dxs = []
    for dx, own in zip((dxq, dxk, dxv), ctx.shapes, strict=True):
        d = dx.reshape(batch, -1, dx.shape[1])
        dxs.append(d[0] if ctx.unbatched else _to_layout(d, ctx.batch_first))
    if ctx.packed:
        return MHAGradients(*dxs, np.concatenate([dwq, dwk, dwv]), db_in, None, None, None,
                            dw_out, db_out, d_bk, d_bv)
    return MHAGradients(*dxs, None, db_in, dwq, dwk, dwv, dw_out, db_out, d_bk, d_bv)


# ---------------------------------------------------------------------------------------------
# layer norm over the last dimension and the feed-forward activations (private kernels)


@kernel()
def _ln_fwd(x, w, b, eps, y, xhat, rstd):
    rows, n = x.shape
    for r in range(rows):
        mean = 0.0
        for j in range(n):
            mean += x[r, j]
        mean /= n
        var = 0.0
        for j in range(n):
            d = np.float64(x[r, j]) - mean
            var += d * d
        s = 1.0 / math.sqrt(var / n + eps)
        rstd[r] = s
        for j in range(n):
            xh = (np.float64(x[r, j]) - mean) * s
            xhat[r, j] = xh
            y[r, j] = xh * w[j] + b[j]


@kernel()
def _ln_bwd(g, w, xhat, rstd, dx, dw, db):
    rows, n = g.shape
    acc_w = np.zeros(n)
    acc_b = np.zeros(n)
    for r in range(rows):
        m1 = 0.0
        m2 = 0.0
        for j in range(n):
            gh = np.float64(g[r, j]) * w[j]
            m1 += gh
            m2 += gh * xhat[r, j]
            acc_w[j] += np.float64(g[r, j]) * xhat[r, j]
            acc_b[j] += g[r, j]
        m1 /= n
        m2 /= n
        for j in range(n):
            gh = np.float64(g[r, j]) * w[j]
            dx[r, j] = rstd[r] * (gh - m1 - xhat[r, j] * m2)
    for j in range(n):
        dw[j] = acc_w[j]
        db[j] = acc_b[j]


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@inline()
def _act(a, gelu, dt):
    if gelu:
        cdf, _ = Vm.ndtr(a, dt)        # exact GELU: a * Phi(a)
        return a * cdf
    return a if a > 0 else 0.0 * a + 0.0


@inline()
def _act_grad(a, gelu, dt):
    if gelu:
        cdf, gauss = Vm.ndtr(a, dt)    # Phi(a) and e^{-a^2/2}
        return cdf + a * _INV_SQRT_2PI * gauss
    return 1.0 if a > 0 else 0.0


@kernel()
def _bias_act_drop(z, b, gelu, keep, has_keep, keep_scale, pre, out):
    # pre = z + b (saved for backward), out = act(pre) * mask / (1 - p); z, pre, out (R, F)
    rows, n = z.shape
    for r in range(rows):
        for j in range(n):
            a = np.float64(z[r, j]) + b[j]
            pre[r, j] = a
            y = _act(a, gelu, out.dtype)
            if has_keep:
                y = y * keep_scale if keep[r, j] else 0.0
            out[r, j] = y


@kernel()
def _bias_act_drop_bwd(g, pre, gelu, keep, has_keep, keep_scale, dz):
    rows, n = g.shape
    for r in range(rows):
        for j in range(n):
            d = np.float64(g[r, j])
            if has_keep:
                d = d * keep_scale if keep[r, j] else 0.0
            dz[r, j] = d * _act_grad(np.float64(pre[r, j]), gelu, dz.dtype)


@kernel()
def _residual_drop(x, a, keep, has_keep, keep_scale, out):
    # out = x + a * mask / (1 - p)
    rows, n = x.shape
    for r in range(rows):
        for j in range(n):
            d = np.float64(a[r, j])
            if has_keep:
                d = d * keep_scale if keep[r, j] else 0.0
            out[r, j] = np.float64(x[r, j]) + d


@kernel()
def _drop_bwd(g, keep, has_keep, keep_scale, out):
    rows, n = g.shape
    for r in range(rows):
        for j in range(n):
            d = np.float64(g[r, j])
            if has_keep:
                d = d * keep_scale if keep[r, j] else 0.0
            out[r, j] = d


# ---------------------------------------------------------------------------------------------
# transformer encoder layer

# Parameter order (after x), as the names of nn.TransformerEncoderLayer's state_dict
# (``self_attn.in_proj_weight`` -> ``in_proj_weight``, ``linear1.weight`` -> ``linear1_weight``).
ENCODER_PARAMETERS = (
    "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
    "linear1_weight", "linear1_bias", "linear2_weight", "linear2_bias",
    "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias",
)
# Dropout keep-masks, in the order torch applies them: attention probabilities (B, heads, L, L)
# inside self_attn; dropout1 on the attention block's output (x's shape); dropout in the
# feed-forward after the activation (x's shape with F features); dropout2 on its output.
ENCODER_DROPOUTS = ("attn_dropout_mask", "dropout1_mask", "dropout_mask", "dropout2_mask")


class EncoderCtx(NamedTuple):
    batch_first: bool
    norm_first: bool
    gelu: bool
    shape: tuple            # (B, L, E)
    params: list
    mha: MHACtx
    keeps: list             # (R, E), (R, F), (R, E) bool or None
    keep_scale: float
    saved: dict


def _check_keep(mask, name, shape, p):
    if mask is None:
        if p > 0:
            raise ValueError(f"{name} must be given when p > 0 (dropout takes explicit masks)")
        return None
    return v.bool_array(mask, name, shape=shape, like=" (see ENCODER_DROPOUTS)")


def transformer_encoder_layer(
        x: np.ndarray, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
        linear1_weight, linear1_bias, linear2_weight, linear2_bias,
        norm1_weight, norm1_bias, norm2_weight, norm2_bias,
        attn_dropout_mask=None, dropout1_mask=None, dropout_mask=None, dropout2_mask=None,
        src_key_padding_mask=None, src_mask=None, *, num_heads: int, p: float = 0.0,
        activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
        batch_first: bool = False) -> tuple[np.ndarray, EncoderCtx]:
    r"""One transformer encoder layer, as ``nn.TransformerEncoderLayer`` in training mode.

    Post-norm (``norm_first=False``, the original) and pre-norm:

    .. math::
        \text{post:}\quad h &= \operatorname{LN}_1(x + D_1(\operatorname{MHA}(x))),\quad
        y = \operatorname{LN}_2(h + D_2(\operatorname{FF}(h))) \\
        \text{pre:}\quad h &= x + D_1(\operatorname{MHA}(\operatorname{LN}_1 x)),\quad
        y = h + D_2(\operatorname{FF}(\operatorname{LN}_2 h)) \\
        \operatorname{FF}(z) &= W_2\, D(\phi(W_1 z + b_1)) + b_2, \quad
        \phi = \operatorname{relu} \text{ or exact } \operatorname{gelu}

    :math:`D_\cdot(a) = a \odot m / (1 - p)` with the given keep-masks (``ENCODER_DROPOUTS``;
    all may be None when ``p = 0``); self-attention also drops attention probabilities with
    ``attn_dropout_mask``, as torch's ``self_attn`` does. ``src_mask`` (L, L) or
    (B*heads, L, L) and ``src_key_padding_mask`` (B, L) as in ``multi_head_attention``.
    :math:`\operatorname{LN}(z) = (z - \mu) / \sqrt{\sigma^2 + \epsilon} \odot w + b` over E
    (biased variance). Backward chains the parts' vector-Jacobian products: layer norm's
    :math:`\bar z = r(\bar{\hat z} - \operatorname{mean}\bar{\hat z} - \hat z
    \operatorname{mean}(\bar{\hat z} \hat z))` with :math:`\bar{\hat z} = \bar y \odot w`,
    relu'(0) = 0 as in PyTorch, gelu' = :math:`\Phi(a) + a \varphi(a)`.

    Returns ``(y, ctx)``; backward gives the gradients of x and the twelve parameters, in
    ``ENCODER_PARAMETERS`` order (the masks are not differentiable).
    """
    bf = v.boolean(batch_first, "batch_first")
    nf = v.boolean(norm_first, "norm_first")
    act = v.choice(activation, "activation", ("relu", "gelu"))
    eps = v.real(layer_norm_eps, "layer_norm_eps", lo=0.0, lo_open=True)
    p = v.real(p, "p", lo=0.0, hi=1.0)
    x3 = _batch_major(x, "x", bf)
    batch, length, embed = x3.shape
    dt = x3.dtype
    w_in, b_in, w_out, b_out, heads = _check_mha_params(
        x3, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads)
    w1 = v.float_array(linear1_weight, "linear1_weight", ndim=2, dtype=dt)
    ff = w1.shape[0]
    named = [("linear1_weight", w1, (ff, embed)),
             ("linear1_bias", linear1_bias, (ff,)),
             ("linear2_weight", linear2_weight, (embed, ff)),
             ("linear2_bias", linear2_bias, (embed,)),
             ("norm1_weight", norm1_weight, (embed,)), ("norm1_bias", norm1_bias, (embed,)),
             ("norm2_weight", norm2_weight, (embed,)), ("norm2_bias", norm2_bias, (embed,))]
    rest = []
    for name, a, want in named:
        a = v.float_array(a, name, dtype=dt)
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want} (E = {embed}, F = {ff}), "
                             f"got {a.shape}")
        rest.append(a)
    w1, b1, w2, b2, n1w, n1b, n2w, n2b = rest
    lay = (lambda f: (batch, length, f)) if bf else (lambda f: (length, batch, f))
    k_attn = _check_keep(attn_dropout_mask, "attn_dropout_mask", (batch, heads, length, length),
                         p)
    keeps = []
    for mask, name, f in ((dropout1_mask, "dropout1_mask", embed),
                          (dropout_mask, "dropout_mask", ff),
                          (dropout2_mask, "dropout2_mask", embed)):
        k = _check_keep(mask, name, lay(f), p)
        if k is not None and not bf:
            k = k.transpose(1, 0, 2)
        keeps.append(None if k is None else np.ascontiguousarray(k).reshape(-1, f))
    keep_scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    bias, div, has_bias = _mha_bias(src_key_padding_mask, src_mask, batch, heads, length,
                                    length, 0, dt)
    if k_attn is not None:
        k_attn = np.ascontiguousarray(k_attn).reshape(batch * heads, length, length)
    given = (x, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, linear1_weight,
             linear1_bias, linear2_weight, linear2_bias, norm1_weight, norm1_bias,
             norm2_weight, norm2_bias, attn_dropout_mask, dropout1_mask, dropout_mask,
             dropout2_mask)
    x3, w_in, b_in, w_out, b_out, w1, b1, w2, b2, n1w, n1b, n2w, n2b = (
        _private(a, *given) for a in (x3, w_in, b_in, w_out, b_out, w1, b1, w2, b2, n1w, n1b,
                                      n2w, n2b))
    keeps = [None if k is None else _private(k, *given) for k in keeps]
    if k_attn is not None:
        k_attn = _private(k_attn, *given)
    rows = batch * length
    x2 = x3.reshape(rows, embed)
    s = {}

    def ln(z, w, b, tag):
        y = np.empty_like(z)
        xhat = np.empty(z.shape)
        rstd = np.empty(z.shape[0])
        _ln_fwd(z, w, b, eps, y, xhat, rstd)
        s[tag] = (xhat, rstd)
        s[tag + "_in"] = z
        return y

    def attention_block(z):
        out, ctx = _mha_forward(z, None, None, w_in, None, None, None, b_in, w_out, b_out,
                                batch, heads, None, None, False, bias, div, has_bias, k_attn,
                                keep_scale, "none")
        return out, ctx

    def feed_forward(z):
        z1 = np.empty((rows, ff), dt)
        _matmul_t(z, w1, z1)
        pre = np.empty((rows, ff), dt)
        hidden = np.empty((rows, ff), dt)
        _bias_act_drop(z1, b1, act == "gelu", keeps[1] if keeps[1] is not None else _NO_KEEP2,
                       keeps[1] is not None, keep_scale, pre, hidden)
        out = np.empty((rows, embed), dt)
        _linear(hidden, w2, b2, out)
        s["ff_in"], s["ff_pre"], s["ff_hidden"] = z, pre, hidden
        return out

    def residual(base, branch, keep):
        out = np.empty_like(base)
        _residual_drop(base, branch, keep if keep is not None else _NO_KEEP2, keep is not None,
                       keep_scale, out)
        return out

    if nf:
        a_out, mha = attention_block(ln(x2, n1w, n1b, "ln1"))
        h = residual(x2, a_out, keeps[0])
        y = residual(h, feed_forward(ln(h, n2w, n2b, "ln2")), keeps[2])
    else:
        a_out, mha = attention_block(x2)
        h = ln(residual(x2, a_out, keeps[0]), n1w, n1b, "ln1")
        y = ln(residual(h, feed_forward(h), keeps[2]), n2w, n2b, "ln2")
    params = [w_in, b_in, w_out, b_out, w1, b1, w2, b2, n1w, n1b, n2w, n2b]
    ctx = EncoderCtx(bf, nf, act == "gelu", (batch, length, embed), params, mha, keeps,
                     keep_scale, s)
    return _to_layout(y.reshape(batch, length, embed), bf), ctx



def transformer_encoder_layer_backward(ctx: EncoderCtx, grad_out: np.ndarray) -> tuple:
    """Gradients ``(dx, *d parameters in ENCODER_PARAMETERS order)``: the chain rule through
    the parts (the forward's docstring)."""
    v.ctx_of(ctx, EncoderCtx, "transformer_encoder_layer")
    batch, length, embed = ctx.shape
    shape = (batch, length, embed) if ctx.batch_first else (length, batch, embed)
    dt = ctx.params[0].dtype
    g = v.float_array(grad_out, "grad_out", dtype=dt)
    if g.shape != shape:
        raise ValueError(f"grad_out must have the forward output's shape {shape}, got {g.shape}")
    g2 = (g if ctx.batch_first else g.transpose(1, 0, 2).copy()).reshape(-1, embed)
    w_in, b_in, w_out, b_out, w1, b1, w2, b2, n1w, n1b, n2w, n2b = ctx.params
    s, ks = ctx.saved, ctx.keep_scale
    grads = {}

    def ln_bwd(gz, w, tag):
        xhat, rstd = s[tag]
        dz, dw, db = np.empty_like(gz), np.empty(w.shape, dt), np.empty(w.shape, dt)
        _ln_bwd(gz, w, xhat, rstd, dz, dw, db)
        grads[tag] = (dw, db)
        return dz

    def drop_bwd(gz, keep):
        out = np.empty_like(gz)
        _drop_bwd(gz, keep if keep is not None else _NO_KEEP2, keep is not None, ks, out)
        return out

    def ff_bwd(gy):
        # gy: gradient of the FF output (before dropout2 was applied by the caller)
        dh = np.empty_like(s["ff_hidden"])
        dw2, db2 = np.empty_like(w2), np.empty(w2.shape[0], dt)
        _linear_bwd(s["ff_hidden"], w2, gy, dh, dw2, db2)
        dz1 = np.empty_like(dh)
        keep = ctx.keeps[1]
        _bias_act_drop_bwd(dh, s["ff_pre"], ctx.gelu, keep if keep is not None else _NO_KEEP2,
                           keep is not None, ks, dz1)
        dzin = np.empty_like(s["ff_in"])
        dw1, db1 = np.empty_like(w1), np.empty(w1.shape[0], dt)
        _linear_bwd(s["ff_in"], w1, dz1, dzin, dw1, db1)
        grads["ff"] = (dw1, db1, dw2, db2)
        return dzin

    def attn_bwd(gy):
        dz, dw_in, db_in, dw_out, db_out = _mha_backward(ctx.mha, gy, None)
        grads["attn"] = (dw_in, db_in, dw_out, db_out)
        return dz

    if ctx.norm_first:
        dh = g2 + ln_bwd(ff_bwd(drop_bwd(g2, ctx.keeps[2])), n2w, "ln2")
        dx = dh + ln_bwd(attn_bwd(drop_bwd(dh, ctx.keeps[0])), n1w, "ln1")
    else:
        dr2 = ln_bwd(g2, n2w, "ln2")                        # d (h + D2 FF(h))
        dh = dr2 + ff_bwd(drop_bwd(dr2, ctx.keeps[2]))
        dr1 = ln_bwd(dh, n1w, "ln1")                        # d (x + D1 MHA(x))
        dx = dr1 + attn_bwd(drop_bwd(dr1, ctx.keeps[0]))
    dx = _to_layout(dx.astype(dt).reshape(batch, length, embed), ctx.batch_first)
    dw1, db1, dw2, db2 = grads["ff"]
    return (dx, *grads["attn"], dw1, db1, dw2, db2, *grads["ln1"], *grads["ln2"])


# ---------------------------------------------------------------------------------------------
# sinusoidal positional encoding


@kernel()
def _pe_table(length, d_model, log_base, out):
    for pos in range(length):
        for i in range(0, d_model, 2):
            angle = pos * math.exp(-i * log_base / d_model)
            out[pos, i] = math.sin(angle)
            if i + 1 < d_model:
                out[pos, i + 1] = math.cos(angle)


@functools.lru_cache(maxsize=32)
def _pe_cached(length: int, d_model: int, base: float, dtype: np.dtype) -> np.ndarray:
    out = np.empty((length, d_model))
    _pe_table(length, d_model, math.log(base), out)
    out = out.astype(dtype)
    out.flags.writeable = False  # shared between calls
    return out


def sinusoidal_positional_encoding(length: int, d_model: int, *, base: float = 10000.0,
                                   dtype=np.float64) -> np.ndarray:
    r"""The table of "Attention Is All You Need" (and PyTorch's tutorial), (length, d_model).

    .. math::
        PE_{p, 2i} = \sin(p\, \omega_i), \quad PE_{p, 2i+1} = \cos(p\, \omega_i), \quad
        \omega_i = \text{base}^{-2i / d}

    Computed in float64 and rounded once. An odd ``d_model`` ends with a sine column.
    Forward only: it has no input to differentiate.
    """
    n = v.integer(length, "length", lo=1)
    d = v.integer(d_model, "d_model", lo=1)
    b = v.real(base, "base", lo=1.0, lo_open=True)
    dt = np.dtype(dtype)
    if dt not in v.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return _pe_cached(n, d, b, dt).copy()


class PECtx(NamedTuple):
    shape: tuple
    dtype: np.dtype


def add_positional_encoding(x: np.ndarray, *, batch_first: bool = False,
                            base: float = 10000.0) -> tuple[np.ndarray, PECtx]:
    r"""``x + PE`` over the sequence axis (PyTorch tutorial's ``PositionalEncoding``, without
    dropout): x (L, B, E), or (B, L, E) with ``batch_first``. Backward is the identity:
    :math:`\bar x = \bar y`."""
    bf = v.boolean(batch_first, "batch_first")
    x = v.float_array(x, "x", ndim=3)
    length = x.shape[1] if bf else x.shape[0]
    if length == 0 or x.shape[2] == 0:
        raise ValueError(f"x must hold a sequence of length >= 1 and E >= 1, got {x.shape}")
    b = v.real(base, "base", lo=1.0, lo_open=True)
    pe = _pe_cached(length, x.shape[2], b, x.dtype)  # the table, computed once per shape
    y = x + (pe[None] if bf else pe[:, None])
    return y, PECtx(x.shape, x.dtype)


def add_positional_encoding_backward(ctx: PECtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``(dx,)`` = ``(dy,)``: adding a constant table is the identity's derivative."""
    v.ctx_of(ctx, PECtx, "add_positional_encoding")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    if g.shape != ctx.shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.shape}, "
                         f"got {g.shape}")
    return (g.copy(),)
