"""Specs of attention: scaled dot-product attention, multi-head self-attention, the transformer
encoder layer, and adding the sinusoidal positional encoding.

Twins: ``F.scaled_dot_product_attention`` on its math backend; ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` with the case's tensors swapped in by ``functional_call`` (so
autograd reaches them). With dropout (p > 0) no torch module takes explicit masks, so the
encoder's twin is written from torch ops (``F.linear``, ``F.layer_norm``, ``torch.softmax``)
with the masks multiplied in where torch's module applies dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from reference import attention as A
from reference import layers as L
from reference import norm as N
from suites import twin
from suites.catalog import get, register
from suites.catalog import strategies as S
from suites.catalog.spec import (
    DEFAULT_TOL,
    FLOAT32,
    Case,
    Cost,
    Invalid,
    Invariant,
    Spec,
    Tol,
    case_dtype,
)

FAMILY = "sequence"


# ---------------------------------------------------------------------------------------------
# scaled dot-product attention


def _torch_sdpa(query, key, value, attn_mask=None, *, is_causal=False, scale=None,
                enable_gqa=False, dropout_p=0.0, dropout_mask=None):
    """F.scaled_dot_product_attention (math backend). With an explicit dropout mask, which
    torch's function cannot take: its attention weights P, got from torch's own function with
    the identity as the values (so masks, causality, GQA and empty rows are torch's), then
    (P * mask / (1 - p)) @ V, which is where torch's math backend applies its dropout."""
    with sdpa_kernel(SDPBackend.MATH):
        if dropout_mask is None:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                  is_causal=is_causal, scale=scale,
                                                  enable_gqa=enable_gqa)
        n_k = key.shape[-2]
        eye = torch.eye(n_k, dtype=query.dtype, device=query.device)
        probs = F.scaled_dot_product_attention(
            query, key, eye.expand(tuple(key.shape[:-2]) + (n_k, n_k)), attn_mask=attn_mask,
            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if enable_gqa:
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    keep = torch.from_numpy(np.asarray(dropout_mask)).to(query.device)
    dropped = probs * 0 if dropout_p == 1 else probs * keep / (1 - dropout_p)
    return dropped @ value


def _sdpa_case(rng, dtype, lead, n_q, n_k, embed, embed_v, *, mask="none", sigma=1.0,
               scale=None, mask_shape="full", q_lead=None, k_lead=None, v_lead=None,
               gqa=False, dropout_p=None) -> Case:
    """``lead`` is the common batch shape; ``q_lead``/``k_lead``/``v_lead`` broadcast to it
    (with ``gqa`` the last entry of key's and value's, the heads, divides the query's)."""
    q_lead = lead if q_lead is None else q_lead
    k_lead = lead if k_lead is None else k_lead
    v_lead = lead if v_lead is None else v_lead
    inputs = {
        "query": S.normal(rng, q_lead + (n_q, embed), dtype, sigma),
        "key": S.normal(rng, k_lead + (n_k, embed), dtype, sigma),
        "value": S.normal(rng, v_lead + (n_k, embed_v), dtype),
    }
    shape = {"full": lead + (n_q, n_k), "2d": (n_q, n_k),
             "broadcast": tuple(1 for _ in lead[:-1]) + lead[-1:] + (1, n_k)}[mask_shape]
    if mask == "bool":
        inputs["attn_mask"] = rng.random(shape) < 0.7     # some rows have no allowed key
    elif mask == "float":
        m = rng.standard_normal(shape) * 3.0
        m[rng.random(shape) < 0.2] = -np.inf
        inputs["attn_mask"] = m.astype(dtype)
    params = {"is_causal": mask == "causal", "scale": scale}
    if gqa:
        params["enable_gqa"] = True
    if dropout_p is not None:
        params["dropout_p"] = dropout_p
        params["dropout_mask"] = L.dropout_mask(rng, lead + (n_q, n_k), dropout_p)
    return Case(inputs, params)


@st.composite
def _broadcast_lead(draw, lead, keep_last: bool):
    """A batch shape that broadcasts to ``lead``: leading entries dropped, others set to 1
    (the last one kept when ``keep_last``: the heads, with GQA)."""
    drop = draw(st.integers(0, max(len(lead) - (1 if keep_last else 0), 0)))
    out = [draw(st.sampled_from([d, 1])) for d in lead[drop:]]
    if keep_last and lead:
        out[-1] = lead[-1]
    return tuple(out)


@st.composite
def _sdpa_cases(draw, dtype, masks):
    """Batch shapes (), (H,), (B, H); key and value batch shapes that broadcast to the
    query's (or the query's to theirs); grouped-query attention (key/value heads dividing the
    query's); any ``scale``; dropout by an explicit mask with p in [0, 1]; masks of ``masks``
    (float masks with -inf entries, whole rows included), full, 2-d or broadcast."""
    lead = draw(st.sampled_from([(), (1,), (2,), (3,), (2, 3), (1, 2), (2, 4)]))
    n_q = draw(st.one_of(st.integers(1, 7), st.integers(1, 7), st.just(128)))
    n_k = draw(st.one_of(st.integers(1, 7), st.integers(1, 7), st.just(128)))
    mask = draw(st.sampled_from(masks))
    mask_shape = draw(st.sampled_from(["full", "2d", "broadcast"])) if lead else "2d"
    gqa = bool(lead) and draw(st.booleans())
    k_lead, v_lead = (draw(_broadcast_lead(lead, gqa)) if draw(st.booleans()) else lead
                      for _ in range(2))
    if gqa:
        heads = lead[-1]
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        k_lead = (k_lead or (1,))[:-1] + (draw(st.sampled_from(divisors)),)
        v_lead = (v_lead or (1,))[:-1] + (draw(st.sampled_from(divisors)),)
    q_lead = lead
    if not gqa and draw(st.booleans()):  # the query broadcast instead
        q_lead, k_lead, v_lead = draw(_broadcast_lead(lead, False)), lead, lead
    dropout_p = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]),
                               st.floats(0.0, 1.0)))
    case = _sdpa_case(
        draw(S.seeds()), dtype, lead, n_q, n_k, draw(st.integers(1, 8)), draw(st.integers(1, 8)),
        mask=mask, sigma=draw(st.sampled_from([1.0, 1.0, 4.0])),  # 4: saturated softmax rows
        scale=draw(st.sampled_from([None, None, 0.3, 2.0])), mask_shape=mask_shape,
        q_lead=q_lead, k_lead=k_lead, v_lead=v_lead, gqa=gqa, dropout_p=dropout_p)
    return case


