r"""Elementwise activations on the GPU: sigmoid, tanh, relu, leaky relu, GELU (exact, tanh).

Same contract as ``reference.activations`` (``y, ctx = f(x)``; ``(dx,) = f_backward(ctx, dy)``)
on device arrays of any shape. Each kernel is one grid-stride loop over the flat array: one
read and one write per element (two reads for backward). The math runs in float64 (CUDA's
libdevice ``exp``, ``tanh``, ``erfc``) and is rounded once to the input's dtype, as the CPU
references do; memory traffic, not the float64 arithmetic, bounds these kernels on a data
centre GPU. Formulas, conventions at kinks and NaN behaviour are those of
``reference.activations`` (each docstring repeats its formula).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import cuda

from reference import _validate as v
from reference.cuda import _launch as L

__all__ = [
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward", "gelu", "gelu_backward",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


class Saved(NamedTuple):
    """What an activation keeps for backward: its input or its output (device arrays)."""

    x: object
    y: object
    param: float = 0.0
    mode: str = ""


# ---------------------------------------------------------------------------------------------
# scalar math (float64 in, float64 out); written so that no step overflows: e = e^{-|u|} <= 1


@cuda.jit(device=True, cache=True)
def _sigmoid1(u):
    e = math.exp(-abs(u))
    return (1.0 if u >= 0.0 else e) / (1.0 + e)


@cuda.jit(device=True, cache=True)
def _gelu_erf1(x):
    return x * (0.5 * math.erfc(-x * _SQRT_HALF))


@cuda.jit(device=True, cache=True)
def _gelu_erf_grad1(x):
    return 0.5 * math.erfc(-x * _SQRT_HALF) + x * (math.exp(-0.5 * (x * x)) * _INV_SQRT_2PI)


@cuda.jit(device=True, cache=True)
def _gelu_tanh1(x):
    # (1 + tanh u) / 2 = sigmoid(2u), without the cancellation at x < 0.
    return x * _sigmoid1(2.0 * (_K * (x + _C * (x * x * x))))


@cuda.jit(device=True, cache=True)
def _gelu_tanh_grad1(x):
    # s = sigmoid(2u), 1 - s, and (1 - tanh^2 u) / 2 = 2 s (1 - s).
    x2 = x * x
    u = _K * (x + _C * (x2 * x))
    e = math.exp(-2.0 * abs(u))
    inv = 1.0 / (1.0 + e)
    s = (1.0 if u >= 0.0 else e) * inv
    sc = (e if u >= 0.0 else 1.0) * inv
    return s + 2.0 * x * (s * sc) * (_K * (1.0 + 3.0 * _C * x2))


# ---------------------------------------------------------------------------------------------
# kernels: one grid-stride loop each. op: 0 sigmoid, 1 tanh, 2 leaky relu (slope a), 3 GELU
# exact, 4 GELU tanh, 5 relu. Backward reads the saved array s (y for 0 and 1, x otherwise) and
# g. relu is not leaky relu with slope 0: 0 * -inf is NaN where relu(-inf) = 0, and its
# gradient at NaN is dy, as torch's (its backward passes dy where the output is not <= 0).


@cuda.jit(cache=True)
def _forward(x, y, op, a):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        xi = np.float64(x[i])
        if op == 0:
            y[i] = _sigmoid1(xi)
        elif op == 1:
            y[i] = math.tanh(xi)
        elif op == 2:
            # NaN fails x > 0 and propagates through a * x; + 0.0 makes -0.0 (a * -x) +0.0.
            y[i] = xi if xi > 0.0 else xi * a + 0.0
        elif op == 3:
            y[i] = _gelu_erf1(xi)
        elif op == 4:
            y[i] = _gelu_tanh1(xi)
        else:
            y[i] = 0.0 if xi <= 0.0 else xi  # NaN fails xi <= 0 and propagates


@cuda.jit(cache=True)
def _backward(s, g, dx, op, a):
    for i in range(cuda.grid(1), s.size, cuda.gridsize(1)):
        si = np.float64(s[i])
        gi = np.float64(g[i])
        if op == 0:
            dx[i] = gi * (si * (1.0 - si))
        elif op == 1:
            dx[i] = gi * (1.0 - si * si)
        elif op == 2:
            dx[i] = gi if si > 0.0 else gi * a
        elif op == 3:
            dx[i] = gi * _gelu_erf_grad1(si)
        elif op == 4:
            dx[i] = gi * _gelu_tanh_grad1(si)
        else:
            dx[i] = gi * (0.0 if si <= 0.0 else 1.0)


def _unary(x, op: int, a: float = 0.0):
    y = L.empty(x.shape, x.dtype)
    if x.size:
        n = L.threads()
        _forward[L.grid(x.size, n), n](L.flat(x), L.flat(y), op, a)
    return y


def _binary(saved, grad_out, op: int, a: float = 0.0):
    g = L.grad_like(grad_out, "grad_out", saved)
    dx = L.empty(saved.shape, saved.dtype)
    if saved.size:
        n = L.threads()
        _backward[L.grid(saved.size, n), n](L.flat(saved), L.flat(g), L.flat(dx), op, a)
    return (dx,)


def sigmoid(x):
    r"""Logistic sigmoid :math:`y = 1 / (1 + e^{-x})`, as ``(1 or e) / (1 + e)``, e = e^-|x|."""
    x = L.float_array(x, "x")
    y = _unary(x, 0)
    return y, Saved(None, y)


def sigmoid_backward(ctx: Saved, grad_out):
    r""":math:`dx = dy \cdot y (1 - y)`."""
    return _binary(ctx.y, grad_out, 0)


def tanh(x):
    r"""Hyperbolic tangent :math:`y = \tanh x`."""
    x = L.float_array(x, "x")
    y = _unary(x, 1)
    return y, Saved(None, y)


def tanh_backward(ctx: Saved, grad_out):
    r""":math:`dx = dy \cdot (1 - y^2)`."""
    return _binary(ctx.y, grad_out, 1)


def relu(x):
    r""":math:`y = \max(x, 0)`; NaN propagates."""
    x = L.float_array(x, "x")
    return _unary(x, 5), Saved(x, None, 0.0)


def relu_backward(ctx: Saved, grad_out):
    r""":math:`dx = dy \cdot [x > 0]` (``relu'(0) = 0``, PyTorch's convention); ``dy`` at NaN."""
    return _binary(ctx.x, grad_out, 5)


def leaky_relu(x, negative_slope: float = 0.01):
    r""":math:`y = x` if :math:`x > 0` else :math:`a x`, :math:`a` = ``negative_slope``."""
    x = L.float_array(x, "x")
    a = v.real(negative_slope, "negative_slope")
    return _unary(x, 2, a), Saved(x, None, a)


def leaky_relu_backward(ctx: Saved, grad_out):
    r""":math:`dx = dy` if :math:`x > 0` else :math:`a\,dy` (at 0 the slope ``a``)."""
    return _binary(ctx.x, grad_out, 2, ctx.param)


def gelu(x, approximate: str = "none"):
    r"""GELU, exact or PyTorch's tanh approximation.

    .. math::
        \text{none: } y = x \Phi(x) = \tfrac{x}{2} \operatorname{erfc}(-x / \sqrt2), \qquad
        \text{tanh: } y = x\, \sigma(2u),\ u = \sqrt{2/\pi}\,(x + 0.044715 x^3)

    (:math:`\tfrac12(1 + \tanh u) = \sigma(2u)`).
    """
    x = L.float_array(x, "x")
    mode = v.choice(approximate, "approximate", ("none", "tanh"))
    return _unary(x, 4 if mode == "tanh" else 3), Saved(x, None, 0.0, mode)


def gelu_backward(ctx: Saved, grad_out):
    r"""GELU's derivative times ``dy``.

    .. math::
        \text{none: } dx = dy\,(\Phi(x) + x \varphi(x)), \qquad
        \text{tanh: } dx = dy\,(s + 2 x\, s (1 - s) \sqrt{2/\pi}(1 + 3 \cdot 0.044715 x^2)),
        \ s = \sigma(2u)
    """
    return _binary(ctx.x, grad_out, 4 if ctx.mode == "tanh" else 3)
