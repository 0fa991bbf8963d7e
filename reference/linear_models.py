r"""Linear regression models: fit and predict as functions of arrays, and their objectives.

Each model minimises its objective exactly as scikit-learn defines it (same scaling, same
treatment of the intercept), so coefficients can be compared with scikit-learn's::

    coef, intercept = ridge_fit(X, y, alpha=1.0)        # coef (d,), intercept 0-d array
    y_hat = linear_predict(X, coef, intercept)           # (n,)
    value, ctx = ridge_objective(X, y, coef, intercept, alpha=1.0)
    d_coef, d_intercept = ridge_objective_backward(ctx, grad_out)

``X`` is (n_samples, n_features) float32/float64, ``y`` (n_samples,) of the same dtype; NaN or
inf in either is refused. Outputs have the input's dtype; every fit computes in float64 (the
centred cross-products accumulate in float64 even for float32 input) and rounds once. With
``fit_intercept`` the intercept is never penalised: the model is fitted on centred ``X`` and
``y`` and :math:`b = \bar y - \bar x^\top w`, as scikit-learn does.

Contents: ``linear_regression_fit`` (normal equations), ``linear_regression_gd_fit``
(full-batch gradient descent), ``ridge_fit``, ``lasso_fit`` (cyclic coordinate descent),
``polynomial_features`` (+ backward), ``polynomial_regression_fit``,
``polynomial_regression_predict``, ``linear_predict``, ``ridge_objective``,
``lasso_objective`` (+ backward). Classifiers are in ``reference.logistic_svm``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import NamedTuple

import numpy as np
import scipy.linalg
from numba import prange

from reference import _linear_kernels as K
from reference import _validate as v
from reference._jit import kernel

__all__ = [
    "linear_regression_fit", "linear_regression_gd_fit", "ridge_fit", "lasso_fit",
    "polynomial_features", "polynomial_features_backward", "polynomial_regression_fit",
    "polynomial_regression_predict", "linear_predict",
    "ridge_objective", "ridge_objective_backward", "lasso_objective", "lasso_objective_backward",
]


def _xy(X, y):
    X = K.check_X(X)
    return X, K.check_target(y, X)


def _result(w: np.ndarray, b: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(w, dtype=dtype), np.asarray(b, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# least squares by the normal equations, ridge


def _min_norm_solve(G: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The minimum-norm solution of G w = q (G symmetric positive semi-definite) through its
    eigendecomposition: eigenvalues below d * eps * lambda_max count as zero."""
    lam, V = np.linalg.eigh(G)
    top = lam[-1] if lam.size else 0.0
    keep = lam > G.shape[0] * np.finfo(np.float64).eps * top
    return V[:, keep] @ ((V[:, keep].T @ q) / lam[keep])


def linear_regression_fit(X: np.ndarray, y: np.ndarray, *, fit_intercept: bool = True):
    r"""Ordinary least squares by the normal equations (scikit-learn's ``LinearRegression``).

    .. math:: \min_{w, b} \|y - X w - b\|_2^2, \qquad X_c^\top X_c\, w = X_c^\top y_c,
              \qquad b = \bar y - \bar x^\top w

    The normal equations are solved through the eigendecomposition of :math:`X_c^\top X_c`,
    so a rank-deficient ``X`` gets the minimum-norm solution (scikit-learn's ``lstsq`` does
    the same). Forming :math:`X^\top X` squares the condition number: directions of ``X``
    whose singular value is below :math:`\sqrt{d\,\epsilon}\,\sigma_{max}` (about 1.5e-7
    relative for d = 1) are treated as exact null directions, where ``lstsq`` keeps them down
    to :math:`\epsilon \max(n, d)\,\sigma_{max}`. Returns ``(coef (d,), intercept 0-d)``.
    """
    X, y = _xy(X, y)
    fit_intercept = v.boolean(fit_intercept, "fit_intercept")
    G, q, _, xm, ym = K.gram(X, y, fit_intercept)
    w = _min_norm_solve(G, q)
    return _result(w, ym - xm @ w, X.dtype)