def _sdpa_size(b, h, n, d, **options):
    return lambda dtype: _sdpa_case(np.random.default_rng(0), dtype, (b, h), n, n, d, d,
                                    **options)


# The small size (the battery's) takes every option but the mask, so the battery probes
# them: dropout, GQA with one key/value head, key and value broadcast over the batch. The
# battery probes a float input as bool (and a bool one as float32) as a bad call, but
# attn_mask may be either, so no small size carries one (the strategies do).
_SDPA_SMALL = {"dropout_p": 0.1, "gqa": True, "k_lead": (1, 1), "v_lead": (2, 1)}


def _sdpa_cost(case: Case) -> Cost:
    q, k, val = case.inputs["query"], case.inputs["key"], case.inputs["value"]
    n = math.prod(q.shape[:-2])
    lq, lk = q.shape[-2], k.shape[-2]
    flops = n * lq * lk * (2 * q.shape[-1] + 2 * val.shape[-1] + 5)
    moved = q.size + k.size + val.size + n * lq * val.shape[-1]
    return Cost(flops=flops, bytes=moved * q.itemsize)


# float32 tolerance: the oracle's own float32 rounding error on this case. Attention's float32
# error depends on the case far more than elementwise ops' (scores of size S = c |q||k| carry
# absolute errors ~ sqrt(E) u S that softmax turns into relative errors of the weights; layer
# norm divides by a row's spread, amplifying its input's errors by max|z| / std), and the
# worst-case bounds of that chain are 1e3-1e6 times what happens. So we measure instead: the
# twin in float32 against the twin in float64 (the exact answer to 1e-16 here) gives e, the
# float32 error torch itself makes on this case with the same operations. The reference rounds
# the same operations in the same precision (in other orders: BLAS blocking, float64 row sums),
# so |reference - twin| <= |reference - exact| + e, and we allow |reference - exact| <= 3e:
# DEFAULT_TOL + 4e in all. The reference is thereby held to torch's own float32 accuracy on
# each case (within 3x), and the tolerance does not depend on the reference's output at all.


def _as64(case: Case) -> Case:
    return Case({k: (a.astype(np.float64) if a.dtype == FLOAT32 else a)
                 for k, a in case.inputs.items()}, case.params)


def _max_error(got, exact) -> float:
    worst = 0.0
    for a, e in zip(got, exact, strict=True):
        a, e = a.astype(np.float64), e.astype(np.float64)
        finite = np.isfinite(a) & np.isfinite(e)
        if finite.any():
            worst = max(worst, float(np.max(np.abs(a[finite] - e[finite]))))
    return worst


def _oracle_tol(name: str):
    def tol(case: Case, upstream) -> Tol | None:
        if case_dtype(case) != FLOAT32:
            return None
        spec = get(name)
        if upstream is None:
            err = _max_error(twin.forward(spec, case, "cpu"),
                             twin.forward(spec, _as64(case), "cpu"))
        else:
            spec = dataclasses.replace(spec, grad_inputs=spec.grad_names(case))
            up64 = tuple(g.astype(np.float64) for g in upstream)
            err = _max_error(twin.gradients(spec, case, "cpu", upstream),
                             twin.gradients(spec, _as64(case), "cpu", up64))
        base = DEFAULT_TOL[FLOAT32]
        return Tol(rtol=base.rtol, atol=base.atol + 4.0 * err)

    return tol


