r"""Element primitives shared by the public ops and the fused kernels of composite layers.

One definition of each element function, called by the public op's kernel
(``activations.relu``/``leaky_relu``/``gelu``, ``layers.dropout`` and its channel forms) and by
every fused kernel that needs the same math (the encoder layer's bias + activation + dropout,
the attention core's dropout of probabilities, the recurrent layers' dropout), so that a fix in
one place fixes all and a composite computes bit for bit what its public parts compute.

Scalar functions, not kernels: ordinary cached Numba functions that LLVM inlines into the
calling loop, which then vectorises (as ``reference._vmath``'s). Each takes the value as
float32 or float64 and returns float64; the caller rounds once, to its output dtype, when it
stores. ``dt`` (the output's dtype) picks the precision of the transcendental parts
(``_vmath``: single is exact to well below a float32 ulp, double about 1-2 ulp).

.. math::
    \operatorname{leaky}(x) &= x \text{ if } x > 0 \text{ else } a x + 0, \qquad
    \operatorname{leaky}'(x) = 1 \text{ if } x > 0 \text{ else } a \\
    \operatorname{gelu}(x) &= x \Phi(x), \qquad \operatorname{gelu}'(x) = \Phi(x) + x \varphi(x)
    \\
    \operatorname{gelu}_{\tanh}(x) &= \tfrac{x}{2}(1 + \tanh u) = x\,\sigma(2u),\quad
    u = \sqrt{2/\pi}(x + 0.044715 x^3) \\
    \operatorname{gelu}_{\tanh}'(x) &= \sigma(2u) + 2 x\, \sigma(2u)(1 - \sigma(2u))
    \sqrt{2/\pi}(1 + 3 \cdot 0.044715 x^2) \\
    \operatorname{drop}(x; m, s) &= x \cdot (s \text{ if } m \text{ else } 0), \quad
    s = 1 / (1 - p) \ (0 \text{ when } p = 1)

Conventions (PyTorch's): relu'(0) = 0 and leaky'(0) = a (only ``x > 0`` takes the identity).
leaky_relu's ``x > 0`` test sends NaN to the other branch, where it propagates, and its gradient
there is ``a dy``; relu's gradient is 0 only where ``x <= 0``, so it is ``dy`` at NaN (torch's
backward tests the output ``<= 0``, which NaN fails); ``+ 0`` turns leaky's ``-0.0`` into
``+0.0``; dropout multiplies by the mask, so a dropped NaN or inf stays NaN (``0 * x``), forward
and backward alike, as ``F.dropout``. The dropout backward is the same element op on the
upstream gradient.
"""

from __future__ import annotations

import math

from reference import _vmath as vm
from reference._jit import kernel

__all__ = ["relu", "relu_grad", "leaky_relu", "gelu_erf", "gelu_erf_grad", "gelu_tanh",
           "gelu_tanh_grad", "dropout"]

# Ordinary cached functions: LLVM inlines them into the calling loop (inlining at Numba's IR
# level instead recompiles the body at every call site; see reference/_vmath.py).
_scalar = kernel()

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_K = math.sqrt(2.0 / math.pi)
_C = 0.044715


@_scalar
def relu(x, zero):
    """``max(x, 0)`` as torch.relu: ``zero`` (a 0 of ``x``'s type) for ``x <= 0``, -inf
    included (``0 * x`` would make it NaN), +0.0 for -0.0; NaN fails ``x <= 0`` and propagates.
    In ``x``'s own precision, so a float32 loop vectorises 8 lanes wide."""
    return zero if x <= zero else x


@_scalar
def relu_grad(x):
    """d relu / dx as torch's backward: 0 where ``x <= 0`` (relu'(0) = 0), else 1, NaN
    included (torch passes dy where the output is not ``<= 0``, and relu(NaN) is NaN)."""
    return 0.0 if x <= 0 else 1.0


@_scalar
def leaky_relu(x, slope):
    """``x`` if ``x > 0`` else ``slope * x + 0.0`` (NaN propagates). Not relu with
    ``slope = 0``: ``0 * -inf`` is NaN where relu(-inf) is 0 (``relu`` above)."""
    return x if x > 0 else x * slope + 0.0


@_scalar
def gelu_erf(x, dt):
    """Exact GELU ``x Phi(x)``; ``x`` float64."""
    return x * vm.ndtr(x, dt)[0]


@_scalar
def gelu_erf_grad(x, dt):
    """``Phi(x) + x phi(x)``, ``phi(x) = e^{-x^2/2} / sqrt(2 pi)``; ``x`` float64."""
    cdf, gauss = vm.ndtr(x, dt)  # Phi(x), e^{-x^2/2}
    return cdf + x * (gauss * _INV_SQRT_2PI)


@_scalar
def gelu_tanh(x, dt):
    """PyTorch's tanh GELU, as ``x sigmoid(2u)``; ``x`` float64."""
    # (1 + tanh u) / 2 = sigmoid(2u): the same function without the cancellation at x < 0.
    u = _K * (x + _C * (x * x * x))
    return x * vm.sigmoid(2.0 * u, dt)


@_scalar
def gelu_tanh_grad(x, dt):
    """d gelu_tanh / dx; ``x`` float64."""
    # With s = sigmoid(2u): (1 + tanh u) / 2 = s and (1 - tanh^2 u) / 2 = 2 s (1 - s).
    x2 = x * x
    u = _K * (x + _C * (x2 * x))
    e = vm.exp(-2.0 * abs(u), dt)
    inv = 1.0 / (1.0 + e)
    s = (1.0 if u >= 0.0 else e) * inv
    sc = (e if u >= 0.0 else 1.0) * inv  # 1 - s
    return s + 2.0 * x * (s * sc) * (_K * (1.0 + 3.0 * _C * x2))


@_scalar
def dropout(x, keep, scale):
    """Inverted dropout of one element: ``x * scale`` if ``keep`` else ``x * 0`` (NaN and inf
    stay NaN, as torch's mask product). ``scale = 1 / (1 - p)``, 0 when ``p = 1``."""
    return x * (scale if keep else 0.0)
