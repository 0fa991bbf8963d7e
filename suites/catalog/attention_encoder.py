"""Specs of the transformer encoder layer and of adding the sinusoidal positional encoding.

Twins: ``nn.TransformerEncoderLayer`` with the case's tensors swapped in by
``functional_call``; with dropout (p > 0) no torch module takes explicit masks, so the
encoder's twin is written from torch ops (``F.linear``, ``F.layer_norm``, ``torch.softmax``)
with the masks multiplied in where torch's module applies dropout. The positional encoding's
twin is PyTorch tutorial's ``PositionalEncoding`` (no dropout).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch.func import functional_call

from reference import attention as A
from reference import norm as N
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._attention_tools import (
    FAMILY,
    _masks,
    _mha_flops,
    _oracle_tol,
    _projections,
    _with,
)
from suites.catalog.spec import (
    Case,
    Cost,
    Invalid,
    Invariant,
    Spec,
)

# ---------------------------------------------------------------------------------------------
# transformer encoder layer

_ENC_TORCH_NAMES = (
    "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
    "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
    "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")


@functools.lru_cache(maxsize=32)
def _encoder_module(embed, heads, ff, activation, norm_first, eps, batch_first, dtype, device):
    return torch.nn.TransformerEncoderLayer(
        embed, heads, ff, dropout=0.0, activation=activation, layer_norm_eps=eps,
        batch_first=batch_first, norm_first=norm_first, dtype=dtype, device=device)


def _torch_encoder(x, *tensors, num_heads, p=0.0, activation="relu", norm_first=False,
                   layer_norm_eps=1e-5, batch_first=False):
    params, masks, rest = tensors[:12], tensors[12:16], tensors[16:]
    kpm = rest[0] if len(rest) > 0 else None
    src_mask = rest[1] if len(rest) > 1 else None
    if p == 0.0:  # the module itself (its dropouts are identities)
        module = _encoder_module(x.shape[-1], num_heads, params[4].shape[0], activation,
                                 norm_first, layer_norm_eps, batch_first, x.dtype, x.device)
        return functional_call(module, dict(zip(_ENC_TORCH_NAMES, params, strict=True)), (x,),
                               dict(src_mask=src_mask, src_key_padding_mask=kpm))
    return _encoder_from_ops(x, params, masks, kpm, src_mask, num_heads, p, activation,
                             norm_first, layer_norm_eps, batch_first)


def _encoder_from_ops(x, params, masks, kpm, src_mask, heads, p, activation, norm_first, eps,
                      batch_first):
    """nn.TransformerEncoderLayer.forward in training mode, dropout replaced by the masks."""
    w_in, b_in, w_out, b_out, w1, b1, w2, b2, n1w, n1b, n2w, n2b = params
    m_attn, m1, m_ff, m2 = masks
    if not batch_first:  # work in (B, L, E), as torch's attention does internally
        x, m1, m_ff, m2 = (t.transpose(0, 1) for t in (x, m1, m_ff, m2))
    batch, length, embed = x.shape
    hd = embed // heads
    keep = 1.0 / (1.0 - p)

    def drop(a, m):
        return a * m.to(a.dtype) * keep

    bias = torch.zeros(batch, heads, length, length, dtype=x.dtype, device=x.device)
    for m, shape in ((kpm, (batch, 1, 1, length)), (src_mask, None)):
        if m is None:
            continue
        if m.dim() == 3:
            m = m.reshape(batch, heads, length, length)
        elif shape is not None:
            m = m.reshape(shape)
        bias = bias + (torch.zeros_like(m, dtype=x.dtype).masked_fill(m, -math.inf)
                       if m.dtype == torch.bool else m)

    def self_attention(z):
        q, k, v = F.linear(z, w_in, b_in).split(embed, dim=-1)
        q, k, v = (t.reshape(batch, length, heads, hd).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd) + bias, dim=-1)
        o = (drop(probs, m_attn) @ v).transpose(1, 2).reshape(batch, length, embed)
        return F.linear(o, w_out, b_out)

    act = F.relu if activation == "relu" else F.gelu

    def feed_forward(z):
        return F.linear(drop(act(F.linear(z, w1, b1)), m_ff), w2, b2)

    def ln1(z):
        return F.layer_norm(z, (embed,), n1w, n1b, eps)

    def ln2(z):
        return F.layer_norm(z, (embed,), n2w, n2b, eps)

    if norm_first:
        h = x + drop(self_attention(ln1(x)), m1)
        y = h + drop(feed_forward(ln2(h)), m2)
    else:
        h = ln1(x + drop(self_attention(x), m1))
        y = ln2(h + drop(feed_forward(h), m2))
    return y if batch_first else y.transpose(0, 1)


def _encoder_case(rng, dtype, batch, length, heads, head_dim, ff, *, batch_first=True,
                  norm_first=False, activation="relu", p=0.0, masks="none", sigma=1.0,
                  eps=1e-5) -> Case:
    embed = heads * head_dim
    lay = (lambda f: (batch, length, f)) if batch_first else (lambda f: (length, batch, f))
    inputs = {"x": S.normal(rng, lay(embed), dtype, sigma),
              **_projections(rng, embed, dtype, ff)}
    for name, shape in zip(A.ENCODER_DROPOUTS, ((batch, heads, length, length), lay(embed),
                                                lay(ff), lay(embed)), strict=True):
        inputs[name] = rng.random(shape) >= p
    inputs.update(_masks(rng, masks, batch, heads, length, dtype, "src_key_padding_mask",
                         "src_mask"))
    return Case(inputs, {"num_heads": heads, "p": p, "activation": activation,
                         "norm_first": norm_first, "layer_norm_eps": eps,
                         "batch_first": batch_first})


@st.composite
def _encoder_cases(draw, dtype):
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # E >= 2: layer norm over one feature outputs its bias whatever the input, so every
    # gradient through it is exactly 0 (the reference's), while torch returns rounding noise
    # (~1e-13 in float64, amplified by 1/sqrt(eps)) that the harness cannot confirm as zero.
    head_dim = 2 if heads * head_dim == 1 else head_dim
    return _encoder_case(
        draw(S.seeds()), dtype, draw(st.integers(1, 3)),
        draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.just(33))),
        heads, head_dim, draw(st.integers(1, 9)),
        batch_first=draw(st.booleans()), norm_first=draw(st.booleans()),
        activation=draw(st.sampled_from(["relu", "gelu"])),
        p=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])),
        masks=draw(st.sampled_from(["none", "bool", "both", "float"])),
        sigma=draw(st.sampled_from([1.0, 1.0, 4.0])),
        eps=draw(st.sampled_from([1e-5, 1e-3])))


def _encoder_size(b, n, heads, hd, ff):
    return lambda dtype: _encoder_case(np.random.default_rng(0), dtype, b, n, heads, hd, ff)


def _encoder_cost(case: Case) -> Cost:
    x = case.inputs["x"]
    batch, length = (x.shape[0], x.shape[1]) if case.params["batch_first"] else x.shape[1::-1]
    embed, ff = x.shape[2], case.inputs["linear1_weight"].shape[0]
    flops = _mha_flops(batch, length, embed) + batch * length * (4 * embed * ff + 20 * embed)
    moved = sum(a.size * a.itemsize for a in case.inputs.values()) + x.nbytes
    return Cost(flops=flops, bytes=moved)


_GRADCHECK_EPS = 0.1


def _smooth_encoder(case: Case) -> Case:
    """Make the encoder layer smooth on the scale of the gradcheck's stencil (h = 1e-4 along
    v ~ N(0, 1) per input element).

    1. layer_norm_eps is raised to at least 0.1. Layer norm divides by sqrt(var + eps); a row
       of near-equal features (likely for E = 2 or 3) has var ~ 0 and amplifies every movement
       of its input by 1/sqrt(eps) ~ 300 (eps = 1e-5): the stencil then spans the whole curved
       region and the central differences mean nothing. With eps >= 0.1 the amplification is
       at most 3.2 and the same code paths run. (The parity checks keep the drawn eps.)
    2. For relu, each linear1 bias is shifted so that no pre-activation of the feed-forward lies
       within reach of the kink. The FF input does not depend on linear1's bias, so one shift
       per column does it, no search. Reach: a pre-activation z w_j + b_j moves by about
       h * (3.2 |dz/dt|-ish + |z| + |w_j| + 1); we allow 1e-2 * sqrt(|z|^2 + |w_j|^2 + 1),
       some 25 times the first-order movement for inputs of size ~1.
    """
    params = dict(case.params, layer_norm_eps=max(case.params["layer_norm_eps"], _GRADCHECK_EPS))
    case = Case(case.inputs, params)
    if params.get("activation") != "relu":
        return case
    _, ctx = A.transformer_encoder_layer(*case.inputs.values(), **params)
    pre = ctx.saved["ff_pre"].astype(np.float64)            # (rows, F)
    z = ctx.saved["ff_in"].astype(np.float64)
    w1 = case.inputs["linear1_weight"].astype(np.float64)
    reach = 1e-2 * np.sqrt((z ** 2).sum(1).max() + (w1 ** 2).sum(1) + 1.0)  # (F,)
    b1 = case.inputs["linear1_bias"].astype(np.float64).copy()
    for j in range(pre.shape[1]):
        # the shift closest to 0 that keeps every pre[:, j] + shift outside (-reach, reach)
        cands = np.concatenate([[0.0], -pre[:, j] + 1.01 * reach[j], -pre[:, j] - 1.01 * reach[j]])
        ok = [c for c in cands if np.all(np.abs(pre[:, j] + c) >= reach[j])]
        b1[j] += min(ok, key=abs)
    inputs = dict(case.inputs, linear1_bias=b1.astype(case.inputs["linear1_bias"].dtype))
    return Case(inputs, params)


def _normalised_rows(case: Case, outs) -> None:
    """Post-norm: each output row (over E) has mean b and, after removing the affine map,
    variance var/(var + eps) <= 1 exactly: check the normalised row's moments."""
    if case.params["norm_first"]:
        return
    y = outs[0].astype(np.float64)
    w = case.inputs["norm2_weight"].astype(np.float64)
    b = case.inputs["norm2_bias"].astype(np.float64)
    if np.any(np.abs(w) < 1e-3):
        return
    z = (y - b) / w
    eps = float(np.finfo(outs[0].dtype).eps)
    n = y.shape[-1]
    tol = 64 * n * eps * (1 + np.abs(z).max())
    assert np.all(np.abs(z.mean(-1)) <= tol), "post-norm output rows are not centred"
    assert np.all(z.var(-1) <= 1 + tol), "post-norm output rows have variance above 1"