def _sdpa_rows(case: Case, outs) -> None:
    """Each output row is a convex combination of value rows (or zero where nothing may be
    attended): it lies within [min v, max v] per feature. Not with dropout (kept weights are
    scaled by 1 / (1 - p))."""
    if case.params.get("dropout_mask") is not None:
        return
    out = outs[0].astype(np.float64)
    val = case.inputs["value"].astype(np.float64)
    if case.params.get("enable_gqa"):
        val = np.repeat(val, case.inputs["query"].shape[-3] // val.shape[-3], axis=-3)
    lo, hi = val.min(axis=-2, keepdims=True), val.max(axis=-2, keepdims=True)
    eps = 8 * float(np.finfo(outs[0].dtype).eps) * (np.abs(lo) + np.abs(hi) + 1)
    inside = (out >= np.minimum(lo, 0) - eps) & (out <= np.maximum(hi, 0) + eps)
    assert inside.all(), "an output left the hull of the value rows (and 0)"


def _sdpa_dropped_rows(case: Case, outs) -> None:
    """With p = 1 every output is 0 (as torch's dropout): nothing is kept."""
    if case.params.get("dropout_p") == 1.0:
        assert not np.any(outs[0]), "dropout_p = 1 left a nonzero output"


def _sdpa_backward_qkv(ctx, grad_out):
    """The reference's backward without its ``d attn_mask`` (None for a bool mask)."""
    return A.scaled_dot_product_attention_backward(ctx, grad_out)[:3]


_SDPA_BASE = functools.partial(_sdpa_case, np.random.default_rng(0), np.dtype(np.float64), (2,),
                               3, 4, 5, 6)


def _with(make, **changes):
    def build():
        case = make()
        inputs, params = dict(case.inputs), dict(case.params)
        for k, val in changes.items():
            if k in inputs or k in ("attn_mask", "key_padding_mask", "src_key_padding_mask",
                                    "src_mask"):
                inputs[k] = val(inputs.get(k)) if callable(val) else val
            else:
                params[k] = val
        return Case(inputs, params)
    return build


_SDPA_INVALID = (
    Invalid("a query sequence of length 0", _with(_SDPA_BASE, query=lambda q: q[:, :0]),
            ValueError, r"\bquery\b"),
    Invalid("key of another embedding size", _with(_SDPA_BASE, key=lambda k: k[..., :3]),
            ValueError, r"\bkey\b"),
    Invalid("value of another length", _with(_SDPA_BASE, value=lambda v_: v_[:, :3]),
            ValueError, r"\bvalue\b"),
    Invalid("batch shapes that do not broadcast", _with(_SDPA_BASE, key=lambda k: np.concatenate(
        [k, k, k])), ValueError, "query, key and value"),
    Invalid("a mask of the wrong shape", _with(_SDPA_BASE, attn_mask=np.ones((3, 5), bool)),
            ValueError, "attn_mask"),
    Invalid("an integer mask", _with(_SDPA_BASE, attn_mask=np.ones((3, 4), np.int64)),
            TypeError, "attn_mask"),
    Invalid("a float32 mask on float64 inputs",
            _with(_SDPA_BASE, attn_mask=np.zeros((3, 4), np.float32)), TypeError,
            "attn_mask"),
    Invalid("a mask together with is_causal",
            _with(_SDPA_BASE, attn_mask=np.ones((3, 4), bool), is_causal=True), ValueError,
            "attn_mask"),
    Invalid("enable_gqa with key heads that do not divide the query's",
            _with(_SDPA_BASE, enable_gqa=True, key=lambda k: np.concatenate([k, k, k])[:3]),
            ValueError, r"\bkey\b"),
    Invalid("dropout_p > 0 without a dropout_mask", _with(_SDPA_BASE, dropout_p=0.5),
            TypeError, "dropout_mask"),
    Invalid("a dropout_mask of the wrong shape",
            _with(_SDPA_BASE, dropout_p=0.5, dropout_mask=np.ones((3, 4), bool)), ValueError,
            "dropout_mask"),
    Invalid("dropout_p above 1",
            _with(_SDPA_BASE, dropout_p=1.5, dropout_mask=np.ones((2, 3, 4), bool)),
            ValueError, "dropout_p"),
)

register(Spec(
    name="scaled_dot_product_attention", family=FAMILY,
    summary="softmax(s Q K^T + M) V; float (differentiated) and causal masks, broadcast "
            "batches, GQA, scale, dropout by an explicit mask",
    forward=A.scaled_dot_product_attention, backward=A.scaled_dot_product_attention_backward,
    grad_inputs=("query", "key", "value", "attn_mask"),
    torch=_torch_sdpa,
    cases=lambda dtype: _sdpa_cases(dtype, ["none", "float", "causal"]),
    sizes={"small": _sdpa_size(2, 2, 16, 8, **_SDPA_SMALL),
           "medium": _sdpa_size(8, 8, 128, 32), "large": _sdpa_size(8, 16, 256, 64)},
    cost=_sdpa_cost,
    case_tol=_oracle_tol("scaled_dot_product_attention"),
    invariants=(Invariant("outputs lie in the hull of the value rows", _sdpa_rows),
                Invariant("dropout_p = 1 gives zeros", _sdpa_dropped_rows)),
    invalid=_SDPA_INVALID,
))

register(Spec(
    name="scaled_dot_product_attention_bool_mask", family=FAMILY,
    summary="scaled dot-product attention with a bool mask (True = attend; not "
            "differentiable), broadcast batches, GQA, dropout",
    forward=A.scaled_dot_product_attention, backward=_sdpa_backward_qkv,
    grad_inputs=("query", "key", "value"),
    torch=_torch_sdpa,
    cases=lambda dtype: _sdpa_cases(dtype, ["bool"]),
    sizes={"small": _sdpa_size(2, 2, 16, 8, **_SDPA_SMALL),
           "medium": _sdpa_size(8, 8, 128, 32, mask="bool"),
           "large": _sdpa_size(8, 16, 256, 64, mask="bool")},
    cost=_sdpa_cost,
    case_tol=_oracle_tol("scaled_dot_product_attention_bool_mask"),
    invariants=(Invariant("outputs lie in the hull of the value rows", _sdpa_rows),
                Invariant("dropout_p = 1 gives zeros", _sdpa_dropped_rows)),
))


# ---------------------------------------------------------------------------------------------
# multi-head self-attention

_MHA_TORCH_NAMES = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


@functools.lru_cache(maxsize=32)
def _mha_module(embed, heads, batch_first, dtype, device):
    return torch.nn.MultiheadAttention(embed, heads, batch_first=batch_first, dtype=dtype,
                                       device=device)


def _torch_mha(x, w_in, b_in, w_out, b_out, key_padding_mask=None, attn_mask=None, *,
               num_heads, batch_first=False, average_attn_weights=True):
    module = _mha_module(x.shape[-1], num_heads, batch_first, x.dtype, x.device)
    params = dict(zip(_MHA_TORCH_NAMES, (w_in, b_in, w_out, b_out), strict=True))
    return functional_call(module, params, (x, x, x), dict(
        key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=True,
        average_attn_weights=average_attn_weights))


def _projections(rng, embed, dtype, ff=None):
    k = 1.0 / math.sqrt(embed)
    ws = {"in_proj_weight": S.normal(rng, (3 * embed, embed), dtype, k),
          "in_proj_bias": S.normal(rng, (3 * embed,), dtype, 0.1),
          "out_proj_weight": S.normal(rng, (embed, embed), dtype, k),
          "out_proj_bias": S.normal(rng, (embed,), dtype, 0.1)}
    if ff is not None:
        ws.update({"linear1_weight": S.normal(rng, (ff, embed), dtype, k),
                   "linear1_bias": S.normal(rng, (ff,), dtype, 0.1),
                   "linear2_weight": S.normal(rng, (embed, ff), dtype, 1.0 / math.sqrt(ff)),
                   "linear2_bias": S.normal(rng, (embed,), dtype, 0.1),
                   "norm1_weight": (1.0 + S.normal(rng, (embed,), dtype, 0.2)).astype(dtype),
                   "norm1_bias": S.normal(rng, (embed,), dtype, 0.1),
                   "norm2_weight": (1.0 + S.normal(rng, (embed,), dtype, 0.2)).astype(dtype),
                   "norm2_bias": S.normal(rng, (embed,), dtype, 0.1)})
    return ws


def _masks(rng, kind, batch, heads, length, dtype, kpm_name, am_name, src_len=None,
           keep_first=True):
    """torch MHA masks (bool: True = masked) over ``src_len`` keys (default ``length``). With
    ``keep_first`` key 0 is never masked, so no query row is left with nothing to attend:
    there torch's MHA gives NaN with need_weights=True but zeros with need_weights=False and
    in its encoder layer (the reference gives zeros). Without it (when bias_k or the zero row
    add keys that no mask reaches) whole rows of the given keys may be masked."""
    src_len = length if src_len is None else src_len
    out = {}
    if kind == "none":
        return out
    if kind in ("bool", "both"):
        kpm = rng.random((batch, src_len)) < (0.3 if keep_first else 0.6)
    else:
        kpm = rng.standard_normal((batch, src_len)) * 2.0
        kpm[rng.random((batch, src_len)) < (0.2 if keep_first else 0.6)] = -np.inf
        kpm = kpm.astype(dtype)
    if keep_first:
        kpm[:, 0] = False if kpm.dtype == np.bool_ else 0.0
    out[kpm_name] = kpm
    if kind in ("both", "float"):
        shape = (length, src_len) if rng.random() < 0.5 else (batch * heads, length, src_len)
        if kind == "both":
            am = rng.random(shape) < 0.3
            if keep_first:
                am[..., 0] = False
        else:
            am = (rng.standard_normal(shape) * 2.0).astype(dtype)
            if keep_first:
                am[..., 0] = 0.0
            else:
                am[rng.random(shape) < 0.3] = -np.inf
        out[am_name] = am
    return out


def _mha_case(rng, dtype, batch, length, heads, head_dim, *, batch_first=True, masks="none",
              sigma=1.0, average=True) -> Case:
    embed = heads * head_dim
    shape = (batch, length, embed) if batch_first else (length, batch, embed)
    inputs = {"x": S.normal(rng, shape, dtype, sigma), **_projections(rng, embed, dtype)}
    inputs.update(_masks(rng, masks, batch, heads, length, dtype, "key_padding_mask",
                         "attn_mask"))
    return Case(inputs, {"num_heads": heads, "batch_first": batch_first,
                         "average_attn_weights": average})


@st.composite
def _mha_cases(draw, dtype):
    return _mha_case(
        draw(S.seeds()), dtype, draw(st.integers(1, 3)),
        draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.just(33))),
        draw(st.integers(1, 3)), draw(st.integers(1, 4)),
        batch_first=draw(st.booleans()),
        masks=draw(st.sampled_from(["none", "bool", "both", "float"])),
        sigma=draw(st.sampled_from([1.0, 1.0, 4.0])), average=draw(st.booleans()))


