r"""Gaussian mixture fitted by EM, full or diagonal covariances, as scikit-learn's
``GaussianMixture(n_init=1, weights_init=w, means_init=mu, precisions_init=inv(cov))``.

Conventions::

    (weights, means, covariances, labels, lower_bounds), _ = gmm_fit(
        X, weights, means, covariances, covariance_type="full", reg_covar=1e-6, tol=1e-3,
        max_iter=100)
    J, ctx = gaussian_full_log_likelihood(X, means, covariances, weights)   # (n, K)
    dX, dmeans = gaussian_full_log_likelihood_backward(ctx, dJ)
    labels, _ = gmm_predict(X, weights, means, covariances)

The initial parameters are explicit inputs (randomness is the caller's). Covariances are
(K, d, d) for ``"full"`` and (K, d) variances for ``"diag"``.

EM, iteration t = 1..max_iter (scikit-learn's loop):

- E-step: :math:`J_{ik} = \log \pi_k + \log \mathcal N(x_i \mid \mu_k, \Sigma_k)`,
  :math:`\ell_i = \log\sum_k e^{J_{ik}}`, :math:`r_{ik} = e^{J_{ik} - \ell_i}`; the lower bound
  of iteration t is :math:`L_t = \frac1n \sum_i \ell_i`, the mean log-likelihood of the
  parameters *before* the M-step.
- M-step: :math:`n_k = \sum_i r_{ik} + 10\varepsilon`, :math:`\pi_k = n_k / \sum_j n_j`,
  :math:`\mu_k = \frac{1}{n_k}\sum_i r_{ik} x_i`,
  :math:`\Sigma_k = \frac{1}{n_k}\sum_i r_{ik}(x_i - \mu_k)(x_i - \mu_k)^\top
  + \text{reg\_covar}\,I`
  (diagonal: the same per feature, plus reg_covar).
- Stop when :math:`|L_t - L_{t-1}| < tol` (:math:`L_0 = -\infty`). Labels are the argmax of a
  final E-step with the returned parameters.

With ``reg_covar = 0`` the M-step maximises the expected complete-data log-likelihood, so
:math:`L_t` does not decrease (EM's ascent property); reg_covar > 0 trades that for
well-posed covariances. A covariance that is not positive definite raises ValueError (as
scikit-learn: increase reg_covar). All arithmetic is float64; outputs have the input's dtype.

Full log-densities use :math:`\Sigma = L L^\top` (Cholesky) and :math:`P = L^{-1}`:
:math:`\log \mathcal N(x \mid \mu, \Sigma) = -\frac12 (d \log 2\pi + \lVert P (x - \mu)\rVert^2)
+ \sum_j \log P_{jj}`. Diagonal ones are ``reference.naive_bayes``'s joint log-likelihood
kernel (naive Bayes is a diagonal mixture with known responsibilities).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _samples as s
from reference import _validate as v
from reference._blas import dot_serial
from reference._jit import kernel
from reference.naive_bayes import _argmax_rows, _jll

__all__ = ["gmm_fit", "gmm_predict", "gaussian_full_log_likelihood",
           "gaussian_full_log_likelihood_backward", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "diag")
_LOG_2PI = math.log(2.0 * math.pi)
_EPS64 = float(np.finfo(np.float64).eps)


@kernel()
def _precision_factors(cov, prec, half_logdet):
    """prec[k] = L_k^{-1} (lower) with cov[k] = L_k L_k^T; half_logdet[k] = sum_j log P_jj.
    Returns the first component that is not positive definite, or -1."""
    n_comp, d, _ = cov.shape
    low = np.empty((d, d))
    for k in range(n_comp):
        low[:] = 0.0
        for j in range(d):
            acc = cov[k, j, j]
            for m in range(j):
                acc -= low[j, m] * low[j, m]
            if not acc > 0.0:
                return k
            low[j, j] = np.sqrt(acc)
            for i in range(j + 1, d):
                acc = cov[k, i, j]
                for m in range(j):
                    acc -= low[i, m] * low[j, m]
                low[i, j] = acc / low[j, j]
        # invert the lower triangle column by column: L P = I
        prec[k] = 0.0
        for c in range(d):
            for i in range(c, d):
                acc = 1.0 if i == c else 0.0
                for m in range(c, i):
                    acc -= low[i, m] * prec[k, m, c]
                prec[k, i, c] = acc / low[i, i]
        h = 0.0
        for j in range(d):
            h += np.log(prec[k, j, j])
        half_logdet[k] = h
    return -1


@kernel(parallel=True)
def _full_log_prob(x, means, prec, half_logdet, log_w, out):
    """out[i, k] = log_w[k] + half_logdet[k] - (d log 2 pi + ||P_k (x_i - mu_k)||^2) / 2."""
    n, d = x.shape
    n_comp = means.shape[0]
    for i in prange(n):
        diff = np.empty(d)
        for k in range(n_comp):
            for f in range(d):
                diff[f] = np.float64(x[i, f]) - np.float64(means[k, f])
            maha = 0.0
            for j in range(d):
                z = 0.0
                for m in range(j + 1):
                    z += prec[k, j, m] * diff[m]
                maha += z * z
            out[i, k] = log_w[k] + half_logdet[k] - 0.5 * (d * _LOG_2PI + maha)


@kernel(parallel=True)
def _full_log_prob_bwd(x, means, prec, g, dx, dmeans):
    # s_ik = Sigma_k^{-1} (x_i - mu_k) = P^T P diff; dx_i = -sum_k g_ik s_ik,
    # dmu_k = sum_i g_ik s_ik (summed per component after the parallel loop over samples).
    n, d = x.shape
    n_comp = means.shape[0]
    contrib = np.empty((n, n_comp, d))
    for i in prange(n):
        diff = np.empty(d)
        z = np.empty(d)
        for f in range(d):
            dx[i, f] = 0.0
        for k in range(n_comp):
            for f in range(d):
                diff[f] = np.float64(x[i, f]) - np.float64(means[k, f])
            for j in range(d):
                acc = 0.0
                for m in range(j + 1):
                    acc += prec[k, j, m] * diff[m]
                z[j] = acc
            gik = np.float64(g[i, k])
            for m in range(d):
                acc = 0.0
                for j in range(m, d):
                    acc += prec[k, j, m] * z[j]
                contrib[i, k, m] = gik * acc
        for f in range(d):
            acc = 0.0
            for k in range(n_comp):
                acc += contrib[i, k, f]
            dx[i, f] = -acc
    for k in prange(n_comp):
        for f in range(d):
            acc = 0.0
            for i in range(n):
                acc += contrib[i, k, f]
            dmeans[k, f] = acc


@kernel(parallel=True)
def _normalize(jll, log_resp, lse):
    """lse_i = log sum_k exp(jll_ik); log_resp = jll - lse (rows with max -inf stay -inf)."""
    n, n_comp = jll.shape
    for i in prange(n):
        mx = jll[i, 0]
        for k in range(1, n_comp):
            mx = max(mx, jll[i, k])
        acc = 0.0
        for k in range(n_comp):
            acc += np.exp(jll[i, k] - mx)
        lse[i] = mx + np.log(acc)
        for k in range(n_comp):
            log_resp[i, k] = jll[i, k] - lse[i]


@kernel()
def _m_step_means(x, resp, weights, means):
    """weights and means from responsibilities; returns n_k (with scikit-learn's 10 eps)."""
    n_comp = resp.shape[1]
    nk = np.zeros(n_comp)
    for i in range(resp.shape[0]):
        for k in range(n_comp):
            nk[k] += resp[i, k]
    tot = 0.0
    for k in range(n_comp):
        nk[k] += 10.0 * _EPS64
        tot += nk[k]
    for k in range(n_comp):
        weights[k] = nk[k] / tot
    dot_serial(resp.T, x, means)
    for k in range(n_comp):
        for f in range(x.shape[1]):
            means[k, f] /= nk[k]
    return nk


@kernel()
def _weighted_diff(x, resp, means, k, diff, wdiff):
    for i in range(x.shape[0]):
        for f in range(x.shape[1]):
            t = x[i, f] - means[k, f]
            diff[i, f] = t
            wdiff[i, f] = resp[i, k] * t


@kernel()
def _m_step_full(x, resp, reg, weights, means, cov):
    nk = _m_step_means(x, resp, weights, means)
    n, d = x.shape
    diff = np.empty((n, d))
    wdiff = np.empty((n, d))
    for k in range(resp.shape[1]):
        _weighted_diff(x, resp, means, k, diff, wdiff)
        ck = cov[k]
        dot_serial(wdiff.T, diff, ck)
        for a in range(d):
            for b in range(d):
                ck[a, b] /= nk[k]
            ck[a, a] += reg


@kernel()
def _m_step_diag(x, resp, reg, weights, means, cov):
    nk = _m_step_means(x, resp, weights, means)
    n, d = x.shape
    for k in range(resp.shape[1]):
        for f in range(d):
            acc = 0.0
            for i in range(n):
                t = x[i, f] - means[k, f]
                acc += resp[i, k] * t * t
            cov[k, f] = acc / nk[k] + reg


def _check_params(x, weights, means, covariances, covariance_type):
    covariance_type = v.choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
    weights = v.float_array(weights, "weights", ndim=1, dtype=x.dtype)
    k = weights.shape[0]
    if k < 1:
        raise ValueError("weights must have at least one component, got 0")
    if not (np.isfinite(weights).all() and (weights > 0).all()
            and abs(float(weights.astype(np.float64).sum()) - 1.0) < 1e-5):
        raise ValueError("weights must be positive and sum to 1")
    means = s.matrix(means, "means", dtype=x.dtype, n_features=x.shape[1])
    if means.shape[0] != k:
        raise ValueError(f"means must have one row per component ({k}), got shape "
                         f"{means.shape}")
    d = x.shape[1]
    shape = (k, d, d) if covariance_type == "full" else (k, d)
    covariances = v.float_array(covariances, "covariances", dtype=x.dtype)
    if covariances.shape != shape:
        raise ValueError(f"covariances must have shape {shape} for covariance_type="
                         f"{covariance_type!r}, got {covariances.shape}")
    if not np.isfinite(covariances).all():
        raise ValueError("covariances must be finite")
    return weights, means, covariances, covariance_type


def _factors(cov64):
    prec = np.empty_like(cov64)
    half = np.empty(cov64.shape[0])
    bad = _precision_factors(cov64, prec, half)
    if bad >= 0:
        raise ValueError(f"covariances[{bad}] is not positive definite (for a fit: the "
                         f"component collapsed; increase reg_covar)")
    return prec, half


def _weighted_log_prob(x, log_w, means, cov, full):
    out = np.empty((x.shape[0], means.shape[0]))
    if full:
        if not np.allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-5, atol=0.0):
            raise ValueError("covariances must be symmetric matrices")
        prec, half = _factors(cov)
        _full_log_prob(x, means, prec, half, log_w, out)
    else:
        if not (cov > 0).all():
            raise ValueError("covariances (diagonal) must be > 0")
        _jll(x, means, cov, log_w, out)
    return out


