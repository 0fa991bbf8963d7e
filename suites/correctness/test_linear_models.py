"""The linear models against scikit-learn (the second oracle), invariants, and real data.

Hypothesis generates the data sets (seed, size, offset, scale, noise); scikit-learn fits the
same objective, run to tight tolerances where it iterates. Where the optimum of an iterative
fit is compared, the tolerance comes from strong convexity: a mu-strongly convex P has
|w - w*| <= |grad P(w)| / mu and P(w) - P* <= |grad P(w)|^2 / (2 mu), and both sides'
gradients are measured with the reference's own objective (float64). The real-data tests fit
the data sets shipped inside scikit-learn and record both scores in the report.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import datasets
from sklearn import linear_model as sk
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sklearn.svm import LinearSVC

from reference import linear_models as L
from reference import logistic_svm as LS
from suites.catalog import strategies as S
from suites.catalog._linear_tools import FAMILY, class_data, ls_tol, regression_data
from suites.recording import compare

F64 = np.float64
EPS = float(np.finfo(F64).eps)
_FEW = settings(max_examples=15)


@st.composite
def _regression(draw, min_extra=2):
    d = draw(st.integers(1, 6))
    n = draw(st.integers(d + min_extra, 40))
    return regression_data(draw(S.seeds()), n, d, F64,
                           noise=draw(st.sampled_from([0.0, 0.5])),
                           offset=draw(st.sampled_from([0.0, 5.0])),
                           scale=draw(st.sampled_from([0.1, 1.0, 10.0])))


def _bind(record, algorithm: str, check: str):
    record.bind(algorithm, FAMILY, check, F64, "cpu")
    record.examples += 1


def _cmp(record, mine, theirs, tol, label):
    compare(np.asarray(mine, F64), np.asarray(theirs, F64), tol.rtol, tol.atol, label=label,
            record=record)


# ---------------------------------------------------------------------------------------------
# regression vs scikit-learn


@_FEW
@given(data=_regression(), fit_intercept=st.booleans())
def test_least_squares_vs_sklearn(data, fit_intercept, record):
    _bind(record, "linear_regression_fit", "sklearn LinearRegression")
    X, y = data
    w, b = L.linear_regression_fit(X, y, fit_intercept=fit_intercept)
    m = sk.LinearRegression(fit_intercept=fit_intercept).fit(X, y)
    tol = ls_tol(X, y, F64, fit_intercept=fit_intercept)
    _cmp(record, w, m.coef_, tol, "coef vs LinearRegression")
    _cmp(record, b, m.intercept_, tol, "intercept vs LinearRegression")


@_FEW
@given(data=_regression(), alpha=st.sampled_from([1e-3, 1.0, 100.0]),
       fit_intercept=st.booleans())
def test_ridge_vs_sklearn(data, alpha, fit_intercept, record):
    _bind(record, "ridge_fit", "sklearn Ridge")
    X, y = data
    w, b = L.ridge_fit(X, y, alpha=alpha, fit_intercept=fit_intercept)
    m = sk.Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="svd").fit(X, y)
    tol = ls_tol(X, y, F64, ridge=alpha, fit_intercept=fit_intercept)
    _cmp(record, w, m.coef_, tol, "coef vs Ridge(solver='svd')")
    _cmp(record, b, m.intercept_, tol, "intercept vs Ridge")


def test_rank_deficient_least_squares_is_min_norm(record):
    """A duplicated column and fewer samples than features: both sides return the
    minimum-norm solution (lstsq on the one side, the eigendecomposition on the other)."""
    _bind(record, "linear_regression_fit", "sklearn LinearRegression, rank-deficient")
    rng = np.random.default_rng(3)
    for n, d in ((30, 4), (5, 9)):
        X = rng.standard_normal((n, d))
        X = np.hstack([X, X[:, :1]])  # an exact duplicate column
        y = rng.standard_normal(n)
        w, b = L.linear_regression_fit(X, y)
        m = sk.LinearRegression().fit(X, y)
        # Well-conditioned on the row space (Gaussian), so 1e-9 ~ k^2 eps64 with k < 1e3.
        compare(w, m.coef_, 1e-9, 1e-9, label=f"min-norm coef, {n}x{d + 1}", record=record)
        compare(np.asarray(b), np.asarray(m.intercept_), 1e-9, 1e-9, label="intercept",
                record=record)


def _lasso_primal(X, y, w, b, alpha):
    return 0.5 / len(y) * float(np.sum((y - X @ w - b) ** 2)) + alpha * float(np.abs(w).sum())


@_FEW
@given(data=_regression(), frac=st.sampled_from([0.01, 0.1, 0.5]))
def test_lasso_vs_sklearn(data, frac, record):
    """Both run to a duality gap <= tol ||y_c||^2 (the gap is of n P, P the 1/(2n) objective),
    so each primal is within tol ||y_c||^2 / n of the optimum: the two objective values differ
    by at most twice that. With n >= d + 2 Gaussian columns P is mu-strongly convex, mu =
    lambda_min(X_c^T X_c) / n, so each w is within sqrt(2 gap / mu) of w*."""
    _bind(record, "lasso_fit", "sklearn Lasso (objective and coef)")
    X, y = data
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    alpha = frac * float(np.abs(Xc.T @ yc).max()) / len(y)
    tol = 1e-12
    w, b = L.lasso_fit(X, y, alpha=alpha, tol=tol, max_iter=100_000)
    m = sk.Lasso(alpha=alpha, tol=tol, max_iter=100_000).fit(X, y)
    gap = tol * float(yc @ yc) / len(y)
    p_mine, p_theirs = (_lasso_primal(X, y, ww, bb, alpha)
                        for ww, bb in ((w, b), (m.coef_, m.intercept_)))
    rounding = 64 * EPS * max(p_theirs, 1e-300)
    compare(np.asarray(p_mine), np.asarray(p_theirs), 0.0, 2 * gap + rounding,
            label="objective vs Lasso", record=record)
    mu = float(np.linalg.eigvalsh(Xc.T @ Xc)[0]) / len(y)
    if mu > 0:
        dist = 2 * np.sqrt(2 * (gap + rounding) / mu)
        compare(w, m.coef_, 0.0, dist + 1e-12, label="coef vs Lasso", record=record)
    record.figures["objective (reference)"] = p_mine


@_FEW
@given(data=_regression(min_extra=8), degree=st.integers(1, 3))
def test_polynomial_vs_sklearn(data, degree, record):
    _bind(record, "polynomial_regression_fit", "sklearn PolynomialFeatures + LinearRegression")
    X, y = data
    X = X[:, :2] / (1.0 + np.abs(X[:, :2]).max())  # keep the monomials' conditioning moderate
    Phi, _ = L.polynomial_features(X, degree=degree)
    # Each monomial is a product of <= 3 factors rounded once (ours) or degree - 1 times.
    compare(Phi, PolynomialFeatures(degree).fit_transform(X), 4 * EPS, 0.0,
            label="polynomial features", record=record)
    w, b = L.polynomial_regression_fit(X, y, degree=degree)
    pipe = make_pipeline(PolynomialFeatures(degree, include_bias=False),
                         sk.LinearRegression()).fit(X, y)
    lin = pipe[-1]
    Phi1, _ = L.polynomial_features(X, degree=degree, include_bias=False)
    tol = ls_tol(Phi1, y, F64)
    _cmp(record, w, lin.coef_, tol, "coef vs pipeline")
    pred_tol = ls_tol(Phi1, y, F64)
    _cmp(record, L.polynomial_regression_predict(X, w, b, degree=degree), pipe.predict(X),
         type(pred_tol)(pred_tol.rtol, pred_tol.atol * (1 + np.abs(Phi1).sum(axis=1).max())),
         "predictions vs pipeline")


@_FEW
@given(data=_regression(min_extra=2))
def test_gradient_descent_reaches_least_squares(data, record):
    """With lr = 1/L the error contracts by (1 - mu/L) per step; 20 k/(k...) steps reach the
    least-squares solution to ~1e-9 relative for condition numbers k = L/mu below 100."""
    _bind(record, "linear_regression_gd_fit", "converges to LinearRegression")
    X, y = data
    X = (X - X.mean(axis=0)) / X.std(axis=0).clip(1e-3) + 1.0  # moderate conditioning
    A = np.hstack([X, np.ones((len(y), 1))])
    lam = np.linalg.eigvalsh(A.T @ A / len(y))
    k = lam[-1] / lam[0]
    n_iter = int(np.ceil(k * np.log(1e12))) + 1
    w, b = L.linear_regression_gd_fit(X, y, lr=1.0 / lam[-1], n_iter=n_iter)
    m = sk.LinearRegression().fit(X, y)
    tol = ls_tol(X, y, F64)
    scale = 1e-9 * max(1.0, float(np.abs(m.coef_).max()), abs(m.intercept_))
    compare(w, m.coef_, 1e-9, max(tol.atol, scale), label="coef vs LinearRegression",
            record=record)
    record.figures["steps (lr = 1/L)"] = n_iter


# ---------------------------------------------------------------------------------------------
# classifiers vs scikit-learn


def _grad_norm(objective, backward, X, y, W, b, **params):
    _, ctx = objective(X, y, W, b, **params)
    dW, db = backward(ctx, np.asarray(1.0))
    return float(np.sqrt(np.sum(dW ** 2) + np.sum(db ** 2))), float(np.sqrt(np.sum(dW ** 2)))


@st.composite
def _classes(draw):
    k = draw(st.integers(2, 4))
    n = draw(st.integers(4 * k, 60))
    d = draw(st.integers(1, 5))
    return class_data(draw(S.seeds()), n, d, k, F64, sep=draw(st.sampled_from([0.5, 2.0])))


@_FEW
@given(data=_classes(), C=st.sampled_from([0.1, 1.0, 10.0]))
def test_logistic_vs_sklearn(data, C, record):
    """Without intercept the objective is (1)-strongly convex in W (the penalty 1/2 ||W||^2),
    so |W - W*| <= |grad| and |W_ref - W_sk| <= |grad_ref| + |grad_sk|; the objective
    values differ by at most the larger |grad|^2 / 2 (plus rounding)."""
    _bind(record, "logistic_regression_fit", "sklearn LogisticRegression (lbfgs)")
    X, y = data
    kw = dict(C=C, fit_intercept=False, tol=1e-12, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stalled line search at the optimum is no error
        W, b = LS.logistic_regression_fit(X, y, **kw)
        m = sk.LogisticRegression(**kw).fit(X, y)
    grads = [_grad_norm(LS.logistic_objective, LS.logistic_objective_backward, X, y, WW, bb,
                        C=C)[0] for WW, bb in ((W, b), (m.coef_, np.zeros(len(b))))]
    compare(W, m.coef_, 0.0, sum(grads) + 1e-12, label="coef vs LogisticRegression",
            record=record)
    vals = [float(LS.logistic_objective(X, y, WW, bb, C=C)[0])
            for WW, bb in ((W, b), (m.coef_, np.zeros(len(b))))]
    compare(np.asarray(vals[0]), np.asarray(vals[1]), 64 * EPS, max(grads) ** 2 / 2 + 1e-300,
            label="objective vs LogisticRegression", record=record)


@_FEW
@given(data=_classes(), C=st.sampled_from([0.1, 1.0, 10.0]))
def test_logistic_with_intercept_vs_sklearn(data, C, record):
    """With a free intercept strong convexity is not guaranteed in b; the objective values
    are compared (both minimise the same convex function to tight tolerances: they may differ
    by rounding and the solvers' residual excess, bounded here by |grad| * |W - W'| with the
    measured gradients), and the predicted probabilities."""
    _bind(record, "logistic_regression_fit", "sklearn LogisticRegression, intercept")
    X, y = data
    kw = dict(C=C, tol=1e-12, max_iter=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W, b = LS.logistic_regression_fit(X, y, **kw)
        m = sk.LogisticRegression(**kw).fit(X, y)
    pts = ((W, b), (m.coef_, m.intercept_))
    vals = [float(LS.logistic_objective(X, y, WW, bb, C=C)[0]) for WW, bb in pts]
    grads = [_grad_norm(LS.logistic_objective, LS.logistic_objective_backward, X, y, WW, bb,
                        C=C)[0] for WW, bb in pts]
    # Multinomial intercepts are defined up to a common shift (softmax ignores it), so their
    # difference is taken about its mean; a binary model's single intercept has no such
    # freedom (centring it made its difference 0, and the bound below too tight: a case whose
    # solutions differed in b failed once the data term's summation order changed).
    db = b - m.intercept_
    if db.size > 1:
        db = db - db.mean()
    dist = float(np.sqrt(np.sum((W - m.coef_) ** 2) + np.sum(db ** 2)))
    compare(np.asarray(vals[0]), np.asarray(vals[1]), 64 * EPS, max(grads) * dist + 1e-300,
            label="objective vs LogisticRegression", record=record)
    # Probabilities move by at most 1/2 |df| per score, |df| <= |x| |dW| + |db|.
    xmax = float(np.linalg.norm(X, axis=1).max()) + 1.0
    compare(LS.logistic_regression_predict_proba(X, W, b), m.predict_proba(X), 0.0,
            xmax * dist + 1e-12, label="probabilities", record=record)


@_FEW
@given(data=_classes(), C=st.sampled_from([0.1, 1.0, 10.0]),
       s=st.sampled_from([1.0, 10.0]))
def test_linear_svm_vs_sklearn(data, C, s, record):
    """The squared-hinge objective with the penalised intercept is strongly convex with
    mu = min(1, 1/s^2): |theta_ref - theta_sk| <= (|grad_ref| + |grad_sk|) / mu, comparing
    each class's (w, b) of the one-vs-rest problems."""
    _bind(record, "linear_svm_fit", "sklearn LinearSVC (primal, liblinear)")
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W, b = LS.linear_svm_fit(X, y, C=C, intercept_scaling=s, tol=1e-12, max_iter=100_000)
        m = LinearSVC(C=C, intercept_scaling=s, dual=False, tol=1e-12,
                      max_iter=100_000).fit(X, y)
    grads = [_grad_norm(LS.linear_svm_objective, LS.linear_svm_objective_backward, X, y, WW,
                        bb, C=C, intercept_scaling=s)[0]
             for WW, bb in ((W, b), (m.coef_, m.intercept_))]
    mu = min(1.0, 1.0 / s ** 2)
    compare(np.hstack([W, b[:, None]]), np.hstack([m.coef_, m.intercept_[:, None]]), 0.0,
            sum(grads) / mu + 1e-12, label="(coef, intercept) vs LinearSVC", record=record)
    record.figures["|grad| at LinearSVC's solution"] = grads[1]


