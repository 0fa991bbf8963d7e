"""What every loss shares: the reduction, the upstream gradient of a reduced loss, class
weights, and the ctx's private copies (see ``reference.losses`` for the conventions)."""

from __future__ import annotations

import math

import numpy as np

from reference import _validate as v

REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------
# shared plumbing: reductions, upstream gradients, optional weights


def _reduction(reduction, count: int) -> str:
    """Validate ``reduction``; 'mean' over zero elements is refused (0/0)."""
    r = v.choice(reduction, "reduction", REDUCTIONS)
    if r == "mean" and count == 0:
        raise ValueError("reduction='mean' of an empty batch is 0/0; the input (and target) "
                         "must have at least one element, or use reduction='sum'")
    return r


def _div(a: float, b: float) -> float:
    """IEEE ``a / b`` on Python floats (0/0 = NaN, x/0 = +-inf), as torch's division gives."""
    if b != 0.0:
        return a / b
    return math.nan if a == 0.0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _reduced(total: float, count: float, reduction: str, dtype) -> np.ndarray:
    value = _div(total, count) if reduction == "mean" else total
    return np.asarray(value, dtype=dtype)


def _upstream(grad_out, reduction: str, out: np.ndarray, count: float):
    """The upstream gradient as ``(g, c, each)``: a kernel's element i gets ``g[i] * c`` when
    ``each`` (reduction 'none': ``g`` is ``grad_out`` flat, ``c = 1``), else ``c`` alone
    (``grad_out / count`` for 'mean', ``grad_out`` for 'sum')."""
    g = v.grad_like(grad_out, "grad_out", out)
    if reduction == "none":
        return g.reshape(-1), 1.0, True
    c = float(g)
    if reduction == "mean":
        c = _div(c, count)
    return g.reshape(-1), c, False


# What a class-loss kernel gets for an absent weight (its flag says to ignore it): one shared,
# read by no one, so a call does not pay for an allocation.
_PLACEHOLDER = {np.dtype(np.float32): np.ones(1, np.float32),
                np.dtype(np.float64): np.ones(1, np.float64)}




def _class_weight(weight, n_classes: int, dtype) -> tuple[np.ndarray, bool]:
    if weight is None:
        return _PLACEHOLDER[dtype], False
    w = v.float_array(weight, "weight", ndim=1, dtype=dtype)
    if w.shape[0] != n_classes:
        raise ValueError(f"weight must have one entry per class, shape ({n_classes},), "
                         f"got shape {w.shape}")
    return w, True



def _own(a, *given):
    """``a`` as the ctx may keep it: a private copy if it shares memory with a caller's array
    (see the module docstring on mutation after forward)."""
    if a is None:
        return None
    for g in given:
        if isinstance(g, np.ndarray) and np.may_share_memory(a, g):
            return a.copy()
    return a

