"""Weight penalties added to a loss: forward and hand-written backward.

Convention (the same in every family)::

    penalty, ctx = l2_penalty(w, lam=1e-4)   # a 0-d array of w's dtype
    (dw,) = l2_penalty_backward(ctx, grad_out)

``w`` is a float32/float64 array of any shape (all of a model's weights, flattened or not);
``lam`` is the strength, a finite real >= 0. The sum accumulates in float64 and is rounded
once. Each backward refuses a context that its own forward did not return (a TypeError naming
``ctx``), and the context keeps a private copy of ``w`` (one more pass over it), so editing
``w`` in place between forward and backward does not change the gradient. Conventions: the
L2 penalty carries the factor 1/2, so its gradient is ``lam * w`` (the weight decay of SGD);
the L1 penalty has no factor.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _validate as v
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["l1_penalty", "l1_penalty_backward", "l2_penalty", "l2_penalty_backward"]


class PenaltyCtx(NamedTuple):
    """What a penalty keeps for backward: a private copy of ``w`` and the strength."""

    w: np.ndarray
    lam: float


L1Ctx = v.ctx_type(PenaltyCtx, "L1Ctx", "l1_penalty")
L2Ctx = v.ctx_type(PenaltyCtx, "L2Ctx", "l2_penalty")


@kernel(parallel=True, reduce=True)
def _penalty_fwd(w, l1):
    n = w.size
    s = 0.0
    if n < PARALLEL_MIN:
        for i in range(n):
            wi = np.float64(w[i])
            s += abs(wi) if l1 else wi * wi
    else:
        for i in prange(n):
            wi = np.float64(w[i])
            s += abs(wi) if l1 else wi * wi
    return s


@kernel(parallel=True)
def _penalty_bwd(w, c, dw, l1):
    # dw = c sign(w) (L1) or c w (L2), with c = lam * grad_out.
    n = w.size
    if n < PARALLEL_MIN:
        for i in range(n):
            wi = np.float64(w[i])
            dw[i] = c * (np.sign(wi) if l1 else wi)
    else:
        for i in prange(n):
            wi = np.float64(w[i])
            dw[i] = c * (np.sign(wi) if l1 else wi)


def _penalty(w, lam, l1: bool, factor: float):
    wc = v.float_array(w, "w")
    lam = v.real(lam, "lam", lo=0.0)
    s = _penalty_fwd(wc.reshape(-1), l1)
    ctx = (L1Ctx if l1 else L2Ctx)(v.keep(wc, w), lam)
    return np.asarray(lam * factor * s, dtype=wc.dtype), ctx


def _penalty_backward(ctx: PenaltyCtx, grad_out, l1: bool):
    if l1:
        v.ctx_of(ctx, L1Ctx, "l1_penalty")
    else:
        v.ctx_of(ctx, L2Ctx, "l2_penalty")
    g = v.grad_like(grad_out, "grad_out", np.empty((), ctx.w.dtype))
    dw = np.empty_like(ctx.w)
    _penalty_bwd(ctx.w.reshape(-1), ctx.lam * float(g), dw.reshape(-1), l1)
    return (dw,)


def l1_penalty(w: np.ndarray, lam: float = 1.0):
    r"""L1 (lasso) penalty.

    .. math:: P = \lambda \sum_i |w_i|, \qquad \partial w_i = g\, \lambda \operatorname{sign}(w_i)

    At :math:`w_i = 0` the derivative is 0 (PyTorch's ``sign(0) = 0``, the gradient of
    ``w.abs()``). Backward returns ``(d_w,)``.
    """
    return _penalty(w, lam, True, 1.0)


def l1_penalty_backward(ctx: PenaltyCtx, grad_out: np.ndarray):
    r"""VJP of :func:`l1_penalty`: :math:`\partial w_i = g\, \lambda \operatorname{sign}(w_i)`.

    ``ctx`` must be what ``l1_penalty`` returned; ``grad_out`` a 0-d array of its dtype.
    """
    return _penalty_backward(ctx, grad_out, True)


def l2_penalty(w: np.ndarray, lam: float = 1.0):
    r"""L2 (ridge, weight-decay) penalty, with the factor 1/2.

    .. math:: P = \frac{\lambda}{2} \sum_i w_i^2, \qquad \partial w_i = g\, \lambda\, w_i

    Backward returns ``(d_w,)``.
    """
    return _penalty(w, lam, False, 0.5)


def l2_penalty_backward(ctx: PenaltyCtx, grad_out: np.ndarray):
    r"""VJP of :func:`l2_penalty`: :math:`\partial w_i = g\, \lambda\, w_i`.

    ``ctx`` must be what ``l2_penalty`` returned; ``grad_out`` a 0-d array of its dtype.
    """
    return _penalty_backward(ctx, grad_out, False)
