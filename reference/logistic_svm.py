r"""Linear classifiers: logistic regression (binary, multinomial) and the linear SVM.

Fit and predict are functions of arrays; the objectives are forward/backward pairs::

    coef, intercept = logistic_regression_fit(X, y, C=1.0)   # coef (K, d), intercept (K,)
    labels = linear_classifier_predict(X, coef, intercept)    # int64 (n,)
    value, ctx = logistic_objective(X, y, coef, intercept, C=1.0)
    d_coef, d_intercept = logistic_objective_backward(ctx, grad_out)

Labels ``y`` are integers ``0 .. K-1`` (encode other labels first, e.g. with
``np.unique(y, return_inverse=True)``); a fit needs every class present and at least two.
Shapes follow scikit-learn's ``coef_``/``intercept_``: a binary problem has ONE row of
coefficients (the score of class 1), ``K > 2`` classes have K rows. Decision:
:math:`f = X W^\top + b`; one row predicts class 1 where :math:`f > 0` (0 on a tie), K rows
predict the first maximum.

Objectives, exactly as scikit-learn defines them:

- ``LogisticRegression`` (l2 penalty; the intercept is not penalised):
  :math:`\tfrac12 \|W\|_F^2 + C \sum_i \ell_i`, with :math:`\ell_i = \log(1 + e^{-s_i f_i})`,
  :math:`s_i = 2 y_i - 1` (one row) or :math:`\ell_i = \log \sum_k e^{f_{ik}} - f_{i y_i}`
  (K rows, multinomial). With K rows the intercepts are defined up to a common shift (the
  penalty does not touch them); the fit returns the ones that sum to zero.
- ``LinearSVC`` (liblinear): :math:`\tfrac12 \|W\|_F^2 + \tfrac12 \|b\|^2 / s^2 + C
  \sum_i \sum_k \max(0, 1 - s_{ik} f_{ik})^p` with p = 2 (``'squared_hinge'``, the default)
  or p = 1 (``'hinge'``), one-vs-rest (:math:`s_{ik} = \pm 1` for ``y_i = k`` or not). The
  intercept IS penalised: liblinear appends a synthetic feature of value
  ``intercept_scaling`` = s whose weight is :math:`b / s`, hence the term
  :math:`\tfrac12 (b/s)^2`; a large s makes it vanish.

Both fits minimise the objective divided by :math:`C n` (scikit-learn's scaling for L-BFGS,
the same minimiser) with SciPy's L-BFGS-B from zero, on this module's own objective and
gradient, stopping when the largest gradient component is at most ``tol`` (scikit-learn's
``gtol``) or the relative decrease stalls at 64 eps (its ``ftol``). Every evaluation is one
parallel float64 pass over the rows of ``X`` (``reference._linear_kernels.data_term``).
``fit_intercept=False`` fixes b = 0. Everything is float64 inside; outputs have X's dtype.
The SVM fit supports the squared hinge only (the hinge is not differentiable; liblinear
solves it in the dual).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import NamedTuple

import numpy as np
import scipy.optimize

from reference import _linear_kernels as K
from reference import _validate as v

__all__ = [
    "logistic_regression_fit", "logistic_regression_predict_proba", "linear_svm_fit",
    "linear_classifier_predict", "logistic_objective", "logistic_objective_backward",
    "linear_svm_objective", "linear_svm_objective_backward",
]

SVM_LOSSES = ("squared_hinge", "hinge")


def _params(X: np.ndarray, coef, intercept) -> tuple[np.ndarray, np.ndarray]:
    coef = v.float_array(coef, "coef", ndim=2, dtype=X.dtype)
    if coef.shape[0] < 1 or coef.shape[1] != X.shape[1]:
        raise ValueError(f"coef must have shape (n_rows >= 1, {X.shape[1]}) (one column per "
                         f"feature of X), got {coef.shape}")
    intercept = v.float_array(intercept, "intercept", ndim=1, dtype=X.dtype)
    if intercept.shape != coef.shape[:1]:
        raise ValueError(f"intercept must have shape {coef.shape[:1]} (one per row of coef), "
                         f"got {intercept.shape}")
    return coef, intercept


def _logistic_code(rows: int) -> int:
    return K.LOGISTIC if rows == 1 else K.MULTINOMIAL


# ---------------------------------------------------------------------------------------------
# objectives


class LogisticCtx(NamedTuple):
    # The data term's gradient from the forward's own pass over X (see linear_models.RidgeCtx:
    # nothing of the caller's X is kept, so editing it after forward changes nothing)
    gW: np.ndarray  # (K, d) float64
    gb: np.ndarray  # (K,) float64
    dtype: np.dtype
    W: np.ndarray  # (K, d) float64
    b: np.ndarray  # (K,) float64
    C: float
    b_penalty: float  # weight of 1/2 ||b||^2 (0 for logistic regression, 1/s^2 for the SVM)


class SvmCtx(LogisticCtx):
    pass


def _objective(X, y, coef, intercept, C, code_of_rows, b_penalty, cls):
    X = K.check_X(X, finite=False)  # data_term(..., x_name="X") checks it through the scores
    coef, intercept = _params(X, coef, intercept)
    y, _ = K.check_labels(y, X, n_classes=max(coef.shape[0], 2))
    C = v.real(C, "C", lo=0.0, lo_open=True)
    W = coef.astype(np.float64)
    b = intercept.astype(np.float64)
    code = code_of_rows(coef.shape[0])
    data, gW, gb = K.data_term(X, y.astype(np.float64), W, b, code, True, "X")
    value = 0.5 * float(np.sum(W * W)) + 0.5 * b_penalty * float(b @ b) + C * data
    return np.asarray(value, dtype=X.dtype), cls(gW, gb, X.dtype, W, b, C, b_penalty)


def _objective_backward(ctx, grad_out, cls: type, forward: str):
    if type(ctx) is not cls:
        raise TypeError(f"ctx must be the context returned by {forward}, got "
                        f"{type(ctx).__name__}")
    g = float(v.float_array(grad_out, "grad_out", ndim=0, dtype=ctx.dtype))
    dW = g * (ctx.W + ctx.C * ctx.gW)
    db = g * (ctx.b_penalty * ctx.b + ctx.C * ctx.gb)
    return dW.astype(ctx.dtype), db.astype(ctx.dtype)


def logistic_objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                       *, C: float = 1.0):
    r"""L2-penalised logistic regression's objective (scikit-learn's ``C``; b not penalised).

    .. math:: L = \tfrac12 \|W\|_F^2 + C \sum_i \ell(f_i, y_i), \qquad f_i = W x_i + b,
              \qquad \partial W = g\,(W + C \textstyle\sum_i (p_i - e_{y_i}) x_i^\top),
              \qquad \partial b = g\, C \textstyle\sum_i (p_i - e_{y_i})

    One row of ``coef``: binary, :math:`\ell = \log(1 + e^{-(2y - 1) f})`,
    :math:`p = \sigma(f)`, :math:`e_y = y`. K >= 2 rows: multinomial,
    :math:`\ell = \log \sum_k e^{f_k} - f_y`, :math:`p = \operatorname{softmax}(f)`.
    Returns ``(L 0-d, ctx)``; backward returns ``(d_coef, d_intercept)``.
    """
    return _objective(X, y, coef, intercept, C, _logistic_code, 0.0, LogisticCtx)


def logistic_objective_backward(ctx: LogisticCtx, grad_out):
    r"""``(d_coef, d_intercept)`` for the 0-d ``grad_out`` :math:`g` (p and e as in
    ``logistic_objective``).

    .. math:: \partial W = g\,(W + C \textstyle\sum_i (p_i - e_{y_i}) x_i^\top), \qquad
              \partial b = g\, C \textstyle\sum_i (p_i - e_{y_i})
    """
    return _objective_backward(ctx, grad_out, LogisticCtx, "logistic_objective")


def linear_svm_objective(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                         *, C: float = 1.0, loss: str = "squared_hinge",
                         intercept_scaling: float = 1.0):
    r"""``LinearSVC``'s primal objective (liblinear), one-vs-rest over the rows of ``coef``.

    .. math:: L = \tfrac12 \|W\|_F^2 + \frac{\|b\|^2}{2 s^2}
              + C \sum_i \sum_k \max(0,\, 1 - s_{ik} f_{ik})^p,

    :math:`s` = ``intercept_scaling``, p = 2 for ``'squared_hinge'``, 1 for ``'hinge'``;
    :math:`s_{ik} = 2 y_i - 1` with one row, else +1 where :math:`y_i = k` and -1 elsewhere.

    .. math:: \partial W = g\,(W + C \textstyle\sum_i \delta_i x_i^\top), \qquad
              \partial b = g\,(b / s^2 + C \textstyle\sum_i \delta_i), \qquad
              \delta_{ik} = -p\, s_{ik} \max(0, 1 - s_{ik} f_{ik})^{p - 1}

    For the hinge at the kink (margin exactly 1) the derivative is 0 (``relu'(0) = 0``).
    Returns ``(L 0-d, ctx)``; backward returns ``(d_coef, d_intercept)``.
    """
    loss = v.choice(loss, "loss", SVM_LOSSES)
    s = v.real(intercept_scaling, "intercept_scaling", lo=0.0, lo_open=True)
    code = K.SQUARED_HINGE if loss == "squared_hinge" else K.HINGE
    return _objective(X, y, coef, intercept, C, lambda rows: code, 1.0 / (s * s), SvmCtx)


def linear_svm_objective_backward(ctx: SvmCtx, grad_out):
    r"""``(d_coef, d_intercept)`` for the 0-d ``grad_out`` :math:`g` (s, p and
    :math:`s_{ik}` as in ``linear_svm_objective``; 0 at the hinge's kink).

    .. math:: \partial W = g\,(W + C \textstyle\sum_i \delta_i x_i^\top), \qquad
              \partial b = g\,(b / s^2 + C \textstyle\sum_i \delta_i), \qquad
              \delta_{ik} = -p\, s_{ik} \max(0, 1 - s_{ik} f_{ik})^{p - 1}
    """
    return _objective_backward(ctx, grad_out, SvmCtx, "linear_svm_objective")


# ---------------------------------------------------------------------------------------------
# fits


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it L-BFGS-B keeps BLAS's threads
        return None
    return ThreadpoolController()


def _one_blas_thread():
    """SciPy's L-BFGS-B makes small BLAS calls (vectors of the parameters' length); on two
    threads they cost 9 ms each on this loaded 2-core machine against 0.2 ms on one (measured,
    digits: 5.4 s vs 0.14 s per fit). The objective's passes are Numba loops, not BLAS, so
    the fit loses nothing by holding BLAS to one thread (threadpoolctl, when installed)."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _lbfgs(X, y64, rows, code, C, b_penalty, fit_intercept, tol, max_iter, name):
    """Minimise (1/2 ||W||^2 + b_penalty/2 ||b||^2 + C data) / (C n) over (W, b) from zero."""
    n, d = X.shape
    scale = 1.0 / (C * n)

    def fun(theta):
        W = theta[: rows * d].reshape(rows, d)
        b = theta[rows * d:] if fit_intercept else np.zeros(rows)
        data, gW, gb = K.data_term(X, y64, W, b, code, True)
        value = 0.5 * float(np.sum(W * W)) + 0.5 * b_penalty * float(b @ b) + C * data
        grad = (W + C * gW).reshape(-1)
        if fit_intercept:
            grad = np.concatenate([grad, b_penalty * b + C * gb])
        return value * scale, grad * scale

    theta0 = np.zeros(rows * (d + 1) if fit_intercept else rows * d)
    with _one_blas_thread():
        res = scipy.optimize.minimize(
            fun, theta0, method="L-BFGS-B", jac=True,
            options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                     "ftol": 64 * np.finfo(np.float64).eps})
    if not res.success:
        warnings.warn(f"{name} did not converge: {res.message} after {res.nit} iterations",
                      RuntimeWarning, stacklevel=3)
    W = res.x[: rows * d].reshape(rows, d)
    b = res.x[rows * d:] if fit_intercept else np.zeros(rows)
    return W, b


