"""Specs of the spatial layers: conv2d, max_pool2d, avg_pool2d (NCHW).

Strategies cover: batch of 1 and unbatched (C, H, W) inputs (pools too), odd, even and
non-square kernels and images, stride larger than the kernel, padding from 0 up to half the
(dilated) kernel as ints, pairs, 'same' and 'valid', dilation > 1, groups dividing the
channels (depthwise included), bias or none. Max-pooling draws values from a small set of
integers, so windows hold exact ties and the first-maximum convention is compared with
torch's, gradients and ``return_indices``' flat per-plane indices alike.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st

from reference import conv as Cv
from reference import pool as P
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import (
    FAMILY,
    abs64,
    bilinear_tol,
    gamma,
    small_floats,
    spread_ranks,
)
from suites.catalog.spec import Case, Cost, Invalid, Invariant, Spec, as_tuple


def _pair(draw, lo, hi, sampled=None):
    pick = st.sampled_from(sampled) if sampled else st.integers(lo, hi)
    return draw(pick), draw(pick)


def _as_param(draw, pair):
    """An int when both sides agree (and a coin says so), else the pair as a tuple."""
    return pair[0] if pair[0] == pair[1] and draw(st.booleans()) else tuple(pair)


def _bad(description, x, w, error, match, b=None, **params) -> Invalid:
    def case():
        inputs = {"x": x(), "weight": w()}
        if b is not None:
            inputs["bias"] = b()
        return Case(inputs, params)
    return Invalid(description, case, error, match)


# ---------------------------------------------------------------------------------------------
# conv2d


@st.composite
def _conv_cases(draw, dtype):
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, c_g, o_g = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups, c_g, o_g = draw(st.integers(2, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:  # depthwise: one input channel per group, a depth multiplier of 1 or 2
        groups, c_g, o_g = draw(st.integers(1, 4)), 1, draw(st.integers(1, 2))
    k = _pair(draw, 1, 4)
    d = _pair(draw, 1, 3, sampled=[1, 1, 2, 3])
    s = _pair(draw, 1, 4, sampled=[1, 1, 2, 3, 5])  # 5 > every kernel: stride > kernel
    eff = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    mode = draw(st.sampled_from(["ints", "ints", "same", "valid"] if s == (1, 1)
                                else ["ints", "ints", "valid"]))
    if mode == "ints":
        pad = (draw(st.integers(0, eff[0] // 2)), draw(st.integers(0, eff[1] // 2)))
        totals, padding = (2 * pad[0], 2 * pad[1]), _as_param(draw, pad)
    elif mode == "same":
        totals, padding = (eff[0] - 1, eff[1] - 1), "same"
    else:
        totals, padding = (0, 0), "valid"
    lows = [max(1, e - t) for e, t in zip(eff, totals, strict=True)]  # kernel fits the padded
    h, w = (draw(st.integers(lo, lo + 5)) for lo in lows)
    n = draw(st.integers(1, 3))
    shape = (groups * c_g, h, w) if draw(st.integers(0, 5)) == 0 else (n, groups * c_g, h, w)
    inputs = {"x": draw(small_floats(dtype, shape)),
              "weight": draw(small_floats(dtype, (groups * o_g, c_g) + k))}
    if draw(st.booleans()):
        inputs["bias"] = draw(small_floats(dtype, (groups * o_g,)))
    return Case(inputs, {"stride": _as_param(draw, s), "padding": padding,
                         "dilation": _as_param(draw, d), "groups": groups})


def _conv_geometry(case: Case):
    x, w = case.inputs["x"], case.inputs["weight"]
    _, ctx = Cv.conv2d(x, w, **case.params)
    return ctx.geo


def _conv_length(case: Case) -> int:
    # the longest sums: C_g KH KW (+1 bias) per output; at most C_out_g KH KW per input pixel
    # in dx; N OH OW per weight in dW and per channel in db
    geo = _conv_geometry(case)
    c_g, o_g = geo.c // geo.groups, geo.c_out // geo.groups
    return max(c_g * geo.kh * geo.kw + 1, o_g * geo.kh * geo.kw, geo.n * geo.oh * geo.ow, 1)


def _conv_cost(case: Case) -> Cost:
    geo = _conv_geometry(case)
    x, w = case.inputs["x"], case.inputs["weight"]
    out = geo.n * geo.c_out * geo.oh * geo.ow
    flops = 2.0 * out * (geo.c // geo.groups) * geo.kh * geo.kw
    return Cost(flops, (x.size + w.size + out) * x.itemsize)


def _conv_size(n, c, c_out, hw, k=3):
    def build(dtype):
        rng = np.random.default_rng(0)
        return Case({"x": S.normal(rng, (n, c, hw, hw), dtype),
                     "weight": S.normal(rng, (c_out, c, k, k), dtype, 1 / np.sqrt(c * k * k)),
                     "bias": S.normal(rng, (c_out,), dtype)},
                    {"stride": 1, "padding": 1, "dilation": 1, "groups": 1})
    return build


def _strided_is_subsampled(case: Case, outs) -> None:
    """Stride s gives every s-th output of stride 1 (same padding ints): no oracle needed."""
    p = case.params
    if p["padding"] in ("same", "valid") or p["stride"] in (1, (1, 1)):
        return
    dense = dict(p, stride=1)
    full, _ = Cv.conv2d(*case.inputs.values(), **dense)
    s = (p["stride"],) * 2 if isinstance(p["stride"], int) else p["stride"]
    want = full[..., ::s[0], ::s[1]][..., :outs[0].shape[-2], :outs[0].shape[-1]]
    # the same sums of K products, possibly in another order: 2 gamma_K sum |a b| apart
    scale, _ = Cv.conv2d(*abs64(case).values(), **p)
    k = _conv_length(case)
    u = float(np.finfo(outs[0].dtype).eps) / 2
    bound = 2 * gamma(k, u) * scale + 1e-300
    assert want.shape == outs[0].shape, f"strided shape {outs[0].shape}, subsampled {want.shape}"
    err = np.abs(outs[0].astype(np.float64) - want)
    assert np.all(err <= bound), f"strided output differs from the subsampled dense one by " \
                                 f"{err.max():.3g}"


def _conv_bad(description, error, match, x=(2, 4, 5, 5), w=(6, 4, 3, 3), **params):
    return _bad(description, lambda: np.ones(x), lambda: np.ones(w), error, match, **params)


register(Spec(
    name="conv2d", family=FAMILY,
    summary="2-d convolution NCHW: stride, padding/'same', dilation, groups, bias",
    forward=Cv.conv2d, backward=Cv.conv2d_backward, grad_inputs=("x", "weight", "bias"),
    torch=F.conv2d,
    cases=_conv_cases,
    sizes={"small": _conv_size(2, 8, 16, 16), "medium": _conv_size(8, 16, 32, 32),
           "large": _conv_size(16, 32, 64, 64)},
    cost=_conv_cost,
    case_tol=bilinear_tol(Cv.conv2d, Cv.conv2d_backward, _conv_length),
    invariants=(Invariant("stride s = stride 1 subsampled", _strided_is_subsampled),),
    invalid=(
        _conv_bad("weight with the wrong input channels", ValueError, "weight", w=(6, 3, 3, 3)),
        _conv_bad("a kernel larger than the padded input", ValueError, "weight", x=(1, 4, 2, 2),
                  padding=0),
        _conv_bad("groups not dividing the channels", ValueError, "groups", w=(6, 2, 3, 3),
                  groups=3),
        _conv_bad("groups not dividing the output channels", ValueError, "groups",
                  w=(5, 2, 3, 3), groups=2),
        _conv_bad("stride 0", ValueError, "stride", stride=0),
        _conv_bad("dilation 0", ValueError, "dilation", dilation=(1, 0)),
        _conv_bad("negative padding", ValueError, "padding", padding=-1),
        _conv_bad("padding='same' with stride 2", ValueError, "padding", padding="same",
                  stride=2),
        _conv_bad("an unknown padding mode", ValueError, "padding", padding="full"),
        _conv_bad("a 2-d x", ValueError, r"\bx\b", x=(4, 5)),
        _conv_bad("a 3-d weight", ValueError, "weight", w=(6, 4, 3)),
        _bad("a bias of the wrong length", lambda: np.ones((1, 2, 3, 3)),
             lambda: np.ones((4, 2, 1, 1)), ValueError, "bias", b=lambda: np.ones(3)),
        _bad("weight in float32, x in float64", lambda: np.ones((1, 2, 3, 3)),
             lambda: np.ones((4, 2, 1, 1), np.float32), TypeError, "weight"),
    ),
))


# ---------------------------------------------------------------------------------------------
# pooling


def _pool_windows_nonempty(size, out, k, s, p, d) -> bool:
    """Whether every window holds at least one image pixel (not only padding)."""
    for o in range(out):
        start = o * s - p
        if not any(0 <= start + i * d < size for i in range(k)):
            return False
    return True


_TIES = st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0])


@st.composite
def _pool_cases(draw, dtype, kind):
    k = _pair(draw, 1, 4)
    s = _pair(draw, 1, 5)  # up to 5 > every kernel: stride > kernel
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = _pair(draw, 1, 3, sampled=[1, 1, 2, 3]) if kind == "max" else (1, 1)
    ceil_mode = draw(st.booleans())
    eff = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    lows = [max(1, e - 2 * q) for e, q in zip(eff, p, strict=True)]
    h, w = (draw(st.integers(lo, lo + 6)) for lo in lows)
    outs = [P._out_size(n, k[i], s[i], p[i], d[i], ceil_mode) for i, n in enumerate((h, w))]
    if kind == "max":
        # A window of padding only (dilation can skip every pixel) gives -inf in both, but
        # torch 2.13's backward then writes out of bounds (heap corruption, seen here), so such
        # cases are drawn only by the reference's own test (-inf and no gradient, documented).
        assume(all(_pool_windows_nonempty(n, o, k[i], s[i], p[i], d[i])
                   for i, (n, o) in enumerate(zip((h, w), outs, strict=True))))
    lead = draw(st.sampled_from([(), (1,), (2,), (3,)])) + (draw(st.integers(1, 3)),)
    shape = lead + (h, w)
    if kind == "max" and draw(st.booleans()):
        x = draw(S.arrays(dtype, shape, elements=_TIES))  # exact ties in the windows
    else:
        x = draw(small_floats(dtype, shape))
    stride = _as_param(draw, s)
    if s == k and draw(st.booleans()):
        stride = None  # the default: stride = kernel_size
    params = {"kernel_size": _as_param(draw, k), "stride": stride, "padding": _as_param(draw, p)}
    if kind == "max":
        params |= {"dilation": _as_param(draw, d), "ceil_mode": ceil_mode}
        if draw(st.booleans()):
            params["return_indices"] = draw(st.booleans())
    else:
        params |= {"ceil_mode": ceil_mode, "count_include_pad": draw(st.booleans()),
                   "divisor_override": draw(st.one_of(st.none(), st.integers(1, 5)))}
    return Case({"x": x}, params)


def _pool_size(shape, **params):
    def build(dtype):
        return Case({"x": S.normal(np.random.default_rng(0), shape, dtype)}, params)
    return build


def _pool_cost(forward):
    def cost(case: Case) -> Cost:
        y = as_tuple(forward(case.inputs["x"], **case.params)[0])[0]
        k = case.params["kernel_size"]
        area = k * k if isinstance(k, int) else k[0] * k[1]
        x = case.inputs["x"]
        return Cost(float(y.size * area), (x.size + y.size) * x.itemsize)
    return cost


def _distinct(case: Case) -> Case:
    """For the gradcheck: values 0.05 apart in x's order, so no window has a (near) tie."""
    return Case({"x": spread_ranks(case.inputs["x"])}, case.params)