# ---------------------------------------------------------------------------------------------
# invariants


def test_ridge_tends_to_least_squares(record):
    """|w(alpha) - w_ls| = O(alpha): (G + aI)^-1 q - G^-1 q = -a (G + aI)^-1 G^-1 q, so the
    distance is at most alpha |w_ls| / lambda_min(G), and it shrinks with alpha."""
    _bind(record, "ridge_fit", "alpha -> 0 gives least squares")
    X, y = regression_data(np.random.default_rng(5), 50, 6, F64, offset=2.0)
    w_ls, _ = L.linear_regression_fit(X, y)
    Xc = X - X.mean(axis=0)
    lam_min = float(np.linalg.eigvalsh(Xc.T @ Xc)[0])
    last = np.inf
    for alpha in (1.0, 1e-2, 1e-4, 1e-6, 1e-8):
        w, _ = L.ridge_fit(X, y, alpha=alpha)
        dist = float(np.linalg.norm(w - w_ls))
        bound = alpha * float(np.linalg.norm(w_ls)) / lam_min
        assert dist <= bound * (1 + 1e-6) + 1e-12, f"alpha={alpha}: {dist} > {bound}"
        assert dist < last or dist <= 1e-12, f"alpha={alpha}: distance grew to {dist}"
        last = dist
    compare(L.ridge_fit(X, y, alpha=0.0)[0], w_ls, 1e-10, 1e-12, label="alpha = 0",
            record=record)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separable_data_zero_training_error(dtype, record):
    """Linearly separable classes (margin 1 around a random hyperplane): the SVM at large C
    classifies every training point correctly, as does logistic regression."""
    record.bind("linear_svm_fit", FAMILY, "separable: zero training error", dtype, "cpu")
    rng = np.random.default_rng(11)
    for d in (2, 5, 20):
        record.examples += 1
        normal = rng.standard_normal(d)
        normal /= np.linalg.norm(normal)
        X = rng.standard_normal((200, d)) * 3
        side = X @ normal + 0.3
        X += np.where(side > 0, 1.0, -1.0)[:, None] * normal  # push points 1 off the plane
        y = (X @ normal + 0.3 > 0).astype(np.int64)
        X = X.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W, b = LS.linear_svm_fit(X, y, C=1e4, intercept_scaling=100.0, max_iter=10_000)
            Wl, bl = LS.logistic_regression_fit(X, y, C=1e4, max_iter=10_000)
        errors = int(np.sum(LS.linear_classifier_predict(X, W, b) != y))
        assert errors == 0, f"d={d}: SVM misclassifies {errors} separable training points"
        errors_l = int(np.sum(LS.linear_classifier_predict(X, Wl, bl) != y))
        assert errors_l == 0, f"d={d}: logistic regression misclassifies {errors_l}"
    record.figures["training errors (SVM, logistic)"] = "0, 0"