def _mha_size(b, n, heads, hd):
    return lambda dtype: _mha_case(np.random.default_rng(0), dtype, b, n, heads, hd)


def _mha_flops(batch, length, embed):
    return 2 * batch * length * embed * 4 * embed + batch * length * length * (4 * embed + 5)


def _mha_cost(case: Case) -> Cost:
    x = case.inputs["x"]
    batch, length = (x.shape[0], x.shape[1]) if case.params["batch_first"] else x.shape[1::-1]
    embed = x.shape[2]
    moved = sum(a.size for a in case.inputs.values()) + x.size + batch * length * length
    return Cost(flops=_mha_flops(batch, length, embed), bytes=moved * x.itemsize)


def _weights_rows_sum(case: Case, outs) -> None:
    w = outs[1].astype(np.float64)
    s = w.sum(axis=-1)
    n = w.shape[-1]
    bound = 4 * n * float(np.finfo(outs[1].dtype).eps)
    assert np.all(np.abs(s - 1) <= bound), f"attention weights rows sum to {s.ravel()[:4]}"


def _no_weights_same_output(case: Case, outs) -> None:
    params = dict(case.params, need_weights=False)
    (out, weights), _ = A.multi_head_attention(*case.inputs.values(), **params)
    assert weights is None, "need_weights=False returned weights"
    np.testing.assert_array_equal(out, outs[0])


