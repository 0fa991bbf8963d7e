"""Specs of the classical family, non-linear half: nearest neighbours, Gaussian naive Bayes,
decision trees (this module); k-means, hierarchical clustering and Gaussian mixtures
(``classical_cluster``).

Kernels torch can express get a torch twin (``torch.cdist`` for distances,
``torch.distributions`` for Gaussian log-likelihoods) and the generic parity checks. Fitting
and predicting procedures have ``torch=None``: ``suites/correctness/test_classical.py`` compares
them with scikit-learn/scipy, and ``peers={"sklearn": ...}`` times scikit-learn beside them.
Fit and predict are separate specs, so they are timed apart. Peer factories build (and fit)
the estimator outside the timed call.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from reference import naive_bayes as NB
from reference import neighbors as N
from reference import tree as T
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import FLOAT64_FIRST, Case, Cost, Invalid, Invariant, Spec, Tol

FAMILY = "classical"


# ---------------------------------------------------------------------------------------------
# shared data builders


def blobs(rng: np.random.Generator, n: int, d: int, k: int, dtype, spread: float = 4.0):
    """n samples around k random centres (N(0, spread^2) centres, unit noise) and their
    component labels, taken in turn (sample i from blob i mod k: balanced, and samples 0..k-1
    one of each): continuous data, so exact ties in distances have probability zero."""
    centres = rng.standard_normal((k, d)) * spread
    labels = np.arange(n) % k
    x = centres[labels] + rng.standard_normal((n, d))
    return x.astype(dtype), labels.astype(np.int64)


@st.composite
def seeded_data(draw, dtype, *, max_n: int = 24, max_d: int = 4, max_k: int = 4,
                min_n_per_k: int = 1):
    """(rng, n, d, k) with n >= k * min_n_per_k: Hypothesis picks the sizes and the seed."""
    k = draw(st.integers(1, max_k), label="k")
    d = draw(st.integers(1, max_d), label="d")
    n = draw(st.integers(max(k * min_n_per_k, 1), max(max_n, k * min_n_per_k)), label="n")
    rng = draw(S.seeds(), label="seed")
    return rng, n, d, k


def _nan_at_first(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[0] = np.nan
    return x


# ---------------------------------------------------------------------------------------------
# squared distances (the distance kernel of k-NN and k-means)


@st.composite
def _distance_cases(draw, dtype):
    d = draw(st.integers(1, 5))
    x = draw(S.arrays(dtype, (draw(st.integers(1, 7)), d)))
    y = draw(S.arrays(dtype, (draw(st.integers(1, 7)), d)))
    return Case({"x": x, "y": y})


def _distance_sizes():
    shapes = {"small": (64, 32, 16), "medium": (2048, 256, 64), "large": (8192, 1024, 100)}

    def builder(n, m, d):
        def build(dtype):
            rng = np.random.default_rng(0)
            return Case({"x": S.normal(rng, (n, d), dtype), "y": S.normal(rng, (m, d), dtype)})
        return build

    return {k: builder(*v) for k, v in shapes.items()}


def _distance_cost(case: Case) -> Cost:
    (n, d), m = case.inputs["x"].shape, case.inputs["y"].shape[0]
    item = case.inputs["x"].itemsize
    return Cost(flops=3.0 * n * m * d, bytes=item * (n * d + m * d + n * m))


def _cdist_sq(x, y):
    # Direct differences: cdist's matrix-product mode would lose the small distances to
    # cancellation, which is not what the reference (or scikit-learn's exact re-check) computes.
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2


register(Spec(
    name="sq_distances", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="pairwise squared Euclidean distances ||x_i - y_j||^2 (k-NN, k-means)",
    forward=N.sq_distances, backward=N.sq_distances_backward, grad_inputs=("x", "y"),
    torch=_cdist_sq, cases=_distance_cases, sizes=_distance_sizes(), cost=_distance_cost,
    invariants=(Invariant("D >= 0", lambda case, outs: _assert(
        (outs[0] >= 0).all(), "negative squared distance")),),
    invalid=(
        Invalid("y with other columns", lambda: Case({"x": np.ones((2, 3)), "y": np.ones((2, 2))}),
                ValueError, r"\by\b"),
        Invalid("1-d x", lambda: Case({"x": np.ones(3), "y": np.ones((2, 3))}), ValueError,
                r"\bx\b"),
    ),
))


def _assert(cond, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


# ---------------------------------------------------------------------------------------------
# k nearest neighbours


@st.composite
def _knn_cases(draw, dtype, *, labels: str = ""):
    """Training and query points from Hypothesis (duplicates and exact ties included: the
    distances compared are order-independent), k from 1 to n_train."""
    d = draw(st.integers(1, 4), label="d")
    n = draw(st.integers(1, 12), label="n_train")
    x_train = draw(S.arrays(dtype, (n, d), elements=st.one_of(
        S.floats(dtype), st.sampled_from([0.0, 1.0, -1.0]))), label="X_train")
    x_query = draw(S.arrays(dtype, (draw(st.integers(1, 6)), d)), label="X_query")
    k = draw(st.integers(1, n), label="k")
    if labels == "classes":
        y = draw(S.arrays(np.int64, (n,), elements=st.integers(0, 3)), label="y_train")
        return Case({"X_train": x_train, "y_train": y, "X_query": x_query}, {"k": k})
    if labels == "targets":
        y = draw(S.arrays(dtype, (n,)), label="y_train")
        return Case({"X_train": x_train, "y_train": y, "X_query": x_query}, {"k": k})
    return Case({"X_train": x_train, "X_query": x_query}, {"k": k})


_KNN_SHAPES = {"small": (256, 32, 8), "medium": (10_000, 1000, 32),
               "large": (100_000, 500, 100)}


def _knn_sizes(labels: str = ""):
    def builder(n, m, d):
        def build(dtype):
            rng = np.random.default_rng(0)
            x, y = blobs(rng, n + m, d, 5, dtype)
            inputs = {"X_train": x[:n]}
            if labels == "classes":
                inputs["y_train"] = y[:n]
            elif labels == "targets":
                inputs["y_train"] = (y[:n] + rng.standard_normal(n)).astype(dtype)
            inputs["X_query"] = x[n:]
            return Case(inputs, {"k": 5})
        return build

    return {k: builder(*v) for k, v in _KNN_SHAPES.items()}


def _knn_cost(case: Case) -> Cost:
    (n, d), m = case.inputs["X_train"].shape, case.inputs["X_query"].shape[0]
    item = case.inputs["X_train"].itemsize
    return Cost(flops=2.0 * n * m * d, bytes=item * (n * d + m * d) + 8.0 * m * n)


def _kneighbors_distances(x_train, x_query, k):
    """The reference's neighbour distances only (the indices are compared in
    test_classical.py, where ties can be told apart from disagreements)."""
    (dist, _), ctx = N.kneighbors(x_train, x_query, k)
    return dist, ctx


def _torch_kneighbors(x_train, x_query, k):
    d = torch.cdist(x_query, x_train, compute_mode="donot_use_mm_for_euclid_dist")
    return d.topk(k, dim=1, largest=False, sorted=True).values


def _sk_knn(kind: str):
    def factory(case: Case, pass_: str):
        from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors
        k = case.params["k"]
        xt, xq = case.inputs["X_train"], case.inputs["X_query"]
        if kind == "kneighbors":
            est = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(xt)
            return lambda: est.kneighbors(xq)
        cls = KNeighborsClassifier if kind == "classify" else KNeighborsRegressor
        est = cls(n_neighbors=k, algorithm="brute").fit(xt, case.inputs["y_train"])
        return lambda: est.predict(xq)
    return factory


def _one_nn_on_training(case: Case, outs) -> None:
    """1-NN on the training points returns each point's own label, or, where identical rows
    carry other labels, the label of the first identical row (the lowest index wins ties).
    "Identical" is at squared distance 0 summed in float64, as the reference measures it: two
    rows a subnormal apart are different numbers but at distance 0 (the square underflows)."""
    xt, y = case.inputs["X_train"], case.inputs["y_train"]
    pred, _ = N.knn_classify(xt, y, xt, 1)
    x64 = xt.astype(np.float64)
    for i in range(xt.shape[0]):
        first = int(np.flatnonzero(((x64 - x64[i]) ** 2).sum(axis=1) == 0.0)[0])
        _assert(pred[i] == y[first], f"1-NN of training row {i} predicts {pred[i]}, "
                                     f"expected {y[first]} (first identical row {first})")


def _knn_invalid(labels: str):
    def case(xt=None, y=None, xq=None, k=2):
        xt = np.ones((4, 2)) if xt is None else xt
        xq = np.ones((3, 2)) if xq is None else xq
        inputs = {"X_train": xt}
        if labels:
            inputs["y_train"] = (np.array([0, 1, 0, 1]) if labels == "classes"
                                 else np.ones(4)) if y is None else y
        inputs["X_query"] = xq
        return Case(inputs, {"k": k})

    out = [
        Invalid("NaN in X_train", lambda: case(xt=_nan_at_first(np.ones((4, 2)))), ValueError,
                "X_train"),
        Invalid("inf in X_query", lambda: case(xq=np.full((3, 2), np.inf)), ValueError,
                "X_query"),
        Invalid("k > n_samples", lambda: case(k=5), ValueError, r"\bk\b"),
        Invalid("k = 0", lambda: case(k=0), ValueError, r"\bk\b"),
        Invalid("X_query with other columns", lambda: case(xq=np.ones((3, 3))), ValueError,
                "X_query"),
    ]
    if labels == "classes":
        out += [
            Invalid("float labels", lambda: case(y=np.array([0.0, 1.0, 0.0, 1.0])), TypeError,
                    "y_train"),
            Invalid("labels of another length", lambda: case(y=np.array([0, 1, 0])),
                    ValueError, "y_train"),
            Invalid("negative labels", lambda: case(y=np.array([0, -1, 0, 1])), ValueError,
                    "y_train"),
        ]
    if labels == "targets":
        out.append(Invalid("targets of another length", lambda: case(y=np.ones(5)),
                           ValueError, "y_train"))
    return tuple(out)


register(Spec(
    name="knn_kneighbors", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="distances to the k nearest training points, nearest first",
    forward=_kneighbors_distances, torch=_torch_kneighbors,
    cases=_knn_cases, sizes=_knn_sizes(), cost=_knn_cost,
    invariants=(Invariant("distances ascending", lambda case, outs: _assert(
        (np.diff(outs[0], axis=1) >= 0).all(), "neighbour distances not ascending")),),
    invalid=_knn_invalid(""), peers={"sklearn": _sk_knn("kneighbors")},
))

register(Spec(
    name="knn_classify", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="k-NN classification, uniform votes (smallest label among equal counts)",
    forward=N.knn_classify, torch=None,
    cases=lambda dtype: _knn_cases(dtype, labels="classes"), sizes=_knn_sizes("classes"),
    cost=_knn_cost,
    invariants=(Invariant("1-NN predicts the training labels", _one_nn_on_training),),
    invalid=_knn_invalid("classes"), peers={"sklearn": _sk_knn("classify")},
))

register(Spec(
    name="knn_regress", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="k-NN regression, mean of the k targets",
    forward=N.knn_regress, torch=None,
    cases=lambda dtype: _knn_cases(dtype, labels="targets"), sizes=_knn_sizes("targets"),
    cost=_knn_cost,
    invariants=(Invariant("within the targets' range", lambda case, outs: _assert(
        (outs[0] >= case.inputs["y_train"].min()).all()
        and (outs[0] <= case.inputs["y_train"].max()).all(), "mean outside the targets")),),
    invalid=_knn_invalid("targets"), peers={"sklearn": _sk_knn("regress")},
))


# ---------------------------------------------------------------------------------------------
# Gaussian naive Bayes

_NB_SHAPES = {"small": (256, 8, 3), "medium": (20_000, 32, 5), "large": (100_000, 100, 10)}


@st.composite
def _nb_fit_cases(draw, dtype):
    rng, n, d, k = draw(seeded_data(dtype, max_n=30, max_k=4))
    x, y = blobs(rng, n, d, k, dtype)
    smoothing = draw(st.sampled_from([1e-9, 0.0, 1e-3, 0.5]), label="var_smoothing")
    return Case({"X": x, "y": y}, {"var_smoothing": smoothing})


def _nb_fit_sizes():
    def builder(n, d, k):
        def build(dtype):
            x, y = blobs(np.random.default_rng(0), n, d, k, dtype)
            return Case({"X": x, "y": y}, {"var_smoothing": 1e-9})
        return build
    return {key: builder(*v) for key, v in _NB_SHAPES.items()}


def _nb_model_sizes():
    """Query points and a model fitted to labelled points from the same blobs."""
    def builder(n, d, k):
        def build(dtype):
            x, y = blobs(np.random.default_rng(0), 2 * n, d, k, dtype)
            (theta, var, prior), _ = NB.gaussian_nb_fit(x[n:], y[n:])
            return Case({"X": x[:n], "theta": theta, "var": var, "prior": prior})
        return build
    return {key: builder(*v) for key, v in _NB_SHAPES.items()}


def _nb_cost(case: Case) -> Cost:
    x = case.inputs["X"]
    n, d = x.shape
    c = case.inputs["theta"].shape[0] if "theta" in case.inputs else 1
    return Cost(flops=4.0 * n * d * c, bytes=x.itemsize * (n * d + n * c))


@st.composite
def _jll_cases(draw, dtype):
    """Samples and means in [-10, 10], variances in [1/16, 20], priors normalised."""
    d = draw(st.integers(1, 4))
    c = draw(st.integers(1, 4))
    x = draw(S.arrays(dtype, (draw(st.integers(1, 6)), d)), label="X")
    theta = draw(S.arrays(dtype, (c, d)), label="theta")
    var = draw(S.arrays(dtype, (c, d), 0.0625, 20.0), label="var")
    w = np.asarray(draw(S.arrays(np.float64, (c,), 0.1, 1.0), label="prior weights"))
    return Case({"X": x, "theta": theta, "var": var, "prior": (w / w.sum()).astype(dtype)})


def _torch_jll(x, theta, var, prior):
    normal = torch.distributions.Normal(theta, var.sqrt())
    return normal.log_prob(x[:, None, :]).sum(-1) + prior.log()


def _jll_tol(case: Case, upstream):
    """float32 forward: torch sums d terms of size up to (x - theta)^2 / var <= 20^2 * 16 =
    6400 in float32, so its error reaches d * eps32 * max term (~2e-3 for d = 4) where the
    result can be small; atol = 2 d eps32 max|term| covers it (the reference is float64 inside).
    Gradients and float64 keep the defaults."""
    x = case.inputs["X"]
    if x.dtype != np.float32 or upstream is not None:
        return None
    t = (x[:, None, :].astype(np.float64) - case.inputs["theta"][None]) ** 2 \
        / case.inputs["var"][None]
    log_var = np.abs(np.log(2 * np.pi * case.inputs["var"].astype(np.float64)))
    big = max(float(t.max()), float(log_var.max()), 1.0)
    return Tol(rtol=1.3e-6, atol=2 * x.shape[1] * float(np.finfo(np.float32).eps) * big + 1e-5)


def _sk_nb(kind: str):
    def factory(case: Case, pass_: str):
        from sklearn.naive_bayes import GaussianNB
        if kind == "fit":
            x, y, vs = case.inputs["X"], case.inputs["y"], case.params["var_smoothing"]
            return lambda: GaussianNB(var_smoothing=vs).fit(x, y)
        est = GaussianNB()
        theta, var, prior = (case.inputs[k] for k in ("theta", "var", "prior"))
        est.classes_ = np.arange(theta.shape[0])
        est.theta_, est.var_, est.class_prior_ = theta, var, prior
        est.n_features_in_ = theta.shape[1]
        x = case.inputs["X"]
        return lambda: est.predict(x)
    return factory


def _nb_fit_invariants(case: Case, outs) -> None:
    theta, var, prior = outs
    _assert(abs(float(prior.astype(np.float64).sum()) - 1.0) < 1e-6, "priors do not sum to 1")
    eps = case.params["var_smoothing"] * float(np.var(case.inputs["X"].astype(np.float64),
                                                      axis=0).max())
    _assert((var.astype(np.float64) >= eps * (1 - 1e-6)).all(), "a variance below epsilon")


def _nb_invalid():
    x = np.arange(8.0).reshape(4, 2)
    y = np.array([0, 1, 0, 1])
    return (
        Invalid("NaN in X", lambda: Case({"X": _nan_at_first(x), "y": y}), ValueError, r"\bX\b"),
        Invalid("float labels", lambda: Case({"X": x, "y": y.astype(float)}), TypeError,
                r"\by\b"),
        Invalid("labels of another length", lambda: Case({"X": x, "y": y[:3]}), ValueError,
                r"\by\b"),
        Invalid("a missing class", lambda: Case({"X": x, "y": np.array([0, 2, 0, 2])}),
                ValueError, r"\by\b"),
        Invalid("negative var_smoothing", lambda: Case({"X": x, "y": y},
                                                       {"var_smoothing": -1.0}),
                ValueError, "var_smoothing"),
    )


def _nb_model_invalid():
    def case(**kw):
        inputs = {"X": np.ones((3, 2)), "theta": np.zeros((2, 2)), "var": np.ones((2, 2)),
                  "prior": np.array([0.5, 0.5])}
        inputs.update(kw)
        return Case(inputs)
    return (
        Invalid("zero variance", lambda: case(var=np.zeros((2, 2))), ValueError, r"\bvar\b"),
        Invalid("theta with other features", lambda: case(theta=np.zeros((2, 3))), ValueError,
                "theta"),
        Invalid("prior of another length", lambda: case(prior=np.ones(3) / 3), ValueError,
                "prior"),
        Invalid("inf in X", lambda: case(X=np.full((3, 2), np.inf)), ValueError, r"\bX\b"),
    )


register(Spec(
    name="gaussian_nb_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="Gaussian naive Bayes fit: class means, variances + var_smoothing * max var, priors",
    forward=NB.gaussian_nb_fit, torch=None, cases=_nb_fit_cases, sizes=_nb_fit_sizes(),
    cost=_nb_cost, invariants=(Invariant("priors sum to 1, var >= epsilon",
                                         _nb_fit_invariants),),
    invalid=_nb_invalid(), peers={"sklearn": _sk_nb("fit")},
))

register(Spec(
    name="gaussian_log_likelihood", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="log prior + sum of diagonal Gaussian log-densities (naive Bayes, diagonal GMM "
            "E-step)",
    forward=NB.gaussian_log_likelihood, backward=NB.gaussian_log_likelihood_backward,
    grad_inputs=("X", "theta", "var"), torch=_torch_jll, cases=_jll_cases,
    sizes=_nb_model_sizes(), cost=_nb_cost, case_tol=_jll_tol, invalid=_nb_model_invalid(),
))

register(Spec(
    name="gaussian_nb_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="Gaussian naive Bayes prediction: argmax of the joint log-likelihood",
    forward=NB.gaussian_nb_predict, torch=None, cases=_jll_cases, sizes=_nb_model_sizes(),
    cost=_nb_cost, invalid=_nb_model_invalid(), peers={"sklearn": _sk_nb("predict")},
))


# ---------------------------------------------------------------------------------------------
# decision tree

_TREE_SHAPES = {"small": (256, 8, 3), "medium": (10_000, 16, 4), "large": (100_000, 32, 5)}


def grid_values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Multiples of 1/8 in [-8, 8]: float32-representable (scikit-learn grows trees on float32
    copies) and either equal or 1/8 apart, never within scikit-learn's 1e-7 feature threshold."""
    return (rng.integers(-64, 65, shape) / 8.0).astype(dtype)


