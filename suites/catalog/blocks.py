"""Specs of the composite blocks: ResNet basic block, MobileNet block, Inception block.

Each twin is an ``nn.Module`` written as the papers and torchvision write it; the case's
arrays are swapped in for its parameters and buffers with ``torch.func.functional_call``, so
autograd differentiates with respect to the very tensors the checks hand over (copying them
into ``nn.Parameter``s would cut the graph). Running statistics are cloned first: batch norm
updates them in place, and the clones are returned after the output.

For the float64 gradcheck, ``smooth=`` moves each ReLU's inputs at least MARGIN away from 0 by
shifting the bias that feeds it (the per-channel shift that puts 0 in the widest gap of that
channel's pre-activations), and spreads x's values apart for the Inception max-pool, so no
ReLU kink or max-pool tie lies within the finite-difference steps.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from reference import blocks as B
from reference.activations import relu
from reference.conv import conv2d
from reference.norm import batch_norm
from reference.pool import max_pool2d
from suites.catalog import _block_bounds as E
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import FAMILY, U32, cut_in_largest_gap, small_floats, spread_ranks
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

# The gradcheck moves every differentiable input by t v, |t| <= h = 1e-4, v ~ N(0, 1). How far
# that moves a ReLU's input depends on the block (a batch norm of a nearly constant channel
# multiplies by invstd ~ 1/sqrt(eps)), so smooth= measures it: SENSE_DIRECTIONS random
# directions of the same law, and keeps each ReLU input SENSE_FACTOR times the largest move
# (and at least MARGIN) away from 0.
MARGIN = 0.02
SENSE_DIRECTIONS = 4
SENSE_FACTOR = 20.0
GRADCHECK_H = 1e-4
# A training-mode batch norm of a nearly constant channel is smooth but curved on the scale
# sqrt(var + eps) ~ 3e-3, within reach of the steps: the fourth-order remainder of the
# differences, (h / sqrt(eps))^4 ~ 1e-6, then exceeds the check's allowance. smooth= then
# moves x and the conv weights by seeded noise until every such channel has var >= VAR_MIN.
VAR_MIN = 1e-2

_BN_NAMES = ("weight", "bias", "running_mean", "running_var")


def _bn_inputs(prefix: str, c: int, dtype, rng, draw) -> dict[str, np.ndarray]:
    # beta is never exactly 0: a constant channel (a zero weight, a zero input) normalizes to
    # exactly beta, and with beta = 0 the next ReLU sits exactly on its kink, where torch's
    # rounding (y = x a + (beta - mean a): +-1e-16) rather than any convention picks the
    # branch. That point, and only it, is avoided.
    beta = draw(small_floats(dtype, (c,), -1, 1))
    beta[beta == 0] = 0.5
    return {f"{prefix}_weight": (1 + draw(small_floats(dtype, (c,), -0.5, 0.5))).astype(dtype),
            f"{prefix}_bias": beta,
            f"{prefix}_running_mean": S.normal(rng, (c,), dtype, 0.5),
            f"{prefix}_running_var": (rng.random(c) + 0.5).astype(dtype)}


def _weight(draw, dtype, shape) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (draw(small_floats(dtype, shape)) / dtype.type(np.sqrt(fan_in))).astype(dtype)


def _nonnegative(case: Case, outs) -> None:
    assert np.all(outs[0] >= 0), "a block ending in ReLU gave a negative output"


def _eval_keeps_stats(case: Case, outs) -> None:
    """In eval mode every returned running statistic equals the one passed in."""
    if case.params.get("training", True):
        return
    given = [a for n, a in case.inputs.items() if "running" in n]
    assert len(given) == len(outs) - 1, "one new running statistic per one given"
    for a, b in zip(given, outs[1:], strict=True):
        assert np.array_equal(a, b), "eval mode changed a running statistic"


BN_BLOCK_INVARIANTS = (Invariant("output >= 0 (final ReLU)", _nonnegative),
                       Invariant("eval keeps the running statistics", _eval_keeps_stats))


def _call(module: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(module, state, (x,))


# ---------------------------------------------------------------------------------------------
# ResNet basic block


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (ResNet-18/34), without its downsample argument's indirection."""

    def __init__(self, c_in, c_out, stride, projection, momentum, eps):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps, momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps, momentum)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out, eps, momentum))
                         if projection else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@functools.lru_cache(maxsize=32)
def _module(cls, *args, device, dtype) -> nn.Module:
    return cls(*args).to(device=device, dtype=dtype)