def ridge_fit(X: np.ndarray, y: np.ndarray, *, alpha: float = 1.0, fit_intercept: bool = True):
    r"""Ridge regression (scikit-learn's ``Ridge``; no 1/n on the data term).

    .. math:: \min_{w, b} \|y - X w - b\|_2^2 + \alpha \|w\|_2^2, \qquad
              (X_c^\top X_c + \alpha I)\, w = X_c^\top y_c

    solved by Cholesky (scikit-learn's ``solver='cholesky'``, its choice for dense input).
    ``alpha = 0`` is least squares and needs a full-rank ``X``; use
    ``linear_regression_fit`` otherwise. Returns ``(coef (d,), intercept 0-d)``.
    """
    X, y = _xy(X, y)
    alpha = v.real(alpha, "alpha", lo=0.0)
    fit_intercept = v.boolean(fit_intercept, "fit_intercept")
    G, q, _, xm, ym = K.gram(X, y, fit_intercept)
    A = G + alpha * np.eye(G.shape[0])
    try:
        w = scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, lower=True), q)
    except np.linalg.LinAlgError:
        raise ValueError(f"ridge_fit: X^T X + alpha I is singular (alpha={alpha} and X is "
                         f"rank-deficient); use alpha > 0 or linear_regression_fit") from None
    return _result(w, ym - xm @ w, X.dtype)


# ---------------------------------------------------------------------------------------------
# gradient descent


@kernel()
def _gd(X, y, w, b, lr, n_iter, fit_intercept, parts, gW, gb):
    # The data term's gradient is that of sum (f - y)^2; the objective's is 1/(2n) of it.
    n = X.shape[0]
    scale = lr / (2.0 * n)
    bad = np.zeros(parts.shape[0])  # the data pass's non-finite-score flag (X is checked)
    for _ in range(n_iter):
        gW[:] = 0.0
        gb[:] = 0.0
        if parts.shape[0] == 1:
            K._data_chunk(X, y, w, b, K.SQUARED, True, 0, n, gW[0], gb[0], bad)
        else:
            K._data_parallel(X, y, w, b, K.SQUARED, True, parts, gW, gb, bad)
        for c in range(parts.shape[0]):
            for j in range(w.shape[1]):
                w[0, j] -= scale * gW[c, 0, j]
            if fit_intercept:
                b[0] -= scale * gb[c, 0]


