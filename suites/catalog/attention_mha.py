"""Specs of multi-head attention: self-attention (``multi_head_attention``) and every option
of ``nn.MultiheadAttention`` (``multi_head_attention_qkv``, ``multi_head_attention_kvdim``).

Twin: ``nn.MultiheadAttention`` with the case's tensors swapped in by ``functional_call`` (so
autograd reaches them); dropout by the case's keep-mask (see the comment at the qkv specs).
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
from reference import layers as L
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