_MHA_BASE = functools.partial(_mha_case, np.random.default_rng(0), np.dtype(np.float64), 2, 5,
                              2, 3, masks="bool")

register(Spec(
    name="multi_head_attention", family=FAMILY,
    summary="multi-head self-attention as nn.MultiheadAttention (weights averaged or per head)",
    forward=A.multi_head_attention, backward=A.multi_head_attention_backward,
    grad_inputs=("x", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"),
    n_diff_outputs=2,
    torch=_torch_mha,
    cases=_mha_cases,
    sizes={"small": _mha_size(2, 16, 4, 8), "medium": _mha_size(8, 128, 8, 32),
           "large": _mha_size(16, 256, 8, 64)},
    cost=_mha_cost,
    case_tol=_oracle_tol("multi_head_attention"),
    invariants=(Invariant("attention weights rows sum to 1", _weights_rows_sum),
                Invariant("need_weights=False gives the same output", _no_weights_same_output)),
    invalid=(
        Invalid("embed dim not divisible by num_heads", _with(_MHA_BASE, num_heads=4),
                ValueError, "num_heads"),
        Invalid("in_proj_weight for another embed dim",
                _with(_MHA_BASE, in_proj_weight=lambda w: w[:, :5]), ValueError,
                "in_proj_weight"),
        Invalid("key_padding_mask of the wrong shape",
                _with(_MHA_BASE, key_padding_mask=lambda m: m[:, :4]), ValueError,
                "key_padding_mask"),
        Invalid("key_padding_mask of integers",
                _with(_MHA_BASE, key_padding_mask=lambda m: m.astype(np.int32)), TypeError,
                "key_padding_mask"),
        Invalid("attn_mask of the wrong shape", _with(_MHA_BASE, attn_mask=np.zeros((5, 4), bool)),
                ValueError, "attn_mask"),
        Invalid("a sequence of length 0", _with(_MHA_BASE, x=lambda x: x[:, :0],
                                                key_padding_mask=None), ValueError, r"\bx\b"),
    ),
))


# ---------------------------------------------------------------------------------------------
# multi-head attention with every option of nn.MultiheadAttention (multi_head_attention_qkv)
#
# Two specs, one per parameter layout (a spec's inputs are positional, so a layout with other
# arrays is another spec): "packed" has in_proj_weight with both biases and bias_k/bias_v
# (add_bias_kv); "kvdim" has kdim/vdim with q/k/v_proj_weight and bias=False. Both draw
# cross-attention (S != L) and self-attention (key and value equal to the query), unbatched
# inputs, add_zero_attn, batch_first, both masks, averaged or per-head weights and attention
# dropout. The twin is the torch module (functional_call) in training mode. Dropout: torch's
# module draws its own mask inside F.multi_head_attention_forward, through the module-level
# name F.dropout (its need_weights=True path, the one that returns the weights); the twin
# replaces that name for the call by a function that applies the case's keep-mask (scaling
# kept weights by 1/(1-p), as F.dropout does) and checks that torch called it exactly once,
# on weights of the mask's shape. So torch runs all of its own code (mask padding, bias_k,
# the zero row, the head split) and only the random draw is the case's.

_QKV_LAYOUTS = {
    # spec layout -> (reference keyword names of the inputs after query, key, value;
    #                 the same parameters' names in nn.MultiheadAttention)
    "packed": (("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias", "bias_k",
                "bias_v"),
               ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "bias_k",
                "bias_v")),
    "kvdim": (("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj_weight"),
              ("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight")),
}
_QKV_MASKS = ("key_padding_mask", "attn_mask")


def _qkv_forward(layout: str):
    names = _QKV_LAYOUTS[layout][0]

    def forward(query, key, value, *arrays, **params):
        if len(arrays) > len(names) + len(_QKV_MASKS):
            raise TypeError(f"at most {3 + len(names) + len(_QKV_MASKS)} arrays "
                            f"(query, key, value, {', '.join(names + _QKV_MASKS)}), "
                            f"got {3 + len(arrays)}")
        named = dict(zip(names + _QKV_MASKS, arrays, strict=False))
        return A.multi_head_attention_qkv(query, key, value, **named, **params)

    forward.__doc__ = (f"multi_head_attention_qkv with positional (query, key, value, "
                       f"{', '.join(names)}, [key_padding_mask, [attn_mask]]).")
    return forward