_BASIC_STATE = {  # the reference's argument -> the module's parameter or buffer
    "conv1_weight": "conv1.weight", "conv2_weight": "conv2.weight",
    "shortcut_weight": "shortcut.0.weight",
    **{f"bn1_{n}": f"bn1.{n}" for n in _BN_NAMES}, **{f"bn2_{n}": f"bn2.{n}" for n in _BN_NAMES},
    **{f"shortcut_bn_{n}": f"shortcut.1.{n}" for n in _BN_NAMES},
}
_BASIC_ORDER = ("x", "conv1_weight", "bn1_weight", "bn1_bias", "bn1_running_mean",
                "bn1_running_var", "conv2_weight", "bn2_weight", "bn2_bias", "bn2_running_mean",
                "bn2_running_var", "shortcut_weight", "shortcut_bn_weight", "shortcut_bn_bias",
                "shortcut_bn_running_mean", "shortcut_bn_running_var")


BASIC_GRADS = ("x", "conv1_weight", "bn1_weight", "bn1_bias", "conv2_weight", "bn2_weight",
               "bn2_bias", "shortcut_weight", "shortcut_bn_weight", "shortcut_bn_bias")


def _state(args: dict[str, torch.Tensor], names: dict[str, str]):
    """The functional_call state; running statistics cloned (batch norm updates them)."""
    state = {}
    for arg, t in args.items():
        if arg in names:
            state[names[arg]] = t.clone() if "running" in arg else t
    return state


def _stats(state, prefixes):
    return tuple(state[f"{p}.running_{s}"] for p in prefixes for s in ("mean", "var"))


def _torch_basic_block(*arrays, stride, training, momentum, eps):
    args = dict(zip(_BASIC_ORDER, arrays, strict=False))
    x, w1 = args["x"], args["conv1_weight"]
    projection = "shortcut_weight" in args
    block = _module(BasicBlock, x.shape[1], w1.shape[0], stride, projection, momentum, eps,
                    device=x.device, dtype=x.dtype).train(training)
    state = _state(args, _BASIC_STATE)
    y = _call(block, state, x)
    return (y,) + _stats(state, ("bn1", "bn2") + (("shortcut.1",) if projection else ()))


def _one_value_per_channel(n: int, oh: int, ow: int) -> bool:
    return n * oh * ow == 1


@st.composite
def _basic_cases(draw, dtype):
    n, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    s = draw(st.sampled_from([1, 1, 2, (2, 1), 3]))
    sh, sw = (s, s) if isinstance(s, int) else s
    needs = (sh, sw) != (1, 1) or c_in != c_out
    projection = needs or draw(st.booleans())
    oh, ow = (h - 1) // sh + 1, (w - 1) // sw + 1
    training = draw(st.booleans()) and not _one_value_per_channel(n, oh, ow)
    rng = draw(S.seeds())
    inputs = {"x": draw(small_floats(dtype, (n, c_in, h, w))),
              "conv1_weight": _weight(draw, dtype, (c_out, c_in, 3, 3))}
    inputs |= _bn_inputs("bn1", c_out, dtype, rng, draw)
    inputs["conv2_weight"] = _weight(draw, dtype, (c_out, c_out, 3, 3))
    inputs |= _bn_inputs("bn2", c_out, dtype, rng, draw)
    if projection:
        inputs["shortcut_weight"] = _weight(draw, dtype, (c_out, c_in, 1, 1))
        inputs |= _bn_inputs("shortcut_bn", c_out, dtype, rng, draw)
    return Case(inputs, {"stride": s, "training": training,
                         "momentum": draw(st.sampled_from([0.1, 0.5])),
                         "eps": draw(st.sampled_from([1e-5, 1e-3]))})


def _moves(pre, inputs: dict, names) -> np.ndarray:
    """Per channel, the largest move of ``pre(inputs)`` (N, C, H, W) over a few gradcheck-like
    perturbations of the differentiable inputs."""
    base = pre(inputs)
    worst = np.zeros(base.shape[1])
    rng = np.random.default_rng(12345)
    for _ in range(SENSE_DIRECTIONS):
        moved = {n: (a + GRADCHECK_H * rng.standard_normal(a.shape) if n in names else a)
                 for n, a in inputs.items()}
        worst = np.maximum(worst, np.abs(pre(moved) - base).max(axis=(0, 2, 3)))
    return worst


def _shift_bias(inputs: dict, key: str, pre, names) -> dict:
    """Shift bias ``key`` (it adds to ``pre`` per channel) so pre's values keep a margin."""
    z = pre(inputs)
    margin = np.maximum(MARGIN, SENSE_FACTOR * _moves(pre, inputs, names))
    cut = np.array([cut_in_largest_gap(z[:, c], margin[c]) for c in range(z.shape[1])])
    a = inputs[key]
    return {**inputs, key: (a - cut).astype(a.dtype)}


def _bn(i, prefix, h, p):
    (z, _, _), _ = batch_norm(h, i[f"{prefix}_running_mean"], i[f"{prefix}_running_var"],
                              i[f"{prefix}_weight"], i[f"{prefix}_bias"], p["training"],
                              p["momentum"], p["eps"])
    return z


