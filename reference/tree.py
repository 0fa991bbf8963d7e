r"""Decision tree classifier (CART, best splits, Gini or entropy), as scikit-learn's
``DecisionTreeClassifier(splitter="best", max_features=None)`` without weights.

Conventions::

    tree, _ = tree_fit(X, y, criterion="gini", max_depth=None, min_samples_split=2,
                       min_samples_leaf=1)
    feature, threshold, left, right, value, impurity, n_node_samples = tree
    labels, _ = tree_predict(X, feature, threshold, left, right, value)

The tree is scikit-learn's ``tree_`` arrays: nodes numbered depth-first, left child first;
a leaf has ``feature = -2``, ``threshold = -2.0`` and children ``-1``; ``value[node]`` holds
the class fractions of the node's training samples. Sample x goes left when
``x[feature] <= threshold``. Prediction is the class of largest fraction in x's leaf (the
smallest class among equal ones).

Growing (scikit-learn's depth-first builder and best splitter): a node is a leaf when
``depth == max_depth``, it has fewer than ``min_samples_split`` or ``2 * min_samples_leaf``
samples, or its impurity is at most float64 epsilon. Otherwise every feature is scanned in
sorted order; a split goes between consecutive sorted values that differ by more than 1e-7
(scikit-learn's ``FEATURE_THRESHOLD``) and leaves at least ``min_samples_leaf`` samples on each
side; the threshold is ``a / 2 + b / 2`` of those values (``a`` when that rounds to ``b``). The
split maximising the proxy :math:`-n_L I_L - n_R I_R` wins, the first one found among equal
proxies, features in order 0..d-1. If no split is allowed, the node is a leaf.

Impurities of class fractions :math:`p_k`: Gini :math:`1 - \sum_k p_k^2` (computed as
:math:`1 - \sum_k n_k^2 / n^2`), entropy :math:`-\sum_{p_k > 0} p_k \log_2 p_k`.

Two differences from scikit-learn, stated: scikit-learn visits features in a random order
(``random_state``), so among splits of *equal* proxy on different features it may pick
another one (the tree then differs, not its fit); and it casts X to float32 before growing,
where this tree keeps the input's values (identical when the values are float32-representable).
Thresholds, values and impurities are float64 for every input dtype: a float32 rounding of a
midpoint can land on the upper value and send it to the wrong side.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from reference import _samples as s
from reference import _validate as v
from reference._jit import kernel

__all__ = ["tree_fit", "tree_predict", "CRITERIA"]

CRITERIA = ("gini", "entropy")
FEATURE_THRESHOLD = 1e-7
_EPS64 = float(np.finfo(np.float64).eps)
_LN2 = math.log(2.0)


@kernel()
def _impurity(counts, total, entropy):
    if entropy:
        acc = 0.0
        for k in range(counts.shape[0]):
            if counts[k] > 0.0:
                p = counts[k] / total
                acc -= p * (np.log(p) / _LN2)
        return acc
    sq = 0.0
    for k in range(counts.shape[0]):
        sq += counts[k] * counts[k]
    return 1.0 - sq / (total * total)


@kernel()
def _grow(x, y, n_classes, entropy, max_depth, min_split, min_leaf, feature, threshold, left,
          right, value, impurity, n_node):
    n, d = x.shape
    samples = np.arange(n)
    # stack of (start, end, depth, parent, is_left, impurity)
    st_start = np.empty(n + 1, np.int64)
    st_end = np.empty(n + 1, np.int64)
    st_depth = np.empty(n + 1, np.int64)
    st_parent = np.empty(n + 1, np.int64)
    st_left = np.empty(n + 1, np.bool_)
    st_imp = np.empty(n + 1)
    top = 0
    st_start[0], st_end[0], st_depth[0], st_parent[0], st_left[0] = 0, n, 0, -1, False
    counts0 = np.zeros(n_classes)
    for i in range(n):
        counts0[y[i]] += 1.0
    st_imp[0] = _impurity(counts0, float(n), entropy)
    top = 1
    n_nodes = 0
    vals = np.empty(n)
    labs = np.empty(n, np.int64)
    counts = np.empty(n_classes)
    c_left = np.empty(n_classes)
    c_right = np.empty(n_classes)
    while top > 0:
        top -= 1
        start, end, depth = st_start[top], st_end[top], st_depth[top]
        parent, is_left, imp = st_parent[top], st_left[top], st_imp[top]
        m = end - start
        node = n_nodes
        n_nodes += 1
        if parent >= 0:
            if is_left:
                left[parent] = node
            else:
                right[parent] = node
        counts[:] = 0.0
        for i in range(start, end):
            counts[y[samples[i]]] += 1.0
        for k in range(n_classes):
            value[node, k] = counts[k] / m
        impurity[node] = imp
        n_node[node] = m
        feature[node] = -2
        threshold[node] = -2.0
        left[node] = -1
        right[node] = -1
        leaf = ((max_depth >= 0 and depth >= max_depth) or m < min_split or m < 2 * min_leaf
                or imp <= _EPS64)
        if leaf:
            continue
        best_proxy = -np.inf
        best_f = -1
        best_thr = 0.0
        best_il = 0.0
        best_ir = 0.0
        for f in range(d):
            for i in range(m):
                vals[i] = x[samples[start + i], f]
            order = np.argsort(vals[:m], kind="mergesort")
            for i in range(m):
                labs[i] = y[samples[start + order[i]]]
            if vals[order[m - 1]] <= vals[order[0]] + FEATURE_THRESHOLD:
                continue  # constant feature
            c_left[:] = 0.0
            c_right[:] = counts
            for p in range(1, m):
                c_left[labs[p - 1]] += 1.0
                c_right[labs[p - 1]] -= 1.0
                a = vals[order[p - 1]]
                b = vals[order[p]]
                if b <= a + FEATURE_THRESHOLD:
                    continue
                if p < min_leaf or m - p < min_leaf:
                    continue
                il = _impurity(c_left, float(p), entropy)
                ir = _impurity(c_right, float(m - p), entropy)
                proxy = -(m - p) * ir - p * il
                if proxy > best_proxy:
                    best_proxy = proxy
                    best_f = f
                    best_il = il
                    best_ir = ir
                    thr = np.float64(a) / 2.0 + np.float64(b) / 2.0
                    if thr == np.float64(b) or np.isinf(thr):
                        thr = np.float64(a)
                    best_thr = thr
        if best_f < 0:
            continue
        # partition samples[start:end]: x[:, best_f] <= best_thr first, order kept
        tmp = samples[start:end].copy()
        lo = start
        for i in range(m):
            if np.float64(x[tmp[i], best_f]) <= best_thr:
                samples[lo] = tmp[i]
                lo += 1
        hi = lo
        for i in range(m):
            if np.float64(x[tmp[i], best_f]) > best_thr:
                samples[hi] = tmp[i]
                hi += 1
        feature[node] = best_f
        threshold[node] = best_thr
        # push right then left, so the left subtree is numbered first
        st_start[top], st_end[top], st_depth[top] = lo, end, depth + 1
        st_parent[top], st_left[top], st_imp[top] = node, False, best_ir
        top += 1
        st_start[top], st_end[top], st_depth[top] = start, lo, depth + 1
        st_parent[top], st_left[top], st_imp[top] = node, True, best_il
        top += 1
    return n_nodes


def tree_fit(x: np.ndarray, y: np.ndarray, criterion: str = "gini", max_depth=None,
             min_samples_split: int = 2, min_samples_leaf: int = 1):
    r"""Grow a classification tree (see the module docstring for the rules).

    .. math:: \text{split} = \operatorname*{arg\,max}_{f, t}\; -n_L I(L_{f,t}) - n_R I(R_{f,t})

    ``y`` integer labels 0..C-1. Returns ``((feature, threshold, children_left,
    children_right, value, impurity, n_node_samples), None)``.
    """
    x = s.matrix(x, "X")
    y = s.class_labels(y, "y", x.shape[0])
    criterion = v.choice(criterion, "criterion", CRITERIA)
    depth = -1 if max_depth is None else v.integer(max_depth, "max_depth", lo=1)
    min_split = v.integer(min_samples_split, "min_samples_split", lo=2)
    min_leaf = v.integer(min_samples_leaf, "min_samples_leaf", lo=1)
    n_classes = int(y.max()) + 1
    cap = 2 * x.shape[0] - 1
    feature = np.empty(cap, np.int64)
    threshold = np.empty(cap)
    left = np.empty(cap, np.int64)
    right = np.empty(cap, np.int64)
    value = np.empty((cap, n_classes))
    impurity = np.empty(cap)
    n_node = np.empty(cap, np.int64)
    count = _grow(x, y, n_classes, criterion == "entropy", depth, min_split, min_leaf, feature,
                  threshold, left, right, value, impurity, n_node)
    return tuple(a[:count].copy() for a in (feature, threshold, left, right, value, impurity,
                                             n_node)), None


@kernel(parallel=True)
def _predict(x, feature, threshold, left, right, value, out):
    for i in prange(x.shape[0]):
        node = 0
        while left[node] >= 0:
            if np.float64(x[i, feature[node]]) <= threshold[node]:
                node = left[node]
            else:
                node = right[node]
        best = 0
        for k in range(1, value.shape[1]):
            if value[node, k] > value[node, best]:
                best = k
        out[i] = best


def _tree_arrays(feature, threshold, left, right, value, n_features):
    feature = v.int_array(feature, "feature", ndim=1)
    n_nodes = feature.shape[0]
    if n_nodes < 1:
        raise ValueError("feature must describe at least one node, got 0")
    threshold = v.float_array(threshold, "threshold", ndim=1)
    if threshold.dtype != np.float64:
        raise TypeError(f"threshold must have dtype float64 (tree_fit's), got {threshold.dtype}")
    left = v.int_array(left, "children_left", ndim=1)
    right = v.int_array(right, "children_right", ndim=1)
    value = v.float_array(value, "value", ndim=2)
    if value.dtype != np.float64:
        raise TypeError(f"value must have dtype float64 (tree_fit's), got {value.dtype}")
    for name, a in (("threshold", threshold), ("children_left", left),
                    ("children_right", right), ("value", value)):
        if a.shape[0] != n_nodes:
            raise ValueError(f"{name} must have one entry per node ({n_nodes}), "
                             f"got shape {a.shape}")
    inner = left >= 0
    if ((left[inner] <= np.flatnonzero(inner)).any() or (left >= n_nodes).any()
            or (right[inner] <= np.flatnonzero(inner)).any() or (right >= n_nodes).any()
            or ((right >= 0) != inner).any()):
        raise ValueError("children_left/children_right must point to later nodes "
                         "(or both be -1 at a leaf)")
    if ((feature[inner] < 0) | (feature[inner] >= n_features)).any():
        raise ValueError(f"feature must lie in [0, {n_features}) at inner nodes")
    return feature, threshold, left, right, value


def tree_predict(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 children_left: np.ndarray, children_right: np.ndarray, value: np.ndarray):
    r"""Class of each sample's leaf: descend left when ``x[feature] <= threshold``.

    .. math:: \hat y(x) = \operatorname*{arg\,max}_k \text{value}[\text{leaf}(x), k]

    Returns ``(labels, None)``, int64 of shape (n,).
    """
    x = s.matrix(x, "X", min_rows=0)
    feature, threshold, left, right, value = _tree_arrays(
        feature, threshold, children_left, children_right, value, x.shape[1])
    out = np.empty(x.shape[0], np.int64)
    _predict(x, feature, threshold, left, right, value, out)
    return out, None