def _max_is_an_input(case: Case, outs) -> None:
    y, x = outs[0], case.inputs["x"]
    assert np.all(np.isin(y, x)), "max-pool output is not one of the input's values"


def _indices_point_at_maxima(case: Case, outs) -> None:
    """With return_indices: each index lies in its (n, c) plane and x there is the output
    (torch's flat u * W + v per plane; that it is torch's choice among ties is forward
    parity's to check)."""
    if not case.params.get("return_indices"):
        assert len(outs) == 1, f"{len(outs)} outputs without return_indices"
        return
    y, idx = outs
    x = case.inputs["x"]
    h, w = x.shape[-2:]
    assert idx.dtype == np.int64 and idx.shape == y.shape, f"indices {idx.dtype}{idx.shape}"
    assert np.all((idx >= 0) & (idx < h * w)), "an index outside its plane"
    planes = x.reshape(-1, h * w)
    picked = np.take_along_axis(planes, idx.reshape(planes.shape[0], -1), axis=1)
    assert np.array_equal(picked.reshape(y.shape), y), "x at the index is not the output"


def _avg_within_range(case: Case, outs) -> None:
    if case.params.get("divisor_override") is not None:
        return
    x, y = case.inputs["x"].astype(np.float64), outs[0].astype(np.float64)
    lo, hi = x.min(), x.max()
    if case.params["count_include_pad"] and case.params["padding"] not in (0, (0, 0)):
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # padded zeros count
    tol = 4 * float(np.finfo(outs[0].dtype).eps) * max(abs(lo), abs(hi))
    assert np.all((y >= lo - tol) & (y <= hi + tol)), "an average left [min, max]"