def _qkv_backward(layout: str):
    wanted = ("query", "key", "value") + _QKV_LAYOUTS[layout][0]

    def backward(ctx, grad_out):
        grads = A.multi_head_attention_qkv_backward(ctx, grad_out)
        return tuple(getattr(grads, n) for n in wanted)

    backward.__doc__ = f"multi_head_attention_qkv_backward's gradients of {', '.join(wanted)}."
    return backward


@functools.lru_cache(maxsize=32)
def _qkv_module(embed, heads, layout, kdim, vdim, zero_attn, batch_first, dtype, device):
    packed = layout == "packed"
    return torch.nn.MultiheadAttention(
        embed, heads, bias=packed, add_bias_kv=packed, add_zero_attn=zero_attn, kdim=kdim,
        vdim=vdim, batch_first=batch_first, dtype=dtype, device=device)


class _ExplicitDropout:
    """Within the block, torch.nn.functional.dropout applies ``keep`` (True = keep) instead
    of drawing; on exit, checks that it was called once iff p > 0 (see the comment above)."""

    def __init__(self, p: float, keep, device):
        self.p, self.keep, self.device, self.calls = p, keep, device, 0

    def __call__(self, x, p=0.5, training=True, inplace=False):
        self.calls += 1
        assert p == self.p and training, f"torch's MHA dropped with p={p}, the case has {self.p}"
        keep = torch.from_numpy(np.asarray(self.keep)).to(self.device)
        assert keep.numel() == x.numel(), f"weights {tuple(x.shape)} vs mask {tuple(keep.shape)}"
        return x * 0 if p == 1 else x * keep.reshape(x.shape) * (1.0 / (1.0 - p))

    def __enter__(self):
        self.saved = F.dropout
        F.dropout = self
        return self

    def __exit__(self, *exc):
        F.dropout = self.saved
        if exc[0] is None:
            assert self.calls == (1 if self.p > 0 else 0), (
                f"torch's MHA called dropout {self.calls} times with p = {self.p}")
        return False


def _torch_qkv(layout: str):
    torch_names = _QKV_LAYOUTS[layout][1]

    def twin(query, key, value, *arrays, num_heads, add_zero_attn=False, dropout_p=0.0,
             dropout_mask=None, batch_first=False, need_weights=True, average_attn_weights=True):
        params = dict(zip(torch_names, arrays[:len(torch_names)], strict=True))
        masks = dict(zip(_QKV_MASKS, arrays[len(torch_names):], strict=False))
        module = _qkv_module(query.shape[-1], num_heads, layout, key.shape[-1], value.shape[-1],
                             add_zero_attn, batch_first, query.dtype, query.device)
        module.dropout = float(dropout_p)
        with _ExplicitDropout(float(dropout_p), dropout_mask, query.device):
            return functional_call(module, params, (query, key, value), dict(
                masks, need_weights=True, average_attn_weights=average_attn_weights))

    return twin


def _qkv_case(rng, dtype, layout, batch, length, src_len, heads, head_dim, *, kdim=None,
              vdim=None, self_attn=False, unbatched=False, batch_first=False, zero_attn=False,
              masks="none", dropout_p=None, sigma=1.0, average=True) -> Case:
    embed = heads * head_dim
    kdim, vdim = (embed, embed) if layout == "packed" else (kdim, vdim)
    if self_attn:
        src_len, kdim, vdim = length, embed, embed

    def lay(n, d):
        return (n, d) if unbatched else ((batch, n, d) if batch_first else (n, batch, d))

    query = S.normal(rng, lay(length, embed), dtype, sigma)
    if self_attn:   # mha(x, x, x): equal values in three arrays (their gradients differ)
        key, value = query.copy(), query.copy()
    else:
        key = S.normal(rng, lay(src_len, kdim), dtype, sigma)
        value = S.normal(rng, lay(src_len, vdim), dtype)
    inputs = {"query": query, "key": key, "value": value}
    if layout == "packed":
        inputs.update(_projections(rng, embed, dtype))
        inputs["bias_k"] = S.normal(rng, (1, 1, embed), dtype, sigma)
        inputs["bias_v"] = S.normal(rng, (1, 1, embed), dtype)
    else:
        inputs.update({
            "q_proj_weight": S.normal(rng, (embed, embed), dtype, 1.0 / math.sqrt(embed)),
            "k_proj_weight": S.normal(rng, (embed, kdim), dtype, 1.0 / math.sqrt(kdim)),
            "v_proj_weight": S.normal(rng, (embed, vdim), dtype, 1.0 / math.sqrt(vdim)),
            "out_proj_weight": S.normal(rng, (embed, embed), dtype, 1.0 / math.sqrt(embed))})
    width = src_len + (layout == "packed") + zero_attn
    m = _masks(rng, masks, 1 if unbatched else batch, heads, length, dtype, "key_padding_mask",
               "attn_mask", src_len=src_len, keep_first=width == src_len)
    if unbatched and "key_padding_mask" in m:
        m["key_padding_mask"] = m["key_padding_mask"][0]
    inputs.update(m)
    params = {"num_heads": heads, "add_zero_attn": zero_attn, "batch_first": batch_first,
              "average_attn_weights": average}
    if dropout_p is not None:
        shape = (heads, length, width) if unbatched else (batch, heads, length, width)
        params["dropout_p"] = dropout_p
        params["dropout_mask"] = L.dropout_mask(rng, shape, dropout_p)
    return Case(inputs, params)