def _basic_pre(p):
    """The basic block's two ReLU inputs, as functions of the inputs."""
    def z1(i):
        h1, _ = conv2d(i["x"], i["conv1_weight"], stride=p["stride"], padding=1)
        return _bn(i, "bn1", h1, p)

    def z2(i):
        a1, _ = relu(z1(i))
        h2, _ = conv2d(a1, i["conv2_weight"], padding=1)
        if "shortcut_weight" in i:
            hs, _ = conv2d(i["x"], i["shortcut_weight"], stride=p["stride"])
            return _bn(i, "bn2", h2, p) + _bn(i, "shortcut_bn", hs, p)
        return _bn(i, "bn2", h2, p) + i["x"]
    return z1, z2


def _perturbed(inputs: dict, attempt: int) -> dict:
    """x and every conv weight moved by seeded noise of their natural scale."""
    rng = np.random.default_rng(1000 + attempt)
    out = dict(inputs)
    for n, a in inputs.items():
        if n == "x" or (n.endswith("weight") and a.ndim == 4):
            scale = 1.0 if n == "x" else 1 / np.sqrt(np.prod(a.shape[1:]))
            out[n] = (a + scale * rng.standard_normal(a.shape)).astype(a.dtype)
    return out


def _smooth_block(case: Case, shifts, bn_inputs, names) -> Case:
    """Shift each ReLU's bias (in order) off the kink; first move degenerate cases (VAR_MIN)."""
    inputs = dict(case.inputs)
    for attempt in range(8):
        moved = inputs
        for key, pre in shifts:
            moved = _shift_bias(moved, key, pre, names)
        if not case.params.get("training") or all(
                np.min(f(moved).var(axis=(0, 2, 3))) >= VAR_MIN for f in bn_inputs):
            break
        inputs = _perturbed(inputs, attempt)
    return Case(moved, case.params)


def _basic_smooth(case: Case) -> Case:
    p = case.params
    z1, z2 = _basic_pre(p)

    def h1(i):
        return conv2d(i["x"], i["conv1_weight"], stride=p["stride"], padding=1)[0]

    def h2(i):
        return conv2d(relu(z1(i))[0], i["conv2_weight"], padding=1)[0]

    def hs(i):
        if "shortcut_weight" not in i:
            return np.ones((2, 1, 1, 1))  # identity: no batch norm (a variance of 0.25)
        return conv2d(i["x"], i["shortcut_weight"], stride=p["stride"])[0]

    return _smooth_block(case, (("bn1_bias", z1), ("bn2_bias", z2)), (h1, h2, hs),
                         BASIC_GRADS)


def _tol(bound: float) -> Tol:
    base = DEFAULT_TOL[FLOAT32]
    return Tol(base.rtol, max(base.atol, 2 * bound))  # two float32 evaluations: twice one bound


def _f64(case: Case) -> dict:
    return {n: a.astype(np.float64) for n, a in case.inputs.items()}


def _bn_args(i, prefix, p):
    return (i[f"{prefix}_weight"], i[f"{prefix}_bias"], i[f"{prefix}_running_mean"],
            i[f"{prefix}_running_var"], p["training"], p["momentum"], p["eps"])


def _basic_tol(case: Case, upstream) -> Tol | None:
    """float32: twice the first-order error bound of _block_bounds, walked along the block."""
    if case_dtype(case) != FLOAT32:
        return None
    i, p = _f64(case), case.params
    x, zero = i["x"], np.zeros_like(i["x"])
    h1, eh1, c1 = E.conv(x, zero, i["conv1_weight"], stride=p["stride"], padding=1)
    z1, ez1, es1, b1 = E.bn(h1, eh1, *_bn_args(i, "bn1", p))
    a1, ea1, r1 = E.relu(z1, ez1)
    h2, eh2, c2 = E.conv(a1, ea1, i["conv2_weight"], padding=1)
    z2, ez2, es2, b2 = E.bn(h2, eh2, *_bn_args(i, "bn2", p))
    proj = "shortcut_weight" in i
    if proj:
        hs, ehs, cs = E.conv(x, zero, i["shortcut_weight"], stride=p["stride"])
        zs, ezs, ess, bs = E.bn(hs, ehs, *_bn_args(i, "shortcut_bn", p))
    else:
        zs, ezs, ess = x, zero, 0.0
    t = z2 + zs
    y, ey, r2 = E.relu(t, ez2 + ezs + U32 * np.abs(t))
    if upstream is None:
        return _tol(max(E.worst(ey), es1, es2, ess))
    g = upstream[0].astype(np.float64)
    gt, egt = E.relu_back(r2, g, np.zeros_like(g))
    dh2, edh2, edg2, edb2 = E.bn_back(b2, gt, egt)
    da1, eda1, edw2, _ = E.conv_back(c2, dh2, edh2)
    dz1, edz1 = E.relu_back(r1, da1, eda1)
    dh1, edh1, edg1, edb1 = E.bn_back(b1, dz1, edz1)
    _, edx, edw1, _ = E.conv_back(c1, dh1, edh1)
    extra = ()
    if proj:
        dhs, edhs, edgs, edbs = E.bn_back(bs, gt, egt)
        _, edxs, edws, _ = E.conv_back(cs, dhs, edhs)
        edx, extra = edx + edxs, (edws, edgs, edbs)
    else:
        edx = edx + egt
    return _tol(E.worst(edx, edw1, edg1, edb1, edw2, edg2, edb2, *extra))