def _shared_layer_norm(case: Case, outs) -> None:
    """The layer is composed of the library's layer norm (issue 11's "composition, not
    copies"): its output (post-norm) and its feed-forward input (pre-norm) are, bit for bit,
    reference.norm.layer_norm of the input the layer saved for that norm."""
    _, ctx = A.transformer_encoder_layer(*case.inputs.values(), **case.params)
    eps = case.params["layer_norm_eps"]
    embed = case.inputs["x"].shape[-1]
    ln2 = N.layer_norm(ctx.saved["ln2_in"], (embed,), case.inputs["norm2_weight"],
                       case.inputs["norm2_bias"], eps)[0]
    if case.params["norm_first"]:
        np.testing.assert_array_equal(ctx.saved["ff_in"], ln2)
    else:
        y = outs[0] if case.params["batch_first"] else outs[0].transpose(1, 0, 2)
        np.testing.assert_array_equal(y.reshape(ln2.shape), ln2)


_ENC_BASE = functools.partial(_encoder_case, np.random.default_rng(0), np.dtype(np.float64), 2,
                              4, 2, 3, 5, p=0.1, masks="bool")

register(Spec(
    name="transformer_encoder_layer", family=FAMILY,
    summary="nn.TransformerEncoderLayer: post/pre-norm, relu/gelu, dropout by explicit masks",
    forward=A.transformer_encoder_layer, backward=A.transformer_encoder_layer_backward,
    grad_inputs=("x", *A.ENCODER_PARAMETERS),
    torch=_torch_encoder,
    cases=_encoder_cases,
    sizes={"small": _encoder_size(2, 16, 4, 8, 64), "medium": _encoder_size(8, 128, 8, 32, 1024),
           "large": _encoder_size(16, 256, 8, 64, 2048)},
    cost=_encoder_cost,
    case_tol=_oracle_tol("transformer_encoder_layer"),
    smooth=_smooth_encoder,
    invariants=(Invariant("post-norm rows are normalised", _normalised_rows),
                Invariant("its layer norm is reference.norm.layer_norm, bit for bit",
                          _shared_layer_norm)),
    invalid=(
        Invalid("embed dim not divisible by num_heads", _with(_ENC_BASE, num_heads=4),
                ValueError, "num_heads"),
        Invalid("a dropout mask of the wrong shape",
                _with(_ENC_BASE, dropout_mask=lambda m: m[..., :3]), ValueError,
                "dropout_mask"),
        Invalid("a float dropout mask",
                _with(_ENC_BASE, dropout1_mask=lambda m: m.astype(np.float64)), TypeError,
                "dropout1_mask"),
        Invalid("linear2_weight for another feed-forward size",
                _with(_ENC_BASE, linear2_weight=lambda w: w[:, :4]), ValueError,
                "linear2_weight"),
        Invalid("src_key_padding_mask of the wrong shape",
                _with(_ENC_BASE, src_key_padding_mask=lambda m: m[:1]), ValueError,
                "key_padding_mask"),
        Invalid("an unknown activation", _with(_ENC_BASE, activation="tanh"), ValueError,
                "activation"),
        Invalid("a sequence of length 0",
                _with(_ENC_BASE, x=lambda x: x[:, :0], src_key_padding_mask=None),
                ValueError, r"\bx\b"),
    ),
))