def _fit_args(X, y, C, fit_intercept, tol, max_iter):
    X = K.check_X(X)
    y, k = K.check_labels(y, X)
    C = v.real(C, "C", lo=0.0, lo_open=True)
    fit_intercept = v.boolean(fit_intercept, "fit_intercept")
    tol = v.real(tol, "tol", lo=0.0)
    max_iter = v.integer(max_iter, "max_iter", lo=1, hi=2**31 - 1)
    return X, y.astype(np.float64), (1 if k == 2 else k), C, fit_intercept, tol, max_iter


def logistic_regression_fit(X: np.ndarray, y: np.ndarray, *, C: float = 1.0,
                            fit_intercept: bool = True, tol: float = 1e-4,
                            max_iter: int = 100):
    r"""L2-penalised logistic regression (scikit-learn's ``LogisticRegression``, lbfgs):
    minimises ``logistic_objective`` (binary for two classes, multinomial for more).

    Defaults are scikit-learn's (``C=1``, ``tol=1e-4``, ``max_iter=100``). Returns
    ``(coef (R, d), intercept (R,))`` with R = 1 for two classes, else K; multinomial
    intercepts are shifted to sum to zero (the objective does not depend on that shift).
    """
    X, y64, rows, C, fit_intercept, tol, max_iter = _fit_args(X, y, C, fit_intercept, tol,
                                                              max_iter)
    W, b = _lbfgs(X, y64, rows, _logistic_code(rows), C, 0.0, fit_intercept, tol, max_iter,
                  "logistic_regression_fit")
    if rows > 1:
        b = b - b.mean()
    return W.astype(X.dtype), b.astype(X.dtype)