def _conv_flops(x_shape, w_shape, stride, pad, groups=1):
    n, c, h, w = x_shape
    c_out, c_g, kh, kw = w_shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    oh, ow = (h + 2 * pad - kh) // sh + 1, (w + 2 * pad - kw) // sw + 1
    return 2.0 * n * c_out * oh * ow * c_g * kh * kw, (n, c_out, oh, ow)


def _basic_cost(case: Case) -> Cost:
    i, s = case.inputs, case.params["stride"]
    f1, shape1 = _conv_flops(i["x"].shape, i["conv1_weight"].shape, s, 1)
    f2, _ = _conv_flops(shape1, i["conv2_weight"].shape, 1, 1)
    fs = _conv_flops(i["x"].shape, i["shortcut_weight"].shape, s, 0)[0] \
        if "shortcut_weight" in i else 0.0
    out = float(np.prod(shape1))
    moved = sum(a.nbytes for a in i.values()) + 6 * out * i["x"].itemsize
    return Cost(f1 + f2 + fs + 12 * out, moved)


def _basic_size(n, c_in, c_out, hw, stride):
    def build(dtype):
        rng = np.random.default_rng(0)

        def bn(prefix, c):
            return {f"{prefix}_weight": (1 + 0.1 * rng.standard_normal(c)).astype(dtype),
                    f"{prefix}_bias": S.normal(rng, (c,), dtype, 0.1),
                    f"{prefix}_running_mean": np.zeros(c, dtype),
                    f"{prefix}_running_var": np.ones(c, dtype)}

        def w(shape):
            return S.normal(rng, shape, dtype, 1 / np.sqrt(np.prod(shape[1:])))

        inputs = {"x": S.normal(rng, (n, c_in, hw, hw), dtype),
                  "conv1_weight": w((c_out, c_in, 3, 3)), **bn("bn1", c_out),
                  "conv2_weight": w((c_out, c_out, 3, 3)), **bn("bn2", c_out)}
        # every size has the projection: the generic benchmark differentiates every input
        inputs |= {"shortcut_weight": w((c_out, c_in, 1, 1)), **bn("shortcut_bn", c_out)}
        return Case(inputs, {"stride": stride, "training": True, "momentum": 0.1, "eps": 1e-5})
    return build


def _basic_bad(description, error, match, **changes):
    def case():
        rng = np.random.default_rng(0)
        c = 2
        bn = lambda p: {f"{p}_weight": np.ones(c), f"{p}_bias": np.zeros(c),  # noqa: E731
                        f"{p}_running_mean": np.zeros(c), f"{p}_running_var": np.ones(c)}
        inputs = {"x": rng.standard_normal((2, c, 4, 4)),
                  "conv1_weight": np.ones((c, c, 3, 3)), **bn("bn1"),
                  "conv2_weight": np.ones((c, c, 3, 3)), **bn("bn2")}
        params = {"stride": 1, "training": True, "momentum": 0.1, "eps": 1e-5}
        for k, v in changes.items():
            (params if k in params else inputs)[k] = v
        return Case(inputs, params)
    return Invalid(description, case, error, match)


register(Spec(
    name="basic_block", family=FAMILY,
    summary="ResNet basic block: 2 x (3x3 conv + BN) + ReLU, identity or projection shortcut",
    forward=B.basic_block, backward=B.basic_block_backward,
    grad_inputs=BASIC_GRADS,
    torch=_torch_basic_block,
    cases=_basic_cases,
    sizes={"small": _basic_size(2, 8, 8, 8, 1), "medium": _basic_size(8, 16, 32, 16, 2),
           "large": _basic_size(8, 32, 32, 32, 1)},
    cost=_basic_cost,
    case_tol=_basic_tol,
    smooth=_basic_smooth,
    invariants=BN_BLOCK_INVARIANTS,
    invalid=(
        _basic_bad("stride 2 with the identity shortcut", ValueError, "shortcut_weight",
                   stride=2),
        _basic_bad("a 5x5 conv1_weight", ValueError, "conv1_weight",
                   conv1_weight=np.ones((2, 2, 5, 5))),
        _basic_bad("only part of the shortcut", ValueError, "shortcut_weight",
                   shortcut_weight=np.ones((2, 2, 1, 1))),
        _basic_bad("conv2_weight with the wrong input channels", ValueError, "weight",
                   conv2_weight=np.ones((2, 3, 3, 3))),
        _basic_bad("one value per channel in training", ValueError, r"\bx\b",
                   x=np.ones((1, 2, 1, 1))),
    ),
))