def linear_regression_gd_fit(X: np.ndarray, y: np.ndarray, *, lr: float = 0.1,
                             n_iter: int = 100, fit_intercept: bool = True):
    r"""Least squares by full-batch gradient descent from zero, ``n_iter`` steps of size ``lr``.

    .. math:: L(w, b) = \frac{1}{2n} \|y - X w - b\|_2^2, \qquad
              w \leftarrow w - \eta\, \tfrac1n X^\top (X w + b - y), \qquad
              b \leftarrow b - \eta\, \tfrac1n \textstyle\sum_i (x_i^\top w + b - y_i)

    Both updates use the gradient at the same point. It converges to the least-squares
    solution for :math:`\eta < 2 / \lambda_{max}(\tfrac1n [X, 1]^\top [X, 1])`. The iterates
    are float64; returns ``(coef (d,), intercept 0-d)`` in X's dtype.
    """
    X, y = _xy(X, y)
    lr = v.real(lr, "lr", lo=0.0, lo_open=True)
    n_iter = v.integer(n_iter, "n_iter", lo=0, hi=2**31 - 1)
    fit_intercept = v.boolean(fit_intercept, "fit_intercept")
    n, d = X.shape
    w = np.zeros((1, d))
    b = np.zeros(1)
    chunks = -(-n // K._CHUNK) if n * d >= K._PARALLEL_WORK else 1
    _gd(X, y.astype(np.float64), w, b, lr, n_iter, fit_intercept, np.zeros(chunks),
        np.zeros((chunks, 1, d)), np.zeros((chunks, 1)))
    return _result(w[0], b[0], X.dtype)


# ---------------------------------------------------------------------------------------------
# lasso


@kernel()
def _lasso_cd(G, q, yy, alpha_n, tol, max_iter, w):
    """Cyclic coordinate descent on the Gram form; returns (sweeps, duality gap)."""
    d = G.shape[0]
    Gw = G @ w
    gap = math.inf
    for sweep in range(max_iter):
        for j in range(d):
            if G[j, j] == 0.0:  # a constant column: its coefficient stays 0
                continue
            rho = q[j] - Gw[j] + G[j, j] * w[j]  # x_j^T (r + x_j w_j)
            new = np.sign(rho) * max(abs(rho) - alpha_n, 0.0) / G[j, j]
            delta = new - w[j]
            if delta != 0.0:
                for k in range(d):
                    Gw[k] += delta * G[j, k]
                w[j] = new
        # Duality gap of 1/2 ||r||^2 + alpha_n ||w||_1 (scikit-learn's formulation A).
        wq = 0.0
        wGw = 0.0
        l1 = 0.0
        dual_norm = 0.0
        for j in range(d):
            wq += w[j] * q[j]
            wGw += w[j] * Gw[j]
            l1 += abs(w[j])
            dual_norm = max(dual_norm, abs(q[j] - Gw[j]))
        r2 = max(yy - 2.0 * wq + wGw, 0.0)
        ry = yy - wq
        s = alpha_n / dual_norm if dual_norm > alpha_n else 1.0
        gap = (0.5 * r2 + alpha_n * l1) - (-0.5 * s * s * r2 + s * ry)
        if gap <= tol:
            return sweep + 1, gap
    return max_iter, gap


def lasso_fit(X: np.ndarray, y: np.ndarray, *, alpha: float = 1.0, fit_intercept: bool = True,
              tol: float = 1e-4, max_iter: int = 1000):
    r"""Lasso (scikit-learn's ``Lasso``) by cyclic coordinate descent from zero.

    .. math:: \min_{w, b} \frac{1}{2n} \|y - X w - b\|_2^2 + \alpha \|w\|_1, \qquad
              w_j \leftarrow \frac{S(x_j^\top (r + x_j w_j),\, n\alpha)}{x_j^\top x_j}

    with :math:`S(z, t) = \operatorname{sign}(z) \max(|z| - t, 0)`. The sweeps run on the
    Gram form (:math:`X_c^\top X_c` and :math:`X_c^\top y_c` formed once, each sweep then costs
    :math:`O(d^2)` instead of :math:`O(nd)`). Stopping rule as scikit-learn's: the duality gap
    of :math:`\tfrac12\|r\|^2 + n\alpha\|w\|_1` at most ``tol`` :math:`\cdot \|y_c\|^2`,
    checked after every sweep; a ``RuntimeWarning`` says when ``max_iter`` sweeps did not get
    there. ``alpha`` must be > 0 (``alpha = 0`` is least squares: ``linear_regression_fit``).
    Returns ``(coef (d,), intercept 0-d)``.
    """
    X, y = _xy(X, y)
    alpha = v.real(alpha, "alpha", lo=0.0, lo_open=True)
    tol = v.real(tol, "tol", lo=0.0)
    max_iter = v.integer(max_iter, "max_iter", lo=1, hi=2**31 - 1)
    fit_intercept = v.boolean(fit_intercept, "fit_intercept")
    G, q, yy, xm, ym = K.gram(X, y, fit_intercept)
    n = X.shape[0]
    w = np.zeros(X.shape[1])
    sweeps, gap = _lasso_cd(G, q, yy, alpha * n, tol * yy, max_iter, w)
    if gap > tol * yy:
        warnings.warn(f"lasso_fit did not converge in {max_iter} sweeps: duality gap {gap:.3g} "
                      f"> tol * ||y||^2 = {tol * yy:.3g}", RuntimeWarning, stacklevel=2)
    return _result(w, ym - xm @ w, X.dtype)


# ---------------------------------------------------------------------------------------------
# polynomial features and regression


def _combinations(d: int, degree: int, include_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's column order: by degree, then combinations with replacement in
    lexicographic order. Returns (indices (n_out, degree) padded with -1, lengths)."""
    combos = [c for k in range(0 if include_bias else 1, degree + 1)
              for c in itertools.combinations_with_replacement(range(d), k)]
    idx = np.full((len(combos), max(degree, 1)), -1, dtype=np.int64)
    for o, c in enumerate(combos):
        idx[o, :len(c)] = c
    return idx, np.array([len(c) for c in combos], dtype=np.int64)


@kernel(parallel=True)
def _poly_fwd(X, idx, lens, out):
    n = X.shape[0]
    for i in prange(n):
        for o in range(idx.shape[0]):
            p = 1.0
            for t in range(lens[o]):
                p *= np.float64(X[i, idx[o, t]])
            out[i, o] = p


@kernel(parallel=True)
def _poly_bwd(X, idx, lens, g, dX):
    # d prod_t x_{c_t} / d x_{c_p} = prod_{t < p} x_{c_t} * prod_{t > p} x_{c_t} (exact at 0)
    n, d = X.shape
    for i in prange(n):
        acc = np.zeros(d)
        for o in range(idx.shape[0]):
            m = lens[o]
            go = np.float64(g[i, o])
            if m == 0 or go == 0.0:
                continue
            pre = 1.0
            for p in range(m):
                suf = 1.0
                for t in range(p + 1, m):
                    suf *= np.float64(X[i, idx[o, t]])
                acc[idx[o, p]] += go * pre * suf
                pre *= np.float64(X[i, idx[o, p]])
        for j in range(d):
            dX[i, j] = acc[j]


class PolyCtx(NamedTuple):
    X: np.ndarray
    idx: np.ndarray
    lens: np.ndarray
    out_shape: tuple[int, int]


def polynomial_features(X: np.ndarray, *, degree: int = 2, include_bias: bool = True):
    r"""All monomials of the features up to ``degree`` (scikit-learn's ``PolynomialFeatures``,
    same column order: the bias column, then degree 1, 2, ..., each degree's products
    :math:`x_{c_1} \cdots x_{c_k}` over :math:`c_1 \le \dots \le c_k` in lexicographic order).

    .. math:: \phi_c(x) = \prod_{t=1}^{k} x_{c_t}, \qquad
              \partial x_j = \sum_c g_c \sum_{p:\, c_p = j} \prod_{t \ne p} x_{c_t}

    Each product is formed in float64 and rounded once. Forward returns ``(features (n,
    n_out), ctx)``; backward returns ``(d_X,)``. The derivative is exact at zeros (the
    product of the other factors, never a division).
    """
    X = K.check_X(X)
    degree = v.integer(degree, "degree", lo=1, hi=8)
    include_bias = v.boolean(include_bias, "include_bias")
    idx, lens = _combinations(X.shape[1], degree, include_bias)
    out = np.empty((X.shape[0], idx.shape[0]), dtype=X.dtype)
    _poly_fwd(X, idx, lens, out)
    return out, PolyCtx(X.copy(), idx, lens, out.shape)


def polynomial_features_backward(ctx: PolyCtx, grad_out: np.ndarray):
    r"""``(d_X,)`` for ``grad_out`` :math:`g` (n, n_out): each monomial's upstream value times
    the product of its other factors, summed into each factor's feature.

    .. math:: \partial x_j = \sum_c g_c \sum_{p:\, c_p = j} \prod_{t \ne p} x_{c_t}
    """
    ctx = _ctx(ctx, PolyCtx, "polynomial_features")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.X.dtype)
    if g.shape != ctx.out_shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.out_shape}, "
                         f"got {g.shape}")
    dX = np.empty_like(ctx.X)
    _poly_bwd(ctx.X, ctx.idx, ctx.lens, g, dX)
    return (dX,)


def polynomial_regression_fit(X: np.ndarray, y: np.ndarray, *, degree: int = 2,
                              fit_intercept: bool = True):
    r"""Least squares on ``polynomial_features(X, degree, include_bias=False)`` (scikit-learn's
    ``make_pipeline(PolynomialFeatures(degree, include_bias=False), LinearRegression())``),
    solved as ``linear_regression_fit``. Returns ``(coef (n_out,), intercept 0-d)``."""
    X, y = _xy(X, y)
    Phi, _ = polynomial_features(X, degree=degree, include_bias=False)
    return linear_regression_fit(Phi, y, fit_intercept=fit_intercept)


def polynomial_regression_predict(X: np.ndarray, coef: np.ndarray, intercept, *, degree: int):
    r""":math:`\hat y = \phi(X)\, w + b` with the features of ``polynomial_regression_fit``."""
    Phi, _ = polynomial_features(X, degree=degree, include_bias=False)
    return linear_predict(Phi, coef, intercept)


# ---------------------------------------------------------------------------------------------
# prediction and objectives


def _params(X: np.ndarray, coef, intercept) -> tuple[np.ndarray, np.ndarray]:
    coef = v.float_array(coef, "coef", ndim=1, dtype=X.dtype)
    if coef.shape[0] != X.shape[1]:
        raise ValueError(f"coef must have one entry per feature of X ({X.shape[1]}), got "
                         f"shape {coef.shape}")
    intercept = v.float_array(intercept, "intercept", ndim=0, dtype=X.dtype)
    return coef, intercept


def linear_predict(X: np.ndarray, coef: np.ndarray, intercept):
    r"""Predictions of a linear regression model, :math:`\hat y = X w + b` (float64
    accumulation, rounded once). ``coef`` (d,) and ``intercept`` 0-d, of X's dtype."""
    X = K.check_X(X, finite=False)
    coef, intercept = _params(X, coef, intercept)
    f = K.scores_of_finite(X, coef[None, :], intercept.reshape(1))
    return f[:, 0].astype(X.dtype)


class RidgeCtx(NamedTuple):
    # The data term's gradient, computed in the forward's own pass over X: backward needs X
    # only through it, so nothing of the caller's X is kept (no private copy: a copy is a read
    # and a write of X, the gradient one more product in a pass that reads X anyway)
    gW: np.ndarray  # (1, d) float64: sum_i 2 r_i x_i, r = X w + b - y
    gb: np.ndarray  # (1,) float64: sum_i 2 r_i
    n: int
    W: np.ndarray  # (1, d) float64
    strength: float
    dtype: np.dtype


class LassoCtx(RidgeCtx):
    pass


def _ctx(ctx, cls: type, forward: str):
    if type(ctx) is not cls:
        raise TypeError(f"ctx must be the context returned by {forward}, got "
                        f"{type(ctx).__name__}")
    return ctx


def _objective_args(X, y, coef, intercept):
    X = K.check_X(X, finite=False)  # data_term(..., x_name="X") checks it through the scores
    y = K.check_target(y, X)
    coef, intercept = _params(X, coef, intercept)
    return X, y.astype(np.float64), coef.astype(np.float64)[None, :], \
        intercept.astype(np.float64).reshape(1)


def _data_grad(ctx: RidgeCtx, grad_out) -> tuple[float, np.ndarray, np.ndarray]:
    g = v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype)
    return float(g), ctx.gW, ctx.gb


def ridge_objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept, *,
                    alpha: float = 1.0):
    r"""Ridge's objective as scikit-learn writes it (alpha = 0: least squares).

    .. math:: L = \|y - X w - b\|_2^2 + \alpha \|w\|_2^2, \qquad
              \partial w = g\,(2 X^\top (X w + b - y) + 2 \alpha w), \qquad
              \partial b = g\, 2 \textstyle\sum_i (x_i^\top w + b - y_i)

    Returns ``(L 0-d, ctx)``; backward returns ``(d_coef, d_intercept)``.
    """
    X, y64, W, b = _objective_args(X, y, coef, intercept)
    alpha = v.real(alpha, "alpha", lo=0.0)
    s, gW, gb = K.data_term(X, y64, W, b, K.SQUARED, True, "X")
    value = s + alpha * float(W[0] @ W[0])
    return (np.asarray(value, dtype=X.dtype),
            RidgeCtx(gW, gb, X.shape[0], W, alpha, X.dtype))


