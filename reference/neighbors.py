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
:math:`\|y\|^2 - 2\,x\cdot y + \|x\|^2` (float64 matrix products, as scikit-learn), whose
rounding error is at most :math:`B = 2(d+2)\,\varepsilon\,(\|q\|^2 + \max_j \|x_j\|^2)`
(:math:`\gamma_d` bounds on the dot product and the norms). Each query sweeps the training
points in index order, keeping its k best so far by the directly summed float64 distance
:math:`\sum_f (q_f - x_f)^2`, **ties broken by the lower training index**. A point whose
screened value exceeds the current k-th best exact distance plus B is skipped without being
summed: its exact distance is then strictly above the current k-th, which is at least the final
k-th, so it cannot be a neighbour. Every other point gets its exact distance and competes. So
the neighbours are those of the exact float64 distances, and the returned distances are those
sums' square roots rounded once to the input's dtype.

Work: queries go in tasks of 64 (in parallel), training points in tiles sized so that each
screening product makes at most ``reference._blas.SERIAL_MNK`` multiply-adds: OpenBLAS then
runs it on the calling thread, so its threads never compete with Numba's (scikit-learn's
brute-force search does the same: one-thread BLAS inside OpenMP). The k best are kept by
insertion into a sorted list of k, no sort of the n distances.

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
from reference._blas import SERIAL_MNK
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["sq_distances", "sq_distances_backward", "kneighbors", "knn_classify", "knn_regress"]

_EPS64 = float(np.finfo(np.float64).eps)
# Queries per parallel task (each task keeps its queries' k best while it sweeps the training
# points). Measured here (100k x 100 training points, 500 queries, paired with scikit-learn):
# 64 rows x 40 points per product 0.85x scikit-learn's time, 32 x 81 1.15x, 8 x 327 2.6x
# (OpenBLAS is slow on products of few rows); 128 x 20 no better than 64.
_QUERY_ROWS = 64


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


@kernel()
def _sq_grad_row(a, i, b, g, row, out):
    """``out[i] = 2 sum_j w_j (a_i - b_j)`` in float64, with ``w_j = g[i, j]`` when ``row`` else
    ``g[j, i]``: the sum over j in order for every feature at once (the features are the
    vector lanes; the terms and their order are those of a sum per feature)."""
    d = a.shape[1]
    acc = np.zeros(d)
    for j in range(b.shape[0]):
        w = np.float64(g[i, j]) if row else np.float64(g[j, i])
        for f in range(d):
            acc[f] += w * (np.float64(a[i, f]) - np.float64(b[j, f]))
    for f in range(d):
        out[i, f] = 2.0 * acc[f]


@kernel(parallel=True)
def _sq_distances_bwd(x, y, g, dx, dy):
    # dx_i = 2 sum_j g_ij (x_i - y_j); dy_j = 2 sum_i g_ij (y_j - x_i), in float64. A loop per
    # feature with the sum over j inside read y (and for dy, x and g) a column at a time: the
    # medium size (2048 x 64 against 256 x 64) took 200 ms against torch's 54.
    n = x.shape[0]
    m = y.shape[0]
    if n * m * x.shape[1] < PARALLEL_MIN:
        for i in range(n):
            _sq_grad_row(x, i, y, g, True, dx)
        for j in range(m):
            _sq_grad_row(y, j, x, g, False, dy)
    else:
        for i in prange(n):
            _sq_grad_row(x, i, y, g, True, dx)
        for j in prange(m):
            _sq_grad_row(y, j, x, g, False, dy)


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
def _knn_rows(xt, xt64, xt_sq, max_sq, xq, xq64, q0, q1, k, buf, dist, idx):
    """Exact k nearest of queries q0..q1 (see the module docstring), training points taken in
    tiles whose screening product stays on the calling thread."""
    n, d = xt.shape
    r = q1 - q0
    tile = max(1, buf.shape[0] // max(r, 1))
    coef = 2.0 * (d + 2) * _EPS64
    vals = np.empty((r, k))
    ids = np.empty((r, k), np.int64)
    counts = np.zeros(r, np.int64)
    q_sq = np.empty(r)
    bound = np.empty(r)
    limit = np.full(r, np.inf)
    for a in range(r):
        acc = 0.0
        for f in range(d):
            acc += xq64[q0 + a, f] * xq64[q0 + a, f]
        q_sq[a] = acc
        bound[a] = coef * (acc + max_sq)
    for j0 in range(0, n, tile):
        j1 = min(n, j0 + tile)
        w = j1 - j0
        prod = buf[: r * w].reshape((r, w))
        np.dot(xq64[q0:q1], xt64[j0:j1].T, prod)  # (r, d) @ (d, w): under SERIAL_MNK
        for a in range(r):
            lim = limit[a]
            # Most rows of a tile hold no candidate once k are kept: count them first in a loop
            # without branches (it vectorises), and scan only rows that have one.
            hits = 0
            for b in range(w):
                hits += xt_sq[j0 + b] - 2.0 * prod[a, b] + q_sq[a] <= lim
            if hits == 0:
                continue
            for b in range(w):
                screened = xt_sq[j0 + b] - 2.0 * prod[a, b] + q_sq[a]
                if screened <= lim:
                    exact = _sqdist_row(xq[q0 + a], xt[j0 + b])
                    counts[a] = _insert(vals[a], ids[a], counts[a], exact, j0 + b)
                    if counts[a] == k:
                        lim = vals[a, k - 1] + bound[a]
            limit[a] = lim
    for a in range(r):
        for c in range(k):
            dist[q0 + a, c] = np.sqrt(vals[a, c])
            idx[q0 + a, c] = ids[a, c]


@kernel(parallel=True)
def _kneighbors_parallel(xt, xt64, xt_sq, max_sq, xq, xq64, k, rows, tile, dist, idx):
    m = xq.shape[0]
    for t in prange((m + rows - 1) // rows):
        buf = np.empty(rows * tile)
        _knn_rows(xt, xt64, xt_sq, max_sq, xq, xq64, t * rows, min(m, (t + 1) * rows), k, buf,
                  dist, idx)


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
    n, d = x_train.shape
    m = x_query.shape[0]
    xt_sq = np.empty(n)
    _row_sq_norms(xt64, xt_sq)
    max_sq = float(xt_sq.max())
    dist = np.empty((m, k))
    idx = np.empty((m, k), np.int64)
    if m == 0:
        return dist, idx
    # Tiles of _QUERY_ROWS queries x `tile` training points: each screening product is at most
    # SERIAL_MNK multiply-adds, so OpenBLAS runs it on the calling thread (no BLAS threads
    # beside Numba's), and its operands ((rows + tile) d doubles) stay in L2.
    serial = m * n * d < 16 * PARALLEL_MIN or m <= _QUERY_ROWS
    rows = max(m, 1) if serial else _QUERY_ROWS
    tile = min(n, max(8, SERIAL_MNK // (rows * d)))
    if serial:
        _knn_rows(x_train, xt64, xt_sq, max_sq, x_query, xq64, 0, m, k, np.empty(rows * tile),
                  dist, idx)
    else:
        _kneighbors_parallel(x_train, xt64, xt_sq, max_sq, x_query, xq64, k, rows, tile, dist,
                             idx)
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