# ---------------------------------------------------------------------------------------------
# MobileNet depthwise-separable block


class MobileNetBlock(nn.Module):
    """MobileNet v1's depthwise-separable layer: dw 3x3 + BN + ReLU, pw 1x1 + BN + ReLU."""

    def __init__(self, c, c_out, stride, momentum, eps):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c, eps, momentum)
        self.pw = nn.Conv2d(c, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps, momentum)

    def forward(self, x):
        return F.relu(self.bn2(self.pw(F.relu(self.bn1(self.dw(x))))))


_MOBILE_ORDER = ("x", "dw_weight", "bn1_weight", "bn1_bias", "bn1_running_mean",
                 "bn1_running_var", "pw_weight", "bn2_weight", "bn2_bias", "bn2_running_mean",
                 "bn2_running_var")
_MOBILE_STATE = {"dw_weight": "dw.weight", "pw_weight": "pw.weight",
                 **{f"bn1_{n}": f"bn1.{n}" for n in _BN_NAMES},
                 **{f"bn2_{n}": f"bn2.{n}" for n in _BN_NAMES}}
MOBILE_GRADS = ("x", "dw_weight", "bn1_weight", "bn1_bias", "pw_weight", "bn2_weight",
                "bn2_bias")


def _torch_mobilenet_block(*arrays, stride, training, momentum, eps):
    args = dict(zip(_MOBILE_ORDER, arrays, strict=True))
    x = args["x"]
    block = _module(MobileNetBlock, x.shape[1], args["pw_weight"].shape[0], stride, momentum,
                    eps, device=x.device, dtype=x.dtype).train(training)
    state = _state(args, _MOBILE_STATE)
    return (_call(block, state, x),) + _stats(state, ("bn1", "bn2"))


@st.composite
def _mobile_cases(draw, dtype):
    n, c, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    s = draw(st.sampled_from([1, 1, 2, (1, 2), 3]))
    sh, sw = (s, s) if isinstance(s, int) else s
    oh, ow = (h - 1) // sh + 1, (w - 1) // sw + 1
    training = draw(st.booleans()) and not _one_value_per_channel(n, oh, ow)
    rng = draw(S.seeds())
    inputs = {"x": draw(small_floats(dtype, (n, c, h, w))),
              "dw_weight": _weight(draw, dtype, (c, 1, 3, 3)),
              **_bn_inputs("bn1", c, dtype, rng, draw),
              "pw_weight": _weight(draw, dtype, (c_out, c, 1, 1)),
              **_bn_inputs("bn2", c_out, dtype, rng, draw)}
    return Case(inputs, {"stride": s, "training": training,
                         "momentum": draw(st.sampled_from([0.1, 0.5])),
                         "eps": draw(st.sampled_from([1e-5, 1e-3]))})


def _mobile_pre(p):
    def z1(i):
        h, _ = conv2d(i["x"], i["dw_weight"], stride=p["stride"], padding=1,
                      groups=i["x"].shape[1])
        return _bn(i, "bn1", h, p)

    def z2(i):
        a1, _ = relu(z1(i))
        h, _ = conv2d(a1, i["pw_weight"])
        return _bn(i, "bn2", h, p)
    return z1, z2


def _mobile_smooth(case: Case) -> Case:
    p = case.params
    z1, z2 = _mobile_pre(p)

    def h1(i):
        return conv2d(i["x"], i["dw_weight"], stride=p["stride"], padding=1,
                      groups=i["x"].shape[1])[0]

    def h2(i):
        return conv2d(relu(z1(i))[0], i["pw_weight"])[0]

    return _smooth_block(case, (("bn1_bias", z1), ("bn2_bias", z2)), (h1, h2), MOBILE_GRADS)