def gmm_fit(x: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray,
            covariance_type: str = "full", reg_covar: float = 1e-6, tol: float = 1e-3,
            max_iter: int = 100):
    r"""EM for a Gaussian mixture from the given initial parameters (module docstring).

    .. math:: \max_{\pi, \mu, \Sigma} \frac1n \sum_i \log \sum_k \pi_k
              \mathcal N(x_i \mid \mu_k, \Sigma_k)

    Returns ``((weights, means, covariances, labels, lower_bounds), None)``: the fitted
    parameters in the input's dtype, labels (n,) int64, lower_bounds (n_iter,) the
    :math:`L_t` of each iteration in the input's dtype.
    """
    x = s.matrix(x, "X")
    weights, means, covariances, covariance_type = _check_params(
        x, weights, means, covariances, covariance_type)
    if x.shape[0] < weights.shape[0]:
        raise ValueError(f"n_samples ({x.shape[0]}) must be >= n_components "
                         f"({weights.shape[0]})")
    reg = v.real(reg_covar, "reg_covar", lo=0.0)
    tol = v.real(tol, "tol", lo=0.0)
    max_iter = v.integer(max_iter, "max_iter", lo=1)
    full = covariance_type == "full"
    x64 = s.as_f64(x)
    w = weights.astype(np.float64)
    mu = means.astype(np.float64)
    cov = covariances.astype(np.float64)
    n, k = x.shape[0], w.shape[0]
    log_resp = np.empty((n, k))
    lse = np.empty(n)
    bounds = []
    prev = -np.inf
    for _ in range(max_iter):
        jll = _weighted_log_prob(x64, np.log(w), mu, cov, full)
        _normalize(jll, log_resp, lse)
        (_m_step_full if full else _m_step_diag)(x64, np.exp(log_resp), reg, w, mu, cov)
        bound = float(lse.mean())
        bounds.append(bound)
        if abs(bound - prev) < tol:
            break
        prev = bound
    labels = np.empty(n, np.int64)
    _argmax_rows(_weighted_log_prob(x64, np.log(w), mu, cov, full), labels)
    dt = x.dtype
    return (w.astype(dt), mu.astype(dt), cov.astype(dt), labels,
            np.asarray(bounds, dt)), None


