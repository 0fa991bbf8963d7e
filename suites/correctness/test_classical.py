"""The classical family's second oracle: scikit-learn and scipy.

Fitting procedures (k-NN, naive Bayes, trees, k-means, linkage, Gaussian mixtures) have no
torch twin; here the reference is fitted beside scikit-learn/scipy on Hypothesis-chosen data
(sizes and a seed; the values are continuous draws, so exact ties in distances or split gains
have probability zero except where a test says otherwise) and on the data sets shipped with
scikit-learn, whose scores are recorded as figures for the report.

Tolerances: float64 results agree to rounding (default torch tolerances) unless a comment
derives another; scikit-learn computes float32 inputs in float32 while the reference works in
float64, so float32 comparisons allow float32 rounding of the peer.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.cluster import hierarchy
from sklearn import datasets
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors
from sklearn.tree import DecisionTreeClassifier

from reference import cluster as C
from reference import mixture as M
from reference import naive_bayes as NB
from reference import neighbors as N
from reference import tree as T
from suites.catalog.classical import FAMILY, blobs, grid_values, seeded_data
from suites.catalog.spec import DEFAULT_TOL, FLOAT32, FLOAT64
from suites.recording import compare

DTYPES = [pytest.param(FLOAT32, id="float32"), pytest.param(FLOAT64, id="float64")]


def _tol(dtype, scale: float = 1.0):
    tol = DEFAULT_TOL[np.dtype(dtype)]
    return tol.rtol * scale, tol.atol * scale


def _exact_sq(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return ((a[:, None, :] - b[None]) ** 2).sum(-1)


# ---------------------------------------------------------------------------------------------
# k nearest neighbours


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_knn_matches_sklearn(dtype, record, data):
    """Neighbour distances (order-independent) always; predictions for the queries whose k-th
    and (k+1)-th exact distances are apart by more than float32 rounding (closer ones may be
    ordered either way by scikit-learn's expanded-form distances)."""
    record.bind("knn_classify", FAMILY, "sklearn oracle", dtype, "cpu")
    rng, n, d, k = data.draw(seeded_data(dtype, max_n=40, max_d=5, max_k=4))
    x, y = blobs(rng, n + 8, d, k, dtype, spread=1.0)
    xt, yt, xq = x[:n], y[:n], x[n:]
    kk = data.draw(st.integers(1, n), label="neighbours")
    record.examples += 1
    (dist, _), _ = N.kneighbors(xt, xq, kk)
    sk_dist, _ = NearestNeighbors(n_neighbors=kk, algorithm="brute").fit(xt).kneighbors(xq)
    # scikit-learn's distances come from the expanded form |q|^2 - 2 q.x + |x|^2, off by up to
    # ~ (d + 2) eps (|q|^2 + |x|^2) in the square: atol sqrt(8 (d + 2) eps) * max norm.
    eps = float(np.finfo(dtype).eps)
    norm = float(np.abs(x.astype(np.float64)).sum(1).max()) + 1.0
    compare(dist, sk_dist.astype(dtype), _tol(dtype)[0], np.sqrt(8 * (d + 2) * eps) * norm,
            label="k-NN distances vs scikit-learn", record=record)
    exact = np.sort(_exact_sq(xq, xt), axis=1)
    if kk < n:
        gap = exact[:, kk] - exact[:, kk - 1]
        clear = gap > 16 * (d + 2) * eps * (exact[:, kk] + norm ** 2)
    else:
        clear = np.ones(xq.shape[0], bool)
    labels, _ = N.knn_classify(xt, yt, xq, kk)
    sk_labels = KNeighborsClassifier(kk, algorithm="brute").fit(xt, yt).predict(xq)
    compare(labels[clear], sk_labels[clear].astype(np.int64),
            0, 0, label="k-NN classes vs scikit-learn", record=record)
    targets = (yt + rng.standard_normal(n)).astype(dtype)
    values, _ = N.knn_regress(xt, targets, xq, kk)
    sk_values = KNeighborsRegressor(kk, algorithm="brute").fit(xt, targets).predict(xq)
    compare(values[clear], sk_values[clear].astype(dtype), *_tol(dtype),
            label="k-NN regression vs scikit-learn", record=record)


# ---------------------------------------------------------------------------------------------
# Gaussian naive Bayes


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_naive_bayes_matches_sklearn(dtype, record, data):
    record.bind("gaussian_nb_fit", FAMILY, "sklearn oracle", dtype, "cpu")
    # Two samples per class at least: a class of one sample has variance 0, and with
    # var_smoothing 0 or constant data the model is degenerate (predict refuses var = 0).
    rng, n, d, k = data.draw(seeded_data(dtype, max_n=40, max_d=5, max_k=4, min_n_per_k=2))
    x, y = blobs(rng, n, d, k, dtype, spread=2.0)
    smoothing = data.draw(st.sampled_from([1e-9, 1e-3, 0.3]), label="var_smoothing")
    record.examples += 1
    (theta, var, prior), _ = NB.gaussian_nb_fit(x, y, var_smoothing=smoothing)
    sk = GaussianNB(var_smoothing=smoothing).fit(x, y)
    # scikit-learn keeps float32 data in float32 (pairwise sums of n terms): rounding grows
    # like log2(n) eps relative to the sum of |x|; 8x the default covers n <= 256 with margin.
    scale = 8.0 if dtype == FLOAT32 else 1.0
    rtol, atol = _tol(dtype, scale)
    compare(theta, sk.theta_.astype(dtype), rtol, atol, label="theta", record=record)
    compare(var, sk.var_.astype(dtype), rtol, atol, label="var", record=record)
    compare(prior, sk.class_prior_.astype(dtype), rtol, atol, label="prior", record=record)
    jll = NB.gaussian_log_likelihood(x, theta, var, prior)[0].astype(np.float64)
    top2 = np.sort(jll, axis=1)[:, -2:] if k > 1 else np.zeros((n, 2))
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * (1 + np.abs(top2[:, 1])) if k > 1 else \
        np.ones(n, bool)  # near-equal log-likelihoods may be ordered either way in float32
    pred, _ = NB.gaussian_nb_predict(x, theta, var, prior)
    compare(pred[clear], sk.predict(x)[clear].astype(np.int64), 0, 0,
            label="naive Bayes classes", record=record)


# ---------------------------------------------------------------------------------------------
# decision trees


def _sk_tree(x, y, params):
    return DecisionTreeClassifier(random_state=0, **params).fit(x, y).tree_


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_tree_structure_matches_sklearn_one_feature(dtype, record, data):
    """With one feature, scikit-learn's random feature order plays no part: the trees must be
    the same node for node (features, thresholds, children, values, impurities). Values on a
    1/8 grid are float32-representable (scikit-learn grows on float32) and never within its
    1e-7 feature threshold; equal values are ties that both sides skip alike."""
    record.bind("tree_fit", FAMILY, "sklearn oracle (structure)", dtype, "cpu")
    rng, n, _, k = data.draw(seeded_data(dtype, max_n=60, max_d=1, max_k=4))
    x = grid_values(rng, (n, 1), dtype)
    y = rng.permutation(np.arange(n) % k)  # every class 0..k-1 present, as sklearn's classes_
    params = {"criterion": data.draw(st.sampled_from(T.CRITERIA), label="criterion"),
              "max_depth": data.draw(st.sampled_from([None, 1, 3]), label="max_depth"),
              "min_samples_leaf": data.draw(st.integers(1, 4), label="min_samples_leaf")}
    record.examples += 1
    ours, _ = T.tree_fit(x, y, **params)
    sk = _sk_tree(x, y, params)
    names = ("feature", "threshold", "children_left", "children_right", "value", "impurity",
             "n_node_samples")
    expect = (sk.feature, sk.threshold, sk.children_left, sk.children_right,
              sk.value[:, 0, :], sk.impurity, sk.n_node_samples)
    for name, mine, theirs in zip(names, ours, expect, strict=True):
        theirs = np.asarray(theirs)
        theirs = theirs.astype(np.int64) if theirs.dtype.kind in "iu" else theirs
        compare(mine, theirs, 1e-12, 1e-12, label=f"tree {name}", record=record)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_tree_matches_sklearn_up_to_equal_gains(dtype, record, data):
    """With several features, equal-gain splits on different features are common on small
    data and scikit-learn breaks them by a random feature order. Order-independent: the root's
    best weighted child impurity n_L I_L + n_R I_R, and the training fit of unrestricted trees."""
    record.bind("tree_fit", FAMILY, "sklearn oracle (gains)", dtype, "cpu")
    rng, n, d, k = data.draw(seeded_data(dtype, max_n=60, max_d=4, max_k=4))
    x = grid_values(rng, (n, d), dtype)
    y = rng.permutation(np.arange(n) % k)
    criterion = data.draw(st.sampled_from(T.CRITERIA), label="criterion")
    record.examples += 1
    ours, _ = T.tree_fit(x, y, criterion=criterion)
    sk = _sk_tree(x, y, {"criterion": criterion})

    def root_children(imp, counts, left, right):
        if left[0] < 0:
            return np.array([np.nan])
        return np.array([counts[left[0]] * imp[left[0]] + counts[right[0]] * imp[right[0]]])

    compare(root_children(ours[5], ours[6], ours[2], ours[3]),
            root_children(sk.impurity, sk.n_node_samples, sk.children_left, sk.children_right),
            1e-12, 1e-12, label="root split's weighted impurity", record=record)
    pred, _ = T.tree_predict(x, *ours[:5])
    sk_pred = DecisionTreeClassifier(criterion=criterion, random_state=0).fit(x, y).predict(x)
    compare(pred, sk_pred.astype(np.int64), 0, 0, label="training predictions", record=record)


# ---------------------------------------------------------------------------------------------
# k-means


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_kmeans_matches_sklearn(dtype, record, data):
    """Same initial centres on both sides: the same partition (compared up to label
    permutation), centres, inertia and iteration count on blob data (continuous draws: no
    sample is equidistant from two centres, so the assignments are unambiguous)."""
    record.bind("kmeans_fit", FAMILY, "sklearn oracle", dtype, "cpu")
    rng, n, d, k = data.draw(seeded_data(dtype, max_n=60, max_d=5, max_k=5, min_n_per_k=3))
    x, _ = blobs(rng, n, d, k, dtype)
    init = x[rng.choice(n, k, replace=False)].copy()
    tol = data.draw(st.sampled_from([1e-4, 0.0]), label="tol")
    record.examples += 1
    (centers, labels, inertia, n_iter, _), _ = C.kmeans_fit(x, init, tol=tol)
    sk = KMeans(k, init=init, n_init=1, algorithm="lloyd", tol=tol).fit(x)
    ari = adjusted_rand_score(labels, sk.labels_)
    record.figures.setdefault("min ARI vs sklearn", 1.0)
    record.figures["min ARI vs sklearn"] = min(record.figures["min ARI vs sklearn"], ari)
    compare(np.array([ari]), np.array([1.0]), 0, 0, label="ARI vs scikit-learn", record=record)
    # float32: scikit-learn's centres are float32 sums of up to n samples (relative error
    # ~ n eps32 / 2 of the largest |x| ~ 10): atol n eps32 * 10.
    rtol, atol = _tol(dtype)
    if dtype == FLOAT32:
        atol = n * float(np.finfo(np.float32).eps) * 10
    compare(centers, sk.cluster_centers_.astype(dtype), rtol, atol, label="centres",
            record=record)
    compare(np.atleast_1d(inertia), np.atleast_1d(np.asarray(sk.inertia_, dtype)),
            rtol * (n if dtype == FLOAT32 else 1), atol, label="inertia", record=record)
    if dtype == FLOAT64:
        compare(np.atleast_1d(n_iter), np.array([sk.n_iter_], np.int64), 0, 0,
                label="iterations", record=record)


# ---------------------------------------------------------------------------------------------
# hierarchical clustering


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", C.LINKAGE_METHODS)
@given(data=st.data())
def test_linkage_matches_scipy(dtype, method, record, data):
    """The whole linkage matrix against scipy's, from standard normal samples: distances and
    Lance-Williams heights are then distinct with probability one, so the merge order is
    unambiguous. scipy works in float64 on float32 input too; our float32 Z is its float64
    result rounded once."""
    record.bind("linkage", FAMILY, f"scipy oracle ({method})", dtype, "cpu")
    rng, n, d, _ = data.draw(seeded_data(dtype, max_n=40, max_d=4, max_k=1))
    n = max(n, 2)
    x = rng.standard_normal((n, d)).astype(dtype)
    record.examples += 1
    z, _ = C.linkage(x, method)
    expect = hierarchy.linkage(x.astype(np.float64), method=method)
    # heights: float64 updates in another order: 1e-12 relative (a few hundred ulps);
    # float32: the single rounding of the result.
    rtol = 1e-12 if dtype == FLOAT64 else float(np.finfo(np.float32).eps)
    compare(z, expect.astype(dtype), rtol, 1e-12, label=f"{method} linkage matrix",
            record=record)


# ---------------------------------------------------------------------------------------------
# Gaussian mixture


@pytest.mark.parametrize("covariance_type", M.COVARIANCE_TYPES)
@given(data=st.data())
def test_gmm_matches_sklearn(covariance_type, record, data):
    """float64, reg_covar and tol as scikit-learn's defaults, the same initial parameters:
    weights, means, covariances, the lower bound of every iteration, labels. The two sides
    order their sums differently (and scikit-learn's diagonal covariance is E[x^2] - mu^2, which
    cancels log10(|mu|^2 / var) ~ 2-3 digits on these blobs); EM contracts towards its fixed
    point, so differences stay near 1e-13 x 1e3. rtol 1e-7 (the default) with atol 1e-9."""
    record.bind("gmm_fit", FAMILY, f"sklearn oracle ({covariance_type})", FLOAT64, "cpu")
    rng, n, d, k = data.draw(seeded_data(FLOAT64, max_n=80, max_d=3, max_k=3, min_n_per_k=15))
    x, _ = blobs(rng, n, d, k, np.float64, spread=6.0)
    var = x.var(axis=0) + 1e-3
    w = np.full(k, 1.0 / k)
    mu = x[:k].copy()
    cov = np.stack([np.diag(var)] * k) if covariance_type == "full" else np.stack([var] * k)
    record.examples += 1
    (w2, mu2, cov2, labels, bounds), _ = M.gmm_fit(x, w, mu, cov, covariance_type)
    prec = np.linalg.inv(cov) if covariance_type == "full" else 1.0 / cov
    sk = GaussianMixture(k, covariance_type=covariance_type, weights_init=w, means_init=mu,
                         precisions_init=prec, init_params="random", random_state=0).fit(x)
    for name, mine, theirs in (("weights", w2, sk.weights_), ("means", mu2, sk.means_),
                               ("covariances", cov2, sk.covariances_),
                               ("lower bounds", bounds, np.asarray(sk.lower_bounds_))):
        compare(mine, theirs, 1e-7, 1e-9, label=f"GMM {name}", record=record)
    compare(labels, sk.predict(x).astype(np.int64), 0, 0, label="GMM labels", record=record)


# ---------------------------------------------------------------------------------------------
# real data shipped with scikit-learn


_DATASETS = {
    "iris": datasets.load_iris, "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
}


def _split(name):
    x, y = _DATASETS[name](return_X_y=True)
    x = x.astype(np.float64)
    test = np.arange(x.shape[0]) % 4 == 0  # every 4th sample held out, deterministic
    return x, y.astype(np.int64), test


@pytest.mark.parametrize("name", list(_DATASETS))
def test_real_data_classifiers(name, record):
    """k-NN (k = 5), Gaussian naive Bayes and Gini / entropy trees: held-out accuracy of
    the reference and scikit-learn. k-NN and naive Bayes must agree prediction for prediction
    except on k-NN queries with tied k-th distances (digits has integer pixels: ties are
    common, and each side breaks them by its own order); trees may differ where equal-gain
    splits on different features were chosen differently, which can move a held-out
    prediction (their held-out accuracies are recorded side by side); what cannot differ is
    the root's weighted child impurity and the training accuracy of the unrestricted trees."""
    record.bind("classifiers", FAMILY, f"real data: {name}", FLOAT64, "cpu")
    x, y, test = _split(name)
    xt, yt, xq, yq = x[~test], y[~test], x[test], y[test]
    record.examples += 1

    pred, _ = N.knn_classify(xt, yt, xq, 5)
    sk_pred = KNeighborsClassifier(5, algorithm="brute").fit(xt, yt).predict(xq)
    exact = np.sort(_exact_sq(xq, xt), axis=1)
    clear = exact[:, 5] > exact[:, 4] * (1 + 1e-9)
    record.figures["knn accuracy (ref)"] = float((pred == yq).mean())
    record.figures["knn accuracy (sklearn)"] = float((sk_pred == yq).mean())
    record.figures["knn tied queries"] = int((~clear).sum())
    compare(pred[clear], sk_pred[clear].astype(np.int64), 0, 0, label="k-NN", record=record)

    (theta, var, prior), _ = NB.gaussian_nb_fit(xt, yt)
    pred, _ = NB.gaussian_nb_predict(xq, theta, var, prior)
    sk_pred = GaussianNB().fit(xt, yt).predict(xq)
    record.figures["naive Bayes accuracy (ref)"] = float((pred == yq).mean())
    record.figures["naive Bayes accuracy (sklearn)"] = float((sk_pred == yq).mean())
    compare(pred, sk_pred.astype(np.int64), 0, 0, label="naive Bayes", record=record)

    for criterion in T.CRITERIA:
        tree, _ = T.tree_fit(xt, yt, criterion=criterion)
        acc = float((T.tree_predict(xq, *tree[:5])[0] == yq).mean())
        sk = DecisionTreeClassifier(criterion=criterion, random_state=0).fit(xt, yt)
        sk_acc = float((sk.predict(xq) == yq).mean())
        record.figures[f"tree {criterion} accuracy (ref)"] = acc
        record.figures[f"tree {criterion} accuracy (sklearn)"] = sk_acc
        train = float((T.tree_predict(xt, *tree[:5])[0] == yt).mean())
        record.figures[f"tree {criterion} training accuracy (ref)"] = train
        sk_train = float((sk.predict(xt) == yt).mean())
        compare(np.array([train]), np.array([sk_train]), 0, 0,
                label=f"{criterion} tree training accuracy", record=record)
        st_ = sk.tree_
        compare(np.array([tree[6][tree[2][0]] * tree[5][tree[2][0]]
                          + tree[6][tree[3][0]] * tree[5][tree[3][0]]]),
                np.array([st_.n_node_samples[st_.children_left[0]]
                          * st_.impurity[st_.children_left[0]]
                          + st_.n_node_samples[st_.children_right[0]]
                          * st_.impurity[st_.children_right[0]]]),
                1e-12, 1e-12, label=f"{criterion} tree root split", record=record)


@pytest.mark.parametrize("name", list(_DATASETS))
def test_real_data_clustering(name, record):
    """k-means (k = number of classes, the first sample of each class as initial centre),
    Ward linkage cut at k clusters, and a diagonal Gaussian mixture from the k-means centres:
    the reference and the peer must find the same partitions (ARI 1 between them) and the
    same inertia / lower bound; the ARI against the true classes is recorded."""
    record.bind("clustering", FAMILY, f"real data: {name}", FLOAT64, "cpu")
    x, y, _ = _split(name)
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)  # standardised, as one would for clustering
    k = int(y.max()) + 1
    init = x[[int(np.flatnonzero(y == c)[0]) for c in range(k)]]
    record.examples += 1

    (centers, labels, inertia, _, _), _ = C.kmeans_fit(x, init)
    sk = KMeans(k, init=init, n_init=1, algorithm="lloyd").fit(x)
    record.figures["k-means inertia (ref)"] = float(inertia)
    record.figures["k-means inertia (sklearn)"] = float(sk.inertia_)
    record.figures["k-means ARI vs classes (ref)"] = adjusted_rand_score(y, labels)
    compare(np.array([adjusted_rand_score(labels, sk.labels_)]), np.array([1.0]), 0, 0,
            label="k-means partition vs scikit-learn", record=record)
    compare(np.atleast_1d(inertia), np.array([sk.inertia_]), 1e-9, 0,
            label="k-means inertia", record=record)

    z, _ = C.linkage(x, "ward")
    z_sp = hierarchy.linkage(x, "ward")
    cut = hierarchy.fcluster(z, k, "maxclust")
    record.figures["ward ARI vs classes (ref)"] = adjusted_rand_score(y, cut)
    # Heights: 1e-9 relative covers float64 updates in another order over n merges.
    compare(z[:, 2], z_sp[:, 2], 1e-9, 1e-9, label="Ward heights vs scipy", record=record)
    compare(np.array([adjusted_rand_score(cut, hierarchy.fcluster(z_sp, k, "maxclust"))]),
            np.array([1.0]), 0, 0, label="Ward partition vs scipy", record=record)

    var = np.stack([x.var(0) + 1e-3] * k)
    w = np.full(k, 1.0 / k)
    (_, _, _, g_labels, bounds), _ = M.gmm_fit(x, w, centers, var, "diag")
    gm = GaussianMixture(k, covariance_type="diag", weights_init=w, means_init=centers,
                         precisions_init=1.0 / var, init_params="random", random_state=0).fit(x)
    record.figures["GMM (diag) lower bound (ref)"] = float(bounds[-1])
    record.figures["GMM (diag) lower bound (sklearn)"] = float(gm.lower_bound_)
    record.figures["GMM (diag) ARI vs classes (ref)"] = adjusted_rand_score(y, g_labels)
    # The lower bound after many EM steps: float64 sums in another order, 1e-9 relative.
    compare(np.array([bounds[-1]]), np.array([gm.lower_bound_]), 1e-9, 0,
            label="GMM lower bound vs scikit-learn", record=record)
    compare(np.array([adjusted_rand_score(g_labels, gm.predict(x))]), np.array([1.0]), 0, 0,
            label="GMM partition vs scikit-learn", record=record)