def ridge_objective_backward(ctx: RidgeCtx, grad_out):
    r"""``(d_coef, d_intercept)`` for the 0-d ``grad_out`` :math:`g`.

    .. math:: \partial w = g\,(2 X^\top (X w + b - y) + 2 \alpha w), \qquad
              \partial b = g\, 2 \textstyle\sum_i (x_i^\top w + b - y_i)
    """
    ctx = _ctx(ctx, RidgeCtx, "ridge_objective")
    g, gW, gb = _data_grad(ctx, grad_out)
    dw = g * (gW[0] + 2.0 * ctx.strength * ctx.W[0])
    return dw.astype(ctx.dtype), np.asarray(g * gb[0], dtype=ctx.dtype)


def lasso_objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept, *,
                    alpha: float = 1.0):
    r"""The lasso's objective as scikit-learn writes it.

    .. math:: L = \frac{1}{2n} \|y - X w - b\|_2^2 + \alpha \|w\|_1, \qquad
              \partial w = g\,(\tfrac1n X^\top (X w + b - y) + \alpha \operatorname{sign} w),
              \qquad \partial b = g\, \tfrac1n \textstyle\sum_i (x_i^\top w + b - y_i)

    At :math:`w_j = 0` the derivative of :math:`|w_j|` is taken as 0 (PyTorch's
    ``sign(0) = 0``). Returns ``(L 0-d, ctx)``; backward returns ``(d_coef, d_intercept)``.
    """
    X, y64, W, b = _objective_args(X, y, coef, intercept)
    alpha = v.real(alpha, "alpha", lo=0.0)
    s, gW, gb = K.data_term(X, y64, W, b, K.SQUARED, True, "X")
    value = s / (2.0 * X.shape[0]) + alpha * float(np.abs(W[0]).sum())
    return (np.asarray(value, dtype=X.dtype),
            LassoCtx(gW, gb, X.shape[0], W, alpha, X.dtype))


def lasso_objective_backward(ctx: LassoCtx, grad_out):
    r"""``(d_coef, d_intercept)`` for the 0-d ``grad_out`` :math:`g` (``sign(0) = 0``).

    .. math:: \partial w = g\,(\tfrac1n X^\top (X w + b - y) + \alpha \operatorname{sign} w),
              \qquad \partial b = g\, \tfrac1n \textstyle\sum_i (x_i^\top w + b - y_i)
    """
    ctx = _ctx(ctx, LassoCtx, "lasso_objective")
    g, gW, gb = _data_grad(ctx, grad_out)
    n = ctx.n
    dw = g * (gW[0] / (2.0 * n) + ctx.strength * np.sign(ctx.W[0]))
    return dw.astype(ctx.dtype), np.asarray(g * gb[0] / (2.0 * n), dtype=ctx.dtype)
