r"""Nearest neighbours: squared distances (forward + backward), exact k-nearest neighbours,
k-NN classification and regression, as scikit-learn's ``KNeighborsClassifier`` /
``KNeighborsRegressor`` with ``weights='uniform'``, ``metric='euclidean'``, ``algorithm='brute'``.

Conventions::

    D, ctx = sq_distances(X, Y)                  # (n, m): ||x_i - y_j||^2
    dX, dY = sq_distances_backward(ctx, dD)
    (dist, idx), _ = kneighbors(X_train, X_query, k)   # (m, k) each, nearest first
    labels, _ = knn_classify(X_train, y_train, X_query, k)
    values, _ = knn_regress(X_train, y_train, X_query, k)

k-NN has no fit beyond keeping the training data, so only the prediction is timed.

**Exact neighbours.** Candidates are screened with the expanded form
:math:`\|y\|^2 - 2\,x\cdot y + \|x\|^2` (one float64 matrix product, as scikit-learn), whose
rounding error is at most :math:`B = 2(d+2)\,\varepsilon\,(\|q\|^2 + \max_j \|x_j\|^2)`
(:math:`\gamma_d` bounds on the dot product and the norms). Every training point whose screened
value is within :math:`2B` of the k-th smallest is a candidate; the true k nearest are among
them (each true neighbour's screened value is at most its exact value plus B, and the exact k-th
distance is at most the screened k-th plus B). Candidates then get their distance summed
directly in float64, :math:`\sum_f (q_f - x_f)^2`, and the k smallest are kept, **ties broken
by the lower training index**. So the neighbours are those of the exact float64 distances, and
the returned distances are those sums' square roots rounded once to the input's dtype.
scikit-learn's ordering among equal distances is unspecified; its predictions can differ from
these only where the k-th and (k+1)-th distances tie.

Votes: the most frequent label among the k neighbours, the smallest label among equally
frequent ones (scikit-learn's ``mode``). Regression: the mean of the neighbours' targets,
summed in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from reference import _samples as s
from reference import _validate as v
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["sq_distances", "sq_distances_backward", "kneighbors", "knn_classify", "knn_regress"]

_EPS64 = float(np.finfo(np.float64).eps)
# Screened distances are computed for blocks of queries of about this many entries (16 MiB).
_BLOCK_ENTRIES = 1 << 21


# ---------------------------------------------------------------------------------------------
# squared distances, forward and backward


class DistCtx(NamedTuple):
    x: np.ndarray
    y: np.ndarray


@kernel(reduce=True)
def _sqdist_row(a, b):
    """``sum_f (a_f - b_f)^2`` in float64."""
    acc = 0.0
    for f in range(a.shape[0]):
        t = np.float64(a[f]) - np.float64(b[f])
        acc += t * t
    return acc


@kernel(parallel=True)
def _sq_distances(x, y, out):
    n, m = out.shape
    if n * m * x.shape[1] < PARALLEL_MIN:
        for i in range(n):
            for j in range(m):
                out[i, j] = _sqdist_row(x[i], y[j])
    else:
        for i in prange(n):
            for j in range(m):
                out[i, j] = _sqdist_row(x[i], y[j])


@kernel(parallel=True)
def _sq_distances_bwd(x, y, g, dx, dy):
    # dx_i = 2 sum_j g_ij (x_i - y_j); dy_j = 2 sum_i g_ij (y_j - x_i), in float64.
    n, d = x.shape
    m = y.shape[0]
    for i in prange(n):
        for f in range(d):
            acc = 0.0
            xf = np.float64(x[i, f])
            for j in range(m):
                acc += np.float64(g[i, j]) * (xf - np.float64(y[j, f]))
            dx[i, f] = 2.0 * acc
    for j in prange(m):
        for f in range(d):
            acc = 0.0
            yf = np.float64(y[j, f])
            for i in range(n):
                acc += np.float64(g[i, j]) * (yf - np.float64(x[i, f]))
            dy[j, f] = 2.0 * acc


def sq_distances(x: np.ndarray, y: np.ndarray):
    r"""Pairwise squared Euclidean distances, summed directly (no expanded form).

    .. math:: D_{ij} = \sum_f (x_{if} - y_{jf})^2

    ``x`` (n, d) and ``y`` (m, d) of one float dtype; ``D`` (n, m) of that dtype, each entry
    accumulated in float64 and rounded once. Backward returns ``(dX, dY)``.
    """
    x_in, y_in = x, y
    x = v.float_array(x, "x", ndim=2)
    y = v.float_array(y, "y", ndim=2, dtype=x.dtype)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"y must have {x.shape[1]} columns like x, got shape {y.shape}")
    out = np.empty((x.shape[0], y.shape[0]), x.dtype)
    _sq_distances(x, y, out)
    return out, DistCtx(v.keep(x, x_in), v.keep(y, y_in))


def sq_distances_backward(ctx: DistCtx, grad_out: np.ndarray):
    r"""Gradients of the squared distances for an upstream gradient :math:`G`.

    .. math:: \partial x_i = 2 \sum_j G_{ij} (x_i - y_j), \qquad
              \partial y_j = 2 \sum_i G_{ij} (y_j - x_i)

    Returns ``(dX, dY)``.
    """
    v.ctx_of(ctx, DistCtx, "sq_distances")
    g = v.grad_like(grad_out, "grad_out", np.empty((ctx.x.shape[0], ctx.y.shape[0]),
                                                   ctx.x.dtype))
    dx = np.empty_like(ctx.x)
    dy = np.empty_like(ctx.y)
    _sq_distances_bwd(ctx.x, ctx.y, g, dx, dy)
    return dx, dy


# ---------------------------------------------------------------------------------------------
# exact k nearest neighbours


@kernel()
def _insert(vals, idxs, count, val, idx):
    """Insert (val, idx) into the ascending list vals[:count] of capacity len(vals); returns
    the new count. Equal values keep the earlier entry first."""
    k = vals.shape[0]
    if count == k and val >= vals[k - 1]:
        return count
    pos = count if count < k else k - 1
    while pos > 0 and vals[pos - 1] > val:
        if pos < k:
            vals[pos] = vals[pos - 1]
            idxs[pos] = idxs[pos - 1]
        pos -= 1
    vals[pos] = val
    idxs[pos] = idx
    return count + 1 if count < k else count


@kernel()
def _refine_row(xt, q, screened, bound, k, dist_out, idx_out):
    """Exact k nearest of one query from its screened row (see the module docstring)."""
    n = screened.shape[0]
    vals = np.empty(k)
    idxs = np.empty(k, np.int64)
    count = 0
    for j in range(n):
        count = _insert(vals, idxs, count, screened[j], j)
    limit = vals[k - 1] + 2.0 * bound
    n_cand = 0
    for j in range(n):
        if screened[j] <= limit:
            n_cand += 1
    cand = np.empty(n_cand, np.int64)
    exact = np.empty(n_cand)
    c = 0
    for j in range(n):
        if screened[j] <= limit:
            cand[c] = j
            exact[c] = _sqdist_row(q, xt[j])
            c += 1
    order = np.argsort(exact, kind="mergesort")  # stable: equal distances keep index order
    for r in range(k):
        dist_out[r] = np.sqrt(exact[order[r]])
        idx_out[r] = cand[order[r]]


@kernel(parallel=True)
def _kneighbors(xt, xt64, xt_sq, xq, xq64, k, dist, idx):
    n, d = xt.shape
    m = xq.shape[0]
    block = max(1, min(m, _BLOCK_ENTRIES // max(n, 1)))
    g = np.empty((block, n))
    max_sq = 0.0
    for j in range(n):
        max_sq = max(max_sq, xt_sq[j])
    coef = 2.0 * (d + 2) * _EPS64
    for b0 in range(0, m, block):
        b1 = min(m, b0 + block)
        gb = g[: b1 - b0]
        np.dot(xq64[b0:b1], xt64.T, gb)
        for r in prange(b1 - b0):
            i = b0 + r
            q_sq = 0.0
            for f in range(d):
                q_sq += xq64[i, f] * xq64[i, f]
            for j in range(n):
                gb[r, j] = xt_sq[j] - 2.0 * gb[r, j]
            _refine_row(xt, xq[i], gb[r], coef * (q_sq + max_sq), k, dist[i], idx[i])


@kernel(parallel=True)
def _row_sq_norms(x, out):
    for i in prange(x.shape[0]):
        acc = 0.0
        for f in range(x.shape[1]):
            acc += x[i, f] * x[i, f]
        out[i] = acc


def _neighbors(x_train, x_query, k):
    xt64 = s.as_f64(x_train)
    xq64 = s.as_f64(x_query)
    xt_sq = np.empty(x_train.shape[0])
    _row_sq_norms(xt64, xt_sq)
    dist = np.empty((x_query.shape[0], k))
    idx = np.empty((x_query.shape[0], k), np.int64)
    _kneighbors(x_train, xt64, xt_sq, x_query, xq64, k, dist, idx)
    return dist, idx


def _check_common(x_train, x_query, k):
    x_train = s.matrix(x_train, "X_train")
    x_query = s.matrix(x_query, "X_query", dtype=x_train.dtype, n_features=x_train.shape[1],
                       min_rows=0)
    k = v.integer(k, "k", lo=1)
    if k > x_train.shape[0]:
        raise ValueError(f"k must be at most the number of training samples "
                         f"({x_train.shape[0]}), got {k}")
    return x_train, x_query, k


def kneighbors(x_train: np.ndarray, x_query: np.ndarray, k: int = 5):
    r"""The k nearest training points of each query, nearest first (ties: lower index first).

    .. math:: \mathrm{dist}_{ir} = \lVert q_i - x_{\pi_i(r)} \rVert_2, \quad
              \pi_i \text{ sorts } j \mapsto (\lVert q_i - x_j\rVert^2, j)

    Returns ``((dist, idx), None)``: ``dist`` (m, k) in the input's dtype, ``idx`` (m, k) int64.
    """
    x_train, x_query, k = _check_common(x_train, x_query, k)
    dist, idx = _neighbors(x_train, x_query, k)
    return (dist.astype(x_train.dtype), idx), None


@kernel(parallel=True)
def _vote(y, idx, n_classes, out):
    m, k = idx.shape
    for i in prange(m):
        counts = np.zeros(n_classes, np.int64)
        for r in range(k):
            counts[y[idx[i, r]]] += 1
        best = 0
        for c in range(1, n_classes):
            if counts[c] > counts[best]:
                best = c
        out[i] = best


@kernel(parallel=True)
def _mean_targets(y, idx, out):
    m, k = idx.shape
    for i in prange(m):
        acc = 0.0
        for r in range(k):
            acc += np.float64(y[idx[i, r]])
        out[i] = acc / k


def knn_classify(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, k: int = 5):
    r"""k-NN classification with uniform weights (scikit-learn's ``KNeighborsClassifier``).

    .. math:: \hat y_i = \operatorname*{arg\,max}_c \#\{r < k : y_{\pi_i(r)} = c\}

    the smallest class among equally frequent ones. ``y_train`` holds integer labels >= 0.
    Returns ``(labels, None)``, labels int64 of shape (m,).
    """
    x_train, x_query, k = _check_common(x_train, x_query, k)
    y_train = s.class_labels(y_train, "y_train", x_train.shape[0])
    _, idx = _neighbors(x_train, x_query, k)
    out = np.empty(x_query.shape[0], np.int64)
    _vote(y_train, idx, int(y_train.max()) + 1, out)
    return out, None


def knn_regress(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, k: int = 5):
    r"""k-NN regression with uniform weights (scikit-learn's ``KNeighborsRegressor``).

    .. math:: \hat y_i = \frac1k \sum_{r<k} y_{\pi_i(r)}

    ``y_train`` float, the dtype of ``X_train``. Returns ``(values, None)``, shape (m,).
    """
    x_train, x_query, k = _check_common(x_train, x_query, k)
    y_train = s.targets(y_train, "y_train", x_train.shape[0], x_train.dtype)
    _, idx = _neighbors(x_train, x_query, k)
    out = np.empty(x_query.shape[0], x_train.dtype)
    _mean_targets(y_train, idx, out)
    return out, None
