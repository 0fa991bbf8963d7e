"""Helpers shared by the layer specs (layers, conv, norm, blocks): derived float32 tolerances
and the moves that take a case off kinks for the gradcheck. Not a spec module (leading _).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import strategies as st

from suites.catalog import strategies as S
from suites.catalog.spec import DEFAULT_TOL, FLOAT32, Case, Tol, case_dtype

U32 = 2.0 ** -24  # unit roundoff of float32
FAMILY = "layers"


def gamma(k: int, u: float = U32) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of a sum of k terms."""
    return k * u / (1.0 - k * u)


def abs64(case: Case) -> dict[str, np.ndarray]:
    """The case's inputs with every float array replaced by its absolute value, in float64."""
    return {n: (np.abs(a).astype(np.float64) if a.dtype.kind == "f" else a)
            for n, a in case.inputs.items()}


def bilinear_tol(forward, backward, length: Callable[[Case], int]):
    """``case_tol`` for ops whose outputs are sums of K products (dense, convolution).

    Derivation. A float32 sum of K products, in any order, with or without FMA, differs from
    the exact value by at most gamma_K * sum_i |a_i b_i| (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., eq. 3.5). The reference (BLAS sgemm) and torch both
    compute such sums, so they differ by at most 2 gamma_K sum |a_i b_i|. For a bilinear op,
    sum |a_i b_i| of every output is the op itself applied to |a| and |b| (computed here in
    float64 with the reference), and for the gradients, which are bilinear in the upstream
    gradient and the other input, the backward applied to |upstream|. ``length(case)`` is the
    longest sum K in the forward and backward (the bias adds one term). The bound replaces the
    default atol where it is larger: a worst case, about sqrt(K) times the typical error, so a
    wrong index (an O(1) error) still fails by orders of magnitude; float64 keeps the default
    tolerance and checks the same code tightly.
    """

    def case_tol(case: Case, upstream) -> Tol | None:
        if case_dtype(case) != FLOAT32:
            return None
        outs, ctx = forward(*abs64(case).values(), **case.params)
        if upstream is None:
            sizes = [float(np.max(outs if not isinstance(outs, tuple) else outs[0], initial=0))]
        else:
            grads = backward(ctx, np.abs(upstream[0]).astype(np.float64))
            sizes = [float(np.max(g, initial=0)) for g in grads if g is not None]
        base = DEFAULT_TOL[FLOAT32]
        bound = 2 * gamma(length(case)) * max(sizes, default=0.0)
        return Tol(base.rtol, max(base.atol, bound))

    return case_tol


def spread_ranks(x: np.ndarray, gap: float = 0.05) -> np.ndarray:
    """Values 0, gap, 2 gap, ... in the order of ``x`` (ties broken by position), centred.

    Used by ``smooth=`` for max-pooling: distinct values ``gap`` apart stay in the same order
    under the gradcheck's moves (h |v| ~ 1e-4 * 5), so no window changes its argmax.
    """
    order = np.argsort(x.reshape(-1), kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size)
    return ((ranks - x.size / 2) * gap).reshape(x.shape).astype(x.dtype)


def cut_in_largest_gap(values: np.ndarray, margin: float) -> float:
    """A shift s such that ``values - s`` stays at least ``margin`` from 0 everywhere: the
    middle of the widest gap between consecutive sorted values when it is wide enough, so ReLU
    keeps both sides active; else below the smallest value (all active)."""
    v = np.sort(values.reshape(-1))
    if v.size >= 2:
        gaps = np.diff(v)
        i = int(np.argmax(gaps))
        if gaps[i] > 2 * margin:
            return float((v[i] + v[i + 1]) / 2)
    return float(v[0] - 2 * margin) if v.size else 0.0


@st.composite
def small_floats(draw, dtype, shape, lo=-3.0, hi=3.0):
    """A float array: mostly seeded normal values (fast), sometimes Hypothesis-drawn elements
    (ties, zeros, repeated values)."""
    if draw(st.booleans()):
        rng = draw(S.seeds())
        return np.clip(S.normal(rng, shape, dtype, (hi - lo) / 4), lo, hi).astype(dtype)
    return draw(S.arrays(dtype, shape, lo, hi))