@st.composite
def _tree_cases(draw, dtype):
    rng, n, d, k = draw(seeded_data(dtype, max_n=40, max_d=3, max_k=3))
    x = grid_values(rng, (n, d), dtype)
    y = rng.integers(0, k, n)
    params = {"criterion": draw(st.sampled_from(T.CRITERIA), label="criterion")}
    return Case({"X": x, "y": y.astype(np.int64)}, params)


def _tree_data(n, d, k, dtype):
    rng = np.random.default_rng(0)
    x, y = blobs(rng, n, d, k, np.float64, spread=1.0)
    return x.astype(np.float32).astype(dtype), y


def _tree_fit_sizes():
    def builder(n, d, k):
        def build(dtype):
            x, y = _tree_data(n, d, k, dtype)
            return Case({"X": x, "y": y}, {"criterion": "gini", "max_depth": 12})
        return build
    return {key: builder(*v) for key, v in _TREE_SHAPES.items()}


def _tree_predict_sizes():
    def builder(n, d, k):
        def build(dtype):
            x, y = _tree_data(n, d, k, dtype)
            tree, _ = T.tree_fit(x, y, max_depth=12)
            return Case({"X": x, "feature": tree[0], "threshold": tree[1],
                         "children_left": tree[2], "children_right": tree[3],
                         "value": tree[4]})
        return build
    return {key: builder(*v) for key, v in _TREE_SHAPES.items()}


