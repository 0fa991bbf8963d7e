"""Activation functions: forward and hand-written backward.

Convention (the same in every family)::

    y, ctx = relu(x)                 # forward
    (dx,) = relu_backward(ctx, dy)   # vector-Jacobian product, one gradient per input

``x`` is a float32/float64 array of any shape; ``y`` and ``dx`` have its shape and dtype.
Elementwise math is done in float64 and rounded once to the input's dtype; softmax sums
accumulate in float64. Kernels work on flat views; ``ctx`` keeps what backward needs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference._jit import PARALLEL_MIN, inline, kernel

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


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


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


@inline()
def _sigmoid1(x):
    # Stable on both sides: exp of a non-positive number never overflows.
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@kernel(parallel=True)
def _sigmoid_fwd(x, y):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = _sigmoid1(np.float64(x[i]))
    else:
        for i in prange(n):
            y[i] = _sigmoid1(np.float64(x[i]))


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
    y = _unary(x, _sigmoid_fwd)
    return y, Saved(None, y)


def sigmoid_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return (_binary(ctx.y, grad_out, _sigmoid_bwd),)


# ---------------------------------------------------------------------------------------------
# tanh


@kernel(parallel=True)
def _tanh_fwd(x, y):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = math.tanh(np.float64(x[i]))
    else:
        for i in prange(n):
            y[i] = math.tanh(np.float64(x[i]))


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
    y = _unary(x, _tanh_fwd)
    return y, Saved(None, y)


def tanh_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return (_binary(ctx.y, grad_out, _tanh_bwd),)


# ---------------------------------------------------------------------------------------------
# relu and leaky relu


@kernel(parallel=True)
def _leaky_fwd(x, y, slope):
    # NaN fails ``x > 0`` and falls through to ``slope * x``: NaN propagates. ``+ 0.0`` turns
    # the -0.0 of ``-1 * 0`` into +0.0, as torch.relu returns.
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = x[i] if x[i] > 0 else x[i] * slope + 0.0
    else:
        for i in prange(n):
            y[i] = x[i] if x[i] > 0 else x[i] * slope + 0.0


@kernel(parallel=True)
def _leaky_bwd(x, g, dx, slope):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            dx[i] = g[i] if x[i] > 0 else g[i] * slope
    else:
        for i in prange(n):
            dx[i] = g[i] if x[i] > 0 else g[i] * slope


def relu(x: np.ndarray) -> tuple[np.ndarray, Saved]:
    r"""Rectified linear unit.

    .. math:: y = \max(x, 0), \qquad dx = dy \cdot [x > 0]

    At the kink ``relu'(0) = 0`` (PyTorch's convention). NaN propagates.
    """
    x = v.float_array(x, "x")
    y = _unary(x, _leaky_fwd, 0.0)
    return y, Saved(x, None, 0.0)


def relu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return (_binary(ctx.x, grad_out, _leaky_bwd, 0.0),)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> tuple[np.ndarray, Saved]:
    r"""Leaky ReLU with slope ``negative_slope`` for negative inputs.

    .. math:: y = x \text{ if } x > 0 \text{ else } a x, \qquad dx = dy \text{ if } x > 0
              \text{ else } a\, dy

    At the kink the derivative is ``a`` (PyTorch's convention: ``x > 0`` selects the identity).
    """
    x = v.float_array(x, "x")
    a = v.real(negative_slope, "negative_slope")
    y = _unary(x, _leaky_fwd, a)
    return y, Saved(x, None, a)


def leaky_relu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return (_binary(ctx.x, grad_out, _leaky_bwd, ctx.param),)


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
    y: np.ndarray  # the forward output (softmax or log-softmax), shape of x
    axis: int


def _three_d(x: np.ndarray, axis: int) -> tuple[int, int, int]:
    n = x.shape[axis]
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    return outer, n, inner


@kernel(reduce=False)
def _softmax_block(x, y, o, log):
    # x, y: (outer, n, inner); one outer slab. Max and sum per inner column.
    n, inner = x.shape[1], x.shape[2]
    m = np.full(inner, -np.inf)
    for j in range(n):
        for i in range(inner):
            xv = np.float64(x[o, j, i])
            if xv > m[i] or xv != xv:
                m[i] = xv
    s = np.zeros(inner)
    for j in range(n):
        for i in range(inner):
            e = math.exp(np.float64(x[o, j, i]) - m[i])
            s[i] += e
            if not log:
                y[o, j, i] = e
    for j in range(n):
        for i in range(inner):
            if log:
                y[o, j, i] = (np.float64(x[o, j, i]) - m[i]) - math.log(s[i])
            else:
                y[o, j, i] = math.exp(np.float64(x[o, j, i]) - m[i]) / s[i]


@kernel(parallel=True)
def _softmax_fwd(x, y, log):
    outer = x.shape[0]
    if x.size < PARALLEL_MIN:
        for o in range(outer):
            _softmax_block(x, y, o, log)
    else:
        for o in prange(outer):
            _softmax_block(x, y, o, log)


@kernel()
def _softmax_bwd_block(y, g, dx, o, log):
    # softmax:     dx = y * (g - sum_j g_j y_j)
    # log-softmax: dx = g - exp(y) * sum_j g_j
    n, inner = y.shape[1], y.shape[2]
    s = np.zeros(inner)
    for j in range(n):
        for i in range(inner):
            if log:
                s[i] += np.float64(g[o, j, i])
            else:
                s[i] += np.float64(g[o, j, i]) * np.float64(y[o, j, i])
    for j in range(n):
        for i in range(inner):
            yv = np.float64(y[o, j, i])
            if log:
                dx[o, j, i] = np.float64(g[o, j, i]) - math.exp(yv) * s[i]
            else:
                dx[o, j, i] = yv * (np.float64(g[o, j, i]) - s[i])


@kernel(parallel=True)
def _softmax_bwd(y, g, dx, log):
    outer = y.shape[0]
    if y.size < PARALLEL_MIN:
        for o in range(outer):
            _softmax_bwd_block(y, g, dx, o, log)
    else:
        for o in prange(outer):
            _softmax_bwd_block(y, g, dx, o, log)


def _softmax(x, axis, log: bool):
    x = v.float_array(x, "x", min_ndim=1)
    ax = v.axis(axis, "axis", x.ndim)
    shape3 = _three_d(x, ax)
    y = np.empty_like(x)
    if x.size:
        _softmax_fwd(x.reshape(shape3), y.reshape(shape3), log)
    return y, SoftmaxCtx(y, ax)


def _softmax_backward(ctx: SoftmaxCtx, grad_out, log: bool):
    g = v.grad_like(grad_out, "grad_out", ctx.y)
    dx = np.empty_like(ctx.y)
    if dx.size:
        shape3 = _three_d(ctx.y, ctx.axis)
        _softmax_bwd(ctx.y.reshape(shape3), g.reshape(shape3), dx.reshape(shape3), log)
    return (dx,)


def softmax(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, SoftmaxCtx]:
    r"""Softmax along ``axis``.

    .. math:: y_i = e^{x_i - m} / \sum_j e^{x_j - m},\ m = \max_j x_j, \qquad
              dx_i = y_i (dy_i - \sum_j dy_j y_j)

    Shifting by the max keeps logits of magnitude 1e4 finite. A slice that is all ``-inf``
    gives NaN, as in PyTorch. Sums accumulate in float64.
    """
    return _softmax(x, axis, False)


def softmax_backward(ctx: SoftmaxCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return _softmax_backward(ctx, grad_out, False)


def log_softmax(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, SoftmaxCtx]:
    r"""Log-softmax along ``axis``.

    .. math:: y_i = x_i - m - \log \sum_j e^{x_j - m}, \qquad
              dx_i = dy_i - e^{y_i} \sum_j dy_j
    """
    return _softmax(x, axis, True)


def log_softmax_backward(ctx: SoftmaxCtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return _softmax_backward(ctx, grad_out, True)


# ---------------------------------------------------------------------------------------------
# GELU, exact (erf) and tanh approximation

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


@inline()
def _gelu1(x, approx):
    if approx:
        t = math.tanh(_K * (x + _C * x * x * x))
        return 0.5 * x * (1.0 + t)
    return 0.5 * x * (1.0 + math.erf(x * _SQRT_HALF))


@inline()
def _gelu_grad1(x, approx):
    if approx:
        u = _K * (x + _C * x * x * x)
        t = math.tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K * (1.0 + 3.0 * _C * x * x)
    cdf = 0.5 * (1.0 + math.erf(x * _SQRT_HALF))
    return cdf + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)


@kernel(parallel=True)
def _gelu_fwd(x, y, approx):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            y[i] = _gelu1(np.float64(x[i]), approx)
    else:
        for i in prange(n):
            y[i] = _gelu1(np.float64(x[i]), approx)


@kernel(parallel=True)
def _gelu_bwd(x, g, dx, approx):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            dx[i] = g[i] * _gelu_grad1(np.float64(x[i]), approx)
    else:
        for i in prange(n):
            dx[i] = g[i] * _gelu_grad1(np.float64(x[i]), approx)


def gelu(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, Saved]:
    r"""Gaussian error linear unit, exact or with PyTorch's tanh approximation.

    .. math::
        \text{none:}\ y = x \Phi(x) = \tfrac{x}{2}(1 + \operatorname{erf}(x/\sqrt2)),\quad
        dx = dy\,(\Phi(x) + x \varphi(x))

        \text{tanh:}\ y = \tfrac{x}{2}(1 + \tanh u),\ u = \sqrt{2/\pi}(x + 0.044715 x^3),\quad
        dx = dy\,(\tfrac12(1 + \tanh u) + \tfrac{x}{2}(1 - \tanh^2 u)\sqrt{2/\pi}(1 + 3 \cdot
        0.044715 x^2))
    """
    x = v.float_array(x, "x")
    mode = v.choice(approximate, "approximate", ("none", "tanh"))
    y = _unary(x, _gelu_fwd, mode == "tanh")
    return y, Saved(x, None, 0.0, mode)


def gelu_backward(ctx: Saved, grad_out: np.ndarray) -> tuple[np.ndarray]:
    return (_binary(ctx.x, grad_out, _gelu_bwd, ctx.mode == "tanh"),)
