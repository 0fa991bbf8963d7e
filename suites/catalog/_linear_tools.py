"""Data sets, tolerances and scikit-learn peers shared by the linear-model specs."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from suites.catalog.spec import DEFAULT_TOL, Case, Cost, Tol

FAMILY = "classical"
INT_MAX = 2**31 - 1


def eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def accumulation_tol(dtype, count: float, scale: float) -> Tol:
    """Rounding of a sum of ``count`` terms whose magnitudes add up to ``scale``.

    Recursive summation in the twin's dtype errs by at most (count - 1) eps sum|terms|
    (Higham, Accuracy and Stability, 4.2); each term's own product or function adds a few
    eps more, so we allow 2 (count + 2) eps scale on top of torch.testing's defaults. The
    reference sums in float64 and rounds once (half an ulp, inside the rtol).
    """
    base = DEFAULT_TOL[np.dtype(dtype)]
    return Tol(rtol=base.rtol, atol=max(base.atol, 2.0 * (count + 2) * eps(dtype) * scale))


def ls_tol(X: np.ndarray, y: np.ndarray, dtype, *, ridge: float = 0.0,
           fit_intercept: bool = True, twin_gram: bool = False) -> Tol:
    """Tolerance for a (ridge-regularised) least-squares solution computed by two methods.

    Perturbation theory of least squares (Golub & Van Loan, 5.3.7): a backward-stable solver
    in precision u returns w with |dw| / |w| <= c u (k + k^2 |r| / (|X| |w|)), k = cond(X).
    The twin (QR/SVD/solve) runs in the case's dtype; the reference forms X^T X in float64
    (k^2 u64). With c = 8 (d + 1) for the dimension factors, the tolerance is relative to
    the largest coefficient (and intercept): absolute errors in w are spread over components.
    ``twin_gram``: the twin itself forms X^T X + ridge I in its dtype (k^2 u).
    """
    Xc = X.astype(np.float64)
    yc = y.astype(np.float64)
    if fit_intercept:
        Xc = Xc - Xc.mean(axis=0)
        yc = yc - yc.mean()
    d = X.shape[1]
    A = np.vstack([Xc, np.sqrt(ridge) * np.eye(d)]) if ridge > 0 else Xc
    s = np.linalg.svd(A, compute_uv=False)
    if s.size == 0 or s[-1] <= 0 or s[0] == 0:
        k = np.inf
    else:
        k = s[0] / s[-1]
    b = np.concatenate([yc, np.zeros(d)]) if ridge > 0 else yc
    w = np.linalg.lstsq(A, b, rcond=None)[0]
    r = b - A @ w
    w_norm = np.linalg.norm(w)
    rho = np.linalg.norm(r) / (s[0] * w_norm) if w_norm > 0 and s.size and s[0] > 0 else 0.0
    u = eps(dtype)
    twin = k * k if twin_gram else k + k * k * rho
    rel = 8 * (d + 1) * (u * twin + eps(np.float64) * k * k)
    size = max(1.0, float(np.abs(w).max(initial=0.0)),
               abs(float(y.astype(np.float64).mean())) if fit_intercept else 0.0)
    base = DEFAULT_TOL[np.dtype(dtype)]
    # The intercept ym - xm.w inherits xm's size times w's error.
    xm = float(np.abs(X.astype(np.float64).mean(axis=0)).sum()) if fit_intercept else 0.0
    return Tol(rtol=max(base.rtol, rel), atol=max(base.atol, rel * size * (1.0 + xm)))


def regression_data(rng: np.random.Generator, n: int, d: int, dtype, *, noise: float = 0.1,
                    offset: float = 0.0, scale: float = 1.0):
    """X ~ N(offset, scale^2) per column, y = X w + b + noise; deterministic for a Generator."""
    X = rng.standard_normal((n, d)) * scale + offset
    w = rng.standard_normal(d)
    y = X @ w + 0.5 + noise * rng.standard_normal(n)
    return X.astype(dtype), y.astype(dtype)


def class_data(rng: np.random.Generator, n: int, d: int, k: int, dtype, *, sep: float = 1.0):
    """Gaussian classes around random centres (spread ``sep``); every class present."""
    centres = rng.standard_normal((k, d)) * sep
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(y)
    X = centres[y] + rng.standard_normal((n, d))
    return X.astype(dtype), y.astype(np.int64)


@st.composite
def data_shape(draw, *, max_n: int = 14, max_d: int = 5, min_extra: int = 0):
    """(n, d) with n >= d + min_extra (n >= 1)."""
    d = draw(st.integers(1, max_d))
    n = draw(st.integers(max(1, d + min_extra), max(max_n, d + min_extra)))
    return n, d


def pass_cost(case: Case, rows: int = 1) -> Cost:
    """One pass over X computing ``rows`` scores per sample (2 flops per multiply-add)."""
    X = case.inputs["X"]
    n, d = X.shape
    return Cost(flops=2.0 * n * d * rows, bytes=float(X.nbytes))


def gram_cost(case: Case) -> Cost:
    """The normal equations' X^T X (2 n d^2 flops as BLAS forms it) plus the d^3 solve."""
    X = case.inputs["X"]
    n, d = X.shape
    return Cost(flops=2.0 * n * d * d + d ** 3, bytes=float(X.nbytes))
