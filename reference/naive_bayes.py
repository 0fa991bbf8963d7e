r"""Gaussian naive Bayes, as scikit-learn's ``GaussianNB`` (no sample weights, priors from the
class frequencies).

Conventions::

    (theta, var, prior), _ = gaussian_nb_fit(X, y, var_smoothing=1e-9)
    jll, ctx = gaussian_log_likelihood(X, theta, var, prior)    # (n, C) joint log-likelihood
    dX, dtheta, dvar = gaussian_log_likelihood_backward(ctx, djll)
    labels, _ = gaussian_nb_predict(X, theta, var, prior)

Fit: for each class c (labels are the integers 0..C-1, every one present),
:math:`\theta_c` is the mean and :math:`\sigma^2_c` the biased (``ddof=0``) variance of its
samples per feature, plus :math:`\epsilon = \text{var\_smoothing} \cdot \max_f
\operatorname{Var}(X_{:,f})` (scikit-learn's ``epsilon_``: the largest per-feature variance of
all of X). :math:`\pi_c` is the class frequency. Means and variances are two-pass float64 sums.

The joint log-likelihood :math:`\log \pi_c + \sum_f \log \mathcal N(x_f \mid \theta_{cf},
\sigma^2_{cf})` is also the diagonal-covariance Gaussian mixture's weighted log-density
(``reference.mixture`` uses this kernel for its E-step).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _samples as s
from reference import _validate as v
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["gaussian_nb_fit", "gaussian_log_likelihood", "gaussian_log_likelihood_backward",
           "gaussian_nb_predict"]

_LOG_2PI = math.log(2.0 * math.pi)


@kernel()
def _class_moments(x, y, n_classes, var_smoothing, theta, var, prior):
    n, d = x.shape
    counts = np.zeros(n_classes)
    sums = np.zeros((n_classes, d))
    tot = np.zeros(d)
    for i in range(n):
        c = y[i]
        counts[c] += 1.0
        for f in range(d):
            xf = np.float64(x[i, f])
            sums[c, f] += xf
            tot[f] += xf
    sq = np.zeros((n_classes, d))
    tot_sq = np.zeros(d)
    for i in range(n):
        c = y[i]
        for f in range(d):
            xf = np.float64(x[i, f])
            t = xf - sums[c, f] / counts[c]
            sq[c, f] += t * t
            u = xf - tot[f] / n
            tot_sq[f] += u * u
    eps = 0.0
    for f in range(d):
        eps = max(eps, tot_sq[f] / n)
    eps *= var_smoothing
    for c in range(n_classes):
        prior[c] = counts[c] / n
        for f in range(d):
            theta[c, f] = sums[c, f] / counts[c]
            var[c, f] = sq[c, f] / counts[c] + eps


def gaussian_nb_fit(x: np.ndarray, y: np.ndarray, var_smoothing: float = 1e-9):
    r"""Fit Gaussian naive Bayes.

    .. math:: \theta_{cf} = \frac{1}{n_c}\sum_{i: y_i = c} x_{if}, \quad
              \sigma^2_{cf} = \frac{1}{n_c}\sum_{i: y_i = c} (x_{if} - \theta_{cf})^2 + \epsilon,
              \quad \epsilon = \text{var\_smoothing}\,\max_f \operatorname{Var}(x_{:,f}),
              \quad \pi_c = n_c / n

    ``y`` integer labels 0..C-1, each present. Returns ``((theta, var, prior), None)`` in the
    input's dtype: (C, d), (C, d), (C,).
    """
    x = s.matrix(x, "X")
    y = s.class_labels(y, "y", x.shape[0])
    var_smoothing = v.real(var_smoothing, "var_smoothing", lo=0.0)
    n_classes = int(y.max()) + 1
    present = np.bincount(y, minlength=n_classes)
    if (present == 0).any():
        missing = int(np.flatnonzero(present == 0)[0])
        raise ValueError(f"y must contain every class 0..{n_classes - 1} (labels are encoded "
                         f"as 0..C-1), class {missing} is missing")
    theta = np.empty((n_classes, x.shape[1]))
    var = np.empty((n_classes, x.shape[1]))
    prior = np.empty(n_classes)
    _class_moments(x, y, n_classes, var_smoothing, theta, var, prior)
    return (theta.astype(x.dtype), var.astype(x.dtype), prior.astype(x.dtype)), None


class JllCtx(NamedTuple):
    x: np.ndarray
    theta: np.ndarray
    var: np.ndarray


@kernel(reduce=True)
def _jll_row(x, i, theta64, inv_var, const, out):
    # the sum over features vectorises (REDUCE: reassociated, NaN/inf still propagate)
    for c in range(theta64.shape[0]):
        acc = 0.0
        for f in range(x.shape[1]):
            t = np.float64(x[i, f]) - theta64[c, f]
            acc += t * t * inv_var[c, f]
        out[i, c] = const[c] - 0.5 * acc


@kernel(parallel=True)
def _jll(x, theta, var, log_prior, out):
    """out[i, c] = log_prior[c] - 0.5 sum_f (log(2 pi var_cf) + (x_if - theta_cf)^2 / var_cf),
    the division as a product with 1 / var_cf (one more rounding per term)."""
    n, d = x.shape
    n_classes = theta.shape[0]
    const = np.empty(n_classes)
    theta64 = np.empty((n_classes, d))
    inv_var = np.empty((n_classes, d))
    for c in range(n_classes):
        acc = 0.0
        for f in range(d):
            acc += np.log(2.0 * np.pi * np.float64(var[c, f]))
            theta64[c, f] = np.float64(theta[c, f])
            inv_var[c, f] = 1.0 / np.float64(var[c, f])
        const[c] = log_prior[c] - 0.5 * acc
    if n * n_classes * d < PARALLEL_MIN:
        for i in range(n):
            _jll_row(x, i, theta64, inv_var, const, out)
    else:
        for i in prange(n):
            _jll_row(x, i, theta64, inv_var, const, out)


@kernel(parallel=True)
def _jll_bwd(x, theta, var, g, dx, dtheta, dvar):
    # r = (x_if - theta_cf) / var_cf; dx_if = -sum_c g_ic r; dtheta_cf = sum_i g_ic r;
    # dvar_cf = sum_i g_ic (r^2 - 1 / var_cf) / 2.
    n, d = x.shape
    n_classes = theta.shape[0]
    for i in prange(n):
        for f in range(d):
            acc = 0.0
            xf = np.float64(x[i, f])
            for c in range(n_classes):
                acc += np.float64(g[i, c]) * (xf - np.float64(theta[c, f])) / np.float64(var[c, f])
            dx[i, f] = -acc
    for c in prange(n_classes):
        for f in range(d):
            vf = np.float64(var[c, f])
            tf = np.float64(theta[c, f])
            a1 = 0.0
            a2 = 0.0
            for i in range(n):
                gi = np.float64(g[i, c])
                r = (np.float64(x[i, f]) - tf) / vf
                a1 += gi * r
                a2 += gi * (r * r - 1.0 / vf)
            dtheta[c, f] = a1
            dvar[c, f] = 0.5 * a2


def _check_model(x, theta, var, prior):
    x = s.matrix(x, "X", min_rows=0)
    theta = v.float_array(theta, "theta", ndim=2, dtype=x.dtype)
    if theta.shape[0] < 1 or theta.shape[1] != x.shape[1]:
        raise ValueError(f"theta must have shape (n_classes, {x.shape[1]}), got {theta.shape}")
    var = v.float_array(var, "var", ndim=2, dtype=x.dtype)
    v.same_shape(theta, "theta", var, "var")
    if not (var > 0).all() or not np.isfinite(var).all():
        raise ValueError("var must hold finite variances > 0")
    if not np.isfinite(theta).all():
        raise ValueError("theta must be finite")
    prior = v.float_array(prior, "prior", ndim=1, dtype=x.dtype)
    if prior.shape != (theta.shape[0],):
        raise ValueError(f"prior must have shape ({theta.shape[0]},), got {prior.shape}")
    if not ((prior > 0) & (prior <= 1)).all():
        raise ValueError("prior must hold class probabilities in (0, 1]")
    return x, theta, var, prior


def gaussian_log_likelihood(x: np.ndarray, theta: np.ndarray, var: np.ndarray,
                            prior: np.ndarray):
    r"""Joint log-likelihood of each sample and class under diagonal Gaussians.

    .. math:: J_{ic} = \log \pi_c - \frac12 \sum_f \Big(\log(2\pi\sigma^2_{cf})
              + \frac{(x_{if} - \theta_{cf})^2}{\sigma^2_{cf}}\Big)

    scikit-learn's ``GaussianNB._joint_log_likelihood``. Returns ``(J, ctx)``, J (n, C) in the
    input's dtype, summed in float64. Backward returns ``(dX, dtheta, dvar)``.
    """
    given = (x, theta, var)
    x, theta, var, prior = _check_model(x, theta, var, prior)
    out = np.empty((x.shape[0], theta.shape[0]), x.dtype)
    _jll(x, theta, var, np.log(prior.astype(np.float64)), out)
    return out, JllCtx(*(v.keep(a, g) for a, g in zip((x, theta, var), given, strict=True)))


def gaussian_log_likelihood_backward(ctx: JllCtx, grad_out: np.ndarray):
    r"""Gradients of the joint log-likelihood for an upstream gradient :math:`G`, with
    :math:`r_{icf} = (x_{if} - \theta_{cf}) / \sigma^2_{cf}`:

    .. math:: \partial x_{if} = -\sum_c G_{ic} r_{icf}, \quad
              \partial \theta_{cf} = \sum_i G_{ic} r_{icf}, \quad
              \partial \sigma^2_{cf} = \frac12 \sum_i G_{ic} (r_{icf}^2 - 1/\sigma^2_{cf})

    Returns ``(dX, dtheta, dvar)``.
    """
    v.ctx_of(ctx, JllCtx, "gaussian_log_likelihood")
    g = v.grad_like(grad_out, "grad_out",
                    np.empty((ctx.x.shape[0], ctx.theta.shape[0]), ctx.x.dtype))
    dx, dtheta, dvar = np.empty_like(ctx.x), np.empty_like(ctx.theta), np.empty_like(ctx.var)
    _jll_bwd(ctx.x, ctx.theta, ctx.var, g, dx, dtheta, dvar)
    return dx, dtheta, dvar


@kernel(parallel=True)
def _argmax_rows(a, out):
    for i in prange(a.shape[0]):
        best = 0
        for c in range(1, a.shape[1]):
            if a[i, c] > a[i, best]:
                best = c
        out[i] = best


def gaussian_nb_predict(x: np.ndarray, theta: np.ndarray, var: np.ndarray, prior: np.ndarray):
    r"""The class of largest joint log-likelihood (the first among equal ones).

    .. math:: \hat y_i = \operatorname*{arg\,max}_c J_{ic}

    The log-likelihood is kept in float64 for the comparison. Returns ``(labels, None)``,
    int64 of shape (n,).
    """
    x, theta, var, prior = _check_model(x, theta, var, prior)
    jll = np.empty((x.shape[0], theta.shape[0]))
    _jll(x, theta, var, np.log(prior.astype(np.float64)), jll)
    out = np.empty(x.shape[0], np.int64)
    _argmax_rows(jll, out)
    return out, None