def _mobile_tol(case: Case, upstream) -> Tol | None:
    """float32: twice the first-order error bound of _block_bounds, walked along the block."""
    if case_dtype(case) != FLOAT32:
        return None
    i, p = _f64(case), case.params
    x = i["x"]
    h1, eh1, c1 = E.conv(x, np.zeros_like(x), i["dw_weight"], stride=p["stride"], padding=1,
                         groups=x.shape[1])
    z1, ez1, es1, b1 = E.bn(h1, eh1, *_bn_args(i, "bn1", p))
    a1, ea1, r1 = E.relu(z1, ez1)
    h2, eh2, c2 = E.conv(a1, ea1, i["pw_weight"])
    z2, ez2, es2, b2 = E.bn(h2, eh2, *_bn_args(i, "bn2", p))
    y, ey, r2 = E.relu(z2, ez2)
    if upstream is None:
        return _tol(max(E.worst(ey), es1, es2))
    g = upstream[0].astype(np.float64)
    dz2, edz2 = E.relu_back(r2, g, np.zeros_like(g))
    dh2, edh2, edg2, edb2 = E.bn_back(b2, dz2, edz2)
    da1, eda1, edpw, _ = E.conv_back(c2, dh2, edh2)
    dz1, edz1 = E.relu_back(r1, da1, eda1)
    dh1, edh1, edg1, edb1 = E.bn_back(b1, dz1, edz1)
    _, edx, eddw, _ = E.conv_back(c1, dh1, edh1)
    return _tol(E.worst(edx, eddw, edg1, edb1, edpw, edg2, edb2))


def _mobile_cost(case: Case) -> Cost:
    i, s = case.inputs, case.params["stride"]
    n, c, h, w = i["x"].shape
    f1, shape1 = _conv_flops(i["x"].shape, i["dw_weight"].shape, s, 1)
    f2, shape2 = _conv_flops(shape1, i["pw_weight"].shape, 1, 0)
    moved = sum(a.nbytes for a in i.values()) + 4 * float(np.prod(shape2)) * i["x"].itemsize
    return Cost(f1 + f2 + 12 * float(np.prod(shape2)), moved)


def _mobile_size(n, c, c_out, hw, stride):
    def build(dtype):
        rng = np.random.default_rng(0)

        def bn(prefix, k):
            return {f"{prefix}_weight": (1 + 0.1 * rng.standard_normal(k)).astype(dtype),
                    f"{prefix}_bias": S.normal(rng, (k,), dtype, 0.1),
                    f"{prefix}_running_mean": np.zeros(k, dtype),
                    f"{prefix}_running_var": np.ones(k, dtype)}

        inputs = {"x": S.normal(rng, (n, c, hw, hw), dtype),
                  "dw_weight": S.normal(rng, (c, 1, 3, 3), dtype, 1 / 3), **bn("bn1", c),
                  "pw_weight": S.normal(rng, (c_out, c, 1, 1), dtype, 1 / np.sqrt(c)),
                  **bn("bn2", c_out)}
        return Case(inputs, {"stride": stride, "training": True, "momentum": 0.1, "eps": 1e-5})
    return build


def _mobile_bad(description, error, match, **changes):
    def case():
        c = 2
        bn = lambda p, k: {f"{p}_weight": np.ones(k), f"{p}_bias": np.zeros(k),  # noqa: E731
                           f"{p}_running_mean": np.zeros(k), f"{p}_running_var": np.ones(k)}
        inputs = {"x": np.random.default_rng(0).standard_normal((2, c, 4, 4)),
                  "dw_weight": np.ones((c, 1, 3, 3)), **bn("bn1", c),
                  "pw_weight": np.ones((3, c, 1, 1)), **bn("bn2", 3)}
        params = {"stride": 1, "training": True, "momentum": 0.1, "eps": 1e-5}
        for k, v in changes.items():
            (params if k in params else inputs)[k] = v
        return Case(inputs, params)
    return Invalid(description, case, error, match)


register(Spec(
    name="mobilenet_block", family=FAMILY,
    summary="MobileNet block: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU",
    forward=B.mobilenet_block, backward=B.mobilenet_block_backward, grad_inputs=MOBILE_GRADS,
    torch=_torch_mobilenet_block,
    cases=_mobile_cases,
    sizes={"small": _mobile_size(2, 16, 32, 16, 1), "medium": _mobile_size(8, 32, 64, 32, 1),
           "large": _mobile_size(8, 64, 128, 32, 1)},
    cost=_mobile_cost,
    case_tol=_mobile_tol,
    smooth=_mobile_smooth,
    invariants=BN_BLOCK_INVARIANTS,
    invalid=(
        _mobile_bad("a dw_weight that is not depthwise", ValueError, "dw_weight",
                    dw_weight=np.ones((2, 2, 3, 3))),
        _mobile_bad("pw_weight with the wrong input channels", ValueError, "pw_weight",
                    pw_weight=np.ones((3, 4, 1, 1))),
        _mobile_bad("bn2_weight of the wrong length", ValueError, "bn2_weight",
                    bn2_weight=np.ones(2)),
        _mobile_bad("stride 0", ValueError, "stride", stride=0),
    ),
))


# ---------------------------------------------------------------------------------------------
# Inception block


