"""Activation functions: forward and hand-written backward.

Convention (the same in every family)::

    y, ctx = relu(x)                 # forward
    (dx,) = relu_backward(ctx, dy)   # vector-Jacobian product, one gradient per input

``x`` is a float32/float64 array of any shape; ``y`` and ``dx`` have its shape and dtype.
Elementwise math is done in float64 and rounded once to the input's dtype (exp, Phi from
reference/_vmath.py, which vectorise); float32 sigmoid and tanh run in float32 lanes (<= 1.5
ulp, vm.sigmoid_f32; <= 0.52 ulp, vm.tanh_f32) and float32 softmax rows evaluate e^(x - m) in
float32 lanes (<= 0.9 ulp) for speed. Softmax sums accumulate in float64. Kernels work on
flat views; ``ctx`` keeps what backward needs.

Contexts: each forward returns a context of its own type (``SigmoidCtx``, ``ReluCtx``, ...),
and each backward refuses any other (``None``, another activation's) with a TypeError naming
``ctx``; ``grad_out`` must have the forward output's shape and dtype.

Mutation after forward: the context keeps private copies of the arrays backward reads (the
input, or the output that is also returned to the caller), so editing either in place before
backward does not change the gradient (torch refuses such a backward through its version
counter; here it is simply unaffected). The copy is one more read and write of the array
(sigmoid and tanh write it in the forward's own loop: one more store); backward is
unchanged. relu and leaky_relu keep no copy: their backward needs only which branch each
element took, which the forward's loop stores as one byte an element. Measured (paired against
torch-cpu, float32, the copying code and this one run one after the other): relu forward at 64K
elements went from 1.96x torch's time to 0.96x, at 1M from 2.66x to 1.05x; leaky_relu at 64K
from 1.80x to 1.25x; unchanged at 64 and 16K elements.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _prims as P
from reference import _validate as v
from reference import _vmath as vm
from reference._jit import PARALLEL_MIN, kernel

__all__ = [
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward", "step", "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward", "gelu", "gelu_backward",
]


class Saved(NamedTuple):
    """What an elementwise activation keeps for backward: its input or its output."""

    x: np.ndarray | None
    y: np.ndarray | None
    param: float = 0.0
    mode: str = ""
    mask: np.ndarray | None = None  # relu, leaky_relu: the identity branch, one byte an element
    dtype: np.dtype | None = None   # relu, leaky_relu: the output's (the mask has its shape)


SigmoidCtx = v.ctx_type(Saved, "SigmoidCtx", "sigmoid")
TanhCtx = v.ctx_type(Saved, "TanhCtx", "tanh")
ReluCtx = v.ctx_type(Saved, "ReluCtx", "relu")
LeakyReluCtx = v.ctx_type(Saved, "LeakyReluCtx", "leaky_relu")
GeluCtx = v.ctx_type(Saved, "GeluCtx", "gelu")


def _flat(a: np.ndarray) -> np.ndarray:
    # a view: the arrays here are C-contiguous (ravel is 0.2 us a call, reshape(-1) 0.4)
    return a.ravel()


def _unary(x, kern, *args) -> np.ndarray:
    y = np.empty_like(x)
    kern(_flat(x), _flat(y), *args)
    return y


def _binary(saved, grad_out, kern, *args) -> np.ndarray:
    grad_out = v.grad_like(grad_out, "grad_out", saved)
    dx = np.empty_like(saved)
    kern(_flat(saved), _flat(grad_out), _flat(dx), *args)
    return dx


# ---------------------------------------------------------------------------------------------
# sigmoid


# The transcendental kernels call reference/_vmath.py, whose functions vectorise: here float32
# inputs are computed in float64 with polynomials accurate far below a float32 ulp and rounded
# once (<= 0.51 ulp measured; float32 sigmoid, tanh and softmax use float32 lanes). At
# ~0.8 ns an element they gain from the thread pool well below PARALLEL_MIN (set for copy-like
# kernels): measured here, sigmoid of 8192 floats takes 6.6 us serial and 4.9 us on two threads.
_PARALLEL_MIN_HEAVY = PARALLEL_MIN // 8


@kernel(parallel=True)
def _sigmoid_fwd(x, y, ys):
    # y and ys (the ctx's private copy) written in one pass: the copy costs a store, not a
    # second read and write of the array. float32 in float32 lanes (vm.sigmoid_fast).
    n = x.size
    if n < _PARALLEL_MIN_HEAVY:
        for i in range(n):
            s = vm.sigmoid_fast(x[i], y.dtype)
            y[i] = s
            ys[i] = s
    else:
        for i in prange(n):
            s = vm.sigmoid_fast(x[i], y.dtype)
            y[i] = s
            ys[i] = s


@kernel(parallel=True)
def _sigmoid_bwd(y, g, dx):
    n = y.size
    if n < PARALLEL_MIN:
        for i in range(n):
            s = np.float64(y[i])
            dx[i] = g[i] * (s * (1.0 - s))
    else:
        for i in prange(n):
            s = np.float64(y[i])
            dx[i] = g[i] * (s * (1.0 - s))


def sigmoid(x: np.ndarray) -> tuple[np.ndarray, Saved]:
    r"""Logistic sigmoid.

    .. math:: y = \sigma(x) = 1 / (1 + e^{-x}), \qquad dx = dy \cdot y (1 - y)

    Computed as ``e^x / (1 + e^x)`` for negative ``x`` so that ``sigmoid(-1000) = 0`` and
    ``sigmoid(1000) = 1`` without overflow. Backward needs only ``y``.
    """
    x = v.float_array(x, "x")
    y, ys = np.empty_like(x), np.empty_like(x)
    _sigmoid_fwd(_flat(x), _flat(y), _flat(ys))
    return y, SigmoidCtx(None, ys)


def sigmoid_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy * y (1 - y)`` from the saved output."""
    v.ctx_of(ctx, SigmoidCtx, "sigmoid")
    return (_binary(ctx.y, grad_out, _sigmoid_bwd),)