def gmm_predict(x: np.ndarray, weights: np.ndarray, means: np.ndarray,
                covariances: np.ndarray, covariance_type: str = "full"):
    r"""The component of largest weighted log-density (first among equal ones).

    .. math:: \hat k_i = \operatorname*{arg\,max}_k \log\pi_k + \log\mathcal N(x_i \mid
              \mu_k, \Sigma_k)

    Returns ``(labels, None)``, int64 of shape (n,).
    """
    x = s.matrix(x, "X", min_rows=0)
    weights, means, covariances, covariance_type = _check_params(
        x, weights, means, covariances, covariance_type)
    jll = _weighted_log_prob(s.as_f64(x), np.log(weights.astype(np.float64)),
                             means.astype(np.float64), covariances.astype(np.float64),
                             covariance_type == "full")
    labels = np.empty(x.shape[0], np.int64)
    _argmax_rows(jll, labels)
    return labels, None


class FullCtx(NamedTuple):
    x: np.ndarray
    means: np.ndarray
    prec: np.ndarray


def gaussian_full_log_likelihood(x: np.ndarray, means: np.ndarray, covariances: np.ndarray,
                                 weights: np.ndarray):
    r"""Weighted log-density of each sample under each full-covariance Gaussian (the E-step).

    .. math:: J_{ik} = \log \pi_k - \frac12\big(d \log 2\pi + \log\det\Sigma_k
              + (x_i - \mu_k)^\top \Sigma_k^{-1} (x_i - \mu_k)\big)

    Returns ``(J, ctx)``, J (n, K) in the input's dtype (float64 inside). Backward returns
    ``(dX, dmeans)`` (the covariance's gradient is not provided).
    """
    x_in, means_in = x, means
    x = s.matrix(x, "X", min_rows=0)
    weights, means, covariances, _ = _check_params(x, weights, means, covariances, "full")
    cov64 = covariances.astype(np.float64)
    if not np.allclose(cov64, np.swapaxes(cov64, 1, 2), rtol=1e-5, atol=0.0):
        raise ValueError("covariances must be symmetric matrices")
    prec, half = _factors(cov64)
    out = np.empty((x.shape[0], means.shape[0]), x.dtype)
    _full_log_prob(x, means, prec, half, np.log(weights.astype(np.float64)), out)
    return out, FullCtx(v.keep(x, x_in), v.keep(means, means_in), prec)


def gaussian_full_log_likelihood_backward(ctx: FullCtx, grad_out: np.ndarray):
    r"""Gradients for an upstream gradient :math:`G`, with
    :math:`s_{ik} = \Sigma_k^{-1}(x_i - \mu_k)`:

    .. math:: \partial x_i = -\sum_k G_{ik} s_{ik}, \qquad \partial\mu_k = \sum_i G_{ik} s_{ik}

    Returns ``(dX, dmeans)``.
    """
    v.ctx_of(ctx, FullCtx, "gaussian_full_log_likelihood")
    g = v.grad_like(grad_out, "grad_out",
                    np.empty((ctx.x.shape[0], ctx.means.shape[0]), ctx.x.dtype))
    dx = np.empty_like(ctx.x)
    dmeans = np.empty_like(ctx.means)
    _full_log_prob_bwd(ctx.x, ctx.means, ctx.prec, g, dx, dmeans)
    return dx, dmeans