# ---------------------------------------------------------------------------------------------
# real data shipped with scikit-learn


def _r2(y, pred):
    return 1.0 - float(np.sum((y - pred) ** 2)) / float(np.sum((y - y.mean()) ** 2))


def test_diabetes_regressions(record):
    """R^2 on the diabetes data (442 x 10): the same objective, so the same score; the
    tolerance is that of the coefficients (ls_tol) carried to R^2, well under 1e-9."""
    _bind(record, "linear_regression_fit", "diabetes: R^2 vs sklearn")
    X, y = datasets.load_diabetes(return_X_y=True)
    fits = {
        "OLS": (L.linear_regression_fit(X, y), sk.LinearRegression().fit(X, y)),
        "ridge a=0.1": (L.ridge_fit(X, y, alpha=0.1), sk.Ridge(alpha=0.1).fit(X, y)),
        "lasso a=0.05": (L.lasso_fit(X, y, alpha=0.05, tol=1e-12, max_iter=100_000),
                         sk.Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(X, y)),
    }
    for name, ((w, b), m) in fits.items():
        mine, theirs = _r2(y, L.linear_predict(X, w, b)), _r2(y, m.predict(X))
        record.figures[f"{name} R^2 (ref / sklearn)"] = f"{mine:.6f} / {theirs:.6f}"
        compare(np.asarray(mine), np.asarray(theirs), 1e-9, 1e-9, label=f"{name} R^2",
                record=record)
    Xs = StandardScaler().fit_transform(X)
    w, b = L.polynomial_regression_fit(Xs, y, degree=2)
    pipe = make_pipeline(PolynomialFeatures(2, include_bias=False),
                         sk.LinearRegression()).fit(Xs, y)
    mine = _r2(y, L.polynomial_regression_predict(Xs, w, b, degree=2))
    theirs = _r2(y, pipe.predict(Xs))
    record.figures["poly-2 R^2 (ref / sklearn)"] = f"{mine:.6f} / {theirs:.6f}"
    compare(np.asarray(mine), np.asarray(theirs), 1e-7, 1e-7, label="poly-2 R^2",
            record=record)