def _tree_cost(case: Case) -> Cost:
    x = case.inputs["X"]
    n, d = x.shape
    return Cost(flops=float(n * d * max(np.log2(max(n, 2)), 1.0)), bytes=float(x.nbytes))


def _fits_training_data(case: Case, outs) -> None:
    """Unrestricted, every leaf is pure or holds identical rows, so each training row is
    predicted its own label, or its identical rows' majority (the smallest label among equal
    counts) where identical rows disagree."""
    x, y = case.inputs["X"], case.inputs["y"]
    pred, _ = T.tree_predict(x, *outs[:5])
    for i in range(x.shape[0]):
        same = (x == x[i]).all(axis=1)
        expect = int(np.argmax(np.bincount(y[same])))
        _assert(pred[i] == expect, f"training row {i} predicted {pred[i]}, its label (majority "
                                   f"of identical rows) is {expect}")


def _sk_tree(kind: str):
    def factory(case: Case, pass_: str):
        from sklearn.tree import DecisionTreeClassifier
        x = case.inputs["X"]
        if kind == "fit":
            y, p = case.inputs["y"], case.params
            return lambda: DecisionTreeClassifier(
                criterion=p.get("criterion", "gini"), max_depth=p.get("max_depth"),
                random_state=0).fit(x, y)
        xs, ys = _tree_data(*_tree_shape_of(x), x.dtype)
        est = DecisionTreeClassifier(max_depth=12, random_state=0).fit(xs, ys)
        return lambda: est.predict(x)
    return factory


