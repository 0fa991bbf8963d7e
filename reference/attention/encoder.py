"""The transformer encoder layer, as ``nn.TransformerEncoderLayer`` in training mode (post- and
pre-norm, relu/gelu, dropout by explicit keep-masks), composed of the multi-head attention of
``reference.attention.mha``, the layer-norm kernels of ``reference.norm`` (``layer_norm``'s
own), ``reference.layers``' linear and dropout kernels, and the activation element functions
of ``reference._prims`` (``activations.relu``/``gelu``'s own) fused with dropout below.
Conventions: ``reference.attention``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from reference import _prims as P
from reference import _validate as v
from reference._jit import kernel
from reference.attention._core import (
    _NO_KEEP2,
    _private,
    _project,
    _project_bwd,
)
from reference.attention.mha import (
    MHACtx,
    _batch_major,
    _check_mha_params,
    _mha_backward,
    _mha_bias,
    _mha_forward,
    _to_layout,
)
from reference.layers import _scale_block
from reference.norm import LN_BLOCKS, _ln_block_bwd, _ln_row_fwd

__all__ = ["transformer_encoder_layer", "transformer_encoder_layer_backward",
           "ENCODER_PARAMETERS", "ENCODER_DROPOUTS"]


# ---------------------------------------------------------------------------------------------
# the feed-forward activations, dropout and residual (private kernels)


@kernel()
def _ln_fwd(x, y, w, b, eps, mean, invstd, single, xs):
    # reference.norm's layer-norm row kernel (layer_norm's own) over every row, on the calling
    # thread as the encoder's other kernels: norm's prange driver made the encoder layer
    # 1.2-1.4x slower (medium, float32, paired in one process on this loaded 2-core machine;
    # at parity with one Numba thread)
    for r in range(x.shape[0]):
        _ln_row_fwd(x, y, w, b, eps, mean, invstd, r, single, xs)


@kernel()
def _ln_bwd(x, g, mean, invstd, w, dx, pw, pb):
    # reference.norm's backward block kernel over its fixed row blocks (the same split, so the
    # same dw, db partial sums as layer_norm_backward), on the calling thread
    rows, blocks = x.shape[0], pw.shape[0]
    for k in range(blocks):
        _ln_block_bwd(x, g, mean, invstd, w, dx, pw, pb, k, k * rows // blocks,
                      (k + 1) * rows // blocks)


# The feed-forward's activation and dropout, fused in one pass over the hidden (R, F) rows
# (and the residual's dropout and sum in one over (R, E)), compute exactly what the public ops
# compute in sequence: the element math is reference._prims's, which activations.relu/gelu
# and layers.dropout call too, and each step's result is rounded to the dtype where the public
# op would return it (so hidden == dropout(gelu(pre)) bit for bit).


@kernel()
def _act_drop(pre, gelu, keep, has_keep, keep_scale, out):
    # out = D(phi(pre)); pre, out (R, F): linear1's output and the hidden activations
    rows, n = pre.shape
    dt = out.dtype
    zero = dt.type(0)
    for r in range(rows):
        for j in range(n):
            out[r, j] = (P.gelu_erf(np.float64(pre[r, j]), dt) if gelu
                         else P.relu(pre[r, j], zero))
            if has_keep:
                out[r, j] = P.dropout(out[r, j], keep[r, j], keep_scale)


@kernel()
def _act_drop_bwd(g, pre, gelu, keep, has_keep, keep_scale, dz):
    # dz = phi'(pre) * D(g): gelu_backward(dropout_backward(g)) (relu'(0) = 0)
    rows, n = g.shape
    dt = dz.dtype
    for r in range(rows):
        for j in range(n):
            d = g[r, j]
            if has_keep:
                dz[r, j] = P.dropout(d, keep[r, j], keep_scale)
                d = dz[r, j]
            dz[r, j] = d * (P.gelu_erf_grad(np.float64(pre[r, j]), dt) if gelu
                            else P.relu_grad(pre[r, j]))


@kernel()
def _residual_drop(x, a, keep, has_keep, keep_scale, out):
    # out = x + D(a), D(a) rounded as dropout returns it
    rows, n = x.shape
    for r in range(rows):
        for j in range(n):
            if has_keep:
                out[r, j] = P.dropout(a[r, j], keep[r, j], keep_scale)
                out[r, j] = np.float64(x[r, j]) + out[r, j]
            else:
                out[r, j] = np.float64(x[r, j]) + a[r, j]


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

    def ln(z, w, b, tag):  # reference.norm's layer-norm kernel (layer_norm's own)
        y, zs = np.empty_like(z), np.empty_like(z)
        mean, invstd = np.empty(z.shape[0]), np.empty(z.shape[0])
        _ln_fwd(z, y, w, b, eps, mean, invstd, z.dtype == np.float32, zs)
        s[tag] = (mean, invstd)
        s[tag + "_in"] = zs      # the kernel's copy of z (stored row by row), for backward
        return y

    def attention_block(z):
        out, ctx = _mha_forward(z, None, None, w_in, None, None, None, b_in, w_out, b_out,
                                batch, heads, None, None, False, bias, div, has_bias, k_attn,
                                keep_scale, "none")
        return out, ctx

    def feed_forward(z):  # linear, activation, dropout, linear: the public ops' kernels
        pre = _project(z, w1, b1, np.empty((rows, ff), dt))
        hidden = np.empty((rows, ff), dt)
        _act_drop(pre, act == "gelu", keeps[1] if keeps[1] is not None else _NO_KEEP2,
                  keeps[1] is not None, keep_scale, hidden)
        out = _project(hidden, w2, b2, np.empty((rows, embed), dt))
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
    r"""Gradients ``(dx, *d parameters in ENCODER_PARAMETERS order)`` for ``grad_out``
    :math:`\bar y`: the chain rule through the parts, in reverse.

    .. math::
        \text{post:}\quad \bar r_2 &= \operatorname{LN}_2'(\bar y),\quad
        \bar h = \bar r_2 + \operatorname{FF}'(D_2 \bar r_2),\quad
        \bar r_1 = \operatorname{LN}_1'(\bar h),\quad
        \bar x = \bar r_1 + \operatorname{MHA}'(D_1 \bar r_1) \\
        \text{pre:}\quad \bar h &= \bar y + \operatorname{LN}_2'(\operatorname{FF}'(D_2
        \bar y)),\quad \bar x = \bar h + \operatorname{LN}_1'(\operatorname{MHA}'(D_1 \bar h))

    with :math:`D_\cdot \bar a = \bar a \odot m / (1 - p)`; layer norm's
    :math:`\operatorname{LN}'(\bar z) = r(\bar{\hat z} - \operatorname{mean}\bar{\hat z} -
    \hat z \operatorname{mean}(\bar{\hat z} \hat z))`, :math:`\bar{\hat z} = \bar z \odot w`,
    :math:`\bar w = \sum_{rows} \bar z \hat z`, :math:`\bar b = \sum_{rows} \bar z`;
    the feed-forward's :math:`\bar H = D(\bar F W_2) \odot \phi'(A)`,
    :math:`\bar W_2 = \bar F^T D(\phi(A))`, :math:`\bar W_1 = \bar H^T Z`,
    :math:`\bar Z = \bar H W_1` (A the pre-activation, relu'(0) = 0); the attention's as in
    ``multi_head_attention_backward`` (with its dropout keep-mask).
    """
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

    def ln_bwd(gz, w, tag):  # reference.norm's backward kernel (layer_norm_backward's own)
        mean, invstd = s[tag]
        z = s[tag + "_in"]
        blocks = max(1, min(z.shape[0], LN_BLOCKS))
        pw, pb = np.zeros((blocks, z.shape[1])), np.zeros((blocks, z.shape[1]))
        dz = np.empty_like(z)
        _ln_bwd(z, np.ascontiguousarray(gz), mean, invstd, w, dz, pw, pb)
        grads[tag] = (pw.sum(axis=0).astype(dt), pb.sum(axis=0).astype(dt))
        return dz

    def drop_bwd(gz, keep):  # dropout_backward's kernel, on the calling thread
        if keep is None:
            return gz
        gz = np.ascontiguousarray(gz)
        out = np.empty_like(gz)
        _scale_block(gz.reshape(-1), keep.reshape(-1), ks, False, 1, out.reshape(-1), 0,
                     keep.size)
        return out

    def ff_bwd(gy):
        # gy: gradient of the FF output (after dropout2's backward by the caller)
        dh, dw2, db2 = _project_bwd(s["ff_hidden"], w2, gy, True)
        dz1 = np.empty_like(dh)
        keep = ctx.keeps[1]
        _act_drop_bwd(dh, s["ff_pre"], ctx.gelu, keep if keep is not None else _NO_KEEP2,
                      keep is not None, ks, dz1)
        dzin, dw1, db1 = _project_bwd(s["ff_in"], w1, dz1, True)
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