# ---------------------------------------------------------------------------------------------
# tanh


@kernel(parallel=True)
def _tanh_fwd(x, y, ys):
    # y and the ctx's copy ys in one pass, as sigmoid's. float32 in float32 lanes with
    # error-free pairs (vm.tanh_f32, <= 0.52 ulp, torch's 0.57): 0.6x the time of the float64
    # route rounded once (<= 0.51 ulp), which took 2.1x torch's time at 64K elements.
    n = x.size
    if n < _PARALLEL_MIN_HEAVY:
        for i in range(n):
            t = vm.tanh_fast(x[i], y.dtype)
            y[i] = t
            ys[i] = t
    else:
        for i in prange(n):
            t = vm.tanh_fast(x[i], y.dtype)
            y[i] = t
            ys[i] = t


@kernel(parallel=True)
def _tanh_bwd(y, g, dx):
    n = y.size
    if n < PARALLEL_MIN:
        for i in range(n):
            t = np.float64(y[i])
            dx[i] = g[i] * (1.0 - t * t)
    else:
        for i in prange(n):
            t = np.float64(y[i])
            dx[i] = g[i] * (1.0 - t * t)


def tanh(x: np.ndarray) -> tuple[np.ndarray, Saved]:
    r"""Hyperbolic tangent.

    .. math:: y = \tanh x, \qquad dx = dy \cdot (1 - y^2)
    """
    x = v.float_array(x, "x")
    y, ys = np.empty_like(x), np.empty_like(x)
    _tanh_fwd(_flat(x), _flat(y), _flat(ys))
    return y, TanhCtx(None, ys)