_CLASSIFICATION = {
    "breast_cancer": datasets.load_breast_cancer,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "digits": datasets.load_digits,
}


@pytest.mark.parametrize("name", sorted(_CLASSIFICATION))
def test_real_classification(name, record):
    """Training and held-out accuracy of logistic regression and the linear SVM, reference and
    scikit-learn, on standardised features (first 70% of a fixed permutation for training).
    Both minimise the same objective to tight tolerances: their objective values agree to
    1e-6 relative (the solvers stop at |grad| ~ 1e-8 of an objective of size n), and their
    held-out accuracies differ by at most one sample (a point within rounding of a boundary)."""
    _bind(record, "logistic_regression_fit", f"{name}: accuracy vs sklearn")
    X, y = _CLASSIFICATION[name](return_X_y=True)
    y = np.unique(y, return_inverse=True)[1]
    perm = np.random.default_rng(0).permutation(len(y))
    cut = int(0.7 * len(y))
    tr, te = perm[:cut], perm[cut:]
    scaler = StandardScaler().fit(X[tr])
    X = scaler.transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "logistic": (LS.logistic_regression_fit(X[tr], y[tr], tol=1e-10, max_iter=10_000),
                         sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X[tr], y[tr]),
                         LS.logistic_objective, {}),
            "linear SVM": (LS.linear_svm_fit(X[tr], y[tr], tol=1e-10, max_iter=10_000),
                           LinearSVC(dual=False, tol=1e-10, max_iter=10_000).fit(X[tr], y[tr]),
                           LS.linear_svm_objective, {}),
        }
    for label, ((W, b), m, objective, kw) in models.items():
        acc = [float(np.mean(LS.linear_classifier_predict(X[te], W, b) == y[te])),
               float(np.mean(m.predict(X[te]) == y[te]))]
        train = float(np.mean(LS.linear_classifier_predict(X[tr], W, b) == y[tr]))
        record.figures[f"{label} test accuracy (ref / sklearn)"] = f"{acc[0]:.4f} / {acc[1]:.4f}"
        record.figures[f"{label} train accuracy (ref)"] = round(train, 4)
        vals = [float(objective(X[tr], y[tr], WW, bb, **kw)[0])
                for WW, bb in ((W, b), (m.coef_, m.intercept_))]
        record.figures[f"{label} objective (ref / sklearn)"] = f"{vals[0]:.8g} / {vals[1]:.8g}"
        compare(np.asarray(vals[0]), np.asarray(vals[1]), 1e-6, 0.0,
                label=f"{label} objective", record=record)
        assert vals[0] <= vals[1] * (1 + 1e-6), f"{label}: reference objective higher"
        assert abs(acc[0] - acc[1]) <= 1.0 / len(te) + 1e-12, f"{label}: accuracies {acc}"


