"""Composite layers compute exactly what their public parts compute (DESIGN: "a model's training
step composes the library's own layers", STYLE: "composite algorithms call shared pieces").

The encoder layer fuses its feed-forward's activation and dropout into one pass for speed; its
element math is ``reference._prims``'s, the same functions ``activations.relu``/``gelu`` and
``layers.dropout`` call, and it rounds where the public ops return. So its results are equal
BIT FOR BIT to the public ops applied in sequence: a private GELU (another formula, another
rounding order) would differ in the last bit on some element and fail here.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference.attention._core as core
import reference.attention.encoder as enc
from reference import layers
from reference.activations import gelu, gelu_backward, relu, relu_backward
from reference.attention import transformer_encoder_layer
from reference.layers import dropout, dropout_backward, linear

DTYPES = (np.float32, np.float64)
ACTS = {"gelu": (gelu, gelu_backward), "relu": (relu, relu_backward)}


def _pre_activations(rng, dtype, shape):
    """Normal values, wide ones, and the special values at the edges (+-0, +-inf, NaN, tiny)."""
    a = rng.standard_normal(shape) * rng.choice([0.1, 1.0, 4.0, 40.0], size=shape)
    flat = a.reshape(-1)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 8.0, -8.0, 40.0, -40.0]
    flat[:len(special)] = special
    return a.astype(dtype)


def _encoder(rng, dtype, act, p):
    batch, length, embed, ff, heads = 2, 5, 8, 12, 2
    shapes = [(3 * embed, embed), (3 * embed,), (embed, embed), (embed,), (ff, embed), (ff,),
              (embed, ff), (embed,), (embed,), (embed,), (embed,), (embed,)]
    params = [(rng.standard_normal(s) * 0.7).astype(dtype) for s in shapes]
    x = (rng.standard_normal((length, batch, embed)) * 2.0).astype(dtype)
    masks = [rng.random(s) >= p for s in ((batch, heads, length, length),
                                         (length, batch, embed), (length, batch, ff),
                                         (length, batch, embed))]
    y, ctx = transformer_encoder_layer(x, *params, *masks, num_heads=heads, p=p,
                                       activation=act)
    return params, ctx


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_encoder_feed_forward_is_linear_act_dropout(dtype, act, p):
    """The encoder's hidden layer == dropout(act(linear(z, W1, b1))) with the public ops."""
    rng = np.random.default_rng(11)
    params, ctx = _encoder(rng, dtype, act, p)
    z, pre, hidden = ctx.saved["ff_in"], ctx.saved["ff_pre"], ctx.saved["ff_hidden"]
    want_pre, _ = linear(z, params[4], params[5])
    np.testing.assert_array_equal(pre, want_pre)
    a, _ = ACTS[act][0](pre)
    want = a if ctx.keeps[1] is None else dropout(a, ctx.keeps[1], p)[0]
    assert hidden.dtype == want.dtype
    np.testing.assert_array_equal(hidden, want)


@pytest.mark.parametrize("has_keep", [False, True])
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fused_act_dropout_kernels_equal_public_ops(dtype, act, has_keep):
    """The fused kernels, forward and backward, on edge values: bit-equal to the public ops
    (NaN where they give NaN, the same signed zeros)."""
    rng = np.random.default_rng(5)
    shape, p = (7, 33), 0.25
    pre = _pre_activations(rng, dtype, shape)
    keep = rng.random(shape) >= p
    g = _pre_activations(rng, dtype, shape)[::-1].copy()
    scale = 1.0 / (1.0 - p)
    fwd, bwd = ACTS[act]
    a, actx = fwd(pre)
    if has_keep:
        want, dctx = dropout(a, keep, p)
        (dg,) = dropout_backward(dctx, g)
    else:
        want, dg = a, g
    (want_dz,) = bwd(actx, dg)

    out = np.empty_like(pre)
    enc._act_drop(pre, act == "gelu", keep, has_keep, scale, out)
    dz = np.empty_like(pre)
    enc._act_drop_bwd(g, pre, act == "gelu", keep, has_keep, scale, dz)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(want))
    np.testing.assert_array_equal(dz, want_dz)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_residual_dropout_is_x_plus_dropout(dtype):
    rng = np.random.default_rng(2)
    shape, p = (6, 17), 0.4
    x, a = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    keep = rng.random(shape) >= p
    out = np.empty_like(x)
    enc._residual_drop(x, a, keep, True, 1.0 / (1.0 - p), out)
    np.testing.assert_array_equal(out, x + dropout(a, keep, p)[0])