def _pool_bad(description, error, match, x=(1, 2, 5, 5), **params) -> Invalid:
    params = {"kernel_size": 3} | params
    return Invalid(description, lambda: Case({"x": np.ones(x)}, params), error, match)


POOL_INVALID = (
    _pool_bad("kernel_size 0", ValueError, "kernel_size", kernel_size=0),
    _pool_bad("stride 0", ValueError, "stride", stride=0),
    _pool_bad("negative padding", ValueError, "padding", padding=-1),
    _pool_bad("padding above half the kernel", ValueError, "padding", padding=2),
    _pool_bad("a kernel larger than the padded input", ValueError, "kernel_size", x=(1, 1, 2, 2)),
    _pool_bad("a 2-d x", ValueError, r"\bx\b", x=(5, 5)),
    _pool_bad("a float kernel_size", TypeError, "kernel_size", kernel_size=2.0),
)

register(Spec(
    name="max_pool2d", family=FAMILY,
    summary="2-d max pooling; gradient to the first maximum in scan order; return_indices",
    forward=P.max_pool2d, backward=P.max_pool2d_backward, grad_inputs=("x",),
    torch=F.max_pool2d,
    cases=lambda dtype: _pool_cases(dtype, "max"),
    # The small size (the battery's) returns the indices too, so the battery sees that path.
    sizes={"small": _pool_size((4, 16, 16, 16), kernel_size=3, stride=2, padding=1,
                               return_indices=True),
           "medium": _pool_size((8, 32, 64, 64), kernel_size=3, stride=2, padding=1),
           "large": _pool_size((16, 64, 64, 64), kernel_size=3, stride=2, padding=1)},
    cost=_pool_cost(P.max_pool2d),
    smooth=_distinct,
    invariants=(Invariant("outputs are input values", _max_is_an_input),
                Invariant("indices point at the maxima", _indices_point_at_maxima)),
    invalid=POOL_INVALID + (
        _pool_bad("dilation 0", ValueError, "dilation", dilation=0),
        _pool_bad("return_indices not a bool", TypeError, "return_indices",
                  return_indices="yes"),
    ),
))

register(Spec(
    name="avg_pool2d", family=FAMILY,
    summary="2-d average pooling; count_include_pad, ceil_mode, divisor_override",
    forward=P.avg_pool2d, backward=P.avg_pool2d_backward, grad_inputs=("x",),
    torch=F.avg_pool2d,
    cases=lambda dtype: _pool_cases(dtype, "avg"),
    sizes={k: _pool_size(shape, kernel_size=3, stride=2, padding=1, ceil_mode=False,
                         count_include_pad=True, divisor_override=None)
           for k, shape in (("small", (4, 16, 16, 16)), ("medium", (8, 32, 64, 64)),
                            ("large", (16, 64, 64, 64)))},
    cost=_pool_cost(P.avg_pool2d),
    invariants=(Invariant("averages lie within [min, max]", _avg_within_range),),
    invalid=POOL_INVALID + (
        _pool_bad("divisor_override 0", ValueError, "divisor_override", divisor_override=0),
        _pool_bad("count_include_pad not a bool", TypeError, "count_include_pad",
                  count_include_pad="yes"),
    ),
))