def _tree_shape_of(x):
    for n, d, k in _TREE_SHAPES.values():
        if x.shape == (n, d):
            return n, d, k
    raise ValueError(f"no tree benchmark size has X of shape {x.shape}")


def _tree_invalid():
    x = np.arange(8.0).reshape(4, 2)
    y = np.array([0, 1, 0, 1])
    return (
        Invalid("NaN in X", lambda: Case({"X": _nan_at_first(x), "y": y}), ValueError, r"\bX\b"),
        Invalid("float labels", lambda: Case({"X": x, "y": y * 1.0}), TypeError, r"\by\b"),
        Invalid("labels of another length", lambda: Case({"X": x, "y": y[:2]}), ValueError,
                r"\by\b"),
        Invalid("unknown criterion", lambda: Case({"X": x, "y": y}, {"criterion": "mse"}),
                ValueError, "criterion"),
        Invalid("max_depth 0", lambda: Case({"X": x, "y": y}, {"max_depth": 0}), ValueError,
                "max_depth"),
        Invalid("min_samples_leaf 0", lambda: Case({"X": x, "y": y}, {"min_samples_leaf": 0}),
                ValueError, "min_samples_leaf"),
    )


def _tree_predict_invalid():
    def case(**kw):
        inputs = {"X": np.ones((3, 2)), "feature": np.array([0, -2, -2]),
                  "threshold": np.array([0.5, -2.0, -2.0]),
                  "children_left": np.array([1, -1, -1]),
                  "children_right": np.array([2, -1, -1]), "value": np.eye(3)[:, :2]}
        inputs.update(kw)
        return Case(inputs)
    return (
        Invalid("a child pointing backwards", lambda: case(children_left=np.array([0, -1, -1])),
                ValueError, "children_left"),
        Invalid("a feature out of range", lambda: case(feature=np.array([5, -2, -2])),
                ValueError, "feature"),
        Invalid("NaN in X", lambda: case(X=np.full((3, 2), np.nan)), ValueError, r"\bX\b"),
        Invalid("value for fewer nodes", lambda: case(value=np.ones((2, 2))), ValueError,
                "value"),
    )


register(Spec(
    name="tree_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="CART classification tree, best splits by Gini or entropy, depth first",
    forward=T.tree_fit, torch=None, cases=_tree_cases, sizes=_tree_fit_sizes(),
    cost=_tree_cost,
    invariants=(Invariant("an unrestricted tree fits its training data", _fits_training_data),),
    invalid=_tree_invalid(), peers={"sklearn": _sk_tree("fit")},
))

register(Spec(
    name="tree_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="decision tree prediction (leaf's majority)",
    forward=T.tree_predict, torch=None, cases=lambda dtype: _tree_predict_cases(dtype),
    sizes=_tree_predict_sizes(), cost=_tree_cost, invalid=_tree_predict_invalid(),
    peers={"sklearn": _sk_tree("predict")},
))


@st.composite
def _tree_predict_cases(draw, dtype):
    case = draw(_tree_cases(dtype))
    tree, _ = T.tree_fit(case.inputs["X"], case.inputs["y"], **case.params)
    return Case({"X": case.inputs["X"], "feature": tree[0], "threshold": tree[1],
                 "children_left": tree[2], "children_right": tree[3], "value": tree[4]})
