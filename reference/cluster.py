r"""Clustering: k-means (Lloyd) and agglomerative hierarchical clustering (single, complete,
average, Ward).

Conventions::

    (centers, labels, inertia, n_iter, history), _ = kmeans_fit(X, init, max_iter=300, tol=1e-4)
    (labels, inertia), _ = kmeans_predict(X, centers)
    Z, _ = linkage(X, method="ward")          # scipy.cluster.hierarchy.linkage's matrix

**k-means** is scikit-learn's ``KMeans(algorithm="lloyd", n_init=1, init=centers)``: from the
given initial centres (randomness is the caller's: pass scikit-learn the same array), each
iteration assigns every sample to its nearest centre and moves each centre to the mean of its
samples. An empty cluster takes the sample farthest from its own centre (scikit-learn's
relocation: that sample leaves its old cluster's sum), the farthest samples going to the
empty clusters in order. It stops when the labels did not change ("strict convergence"),
or when :math:`\sum_c \lVert c^{new} - c^{old} \rVert^2 \le tol \cdot \frac1d \sum_f
\operatorname{Var}(X_{:,f})` (scikit-learn's tolerance scaled by the mean of the per-feature
variances), or after ``max_iter`` iterations; unless strictly converged, the labels are then
recomputed for the final centres. Inertia is :math:`\sum_i \lVert x_i - c_{l_i}\rVert^2`.
``history[t]`` is the inertia of iteration t's assignment (before its update), so Lloyd's
descent property reads: ``history`` does not increase.

Assignment uses the expanded form :math:`\lVert c\rVert^2 - 2\,x\cdot c` (float64 matrix
products, as scikit-learn) and re-checks with directly summed distances any sample whose two best
centres are within the expanded form's error bound, so labels are those of the exact float64
distances (ties: the lower centre index). All arithmetic is float64; outputs are rounded to the
input's dtype once. Work, as scikit-learn's Lloyd: fixed row ranges are assigned in parallel,
each in chunks whose product ``(chunk, d) @ (d, k)`` stays under OpenBLAS's threading threshold
(``reference._blas.SERIAL_MNK``: one BLAS thread inside each Numba thread), and each range adds
its samples to its own partial sums of the clusters, which the update then adds up in range
order (the same sums whatever the thread count).

**Linkage** is ``scipy.cluster.hierarchy.linkage(X, method, metric="euclidean")``: row t of the
(n-1, 4) matrix merges clusters ``Z[t, 0] < Z[t, 1]`` at height ``Z[t, 2]`` into cluster n+t of
``Z[t, 3]`` samples; rows are in non-decreasing height (a stable sort of the merges). Heights are
Euclidean distances updated by the Lance-Williams formulas (single: min, complete: max,
average: size-weighted mean, Ward:
:math:`d(u, s\cup t) = \sqrt{\frac{(n_u+n_s) d_{us}^2 + (n_u+n_t) d_{ut}^2 - n_u d_{st}^2}
{n_u+n_s+n_t}}`). Single linkage grows a minimum spanning tree (Prim); the others follow
nearest-neighbour chains, as scipy. O(n^2) memory.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from reference import _samples as s
from reference import _validate as v
from reference._blas import SERIAL_MNK
from reference._jit import PARALLEL_MIN, kernel

__all__ = ["kmeans_fit", "kmeans_predict", "linkage", "LINKAGE_METHODS"]

_EPS64 = float(np.finfo(np.float64).eps)
_CHUNK = 1024  # at most this many samples per screening product ((chunk, d) @ (d, k))
_TASK_ROWS = 512  # least rows of a parallel assignment task
_MAX_TASKS = 64  # most tasks (each keeps (k, d) partial sums for the mean update)


# ---------------------------------------------------------------------------------------------
# k-means


@kernel(reduce=True)
def _sqdist(a, b):
    acc = 0.0
    for f in range(a.shape[0]):
        t = a[f] - b[f]
        acc += t * t
    return acc


@kernel(reduce=True)
def _sqnorm(a):
    acc = 0.0
    for f in range(a.shape[0]):
        acc += a[f] * a[f]
    return acc


@kernel()
def _centre_norms(centers, c_sq):
    for c in range(centers.shape[0]):
        c_sq[c] = _sqnorm(centers[c])


@kernel()
def _assign_rows(x, x_sq, centers, c_sq, i0, i1, chunk, labels, dist, sums, counts):
    """Assign samples i0..i1 (labels, exact squared distances) in chunks of ``chunk`` rows, each
    screened by one product ``(chunk, d) @ (d, k)`` on the calling thread; add every sample to
    ``sums[label]`` and ``counts[label]`` (not when ``sums`` has no rows: a prediction).
    ``x_sq`` holds the samples' squared norms, or has no entries: then they are summed here,
    while the row is in cache. Returns the range's inertia."""
    n, d = x.shape
    k = centers.shape[0]
    max_c = c_sq.max()
    buf = np.empty(min(chunk, i1 - i0) * k)
    inertia = 0.0
    for r0 in range(i0, i1, chunk):
        r1 = min(i1, r0 + chunk)
        prod = buf[: (r1 - r0) * k].reshape((r1 - r0, k))
        np.dot(x[r0:r1], centers.T, prod)
        for r in range(r1 - r0):
            i = r0 + r
            best = 0
            second = np.inf
            best_v = c_sq[0] - 2.0 * prod[r, 0]
            for c in range(1, k):
                val = c_sq[c] - 2.0 * prod[r, c]
                if val < best_v:
                    second = best_v
                    best_v = val
                    best = c
                elif val < second:
                    second = val
            if x_sq.shape[0] > 0:
                xi_sq = x_sq[i]
            else:
                xi_sq = _sqnorm(x[i])
            bound = 2.0 * (d + 2) * _EPS64 * (xi_sq + max_c)
            if second - best_v <= 2.0 * bound:
                # near tie: decide on directly summed distances
                best = 0
                best_d = _sqdist(x[i], centers[0])
                for c in range(1, k):
                    dc = _sqdist(x[i], centers[c])
                    if dc < best_d:
                        best_d = dc
                        best = c
            labels[i] = best
            dd = _sqdist(x[i], centers[best])
            dist[i] = dd
            inertia += dd
            if sums.shape[0] > 0:
                counts[best] += 1.0
                for f in range(d):
                    sums[best, f] += x[i, f]
    return inertia