class Inception(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015, fig. 2b): conv + bias + ReLU."""

    def __init__(self, c, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.b1 = nn.Conv2d(c, c1, 1)
        self.b2 = nn.Sequential(nn.Conv2d(c, c3r, 1), nn.ReLU(), nn.Conv2d(c3r, c3, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(c, c5r, 1), nn.ReLU(), nn.Conv2d(c5r, c5, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, cp, 1))

    def forward(self, x):
        return torch.cat([F.relu(b(x)) for b in (self.b1, self.b2, self.b3, self.b4)], 1)


_INCEPTION_ORDER = ("x", "b1_weight", "b1_bias", "b2_reduce_weight", "b2_reduce_bias",
                    "b2_weight", "b2_bias", "b3_reduce_weight", "b3_reduce_bias", "b3_weight",
                    "b3_bias", "b4_weight", "b4_bias")
_INCEPTION_STATE = {
    f"{arg}_{kind}": f"{mod}.{kind}" for kind in ("weight", "bias")
    for arg, mod in (("b1", "b1"), ("b2_reduce", "b2.0"), ("b2", "b2.2"), ("b3_reduce", "b3.0"),
                     ("b3", "b3.2"), ("b4", "b4.1"))}


def _torch_inception_block(*arrays):
    args = dict(zip(_INCEPTION_ORDER, arrays, strict=True))
    x = args["x"]
    widths = tuple(args[f"{b}_weight"].shape[0] for b in ("b1", "b2_reduce", "b2", "b3_reduce",
                                                          "b3", "b4"))
    block = _module(Inception, x.shape[1], *widths, device=x.device, dtype=x.dtype)
    return _call(block, _state(args, _INCEPTION_STATE), x)


@st.composite
def _inception_cases(draw, dtype):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    c1, c3r, c3, c5r, c5, cp = (draw(st.integers(1, 3)) for _ in range(6))
    inputs = {"x": draw(small_floats(dtype, (n, c, h, w)))}
    for name, shape in (("b1", (c1, c, 1, 1)), ("b2_reduce", (c3r, c, 1, 1)),
                        ("b2", (c3, c3r, 3, 3)), ("b3_reduce", (c5r, c, 1, 1)),
                        ("b3", (c5, c5r, 5, 5)), ("b4", (cp, c, 1, 1))):
        inputs[f"{name}_weight"] = _weight(draw, dtype, shape)
        inputs[f"{name}_bias"] = draw(small_floats(dtype, (shape[0],), -0.5, 0.5))
    return Case(inputs)


def _inception_pre():
    """The Inception block's six ReLU inputs, each with the bias that feeds it."""
    def conv(i, src, name, padding=0):
        h, _ = conv2d(src, i[f"{name}_weight"], i[f"{name}_bias"], padding=padding)
        return h

    def pooled(i):
        return max_pool2d(i["x"], 3, stride=1, padding=1)[0]

    return (
        ("b1_bias", lambda i: conv(i, i["x"], "b1")),
        ("b2_reduce_bias", lambda i: conv(i, i["x"], "b2_reduce")),
        ("b2_bias", lambda i: conv(i, relu(conv(i, i["x"], "b2_reduce"))[0], "b2", 1)),
        ("b3_reduce_bias", lambda i: conv(i, i["x"], "b3_reduce")),
        ("b3_bias", lambda i: conv(i, relu(conv(i, i["x"], "b3_reduce"))[0], "b3", 2)),
        ("b4_bias", lambda i: conv(i, pooled(i), "b4")),
    )


INCEPTION_GRADS = _INCEPTION_ORDER


def _inception_smooth(case: Case) -> Case:
    """Distinct values in x (no near-tie in a pool window), then each ReLU input kept off 0."""
    inputs = {**case.inputs, "x": spread_ranks(case.inputs["x"])}
    for key, pre in _inception_pre():
        inputs = _shift_bias(inputs, key, pre, INCEPTION_GRADS)
    return Case(inputs, case.params)


def _inception_tol(case: Case, upstream) -> Tol | None:
    """float32: twice the first-order error bound of _block_bounds, walked along the block."""
    if case_dtype(case) != FLOAT32:
        return None
    i = _f64(case)
    x = i["x"]
    zero = np.zeros_like(x)

    def cr(src, esrc, name, padding=0):
        h, eh, node = E.conv(src, esrc, i[f"{name}_weight"], i[f"{name}_bias"], padding=padding)
        a, ea, r = E.relu(h, eh)
        return a, ea, (node, r)

    a1, e1, n1 = cr(x, zero, "b1")
    a2r, e2r, n2r = cr(x, zero, "b2_reduce")
    a2, e2, n2 = cr(a2r, e2r, "b2", 1)
    a3r, e3r, n3r = cr(x, zero, "b3_reduce")
    a3, e3, n3 = cr(a3r, e3r, "b3", 2)
    pooled, epool, pctx = E.maxpool(x, zero, kernel_size=3, stride=1, padding=1)
    a4, e4, n4 = cr(pooled, epool, "b4")
    if upstream is None:
        return _tol(E.worst(e1, e2, e3, e4))
    g = upstream[0].astype(np.float64)
    splits = np.cumsum([a.shape[1] for a in (a1, a2, a3)])
    gs = np.split(g, splits, axis=1)

    def back(node, g, eg):
        conv_node, r = node
        dh, edh = E.relu_back(r, g, eg)
        dsrc, edsrc, edw, edb = E.conv_back(conv_node, dh, edh)
        return dsrc, edsrc, edw, edb

    _, edx1, *w1 = back(n1, gs[0], np.zeros_like(gs[0]))
    da2r, eda2r, *w2 = back(n2, gs[1], np.zeros_like(gs[1]))
    _, edx2, *w2r = back(n2r, da2r, eda2r)
    da3r, eda3r, *w3 = back(n3, gs[2], np.zeros_like(gs[2]))
    _, edx3, *w3r = back(n3r, da3r, eda3r)
    dpool, edpool, *w4 = back(n4, gs[3], np.zeros_like(gs[3]))
    _, edx4 = E.maxpool_back(pctx, dpool, edpool)
    errs = [edx1 + edx2 + edx3 + edx4, *w1, *w2, *w2r, *w3, *w3r, *w4]
    return _tol(E.worst(*errs))