# Predictions and objectives check X's finiteness through their scores (one pass over X
# instead of two):
# every NaN or inf in X must still raise, whatever the weights, and a finite X whose scores
# overflow must still be answered.

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("zero_weight", [False, True])
def test_nonfinite_X_is_refused_through_the_scores(bad, zero_weight):
    rng = np.random.default_rng(3)
    X, w = rng.standard_normal((40, 5)), rng.standard_normal(5)
    if zero_weight:
        w[2] = 0.0  # inf * 0 is NaN: still not finite
    X[17, 2] = bad
    y, labels, b = rng.standard_normal(40), rng.integers(0, 2, 40), np.asarray([0.5])
    for call in (lambda: L.linear_predict(X, w, np.asarray(0.5)),
                 lambda: LS.linear_classifier_predict(X, w[None, :], b),
                 lambda: LS.logistic_regression_predict_proba(X, w[None, :], b),
                 lambda: L.ridge_objective(X, y, w, np.asarray(0.5)),
                 lambda: L.lasso_objective(X, y, w, np.asarray(0.5)),
                 lambda: LS.logistic_objective(X, labels, w[None, :], b),
                 lambda: LS.linear_svm_objective(X, labels, w[None, :], b)):
        with pytest.raises(ValueError, match=r"X must be finite .* at \[17, 2\]"):
            call()


def test_predictions_of_a_finite_X_that_overflow_are_returned():
    X = np.full((3, 2), 1e308)
    got = L.linear_predict(X, np.ones(2), np.asarray(0.0))
    assert np.array_equal(got, np.full(3, np.inf))