def linear_svm_fit(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, fit_intercept: bool = True,
                   intercept_scaling: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
    r"""Linear SVM with the squared hinge (scikit-learn's ``LinearSVC`` defaults: ``C=1``,
    ``loss='squared_hinge'``, l2 penalty, ``intercept_scaling=1``, one-vs-rest for K > 2):
    minimises ``linear_svm_objective``, the intercept penalised as :math:`\tfrac12 (b/s)^2`.

    Returns ``(coef (R, d), intercept (R,))`` with R = 1 for two classes, else K.
    """
    s = v.real(intercept_scaling, "intercept_scaling", lo=0.0, lo_open=True)
    X, y64, rows, C, fit_intercept, tol, max_iter = _fit_args(X, y, C, fit_intercept, tol,
                                                              max_iter)
    # One-vs-rest: the K problems are independent, each solved on its own (as liblinear
    # does); one joint L-BFGS run over all of them converges far more slowly.
    parts = [_lbfgs(X, (y64 == k).astype(np.float64) if rows > 1 else y64, 1,
                    K.SQUARED_HINGE, C, 1.0 / (s * s), fit_intercept, tol, max_iter,
                    "linear_svm_fit") for k in range(rows)]
    W = np.vstack([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    return W.astype(X.dtype), b.astype(X.dtype)


# ---------------------------------------------------------------------------------------------
# prediction


def _decision(X, coef, intercept):
    X = K.check_X(X, finite=False)
    coef, intercept = _params(X, coef, intercept)
    return X, K.scores_of_finite(X, coef, intercept)


def linear_classifier_predict(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray):
    r"""Class labels of a linear classifier, :math:`f = X W^\top + b`: one row predicts
    :math:`[f > 0]` (0 on a tie, as scikit-learn), K rows :math:`\arg\max_k f_k` (the first
    maximum). Returns int64 (n,)."""
    _, f = _decision(X, coef, intercept)
    if f.shape[1] == 1:
        return (f[:, 0] > 0).astype(np.int64)
    return np.argmax(f, axis=1).astype(np.int64)


def logistic_regression_predict_proba(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray):
    r"""Class probabilities of logistic regression, (n, max(R, 2)) of X's dtype: one row,
    :math:`[1 - \sigma(f), \sigma(f)]`; K rows, :math:`\operatorname{softmax}(f)`."""
    X, f = _decision(X, coef, intercept)
    if f.shape[1] == 1:
        p1 = 0.5 * (1.0 + np.tanh(0.5 * f[:, 0]))  # sigma(f) without overflow
        return np.stack([1.0 - p1, p1], axis=1).astype(X.dtype)
    f -= f.max(axis=1, keepdims=True)
    np.exp(f, out=f)
    f /= f.sum(axis=1, keepdims=True)
    return f.astype(X.dtype)