def _inception_cost(case: Case) -> Cost:
    i = case.inputs
    n, c, h, w = i["x"].shape
    flops = 0.0
    for name in ("b1", "b2_reduce", "b2", "b3_reduce", "b3", "b4"):
        o, c_in, k, _ = i[f"{name}_weight"].shape
        flops += 2.0 * n * h * w * o * c_in * k * k
    out = n * h * w * sum(i[f"{b}_weight"].shape[0] for b in ("b1", "b2", "b3", "b4"))
    return Cost(flops, sum(a.nbytes for a in i.values()) + 2 * out * i["x"].itemsize)


def _inception_size(n, c, hw, widths):
    def build(dtype):
        rng = np.random.default_rng(0)
        c1, c3r, c3, c5r, c5, cp = widths
        inputs = {"x": S.normal(rng, (n, c, hw, hw), dtype)}
        for name, shape in (("b1", (c1, c, 1, 1)), ("b2_reduce", (c3r, c, 1, 1)),
                            ("b2", (c3, c3r, 3, 3)), ("b3_reduce", (c5r, c, 1, 1)),
                            ("b3", (c5, c5r, 5, 5)), ("b4", (cp, c, 1, 1))):
            fan_in = shape[1] * shape[2] * shape[3]
            inputs[f"{name}_weight"] = S.normal(rng, shape, dtype, 1 / np.sqrt(fan_in))
            inputs[f"{name}_bias"] = S.normal(rng, (shape[0],), dtype, 0.1)
        return Case(inputs)
    return build


def _inception_bad(description, error, match, **changes):
    def case():
        c = 2
        inputs = {"x": np.random.default_rng(0).standard_normal((1, c, 4, 4))}
        for name, shape in (("b1", (2, c, 1, 1)), ("b2_reduce", (2, c, 1, 1)),
                            ("b2", (2, 2, 3, 3)), ("b3_reduce", (2, c, 1, 1)),
                            ("b3", (2, 2, 5, 5)), ("b4", (2, c, 1, 1))):
            inputs[f"{name}_weight"] = np.ones(shape)
            inputs[f"{name}_bias"] = np.zeros(shape[0])
        inputs |= changes
        return Case(inputs)
    return Invalid(description, case, error, match)


register(Spec(
    name="inception_block", family=FAMILY,
    summary="Inception: 1x1, 1x1->3x3, 1x1->5x5, maxpool->1x1 branches, concatenated",
    forward=B.inception_block, backward=B.inception_block_backward,
    grad_inputs=INCEPTION_GRADS,
    torch=_torch_inception_block,
    cases=_inception_cases,
    sizes={"small": _inception_size(2, 16, 8, (8, 8, 12, 4, 8, 8)),
           "medium": _inception_size(8, 32, 16, (16, 24, 32, 4, 8, 8)),
           "large": _inception_size(8, 64, 28, (64, 96, 128, 16, 32, 32))},
    cost=_inception_cost,
    case_tol=_inception_tol,
    smooth=_inception_smooth,
    invariants=(Invariant("output >= 0 (every branch ends in ReLU)", _nonnegative),),
    invalid=(
        _inception_bad("a 3x3 b3_weight (the paper's is 5x5)", ValueError, "b3_weight",
                       b3_weight=np.ones((2, 2, 3, 3))),
        _inception_bad("b2_weight not matching b2_reduce's channels", ValueError, "b2_weight",
                       b2_weight=np.ones((2, 3, 3, 3))),
        _inception_bad("b4_bias of the wrong length", ValueError, "b4_bias",
                       b4_bias=np.zeros(3)),
        _inception_bad("a 3-d x", ValueError, r"\bx\b", x=np.ones((2, 4, 4))),
    ),
))