@st.composite
def _qkv_cases(draw, dtype, layout):
    """Cross-attention (S from 1 to 17, any L) or self-attention (key = value = query);
    kdim, vdim from 1 to 5 (kvdim: never both E, where torch's module packs the projections);
    unbatched one time in four; add_zero_attn; masks as in the self-attention spec, whose
    rows may be wholly masked when bias_k or the zero row add keys; dropout p in [0, 1]."""
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    embed = heads * head_dim
    length = draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.just(33)))
    self_attn = layout == "packed" and draw(st.booleans())
    src_len = draw(st.one_of(st.integers(1, 6), st.just(17)))
    kdim, vdim = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if layout == "kvdim" and kdim == vdim == embed:
        vdim += 1
    return _qkv_case(
        draw(S.seeds()), dtype, layout, draw(st.integers(1, 3)), length, src_len, heads,
        head_dim, kdim=kdim, vdim=vdim, self_attn=self_attn,
        unbatched=draw(st.sampled_from([False, False, False, True])),
        batch_first=draw(st.booleans()), zero_attn=draw(st.booleans()),
        masks=draw(st.sampled_from(["none", "bool", "both", "float"])),
        dropout_p=draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]),
                                 st.floats(0.0, 1.0))),
        sigma=draw(st.sampled_from([1.0, 1.0, 4.0])), average=draw(st.booleans()))


def _qkv_size(layout, b, n, s, heads, hd, **options):
    # the small sizes (the battery's) take every option: dropout, the zero row, kdim != vdim
    return lambda dtype: _qkv_case(np.random.default_rng(0), dtype, layout, b, n, s, heads, hd,
                                   kdim=hd * heads // 2, vdim=hd * heads * 2, batch_first=True,
                                   **options)


_QKV_SMALL = {"zero_attn": True, "dropout_p": 0.1}


def _qkv_cost(case: Case) -> Cost:
    q, k, val = case.inputs["query"], case.inputs["key"], case.inputs["value"]
    bf = case.params["batch_first"] or q.ndim == 2
    length, src_len = q.shape[-2 if bf else 0], k.shape[-2 if bf else 0]
    batch = 1 if q.ndim == 2 else q.shape[0 if bf else 1]
    embed, kdim, vdim = q.shape[-1], k.shape[-1], val.shape[-1]
    width = src_len + ("bias_k" in case.inputs) + case.params["add_zero_attn"]
    flops = 2 * batch * (2 * length * embed * embed + src_len * (kdim + vdim) * embed) + \
        batch * length * width * (4 * embed + 5)
    moved = sum(a.size for a in case.inputs.values()) + q.size + batch * length * width
    return Cost(flops=flops, bytes=moved * q.itemsize)


def _qkv_weights(case: Case, outs) -> None:
    """Without dropout each row of the weights sums to 1 (every row has a key: the case
    masks key 0 only when bias_k or the zero row add one); with dropout the weights are
    those after dropout, as torch's: zero where the mask drops (per head), and p = 1 gives
    zero weights and an output equal to out_proj_bias (zero without it)."""
    w = outs[1].astype(np.float64)
    keep = case.params.get("dropout_mask")
    eps = float(np.finfo(outs[1].dtype).eps)
    if keep is None:
        s = w.sum(axis=-1)
        assert np.all(np.abs(s - 1) <= 4 * w.shape[-1] * eps), f"weights rows sum to {s}"
        return
    if not case.params["average_attn_weights"]:
        assert not np.any(w[~keep]), "a weight the dropout mask drops is nonzero"
    if case.params["dropout_p"] == 1.0:
        assert not np.any(w), "dropout_p = 1 left a nonzero weight"
        bias = case.inputs.get("out_proj_bias")
        want = np.zeros(outs[0].shape[-1]) if bias is None else bias
        assert np.array_equal(outs[0], np.broadcast_to(want, outs[0].shape).astype(
            outs[0].dtype)), "dropout_p = 1: the output is not out_proj_bias"


def _qkv_no_weights(layout):
    forward = _qkv_forward(layout)

    def check(case: Case, outs) -> None:
        params = dict(case.params, need_weights=False)
        (out, weights), _ = forward(*case.inputs.values(), **params)
        assert weights is None, "need_weights=False returned weights"
        np.testing.assert_array_equal(out, outs[0])

    return check


def _qkv_base(layout, **options):
    return functools.partial(_qkv_case, np.random.default_rng(0), np.dtype(np.float64), layout,
                             2, 3, 4, 2, 3, kdim=2, vdim=5, batch_first=True, masks="bool",
                             **options)


def _drop_inputs(make, *names, **params):
    """A case of ``make`` without the inputs ``names`` (they and every later one), with
    ``params`` added (a parameter given as a keyword instead)."""
    def build():
        case = make()
        inputs = dict(case.inputs)
        cut = min(list(inputs).index(n) for n in names)
        return Case(dict(list(inputs.items())[:cut]), {**case.params, **params})
    return build


_PACKED = _qkv_base("packed", dropout_p=0.5)
_KVDIM = _qkv_base("kvdim")