# ---------------------------------------------------------------------------------------------
# sinusoidal positional encoding (added to x)


def _torch_add_pe(x, *, batch_first=False, base=10000.0):
    """PyTorch tutorial's PositionalEncoding (no dropout), in float64, then x's dtype."""
    length, embed = (x.shape[1] if batch_first else x.shape[0]), x.shape[2]
    position = torch.arange(length, dtype=torch.float64, device=x.device)[:, None]
    div = torch.exp(torch.arange(0, embed, 2, dtype=torch.float64, device=x.device)
                    * (-math.log(base) / embed))
    pe = torch.zeros(length, embed, dtype=torch.float64, device=x.device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : embed // 2]
    pe = pe.to(x.dtype)
    return x + (pe[None] if batch_first else pe[:, None])


def _pe_case(rng, dtype, batch, length, embed, *, batch_first=False, base=10000.0):
    shape = (batch, length, embed) if batch_first else (length, batch, embed)
    return Case({"x": S.normal(rng, shape, dtype)}, {"batch_first": batch_first, "base": base})


@st.composite
def _pe_cases(draw, dtype):
    return _pe_case(draw(S.seeds()), dtype, draw(st.integers(1, 3)),
                    draw(st.one_of(st.integers(1, 9), st.just(128))), draw(st.integers(1, 9)),
                    batch_first=draw(st.booleans()),
                    base=draw(st.sampled_from([10000.0, 10000.0, 100.0, 2.5])))


def _pe_closed_form(case: Case, outs) -> None:
    """The table against its closed form, evaluated independently in numpy (float64):
    PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = base^(-2i/d); sin^2 + cos^2 = 1 per
    pair; and PE[p + k] is PE[p] rotated by k w_i in every pair (the relative-position
    property the encoding is built for)."""
    x = case.inputs["x"]
    bf = case.params["batch_first"]
    length, embed = (x.shape[1] if bf else x.shape[0]), x.shape[2]
    pe = A.sinusoidal_positional_encoding(length, embed, base=case.params["base"])
    pos = np.arange(length)[:, None]
    w = case.params["base"] ** (-np.arange(0, embed, 2) / embed)
    tol = 4e-16 * (1 + length)  # angle p*w rounded: |error| <= (p + 1) eps-ish
    np.testing.assert_allclose(pe[:, 0::2], np.sin(pos * w), rtol=0, atol=tol)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(pos * w)[:, : embed // 2], rtol=0, atol=tol)
    pairs = embed // 2
    if pairs:
        np.testing.assert_allclose(pe[:, 0:2 * pairs:2] ** 2 + pe[:, 1::2] ** 2, 1.0, atol=tol)
        k = 1 + length // 3
        if k < length:
            c, s = np.cos(k * w[:pairs]), np.sin(k * w[:pairs])
            sin_p, cos_p = pe[:-k, 0:2 * pairs:2], pe[:-k, 1::2]
            np.testing.assert_allclose(pe[k:, 0:2 * pairs:2], sin_p * c + cos_p * s, atol=8 * tol)
            np.testing.assert_allclose(pe[k:, 1::2], cos_p * c - sin_p * s, atol=8 * tol)
    added = outs[0].astype(np.float64) - x.astype(np.float64)
    table = pe[None] if bf else pe[:, None]
    eps = float(np.finfo(x.dtype).eps)
    np.testing.assert_allclose(added, np.broadcast_to(table, added.shape), rtol=0,
                               atol=2 * eps * (1 + np.abs(x).max()))


def _pe_size(b, n, e):
    return lambda dtype: _pe_case(np.random.default_rng(0), dtype, b, n, e)


register(Spec(
    name="add_positional_encoding", family=FAMILY,
    summary="x + sinusoidal positional encoding (sin/cos of p * base^(-2i/d))",
    forward=A.add_positional_encoding, backward=A.add_positional_encoding_backward,
    grad_inputs=("x",),
    torch=_torch_add_pe,
    cases=_pe_cases,
    sizes={"small": _pe_size(2, 16, 32), "medium": _pe_size(8, 128, 256),
           "large": _pe_size(32, 512, 512)},
    cost=lambda case: Cost(flops=case.inputs["x"].size * 2,
                           bytes=3 * case.inputs["x"].nbytes),
    invariants=(Invariant("closed form: sin/cos pairs, unit norm, rotation by offset",
                          _pe_closed_form),),
    invalid=(
        Invalid("a sequence of length 0", lambda: Case({"x": np.zeros((0, 2, 4))}), ValueError,
                r"\bx\b"),
        Invalid("a 2-d x", lambda: Case({"x": np.zeros((3, 4))}), ValueError, r"\bx\b"),
        Invalid("a base <= 1", lambda: Case({"x": np.zeros((3, 2, 4))}, {"base": 1.0}),
                ValueError, "base"),
    ),
))