def tanh_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy * (1 - y^2)`` from the saved output."""
    v.ctx_of(ctx, TanhCtx, "tanh")
    return (_binary(ctx.y, grad_out, _tanh_bwd),)


# ---------------------------------------------------------------------------------------------
# relu and leaky relu


# relu and leaky_relu keep which branch each element took, written in the forward's own loop: one
# byte an element stored, where a private copy of x (the mutation rule above) was a second read
# and write of the whole array. At NaN the branch is torch's: relu passes dy (its backward tests
# the output, ``y <= 0``, which NaN fails), leaky_relu takes ``slope * dy`` (it tests ``x > 0``).
@kernel(parallel=True)
def _relu_fwd(x, y, mask):
    zero = x.dtype.type(0)  # a constant of x's type: the loop stays in x's precision
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = P.relu(x[i], zero)
            mask[i] = P.relu_grad(x[i]) != 0.0
    else:
        for i in prange(n):
            y[i] = P.relu(x[i], zero)
            mask[i] = P.relu_grad(x[i]) != 0.0


@kernel(parallel=True)
def _leaky_fwd(x, y, mask, slope):
    # P.leaky_relu: NaN fails ``x > 0`` and falls through to ``slope * x``: NaN propagates.
    # ``+ 0.0`` makes a zero result +0.0 (the reference's convention; torch's sign of a zero
    # result depends on its code path, see suites/correctness/test_activation_edges.py).
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = P.leaky_relu(x[i], slope)
            mask[i] = x[i] > 0
    else:
        for i in prange(n):
            y[i] = P.leaky_relu(x[i], slope)
            mask[i] = x[i] > 0


@kernel(parallel=True)
def _leaky_bwd(mask, g, dx, slope):
    # g * 1 or g * slope, as ``g * leaky_relu'(x)``: a NaN or inf of g propagates (times 0: NaN)
    n = mask.size
    if n < PARALLEL_MIN:
        for i in range(n):
            dx[i] = g[i] * (1.0 if mask[i] else slope)
    else:
        for i in prange(n):
            dx[i] = g[i] * (1.0 if mask[i] else slope)


def _masked(x, kern, *args) -> tuple[np.ndarray, np.ndarray]:
    y, mask = np.empty_like(x), np.empty(x.shape, np.bool_)
    kern(_flat(x), _flat(y), _flat(mask), *args)
    return y, mask


def _mask_grad(ctx: Saved, grad_out: np.ndarray) -> np.ndarray:
    # ctx.dtype is the dtype object: a dtype's name costs ~3 us a call in numpy, more than the loop
    grad_out = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    v.same_shape(ctx.mask, "the forward output", grad_out, "grad_out")
    dx = np.empty_like(grad_out)
    _leaky_bwd(_flat(ctx.mask), _flat(grad_out), _flat(dx), ctx.param)
    return dx


def relu(x: np.ndarray) -> tuple[np.ndarray, Saved]:
    r"""Rectified linear unit.

    .. math:: y = \max(x, 0), \qquad dx = dy \cdot [x > 0]

    At the kink ``relu'(0) = 0`` (PyTorch's convention). NaN propagates; at a NaN input the
    gradient is ``dy``, as torch's (its backward passes dy where the output is not ``<= 0``).
    """
    x = v.float_array(x, "x")
    y, mask = _masked(x, _relu_fwd)
    return y, ReluCtx(None, None, 0.0, "", mask, x.dtype)


def relu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy * [x > 0]``."""
    v.ctx_of(ctx, ReluCtx, "relu")
    return (_mask_grad(ctx, grad_out),)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> tuple[np.ndarray, Saved]:
    r"""Leaky ReLU with slope ``negative_slope`` for negative inputs.

    .. math:: y = x \text{ if } x > 0 \text{ else } a x, \qquad dx = dy \text{ if } x > 0
              \text{ else } a\, dy

    At the kink the derivative is ``a`` (PyTorch's convention: ``x > 0`` selects the identity).
    """
    x = v.float_array(x, "x")
    a = v.real(negative_slope, "negative_slope")
    y, mask = _masked(x, _leaky_fwd, a)
    return y, LeakyReluCtx(None, None, a, "", mask, x.dtype)