@kernel(parallel=True)
def _assign_parallel(x, x_sq, centers, c_sq, task_rows, chunk, labels, dist, sums, counts,
                     inertia):
    n = x.shape[0]
    for t in prange(sums.shape[0]):
        sums[t] = 0.0
        counts[t] = 0.0
        inertia[t] = _assign_rows(x, x_sq, centers, c_sq, t * task_rows,
                                  min(n, (t + 1) * task_rows), chunk, labels, dist, sums[t],
                                  counts[t])


@kernel()
def _assign(x, x_sq, centers, labels, dist, sums, counts, inertia):
    """labels[i] = argmin_c ||x_i - c||^2 (exact float64, lower index on ties); dist[i] that
    squared distance; per task t, sums[t, c] / counts[t, c] the sum / count of its samples
    labelled c and inertia[t] their squared distances' sum. The tasks (fixed row ranges, so
    the sums' order does not depend on the thread count) run in parallel when there are
    several."""
    n, d = x.shape
    k = centers.shape[0]
    c_sq = np.empty(k)
    _centre_norms(centers, c_sq)
    n_tasks = sums.shape[0]
    task_rows = (n + n_tasks - 1) // n_tasks
    # rows per product: at most SERIAL_MNK multiply-adds, so OpenBLAS stays on this thread
    chunk = max(1, min(_CHUNK, SERIAL_MNK // max(1, d * k)))
    if n_tasks == 1:
        sums[0] = 0.0
        counts[0] = 0.0
        inertia[0] = _assign_rows(x, x_sq, centers, c_sq, 0, n, chunk, labels, dist, sums[0],
                                  counts[0])
    else:
        _assign_parallel(x, x_sq, centers, c_sq, task_rows, chunk, labels, dist, sums, counts,
                         inertia)


@kernel()
def _update(x, labels, dist, part_sums, part_counts, centers_old, centers_new):
    """centers_new = cluster means from the tasks' partial sums (empty clusters relocated);
    returns the count of empty clusters relocated."""
    n, d = x.shape
    k = centers_new.shape[0]
    counts = np.zeros(k)
    centers_new[:] = 0.0
    for t in range(part_sums.shape[0]):
        for c in range(k):
            counts[c] += part_counts[t, c]
            for f in range(d):
                centers_new[c, f] += part_sums[t, c, f]
    n_empty = 0
    for c in range(k):
        if counts[c] == 0.0:
            n_empty += 1
    if n_empty > 0 and dist.max() > 0.0:
        far = np.argsort(-dist, kind="mergesort")
        e = 0
        for c in range(k):
            if counts[c] == 0.0:
                j = far[e]
                e += 1
                old = labels[j]
                for f in range(d):
                    centers_new[old, f] -= x[j, f]
                    centers_new[c, f] = x[j, f]
                counts[c] = 1.0
                counts[old] -= 1.0
    for c in range(k):
        if counts[c] > 0.0:
            for f in range(d):
                centers_new[c, f] /= counts[c]
        else:  # more clusters than distinct samples: the centre stays
            for f in range(d):
                centers_new[c, f] = centers_old[c, f]
    return n_empty


@kernel(parallel=True)
def _row_sq(x, out):
    for i in prange(x.shape[0]):
        acc = 0.0
        for f in range(x.shape[1]):
            acc += x[i, f] * x[i, f]
        out[i] = acc


@kernel()
def _lloyd(x, x_sq, init, max_iter, tol, n_tasks, labels, history):
    n, d = x.shape
    k = init.shape[0]
    centers = init.copy()
    new = np.empty_like(centers)
    dist = np.empty(n)
    sums = np.empty((n_tasks, k, d))
    counts = np.empty((n_tasks, k))
    inertia = np.empty(n_tasks)
    old_labels = np.full(n, -1, np.int64)
    strict = False
    it = 0
    for it in range(max_iter):
        _assign(x, x_sq, centers, labels, dist, sums, counts, inertia)
        history[it] = inertia.sum()
        _update(x, labels, dist, sums, counts, centers, new)
        shift = 0.0
        for c in range(k):
            for f in range(d):
                t = new[c, f] - centers[c, f]
                shift += t * t
        centers, new = new, centers
        if np.array_equal(labels, old_labels):
            strict = True
            break
        if shift <= tol:
            break
        old_labels[:] = labels
    if not strict:
        _assign(x, x_sq, centers, labels, dist, sums, counts, inertia)
    return centers, inertia.sum(), it + 1


def _n_tasks(n: int, d: int, k: int) -> int:
    """Row ranges assigned in parallel: one below PARALLEL_MIN multiply-adds per pass, else
    ranges of at least _TASK_ROWS rows, at most _MAX_TASKS of them."""
    if n * d * k < PARALLEL_MIN:
        return 1
    return max(1, min(_MAX_TASKS, n // _TASK_ROWS))


def kmeans_fit(x: np.ndarray, init: np.ndarray, max_iter: int = 300, tol: float = 1e-4):
    r"""Lloyd's k-means from the given initial centres (see the module docstring).

    .. math:: \min_{c, l} \sum_i \lVert x_i - c_{l_i} \rVert^2

    Returns ``((centers, labels, inertia, n_iter, history), None)``: centers (k, d) and
    inertia (0-d) in the input's dtype, labels (n,) int64, n_iter a 0-d int64 array,
    history (n_iter,) the inertia of each iteration's assignment, in the input's dtype.
    """
    x = s.matrix(x, "X")
    init = s.matrix(init, "init", dtype=x.dtype, n_features=x.shape[1])
    if init.shape[0] > x.shape[0]:
        raise ValueError(f"n_samples ({x.shape[0]}) must be >= n_clusters (the rows of init, "
                         f"{init.shape[0]})")
    max_iter = v.integer(max_iter, "max_iter", lo=1)
    tol = v.real(tol, "tol", lo=0.0)
    x64 = s.as_f64(x)
    scaled_tol = float(np.mean(np.var(x64, axis=0))) * tol if tol > 0 else 0.0
    x_sq = np.empty(x.shape[0])
    _row_sq(x64, x_sq)
    labels = np.empty(x.shape[0], np.int64)
    history = np.empty(max_iter)
    n, d = x.shape
    centers, inertia, n_iter = _lloyd(x64, x_sq, s.as_f64(init), max_iter, scaled_tol,
                                      _n_tasks(n, d, init.shape[0]), labels, history)
    dt = x.dtype
    return (centers.astype(dt), labels, np.asarray(inertia, dt), np.asarray(n_iter, np.int64),
            history[:n_iter].astype(dt)), None


def kmeans_predict(x: np.ndarray, centers: np.ndarray):
    r"""Nearest centre of each sample, and the inertia of that assignment.

    .. math:: l_i = \operatorname*{arg\,min}_c \lVert x_i - c \rVert^2, \qquad
              I = \sum_i \lVert x_i - c_{l_i}\rVert^2

    Returns ``((labels, inertia), None)``: labels (n,) int64, inertia 0-d of the input's dtype.
    """
    x = s.matrix(x, "X")
    centers = s.matrix(centers, "centers", dtype=x.dtype, n_features=x.shape[1])
    x64 = s.as_f64(x)
    n, d = x.shape
    k = centers.shape[0]
    n_tasks = _n_tasks(n, d, k)
    labels = np.empty(n, np.int64)
    inertia = np.empty(n_tasks)
    # no norms precomputed (each is summed beside its sample's distance) and no cluster sums
    _assign(x64, np.empty(0), s.as_f64(centers), labels, np.empty(n),
            np.empty((n_tasks, 0, d)), np.empty((n_tasks, 0)), inertia)
    return (labels, np.asarray(inertia.sum(), x.dtype)), None


# ---------------------------------------------------------------------------------------------
# hierarchical clustering

LINKAGE_METHODS = ("single", "complete", "average", "ward")
_METHOD_CODE = {m: i for i, m in enumerate(LINKAGE_METHODS)}


@kernel(parallel=True)
def _pdist(x, dmat):
    n = x.shape[0]
    for i in prange(n):
        dmat[i, i] = 0.0
        for j in range(i + 1, n):
            dd = np.sqrt(_sqdist(x[i], x[j]))
            dmat[i, j] = dd
            dmat[j, i] = dd


@kernel()
def _mst_single(dmat, merges):
    """Prim's minimum spanning tree: merges[t] = (a, b, height), a and b sample indices."""
    n = dmat.shape[0]
    in_tree = np.zeros(n, np.bool_)
    best = np.full(n, np.inf)
    src = np.zeros(n, np.int64)
    cur = 0
    in_tree[0] = True
    for t in range(n - 1):
        nxt = -1
        nd = np.inf
        for j in range(n):
            if in_tree[j]:
                continue
            dj = dmat[cur, j]
            if dj < best[j]:
                best[j] = dj
                src[j] = cur
            if nxt < 0 or best[j] < nd:
                nd = best[j]
                nxt = j
        merges[t, 0] = src[nxt]
        merges[t, 1] = nxt
        merges[t, 2] = nd
        in_tree[nxt] = True
        cur = nxt


@kernel()
def _lance_williams(method, d_xi, d_yi, d_xy, nx, ny, ni):
    if method == 1:
        return max(d_xi, d_yi)
    if method == 2:
        return (nx * d_xi + ny * d_yi) / (nx + ny)
    t = 1.0 / (nx + ny + ni)
    return np.sqrt((ni + nx) * t * d_xi * d_xi + (ni + ny) * t * d_yi * d_yi
                   - ni * t * d_xy * d_xy)


@kernel()
def _nn_chain(dmat, method, merges):
    """Nearest-neighbour chain for reducible linkages; dmat is overwritten. merges[t] =
    (a, b, height) with a, b the representative samples of the merged clusters."""
    n = dmat.shape[0]
    size = np.ones(n)
    active = np.ones(n, np.bool_)
    chain = np.empty(n, np.int64)
    length = 0
    for t in range(n - 1):
        if length == 0:
            for i in range(n):
                if active[i]:
                    chain[0] = i
                    length = 1
                    break
        while True:
            x = chain[length - 1]
            if length > 1:
                y = chain[length - 2]
                current = dmat[x, y]
            else:
                y = -1
                current = np.inf
            for i in range(n):
                if active[i] and i != x and dmat[x, i] < current:
                    current = dmat[x, i]
                    y = i
            if length > 1 and y == chain[length - 2]:
                break
            chain[length] = y
            length += 1
        length -= 2
        a = chain[length]
        b = chain[length + 1]
        if a > b:
            a, b = b, a
        merges[t, 0] = a
        merges[t, 1] = b
        merges[t, 2] = current
        na = size[a]
        nb = size[b]
        for i in range(n):
            if active[i] and i != a and i != b:
                dnew = _lance_williams(method, dmat[a, i], dmat[b, i], current, na, nb, size[i])
                dmat[b, i] = dnew
                dmat[i, b] = dnew
        active[a] = False
        size[b] = na + nb


@kernel()
def _label(merges, n, z):
    """Stable-sort merges by height and name clusters as scipy: new cluster n + t."""
    order = np.argsort(merges[:, 2], kind="mergesort")
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1)
    for t in range(n - 1):
        m = order[t]
        roots = np.empty(2, np.int64)
        for e in range(2):
            r = np.int64(merges[m, e])
            while parent[r] != r:
                r = parent[r]
            roots[e] = r
        # path compression
        for e in range(2):
            r = np.int64(merges[m, e])
            while parent[r] != roots[e]:
                up = parent[r]
                parent[r] = roots[e]
                r = up
        a = min(roots[0], roots[1])
        b = max(roots[0], roots[1])
        parent[a] = n + t
        parent[b] = n + t
        size[n + t] = size[a] + size[b]
        z[t, 0] = a
        z[t, 1] = b
        z[t, 2] = merges[m, 2]
        z[t, 3] = size[n + t]


def linkage(x: np.ndarray, method: str = "ward"):
    r"""Agglomerative clustering of the rows of ``X`` with Euclidean distances.

    .. math:: Z_t = (a, b, d(a, b), |a \cup b|), \quad a < b, \quad Z_{t,2} \le Z_{t+1,2}

    ``method`` in ``single, complete, average, ward`` (see the module docstring for the
    updates). Returns ``(Z, None)``, Z (n-1, 4) in the input's dtype (heights computed in
    float64; indices and counts are exact below 2^24 samples).
    """
    x = s.matrix(x, "X", min_rows=2)
    method = v.choice(method, "method", LINKAGE_METHODS)
    n = x.shape[0]
    dmat = np.empty((n, n))
    _pdist(s.as_f64(x), dmat)
    merges = np.empty((n - 1, 3))
    if method == "single":
        _mst_single(dmat, merges)
    else:
        _nn_chain(dmat, _METHOD_CODE[method], merges)
    z = np.empty((n - 1, 4))
    _label(merges, n, z)
    return z.astype(x.dtype), None
