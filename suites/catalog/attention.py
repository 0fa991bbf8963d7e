"""Specs of scaled dot-product attention (float/causal masks, and bool masks). The other
attention specs: ``attention_mha`` (multi-head attention), ``attention_encoder`` (the encoder
layer and the positional encoding); their shared helpers: ``_attention_tools``.

Twin: ``F.scaled_dot_product_attention`` on its math backend (with an explicit dropout mask,
torch's own attention weights times the mask, see ``_torch_sdpa``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from reference import attention as A
from reference import layers as L
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._attention_tools import (
    FAMILY,
    _oracle_tol,
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


# models_gen's catalog imports the tolerance (above) and the PE twin from here.
from suites.catalog.attention_encoder import _torch_add_pe  # noqa: E402, F401