# ---------------------------------------------------------------------------------------------
# the parallel paths (Hypothesis' small data sets take the serial ones)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_paths_match_sklearn(dtype, record):
    """KNN above its parallel threshold (m n d >= 16 PARALLEL_MIN, more than one task of
    queries) and k-means above its own (n d k >= PARALLEL_MIN): the tiled, per-task code that
    the property tests' small data never reach, against scikit-learn on blob data."""
    record.bind("knn_kneighbors", FAMILY, "sklearn oracle (parallel path)", dtype, "cpu")
    rng = np.random.default_rng(7)
    x, _ = blobs(rng, 3000, 8, 6, dtype, spread=1.0)
    xt, xq = x[:2500], x[2500:]
    assert xq.shape[0] * xt.shape[0] * 8 >= 16 * (1 << 16) and xq.shape[0] > 64
    (dist, idx), _ = N.kneighbors(xt, xq, 5)
    exact = _exact_sq(xq, xt)
    order = np.argsort(exact, axis=1, kind="stable")[:, :6]
    ranked = np.take_along_axis(exact, order, 1)
    eps = float(np.finfo(dtype).eps)
    norm = float(np.abs(x.astype(np.float64)).sum(1).max()) + 1.0
    # where the 5th and 6th exact distances are apart by more than rounding, the neighbour
    # sets are unambiguous (see test_knn_matches_sklearn for the bound)
    clear = ranked[:, 5] - ranked[:, 4] > 16 * 10 * eps * (ranked[:, 5] + norm ** 2)
    record.examples += 1
    assert clear.mean() > 0.9
    compare(np.sort(idx[clear], 1), np.sort(order[clear, :5], 1), 0, 0,
            label="k-NN indices vs exact (parallel path)", record=record)
    sk_dist, _ = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(xt).kneighbors(xq)
    compare(dist, sk_dist.astype(dtype), _tol(dtype)[0], np.sqrt(8 * 10 * eps) * norm,
            label="k-NN distances vs scikit-learn (parallel path)", record=record)

    record.bind("kmeans_fit", FAMILY, "sklearn oracle (parallel path)", dtype, "cpu")
    x, _ = blobs(rng, 6000, 8, 4, dtype)
    init = x[rng.choice(6000, 4, replace=False)].copy()
    (centers, labels, inertia, n_iter, _), _ = C.kmeans_fit(x, init, tol=0.0)
    sk = KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=0.0).fit(x)
    record.examples += 1
    compare(np.array([adjusted_rand_score(labels, sk.labels_)]), np.array([1.0]), 0, 0,
            label="ARI vs scikit-learn (parallel path)", record=record)
    rtol, atol = _tol(dtype)
    if dtype == FLOAT32:  # as in test_kmeans_matches_sklearn: float32 sums of n samples
        atol = 6000 * eps * 10
    compare(centers, sk.cluster_centers_.astype(dtype), rtol, atol, label="centres (parallel)",
            record=record)
    (pred, _), _ = C.kmeans_predict(x, centers)
    compare(pred, labels, 0, 0, label="predict = the fit's final labels (parallel path)",
            record=record)