def test_attention_projections_are_linears_kernels():
    """Multi-head attention and the encoder project through reference.layers.linear's own
    kernels (no private linear in reference.attention)."""
    assert core._linear_fwd is layers._linear_fwd
    assert core._linear_bwd is layers._linear_bwd
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((9, 5), (4, 5), (4,)))
    y, ctx = linear(x, w, b)
    np.testing.assert_array_equal(core._project(x, w, b, np.empty((9, 4), np.float32)), y)
    g = rng.standard_normal((9, 4)).astype(np.float32)
    for got, want in zip(core._project_bwd(x, w, g, True), layers.linear_backward(ctx, g),
                         strict=True):
        np.testing.assert_array_equal(got, want)


# The attention core shares the heads of a large call among threads (_core._threads); each head's
# arithmetic is the same whichever thread runs it, so sharing changes no bit.

def _attention_runs(dtype, rng):
    import reference.attention.mha as mha_mod
    import reference.attention.sdpa as sdpa_mod
    from reference.attention import (
        multi_head_attention,
        multi_head_attention_backward,
        scaled_dot_product_attention,
        scaled_dot_product_attention_backward,
    )
    b, h, length, src, d = 2, 5, 7, 9, 4
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in
               ((b, h, length, d), (b, h, src, d), (b, h, src, d + 1)))
    mask = rng.standard_normal((length, src)).astype(dtype)
    keep = layers.dropout_mask(rng, (b, h, length, src), 0.3)
    g = rng.standard_normal((b, h, length, d + 1)).astype(dtype)
    e = h * d
    x = rng.standard_normal((length, b, e)).astype(dtype)
    w_in, b_in = rng.standard_normal((3 * e, e)).astype(dtype), rng.standard_normal(3 * e)
    w_out, b_out = rng.standard_normal((e, e)).astype(dtype), rng.standard_normal(e)
    gx = rng.standard_normal((length, b, e)).astype(dtype)
    gw = rng.standard_normal((b, length, length)).astype(dtype)

    def run():
        outs = []
        for kw in ({"attn_mask": mask, "dropout_p": 0.3, "dropout_mask": keep},
                   {"is_causal": True}):
            y, ctx = scaled_dot_product_attention(q, k, v, **kw)
            outs += [y, *(a for a in scaled_dot_product_attention_backward(ctx, g)
                          if a is not None)]
        (y, w), ctx = multi_head_attention(x, w_in, b_in.astype(dtype), w_out,
                                           b_out.astype(dtype), num_heads=h)
        outs += [y, w, *(a for a in multi_head_attention_backward(ctx, (gx, gw))
                         if a is not None)]
        return outs

    return run, (sdpa_mod, mha_mod)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_is_bit_equal_however_the_heads_are_shared(dtype, monkeypatch):
    run, modules = _attention_runs(dtype, np.random.default_rng(7))
    for mod in modules:
        monkeypatch.setattr(mod, "_threads", lambda q, v, probs: 1)
    serial = run()
    for shares in (2, 3):  # 10 heads in 2 or 3 (uneven) shares
        for mod in modules:
            monkeypatch.setattr(mod, "_threads", lambda q, v, probs, s=shares: s)
        shared = run()
        assert len(shared) == len(serial) >= 10
        for a, b in zip(serial, shared, strict=True):
            np.testing.assert_array_equal(a, b)