def leaky_relu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy`` where ``x > 0``, else ``a dy``."""
    v.ctx_of(ctx, LeakyReluCtx, "leaky_relu")
    return (_mask_grad(ctx, grad_out),)


# ---------------------------------------------------------------------------------------------
# the perceptron's step function (forward only)


@kernel()
def _step_fwd(x, y, at_zero):
    for i in range(x.size):
        xi = x[i]
        if xi > 0:
            y[i] = 1.0
        elif xi < 0:
            y[i] = 0.0
        elif xi == 0:
            y[i] = at_zero
        else:
            y[i] = xi  # NaN stays NaN
    return


def step(x: np.ndarray, value_at_zero: float = 0.0) -> tuple[np.ndarray, None]:
    r"""Heaviside step, the perceptron's activation.

    .. math:: y = 1 \text{ if } x > 0;\ 0 \text{ if } x < 0;\ \text{value\_at\_zero if } x = 0

    Not differentiable: its derivative is 0 almost everywhere and undefined at 0, so there is
    no ``step_backward`` (PyTorch's ``heaviside`` has no derivative either). NaN propagates.
    Returns ``(y, None)`` to keep the forward convention.
    """
    x = v.float_array(x, "x")
    at_zero = v.real(value_at_zero, "value_at_zero")
    return _unary(x, _step_fwd, at_zero), None


# ---------------------------------------------------------------------------------------------
# softmax and log-softmax along an axis
#
# The array is viewed as (outer, n, inner) with the softmax axis in the middle, so any axis is
# handled without a transpose and the innermost loop runs over contiguous memory.


class SoftmaxCtx(NamedTuple):
    y: np.ndarray  # the forward output (softmax or log-softmax), shape of x; a private copy
    axis: int
    x_dtype: np.dtype | None = None  # the input's dtype, the gradient's (``dtype=`` may differ)


LogSoftmaxCtx = v.ctx_type(SoftmaxCtx, "LogSoftmaxCtx", "log_softmax")


def _three_d(x: np.ndarray, axis: int) -> tuple[int, int, int]:
    n = x.shape[axis]
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    return outer, n, inner


# A slice along the last axis is a contiguous row; otherwise the kernels take up to _COLS
# neighbouring columns of one slab at a time, so the inner loops still run over contiguous memory
# and vectorise. Work is split into equal chunks of slices (_CHUNKS, spread over the threads),
# each with its scratch allocated once, not per slice. Below _PARALLEL_MIN_HEAVY the Python
# wrapper calls the serial chunk kernel itself: no thread pool, and the parallel kernel is
# compiled only when an input that large first arrives (it costs seconds of compile time).
#
# Modes: 0 softmax, 1 log-softmax (a = x, out = y); 2, 3 their backward (a = y, b = g, out = dx).

_COLS = 256


@kernel()
def _row_max(x):
    # NaN is skipped here and propagates through e^(x - m) instead.
    m = x[0]
    for j in range(x.size):
        m = vm.maxnum(m, x[j])
    return m


# float32 rows run their exp in float32 lanes, twice the width of float64 (softmax is where
# speed is compared first): e^(x - m) 2^64 from vm.exp_f32_scaled, summed in float64; the 2^64
# cancels in the ratio and keeps every term down to e^-130 a normal float32. For short rows the
# exp runs as ONE flat loop over the chunk (x - m is stored first), so that 64 x 10 does not pay
# a scalar loop tail per row. float64 rows compute e^(x - m) with vm.exp (~1 ulp) into the float64
# scratch e, row by row.
_TWO_M64 = 2.0 ** -64
_NO_SCRATCH = np.empty(0)  # float32 rows need no scratch (read by no kernel)
_NEAR_ONE = 1.0 + 2.0 ** -10
_SHORT_ROW = 64


# Loops that start anywhere but 0 index with np.uint64: a signed index may be negative as far as
# Numba knows, and its wraparound select (i < 0: i + n) stops LLVM from vectorising.


@kernel()
def _exp_scaled_to(a, out, lo, hi):
    # out[lo:hi] = e^a 2^64 for flat arrays (a <= 0 or NaN).
    for i in range(lo, hi):
        k = np.uint64(i)
        out[k] = vm.exp_f32_scaled(a[k])


@kernel()
def _exp_scaled_inplace(a, lo, hi):
    # The same in place (one array, so no runtime overlap check sends LLVM to the scalar loop).
    for i in range(lo, hi):
        k = np.uint64(i)
        a[k] = vm.exp_f32_scaled(a[k])


@kernel()
def _flat_exp_scaled(a, out, lo, hi):
    # Rows lo:hi of out = e^a 2^64, as one loop over their flat span (a may be out).
    n = a.shape[1]
    if a.ctypes.data == out.ctypes.data:
        _exp_scaled_inplace(out.reshape(out.size), lo * n, hi * n)
    else:
        _exp_scaled_to(a.reshape(a.size), out.reshape(out.size), lo * n, hi * n)


@kernel(reduce=True)
def _sum_below(a, top):
    # (sum of the a_j < top, number of a_j >= top) in float64; NaN goes into the sum.
    s = 0.0
    c = 0.0
    for j in range(a.size):
        v = np.float64(a[j])
        s += 0.0 if v >= top else v
        c += 1.0 if v >= top else 0.0
    return s, c


@kernel()
def _log1p_delta(e, top, scale):
    # log sum_j e^(x_j - m) from e_j = e^(x_j - m) * top (top = 2^64 or 1), for sums below
    # 1 + 2^-10. When one logit dominates, the sum is 1 + delta with delta below float64's eps,
    # log(sum) = 0, while y_max = -log1p(delta) = -delta is representable. So delta is summed
    # again without the maxima (the terms equal to top; a term that rounds to it is 1 - O(eps)
    # anyway): delta = (sum of the others) + (number of maxima - 1), exact to float64.
    rest, ties = _sum_below(e, top)
    return math.log1p(rest * scale + (ties - 1.0))


@kernel()
def _lse(e, top, scale):
    total = vm.fsum(e) * scale
    return _log1p_delta(e, top, scale) if total < _NEAR_ONE else math.log(total)


# The float32 row kernels index the 2-d arrays as a[r, j] and pass (array, row) to helpers:
# a row view a[r] costs a reference-count increment and decrement (atomic) per row and per
# call, which at 1024 x 64 was a third of the time.


@kernel()
def _max_of_row(a, r):
    # NaN is skipped here and propagates through e^(x - m) instead.
    m = a[r, 0]
    for j in range(a.shape[1]):
        m = vm.maxnum(m, a[r, j])
    return m


@kernel(reduce=True)
def _sum_of_row(a, r):
    s = 0.0
    for j in range(a.shape[1]):
        s += np.float64(a[r, j])
    return s


@kernel(reduce=True)
def _dot_of_rows(a, b, r):
    s = 0.0
    for j in range(a.shape[1]):
        s += np.float64(a[r, j]) * np.float64(b[r, j])
    return s


@kernel()
def _finish_row_single(x, y, r, m, total, log):
    # y[r] holds e^(x - m) 2^64 and total its sum: softmax y / total, or log-softmax
    # y = (x - m) - lse in float32: |y| = |x - m| + lse, so each of the three roundings (x - m,
    # lse, the difference) is at most half an ulp of y, <= 1.5 ulp in all.
    n = x.shape[1]
    if not log:
        inv = np.float32(1.0 / total)
        for j in range(n):
            y[r, j] *= inv
        return
    t = total * _TWO_M64
    lse = np.float32(_log1p_delta(y[r], 2.0 ** 64, _TWO_M64) if t < _NEAR_ONE else math.log(t))
    for j in range(n):
        y[r, j] = (x[r, j] - m) - lse


@kernel()
def _rows_single(a, b, out, lo, hi, e, mode):
    # float32 rows lo:hi (e unused: the float64 variant's scratch). The sums are separate
    # reduce=True loops: Numba would apply reassoc to the inlined exp too, and a float64
    # accumulator in the exp loop would make LLVM run it 4 lanes wide instead of 8.
    n = a.shape[1]
    if mode < 2 and n >= _SHORT_ROW:
        # Long rows, each start to end: max, e^(x - m) 2^64, sum, finish.
        for r in range(lo, hi):
            m = _max_of_row(a, r)
            for j in range(n):
                out[r, j] = vm.exp_f32_scaled(a[r, j] - m)
            _finish_row_single(a, out, r, m, _sum_of_row(out, r), mode == 1)
    elif mode < 2:
        # Short rows: x - m for all of them, then ONE flat exp loop (no scalar loop tail per
        # row: 64 x 10 would spend most of its time there), then each row's sum and finish.
        m = np.empty(hi - lo, a.dtype)
        for r in range(lo, hi):
            mr = _max_of_row(a, r)
            m[r - lo] = mr
            for j in range(n):
                out[r, j] = a[r, j] - mr
        _flat_exp_scaled(out, out, lo, hi)
        for r in range(lo, hi):
            _finish_row_single(a, out, r, m[r - lo], _sum_of_row(out, r), mode == 1)
    elif mode == 2:
        # dx = y (g - sum_j g_j y_j)
        for r in range(lo, hi):
            dot = _dot_of_rows(a, b, r)
            for j in range(n):
                out[r, j] = np.float64(a[r, j]) * (np.float64(b[r, j]) - dot)
    else:
        # dx = g - e^y sum(g), y <= 0: e^y 2^64 first, into dx.
        _flat_exp_scaled(a, out, lo, hi)
        for r in range(lo, hi):
            c = _sum_of_row(b, r) * _TWO_M64
            for j in range(n):
                out[r, j] = np.float64(b[r, j]) - np.float64(out[r, j]) * c


@kernel()
def _softmax_row(x, y, e):
    m = np.float64(_row_max(x))
    for j in range(x.size):
        e[j] = vm.exp(x[j] - m, y.dtype)
    inv = 1.0 / vm.fsum(e)
    for j in range(x.size):
        y[j] = e[j] * inv


@kernel()
def _log_softmax_row(x, y, e):
    m = np.float64(_row_max(x))
    for j in range(x.size):
        e[j] = vm.exp(x[j] - m, y.dtype)
    lse = _lse(e, 1.0, 1.0)
    for j in range(x.size):
        y[j] = (np.float64(x[j]) - m) - lse


@kernel()
def _softmax_bwd_row(y, g, dx):
    dot = vm.fdot(g, y)
    for j in range(y.size):
        dx[j] = np.float64(y[j]) * (np.float64(g[j]) - dot)


@kernel()
def _log_softmax_bwd_row(y, g, dx):
    sg = vm.fsum(g)
    for j in range(y.size):
        dx[j] = g[j] - vm.exp(y[j], dx.dtype) * sg


@kernel()
def _rows_double(a, b, out, lo, hi, e, mode):
    # float64 rows lo:hi, one at a time; e: float64 scratch of a row's length.
    for r in range(lo, hi):
        if mode == 0:
            _softmax_row(a[r], out[r], e)
        elif mode == 1:
            _log_softmax_row(a[r], out[r], e)
        elif mode == 2:
            _softmax_bwd_row(a[r], b[r], out[r])
        else:
            _log_softmax_bwd_row(a[r], b[r], out[r])


# One parallel driver per dtype (a dtype test inside one kernel would compile both paths for
# each dtype): k chunks of rows, each with its own scratch, spread by Numba over its threads.


@kernel(parallel=True)
def _rows_parallel_single(a, b, out, mode, k):
    rows = a.shape[0]
    unused = np.empty(0)
    for c in prange(k):
        _rows_single(a, b, out, c * rows // k, (c + 1) * rows // k, unused, mode)


@kernel(parallel=True)
def _rows_parallel_double(a, b, out, mode, k):
    rows, n = a.shape
    e = np.empty((k, n))
    for c in prange(k):
        _rows_double(a, b, out, c * rows // k, (c + 1) * rows // k, e[c], mode)


@kernel()
def _softmax_cols(x, y, i0, i1, sc, log):
    # One slab x, y: (n, inner); columns i0:i1 (column c = i0 + i, unsigned, see above).
    # sc: float64 scratch (3, >= i1 - i0). The exp runs in float64 (vm.exp) here.
    n, w = x.shape[0], i1 - i0
    m, s, ties = sc[0], sc[1], sc[2]
    for i in range(w):
        m[i] = np.float64(x[0, np.uint64(i0 + i)])
        s[i] = 0.0
        ties[i] = -1.0
    for j in range(1, n):
        for i in range(w):
            m[i] = vm.maxnum(m[i], np.float64(x[j, np.uint64(i0 + i)]))
    if log:
        # As in _lse, without the shortcut: delta = (sum of the non-maximal terms) + ties - 1.
        for j in range(n):
            for i in range(w):
                d = np.float64(x[j, np.uint64(i0 + i)]) - m[i]
                s[i] += 0.0 if d == 0.0 else vm.exp(d, y.dtype)
                ties[i] += 1.0 if d == 0.0 else 0.0
        for i in range(w):
            s[i] = math.log1p(s[i] + ties[i])
        for j in range(n):
            for i in range(w):
                c = np.uint64(i0 + i)
                y[j, c] = (np.float64(x[j, c]) - m[i]) - s[i]
    else:
        for j in range(n):
            for i in range(w):
                s[i] += vm.exp(np.float64(x[j, np.uint64(i0 + i)]) - m[i], y.dtype)
        for i in range(w):
            s[i] = 1.0 / s[i]
        for j in range(n):  # e^(x - m) again: no room to keep n x w of them
            for i in range(w):
                c = np.uint64(i0 + i)
                y[j, c] = vm.exp(np.float64(x[j, c]) - m[i], y.dtype) * s[i]


@kernel()
def _softmax_bwd_cols(y, g, dx, i0, i1, sc, log):
    n, w = y.shape[0], i1 - i0
    s = sc[0]
    for i in range(w):
        s[i] = 0.0
    if log:
        for j in range(n):
            for i in range(w):
                s[i] += np.float64(g[j, np.uint64(i0 + i)])
        for j in range(n):
            for i in range(w):
                c = np.uint64(i0 + i)
                dx[j, c] = np.float64(g[j, c]) - vm.exp(y[j, c], dx.dtype) * s[i]
    else:
        for j in range(n):
            for i in range(w):
                c = np.uint64(i0 + i)
                s[i] += np.float64(g[j, c]) * np.float64(y[j, c])
        for j in range(n):
            for i in range(w):
                c = np.uint64(i0 + i)
                dx[j, c] = np.float64(y[j, c]) * (np.float64(g[j, c]) - s[i])


@kernel()
def _cols_chunk(a, b, out, lo, hi, sc, mode):
    inner = a.shape[2]
    nb = (inner + _COLS - 1) // _COLS
    for item in range(lo, hi):
        o = item // nb
        i0 = (item % nb) * _COLS
        i1 = min(i0 + _COLS, inner)
        if mode < 2:
            _softmax_cols(a[o], out[o], i0, i1, sc, mode == 1)
        else:
            _softmax_bwd_cols(a[o], b[o], out[o], i0, i1, sc, mode == 3)


@kernel(parallel=True)
def _cols_parallel(a, b, out, mode, k):
    # a, b, out: (outer, n, inner) with inner > 1; k chunks of (slab, column block) items.
    items = a.shape[0] * ((a.shape[2] + _COLS - 1) // _COLS)
    w = min(a.shape[2], _COLS)
    for c in prange(k):
        _cols_chunk(a, b, out, c * items // k, (c + 1) * items // k, np.empty((3, w)), mode)


# Chunks per parallel call: enough to spread over the thread counts this runs with (static
# schedule: 16 chunks on 2 threads are 8 each), without asking for the thread count, which
# costs 1.2 us a call (and inside a kernel would defeat the on-disk cache).
_CHUNKS = 16


def _run_softmax(a, b, out, axis, mode):
    # Python overhead matters at 64 x 10 (torch takes ~8 us there): no reshape when the input is
    # already 2-d, scratch only where a kernel reads it.
    if axis == a.ndim - 1:
        n = a.shape[-1]
        items = a.size // n
        if a.ndim != 2:
            a, b, out = a.reshape(items, n), b.reshape(items, n), out.reshape(items, n)
        if a.dtype == np.float32:
            chunk, par, scratch = _rows_single, _rows_parallel_single, _NO_SCRATCH
        else:
            chunk, par, scratch = _rows_double, _rows_parallel_double, np.empty(n)
    else:
        outer, n, inner = _three_d(a, axis)
        a, b, out = (t.reshape(outer, n, inner) for t in (a, b, out))
        items, chunk, par = outer * -(-inner // _COLS), _cols_chunk, _cols_parallel
        scratch = np.empty((3, min(inner, _COLS)))
    if a.size < _PARALLEL_MIN_HEAVY or items == 1:
        chunk(a, b, out, 0, items, scratch, mode)
    else:
        par(a, b, out, mode, min(items, _CHUNKS))


def _compute_dtype(dtype, x_dtype: np.dtype) -> np.dtype:
    """``dtype=`` of softmax / log-softmax: None (x's own), or float32 / float64 as a numpy
    dtype, a type or its name."""
    if dtype is None:
        return x_dtype
    bad = isinstance(dtype, (bool, int, float, np.bool_, np.number))
    try:
        dt = None if bad else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt not in v.FLOAT_DTYPES:  # (np.dtype == None is float64's test)
        got = repr(dtype) if dt is None else str(dt)
        raise TypeError(f"dtype must be None, float32 or float64 (a numpy dtype, type or name), "
                        f"got {got}")
    return dt


def _softmax(x, axis, dtype, log: bool):
    x = v.float_array(x, "x")
    dt = _compute_dtype(dtype, x.dtype)
    if x.ndim == 0:  # one value along the only axis there is, as torch: axis -1 or 0
        ax = v.integer(axis, "axis")
        if ax not in (-1, 0):
            raise ValueError(f"axis must be -1 or 0 for a 0-d x, got {ax}")
        ax = 0
    else:
        ax = v.axis(axis, "axis", x.ndim)
    a = x.astype(dt) if dt != x.dtype else x
    a = a.reshape(1) if a.ndim == 0 else a
    y = np.empty_like(a)
    if a.size:
        _run_softmax(a, a, y, ax, 1 if log else 0)
    y = y.reshape(x.shape)
    return y, (LogSoftmaxCtx if log else SoftmaxCtx)(y.copy(), ax, x.dtype)


def _softmax_backward(ctx: SoftmaxCtx, grad_out, log: bool):
    if log:
        v.ctx_of(ctx, LogSoftmaxCtx, "log_softmax")
    else:
        v.ctx_of(ctx, SoftmaxCtx, "softmax")
    g = v.grad_like(grad_out, "grad_out", ctx.y)
    y = ctx.y.reshape(1) if ctx.y.ndim == 0 else ctx.y
    dx = np.empty_like(y)
    if dx.size:
        _run_softmax(y, g.reshape(y.shape), dx, ctx.axis, 3 if log else 2)
    dx = dx.reshape(ctx.y.shape)
    return (dx.astype(ctx.x_dtype) if dx.dtype != ctx.x_dtype else dx,)


_DTYPE_DOC = """
    ``dtype`` (None, float32 or float64), as PyTorch's: x is cast to it first, the output has
    it, and the gradient comes back in x's dtype (the cast's backward). ``dtype=np.float64``
    on float32 logits computes in float64 throughout. A 0-d x is one value along axis -1 or 0,
    as in PyTorch: softmax 1 and log-softmax 0 (NaN for a non-finite value), gradient 0.
"""


def softmax(x: np.ndarray, axis: int = -1, dtype=None) -> tuple[np.ndarray, SoftmaxCtx]:
    r"""Softmax along ``axis``.

    .. math:: y_i = e^{x_i - m} / \sum_j e^{x_j - m},\ m = \max_j x_j, \qquad
              dx_i = y_i (dy_i - \sum_j dy_j y_j)

    Shifting by the max keeps logits of magnitude 1e4 finite. A slice that is all ``-inf``
    gives NaN, as in PyTorch. Sums accumulate in float64.
    """
    return _softmax(x, axis, dtype, False)


def softmax_backward(ctx: SoftmaxCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx_i = y_i (dy_i - sum_j dy_j y_j)`` along the forward's axis, in x's dtype."""
    return _softmax_backward(ctx, grad_out, False)


def log_softmax(x: np.ndarray, axis: int = -1, dtype=None) -> tuple[np.ndarray, SoftmaxCtx]:
    r"""Log-softmax along ``axis``.

    .. math:: y_i = x_i - m - \log \sum_j e^{x_j - m}, \qquad
              dx_i = dy_i - e^{y_i} \sum_j dy_j
    """
    return _softmax(x, axis, dtype, True)


def log_softmax_backward(ctx: SoftmaxCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx_i = dy_i - e^{y_i} sum_j dy_j`` along the forward's axis, in x's dtype."""
    return _softmax_backward(ctx, grad_out, True)


softmax.__doc__ += _DTYPE_DOC
log_softmax.__doc__ += _DTYPE_DOC


# ---------------------------------------------------------------------------------------------
# GELU, exact (erf) and tanh approximation

# The element functions are reference._prims's, shared with the encoder layer's fused
# feed-forward kernels (so the two GELUs are one).


@kernel(parallel=True)
def _gelu_fwd(x, y, xs, approx):
    # xs: the ctx's private copy of x, stored in the same loop
    n = x.size
    if approx:
        if n < _PARALLEL_MIN_HEAVY:
            for i in range(n):
                xs[i] = x[i]
                y[i] = P.gelu_tanh(np.float64(x[i]), y.dtype)
        else:
            for i in prange(n):
                xs[i] = x[i]
                y[i] = P.gelu_tanh(np.float64(x[i]), y.dtype)
    elif n < _PARALLEL_MIN_HEAVY:
        for i in range(n):
            xs[i] = x[i]
            y[i] = P.gelu_erf(np.float64(x[i]), y.dtype)
    else:
        for i in prange(n):
            xs[i] = x[i]
            y[i] = P.gelu_erf(np.float64(x[i]), y.dtype)


@kernel(parallel=True)
def _gelu_bwd(x, g, dx, approx):
    n = x.size
    if approx:
        if n < _PARALLEL_MIN_HEAVY:
            for i in range(n):
                dx[i] = g[i] * P.gelu_tanh_grad(np.float64(x[i]), dx.dtype)
        else:
            for i in prange(n):
                dx[i] = g[i] * P.gelu_tanh_grad(np.float64(x[i]), dx.dtype)
    elif n < _PARALLEL_MIN_HEAVY:
        for i in range(n):
            dx[i] = g[i] * P.gelu_erf_grad(np.float64(x[i]), dx.dtype)
    else:
        for i in prange(n):
            dx[i] = g[i] * P.gelu_erf_grad(np.float64(x[i]), dx.dtype)


def gelu(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, Saved]:
    r"""Gaussian error linear unit, exact or with PyTorch's tanh approximation.

    .. math::
        \text{none:}\ y = x \Phi(x) = \tfrac{x}{2}(1 + \operatorname{erf}(x/\sqrt2)),\quad
        dx = dy\,(\Phi(x) + x \varphi(x))

        \text{tanh:}\ y = \tfrac{x}{2}(1 + \tanh u),\ u = \sqrt{2/\pi}(x + 0.044715 x^3),\quad
        dx = dy\,(\tfrac12(1 + \tanh u) + \tfrac{x}{2}(1 - \tanh^2 u)\sqrt{2/\pi}(1 + 3 \cdot
        0.044715 x^2))
    """
    xc = v.float_array(x, "x")
    mode = v.choice(approximate, "approximate", ("none", "tanh"))
    y, xs = np.empty_like(xc), np.empty_like(xc)
    _gelu_fwd(_flat(xc), _flat(y), _flat(xs), mode == "tanh")
    return y, GeluCtx(xs, None, 0.0, mode)


def gelu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``dx = dy * GELU'(x)`` (the formulas in ``gelu``'s docstring)."""
    v.ctx_of(ctx, GeluCtx, "gelu")
    return (_binary(ctx.x, grad_out, _gelu_bwd, ctx.mode == "tanh"),)
