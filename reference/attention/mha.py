"""Multi-head attention, as ``nn.MultiheadAttention`` in training mode: self-attention with
the packed projection (``multi_head_attention``) and every option of the module
(``multi_head_attention_qkv``: cross-attention, kdim/vdim, bias=False, add_bias_kv,
add_zero_attn, unbatched inputs, attention dropout by an explicit keep-mask). The encoder
layer calls the same forward and backward (``_mha_forward``, ``_mha_backward``). Conventions:
``reference.attention``.
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
    _merge_heads,
    _private,
    _project,
    _project_bwd,
    _split_rows,
    _threads,
)

__all__ = ["multi_head_attention", "multi_head_attention_backward", "multi_head_attention_qkv",
           "multi_head_attention_qkv_backward", "MHAGradients"]


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
              keep_scale, scale, probs, kept, attn, _threads(q, val, probs))
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
    do2, dw_out, db_out = _project_bwd(ctx.o2, ctx.w_out, d_out2, ctx.out_bias)
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
              _NO_DPROBS.astype(dt), False, _threads(ctx.q, ctx.v, ctx.probs))
    if ctx.xk is None:
        dqkv = np.empty((ctx.xq.shape[0], 3 * embed), dt)
        for part, col in ((dq, 0), (dk, embed), (dv, 2 * embed)):
            _merge_heads(part, batch, heads, dqkv, col)
        dx2, dw_in, db_in = _project_bwd(ctx.xq, ctx.w_in, dqkv, ctx.in_bias)
        return dx2, dw_in, db_in, dw_out, db_out
    dxs, dws, dbs = [], [], []
    for part, x, w in ((dq, ctx.xq, ctx.wq), (dk, ctx.xk, ctx.wk), (dv, ctx.xv, ctx.wv)):
        dy = np.empty((x.shape[0], embed), dt)
        _merge_heads(part, batch, heads, dy, 0)      # rows past S (bias_k, zeros) dropped
        dx, dw, db = _project_bwd(x, w, dy, ctx.in_bias)
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
    keep, keep_scale = _attn_dropout(dropout_p, dropout_mask, (batch, heads, length, width))
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
    for dx in (dxq, dxk, dxv):
        d = dx.reshape(batch, -1, dx.shape[1])
        dxs.append(d[0] if ctx.unbatched else _to_layout(d, ctx.batch_first))
    if ctx.packed:
        return MHAGradients(*dxs, np.concatenate([dwq, dwk, dwv]), db_in, None, None, None,
                            dw_out, db_out, d_bk, d_bv)
    return MHAGradients(*dxs, None, db_in, dwq, dwk, dwv, dw_out, db_out, d_bk, d_bv)