_QKV_COMMON_INVALID = lambda base: (  # noqa: E731 - the same refusals for both layouts
    Invalid("key of another batch size (batch-major)",
            _with(base, key=lambda k: k[:1]), ValueError, r"\bkey\b"),
    Invalid("value of another length", _with(base, value=lambda a: a[:, :3]), ValueError,
            r"\bvalue\b"),
    Invalid("an unbatched query with batched key and value",
            _with(base, query=lambda q: q[0]), ValueError, r"\bkey\b"),
    Invalid("num_heads not dividing E", _with(base, num_heads=4), ValueError, "num_heads"),
    Invalid("key_padding_mask over S + 1 keys (the masks are given for the key's own S)",
            _with(base, key_padding_mask=lambda m: np.concatenate([m, m[:, :1]], 1)),
            ValueError, "key_padding_mask"),
    Invalid("attn_mask of the wrong shape",
            _with(base, attn_mask=np.zeros((3, 5), bool)), ValueError, "attn_mask"),
    Invalid("a 4-d query", _with(base, query=lambda q: q[None]), ValueError, r"\bquery\b"),
)

register(Spec(
    name="multi_head_attention_qkv", family=FAMILY,
    summary="nn.MultiheadAttention(query, key, value): packed projections with biases, "
            "add_bias_kv, add_zero_attn, cross/self/unbatched, dropout by an explicit mask",
    forward=_qkv_forward("packed"), backward=_qkv_backward("packed"),
    grad_inputs=("query", "key", "value", *_QKV_LAYOUTS["packed"][0]),
    n_diff_outputs=2,
    torch=_torch_qkv("packed"),
    cases=lambda dtype: _qkv_cases(dtype, "packed"),
    sizes={"small": _qkv_size("packed", 2, 16, 24, 4, 8, **_QKV_SMALL),
           "medium": _qkv_size("packed", 8, 128, 128, 8, 32),
           "large": _qkv_size("packed", 16, 256, 256, 8, 64)},
    cost=_qkv_cost,
    case_tol=_oracle_tol("multi_head_attention_qkv"),
    invariants=(Invariant("weights: rows sum to 1, or dropped as the mask says",
                          _qkv_weights),
                Invariant("need_weights=False gives the same output",
                          _qkv_no_weights("packed"))),
    invalid=(
        *_QKV_COMMON_INVALID(_PACKED),
        Invalid("key of another embedding size with the packed in_proj_weight",
                _with(_PACKED, key=lambda k: k[..., :2]), ValueError, r"\bkey\b"),
        Invalid("q_proj_weight beside in_proj_weight",
                _with(_PACKED, q_proj_weight=np.zeros((6, 6))), ValueError, "q_proj_weight"),
        Invalid("bias_k without bias_v",
                _drop_inputs(_PACKED, "bias_k", bias_k=np.zeros((1, 1, 6))), ValueError,
                "bias_v"),
        Invalid("bias_k of shape (E,) instead of (1, 1, E)",
                _with(_PACKED, bias_k=lambda b: b.reshape(-1)), ValueError, "bias_k"),
        Invalid("dropout_p > 0 without a dropout_mask", _with(_PACKED, dropout_mask=None),
                TypeError, "dropout_mask"),
        Invalid("a dropout_mask for S columns (bias_k adds one)",
                _with(_PACKED, dropout_mask=np.ones((2, 2, 3, 4), bool)), ValueError,
                "dropout_mask"),
        Invalid("dropout_p above 1", _with(_PACKED, dropout_p=1.5), ValueError, "dropout_p"),
    ),
))

register(Spec(
    name="multi_head_attention_kvdim", family=FAMILY,
    summary="nn.MultiheadAttention(query, key, value) with kdim/vdim (q/k/v_proj_weight), "
            "bias=False, add_zero_attn, cross/self/unbatched, dropout by an explicit mask",
    forward=_qkv_forward("kvdim"), backward=_qkv_backward("kvdim"),
    grad_inputs=("query", "key", "value", *_QKV_LAYOUTS["kvdim"][0]),
    n_diff_outputs=2,
    torch=_torch_qkv("kvdim"),
    cases=lambda dtype: _qkv_cases(dtype, "kvdim"),
    sizes={"small": _qkv_size("kvdim", 2, 16, 24, 4, 8, **_QKV_SMALL),
           "medium": _qkv_size("kvdim", 8, 128, 128, 8, 32),
           "large": _qkv_size("kvdim", 16, 256, 256, 8, 64)},
    cost=_qkv_cost,
    case_tol=_oracle_tol("multi_head_attention_kvdim"),
    invariants=(Invariant("weights: rows sum to 1, or dropped as the mask says",
                          _qkv_weights),
                Invariant("need_weights=False gives the same output",
                          _qkv_no_weights("kvdim"))),
    invalid=(
        *_QKV_COMMON_INVALID(_KVDIM),
        Invalid("k_proj_weight for another kdim",
                _with(_KVDIM, k_proj_weight=lambda w: w[:, :1]), ValueError, "k_proj_weight"),
        Invalid("no v_proj_weight", _with(_KVDIM, v_proj_weight=None), TypeError,
                "v_proj_weight"),
        Invalid("in_proj_bias of the wrong size",
                _with(_KVDIM, in_proj_bias=np.zeros(6)), ValueError, "in_proj_bias"),
    ),
))


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
