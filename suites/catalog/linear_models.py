"""Specs of the linear regression models (family ``classical``): fits, predictions, objectives.

Torch twins where torch can say something: ``torch.linalg.lstsq``/``solve`` for the normal
equations, ridge and polynomial regression, autograd for gradient descent and for the
gradients of the objectives. The lasso's coordinate descent has none (``torch=None``): its
oracle is scikit-learn in ``suites/correctness/test_linear_models.py``, and its invariant here
(alpha >= alpha_max gives exactly zero coefficients) needs none. scikit-learn is the timed peer.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from reference import linear_models as L
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._linear_tools import (
    FAMILY,
    INT_MAX,
    accumulation_tol,
    data_shape,
    eps,
    gram_cost,
    ls_tol,
    pass_cost,
    regression_data,
)
from suites.catalog.spec import FLOAT64_FIRST, Case, Cost, Invalid, Invariant, Spec, Tol

_SIZES = {"small": (64, 8), "medium": (10_000, 50), "large": (100_000, 100)}
_ALPHAS = [0.0, 1e-3, 0.1, 1.0, 10.0]


# ---------------------------------------------------------------------------------------------
# data


@st.composite
def _data(draw, dtype, *, min_extra: int = 2, max_d: int = 5):
    """A regression data set from a drawn seed, size, column offset and scale and noise level.

    n >= d + 2 keeps the centred X of full column rank (almost surely, for Gaussian data), so
    that the least-squares solution is unique; rank deficiency is tested against scikit-learn
    in test_linear_models.py (the two min-norm conventions differ only in their cutoffs)."""
    n, d = draw(data_shape(max_n=16, max_d=max_d, min_extra=min_extra))
    rng = draw(S.seeds())
    return regression_data(rng, n, d, dtype,
                           noise=draw(st.sampled_from([0.0, 0.1, 10.0])),
                           offset=draw(st.sampled_from([0.0, 3.0, 100.0])),
                           scale=draw(st.sampled_from([0.01, 1.0, 100.0])))


def _sized(builder):
    return {k: (lambda dtype, nd=nd: builder(nd, dtype)) for k, nd in _SIZES.items()}


def _fit_size(nd, dtype, **params):
    X, y = regression_data(np.random.default_rng(0), *nd, dtype, offset=1.0)
    return Case({"X": X, "y": y}, params)


def _center(X, y, fit_intercept):
    if not fit_intercept:
        return X, y, torch.zeros(X.shape[1], dtype=X.dtype), torch.zeros((), dtype=X.dtype)
    xm, ym = X.mean(dim=0), y.mean()
    return X - xm, y - ym, xm, ym


def _sk_linear(**kw):
    from sklearn.linear_model import LinearRegression
    return LinearRegression(**kw)


# ---------------------------------------------------------------------------------------------
# bad input shared by the fits


def _bad_fit_inputs(params: dict) -> tuple[Invalid, ...]:
    X, y = regression_data(np.random.default_rng(1), 6, 2, np.float64)
    Xnan = X.copy()
    Xnan[2, 1] = np.nan
    yinf = y.copy()
    yinf[0] = np.inf
    return (
        Invalid("NaN in X", lambda: Case({"X": Xnan, "y": y}, params), ValueError, r"\bX\b"),
        Invalid("inf in y", lambda: Case({"X": X, "y": yinf}, params), ValueError, r"\by\b"),
        Invalid("y one shorter than X", lambda: Case({"X": X, "y": y[:-1]}, params), ValueError,
                r"\by\b"),
        Invalid("integer y", lambda: Case({"X": X, "y": np.arange(6)}, params), TypeError,
                r"\by\b"),
        Invalid("1-d X", lambda: Case({"X": X[:, 0], "y": y}, params), ValueError, r"\bX\b"),
        Invalid("float32 y with float64 X", lambda: Case({"X": X, "y": y.astype(np.float32)},
                                                         params), TypeError, r"\by\b"),
        Invalid("fit_intercept as a string", lambda: Case({"X": X, "y": y},
                                                          {**params, "fit_intercept": "yes"}),
                TypeError, "fit_intercept"),
    )


# ---------------------------------------------------------------------------------------------
# least squares, ridge


@st.composite
def _ls_cases(draw, dtype, ridge: bool = False):
    X, y = draw(_data(dtype))
    params = {"fit_intercept": draw(st.booleans())}
    if ridge:
        params["alpha"] = draw(st.sampled_from(_ALPHAS[1:]))
    return Case({"X": X, "y": y}, params)


def _lstsq_twin(X, y, fit_intercept=True):
    Xc, yc, xm, ym = _center(X, y, fit_intercept)
    w = torch.linalg.lstsq(Xc, yc[:, None], driver="gelsd").solution[:, 0]
    return w, ym - xm @ w


def _ridge_twin(X, y, alpha=1.0, fit_intercept=True):
    Xc, yc, xm, ym = _center(X, y, fit_intercept)
    A = Xc.T @ Xc + alpha * torch.eye(X.shape[1], dtype=X.dtype)
    w = torch.linalg.solve(A, Xc.T @ yc)
    return w, ym - xm @ w


def _ls_case_tol(case: Case, upstream) -> object:
    return ls_tol(case.inputs["X"], case.inputs["y"], case.inputs["X"].dtype,
                  fit_intercept=case.params.get("fit_intercept", True))


def _ridge_case_tol(case: Case, upstream) -> object:
    return ls_tol(case.inputs["X"], case.inputs["y"], case.inputs["X"].dtype,
                  ridge=case.params["alpha"], twin_gram=True,
                  fit_intercept=case.params.get("fit_intercept", True))


def _sk_fit(make):
    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        X, y = case.inputs["X"], case.inputs["y"]
        return lambda: make(case.params).fit(X, y)
    return factory


def _sk_ridge(params):
    from sklearn.linear_model import Ridge
    return Ridge(alpha=params["alpha"], fit_intercept=params.get("fit_intercept", True))


register(Spec(
    name="linear_regression_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="least squares by the normal equations (min-norm when rank-deficient)",
    forward=lambda X, y, **p: (L.linear_regression_fit(X, y, **p), None),
    torch=_lstsq_twin, cases=_ls_cases, sizes=_sized(_fit_size), cost=gram_cost,
    case_tol=_ls_case_tol, invalid=_bad_fit_inputs({}),
    peers={"sklearn": _sk_fit(lambda p: _sk_linear(fit_intercept=p.get("fit_intercept",
                                                                        True)))},
))

register(Spec(
    name="ridge_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="||y - Xw - b||^2 + alpha ||w||^2 by Cholesky of X_c^T X_c + alpha I",
    forward=lambda X, y, **p: (L.ridge_fit(X, y, **p), None),
    torch=_ridge_twin, cases=lambda dtype: _ls_cases(dtype, ridge=True),
    sizes=_sized(lambda nd, dtype: _fit_size(nd, dtype, alpha=1.0)), cost=gram_cost,
    case_tol=_ridge_case_tol,
    invalid=_bad_fit_inputs({"alpha": 1.0}) + (
        Invalid("negative alpha", lambda: Case(dict(zip(
            "Xy", regression_data(np.random.default_rng(1), 6, 2, np.float64), strict=True)),
            {"alpha": -1.0}), ValueError, "alpha"),),
    peers={"sklearn": _sk_fit(_sk_ridge)},
))


# ---------------------------------------------------------------------------------------------
# gradient descent


def _lipschitz(X: np.ndarray, fit_intercept: bool) -> float:
    """lambda_max of (1/n) [X, 1]^T [X, 1] (or X^T X): the gradient's Lipschitz constant."""
    A = X.astype(np.float64)
    if fit_intercept:
        A = np.hstack([A, np.ones((A.shape[0], 1))])
    return float(np.linalg.eigvalsh(A.T @ A / A.shape[0])[-1])


@st.composite
def _gd_cases(draw, dtype):
    X, y = draw(_data(dtype, min_extra=0))
    fit_intercept = draw(st.booleans())
    # A step below 1/L keeps I - lr H non-expansive (eigenvalues in [0, 1)), the premise of
    # the tolerance below and of the monotone-loss invariant.
    lr = draw(st.sampled_from([0.1, 0.5, 0.9, 1.0])) / max(_lipschitz(X, fit_intercept), 1e-300)
    return Case({"X": X, "y": y}, {"lr": lr, "n_iter": draw(st.integers(0, 25)),
                                   "fit_intercept": fit_intercept})


def _gd_twin(X, y, lr=0.1, n_iter=100, fit_intercept=True):
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    b = torch.zeros((), dtype=X.dtype)
    with torch.enable_grad():  # the parity check calls twins under no_grad
        for _ in range(n_iter):
            w_, b_ = w.detach().requires_grad_(), b.detach().requires_grad_()
            loss = 0.5 * ((X @ w_ + b_ - y) ** 2).mean()
            gw, gb = torch.autograd.grad(loss, (w_, b_))
            w = (w_ - lr * gw).detach()
            if fit_intercept:
                b = (b_ - lr * gb).detach()
    return w, b


def _gd_case_tol(case: Case, upstream):
    """Both sides start at 0 and take the same steps; the map w -> w - lr grad is
    non-expansive in the 2-norm (lr <= 1/L), so the rounding of each step adds up at most
    n_iter times. One step's gradient is a sum of n terms x_ij r_i / n after a dot of d
    terms; the loss never rises, so ||r||_2 <= ||y||_2 at every iterate and sum_i |x_ij r_i|
    <= ||x_j|| ||y|| (sqrt(n) ||y|| for the intercept). A 2-norm bound over d + 1
    coordinates bounds each coordinate by sqrt(d + 1) times the per-coordinate bound."""
    dtype = case.inputs["X"].dtype
    X = case.inputs["X"].astype(np.float64)
    y = case.inputs["y"].astype(np.float64)
    n, d = X.shape
    lr, n_iter = case.params["lr"], case.params["n_iter"]
    scale = max(float(np.linalg.norm(X, axis=0).max()), np.sqrt(n)) * np.linalg.norm(y) / n
    per_step = accumulation_tol(dtype, n + d, lr * scale).atol
    base = accumulation_tol(dtype, 0, 0.0)
    return Tol(rtol=base.rtol, atol=max(base.atol, n_iter * np.sqrt(d + 1) * per_step))


def _gd_monotone(case: Case, outs) -> None:
    """The loss after the last step is at most the loss after one step fewer (lr <= 1/L).
    Evaluated in float64 from float64 fits, with the rounding of the two losses allowed.

    A residual r_i = x_i w + b - y_i is a sum of d + 2 terms, so it errs by up to
    (d + 2) eps (|x_i| |w| + |b| + |y_i|), however small it is; near the minimum the terms
    cancel (x = [3.003, 3.008], y = [1.492, 1.494]: r ~ 4e-4 from terms ~ 1.5), and the loss
    (1/2n) sum r_i^2 then errs by up to (1/n) sum |r_i| |dr_i|, far more than a relative
    (n + d) eps of itself (the rise seen there: 6.3e-21 on a loss of 7.8e-8, 30x that). The
    last step itself moves w by rounding too (its gradient cancels the same way), so the
    slack is 4x the bound for each loss, plus the summation's relative (n + d) eps."""
    if case.params["n_iter"] == 0 or case.inputs["X"].dtype != np.float64:
        return
    X, y = case.inputs["X"], case.inputs["y"]
    prev = L.linear_regression_gd_fit(X, y, **{**case.params,
                                                "n_iter": case.params["n_iter"] - 1})
    n, d = X.shape
    loss, err = [], []
    for w, b in (prev, outs):
        r = X @ w + b - y
        loss.append(0.5 * float(np.mean(r ** 2)))
        terms = np.abs(X) @ np.abs(w) + abs(float(b)) + np.abs(y)
        err.append(float(np.mean(np.abs(r) * (d + 2) * eps(np.float64) * terms)))
    slack = 4 * (sum(err) + (n + d) * eps(np.float64) * max(loss[0], 1e-300))
    assert loss[1] <= loss[0] + slack, f"loss rose from {loss[0]!r} to {loss[1]!r}"


def _gd_size(nd, dtype):
    case = _fit_size(nd, dtype)
    return Case(case.inputs, {"lr": 1.0 / _lipschitz(case.inputs["X"], True), "n_iter": 50})


register(Spec(
    name="linear_regression_gd_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="least squares (1/2n) by full-batch gradient descent from 0",
    forward=lambda X, y, **p: (L.linear_regression_gd_fit(X, y, **p), None),
    torch=_gd_twin, cases=_gd_cases, sizes=_sized(_gd_size),
    cost=lambda case: Cost(flops=4.0 * case.inputs["X"].size * case.params["n_iter"],
                           bytes=float(case.inputs["X"].nbytes) * case.params["n_iter"]),
    case_tol=_gd_case_tol, invariants=(Invariant("loss does not rise", _gd_monotone),),
    invalid=_bad_fit_inputs({"lr": 0.1, "n_iter": 5}) + (
        Invalid("lr = 0", lambda: _fit_size((6, 2), np.float64, lr=0.0, n_iter=3), ValueError,
                r"\blr\b"),
        Invalid("negative n_iter", lambda: _fit_size((6, 2), np.float64, lr=0.1, n_iter=-1),
                ValueError, "n_iter"),
        Invalid("n_iter past INT_MAX", lambda: _fit_size((6, 2), np.float64, lr=0.1,
                                                         n_iter=INT_MAX + 1), ValueError,
                "n_iter"),
    ),
))


# ---------------------------------------------------------------------------------------------
# lasso


def _alpha_max(X: np.ndarray, y: np.ndarray, fit_intercept: bool) -> float:
    """The smallest alpha whose lasso solution is w = 0: max_j |x_cj^T y_c| / n."""
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    if fit_intercept:
        X, y = X - X.mean(axis=0), y - y.mean()
    return float(np.abs(X.T @ y).max()) / X.shape[0]


@st.composite
def _lasso_cases(draw, dtype):
    X, y = draw(_data(dtype, min_extra=0))
    fit_intercept = draw(st.booleans())
    amax = _alpha_max(X, y, fit_intercept)
    frac = draw(st.sampled_from([0.01, 0.1, 0.5, 0.99, 1.01, 2.0]))
    return Case({"X": X, "y": y}, {"alpha": max(frac * amax, 1e-12), "tol": 1e-10,
                                   "max_iter": 10_000, "fit_intercept": fit_intercept})


def _lasso_zero(case: Case, outs) -> None:
    """alpha >= alpha_max (with a 1e-6 margin for the two float64 roundings of alpha_max)
    gives exactly zero coefficients: the soft-threshold of every first sweep is 0."""
    p = case.params
    if p["alpha"] >= 1.000001 * _alpha_max(case.inputs["X"], case.inputs["y"],
                                           p["fit_intercept"]):
        assert not np.any(outs[0]), f"alpha >= alpha_max but coef = {outs[0]}"


def _lasso_size(nd, dtype):
    case = _fit_size(nd, dtype)
    X, y = case.inputs["X"], case.inputs["y"]
    return Case(case.inputs, {"alpha": 0.05 * _alpha_max(X, y, True), "tol": 1e-4})


def _sk_lasso(params):
    from sklearn.linear_model import Lasso
    return Lasso(**params)


register(Spec(
    name="lasso_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="(1/2n) ||y - Xw - b||^2 + alpha ||w||_1 by coordinate descent (Gram form)",
    forward=lambda X, y, **p: (L.lasso_fit(X, y, **p), None),
    torch=None, cases=_lasso_cases, sizes=_sized(_lasso_size), cost=gram_cost,
    invariants=(Invariant("alpha >= alpha_max gives w = 0", _lasso_zero),),
    invalid=_bad_fit_inputs({"alpha": 0.1}) + (
        Invalid("alpha = 0", lambda: _fit_size((6, 2), np.float64, alpha=0.0), ValueError,
                "alpha"),
        Invalid("max_iter = 0", lambda: _fit_size((6, 2), np.float64, alpha=0.1, max_iter=0),
                ValueError, "max_iter"),
        Invalid("negative tol", lambda: _fit_size((6, 2), np.float64, alpha=0.1, tol=-1.0),
                ValueError, r"\btol\b"),
    ),
    peers={"sklearn": _sk_fit(_sk_lasso)},
))


# ---------------------------------------------------------------------------------------------
# polynomial features and regression


def _combos(d: int, degree: int, include_bias: bool):
    import itertools
    return [c for k in range(0 if include_bias else 1, degree + 1)
            for c in itertools.combinations_with_replacement(range(d), k)]


def _poly_twin(X, degree=2, include_bias=True):
    # Each monomial is the one of degree - 1 before it times one column, as scikit-learn builds
    # them, so autograd differentiates a chain of products. Tensor.prod (the twin until
    # 2026-12) differentiates by dividing the product by each factor: where the product
    # underflows (float32 X = [1e-45, 0.5]) its derivative said 0, not 0.5 (found by the dev
    # profile). The forward got ~1.8x faster with it; the gate does not judge the ratio against
    # the old twin (suites/digest.py).
    made = {(): torch.ones(X.shape[0], dtype=X.dtype)}
    for c in _combos(X.shape[1], degree, True):
        if c:
            made[c] = made[c[:-1]] * X[:, c[-1]]
    return torch.stack([made[c] for c in _combos(X.shape[1], degree, include_bias)], dim=1)


@st.composite
def _poly_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=2, max_dims=2, max_side=5))
    X = draw(S.arrays(dtype, shape, lo=-4.0, hi=4.0))
    return Case({"X": X}, {"degree": draw(st.integers(1, 3)),
                           "include_bias": draw(st.booleans())})


def _poly_tol(case: Case, upstream):
    """Forward: a product of <= degree factors, rounded degree - 1 times by the twin (inside
    rtol). Backward: each dX[i, j] sums, over the outputs, g times a product of the other
    factors; bounded by accumulation over n_out * degree terms of size |g| max|x|^(degree-1)."""
    X = case.inputs["X"]
    deg = case.params["degree"]
    if upstream is None:
        return accumulation_tol(X.dtype, deg, float(np.abs(X).max(initial=1.0)) ** deg)
    g = upstream[0]
    terms = g.shape[1] * deg
    big = max(1.0, float(np.abs(X).max(initial=1.0))) ** max(deg - 1, 0)
    return accumulation_tol(X.dtype, terms, float(np.abs(g).sum(axis=1).max()) * deg * big)


def _poly_size(nd, dtype):
    n, d = {(64, 8): (64, 4), (10_000, 50): (10_000, 10), (100_000, 100): (50_000, 10)}[nd]
    X = S.normal(np.random.default_rng(0), (n, d), dtype)
    return Case({"X": X}, {"degree": 2 if n == 64 else 3, "include_bias": True})


def _sk_poly(case: Case, pass_: str):
    if pass_ != "forward":
        return None
    from sklearn.preprocessing import PolynomialFeatures
    m = PolynomialFeatures(**case.params)
    X = case.inputs["X"]
    return lambda: m.fit_transform(X)


register(Spec(
    name="polynomial_features", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="all monomials up to degree, scikit-learn's column order",
    forward=L.polynomial_features, backward=L.polynomial_features_backward, grad_inputs=("X",),
    torch=_poly_twin, cases=_poly_cases,
    sizes={k: (lambda dtype, nd=nd: _poly_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=lambda case: Cost(
        flops=float(case.inputs["X"].shape[0] * len(_combos(case.inputs["X"].shape[1],
                                                              case.params["degree"], True))
                    * case.params["degree"]),
        bytes=float(case.inputs["X"].nbytes * (1 + len(_combos(
            case.inputs["X"].shape[1], case.params["degree"], True)) / case.inputs["X"].shape[1]))),
    case_tol=_poly_tol,
    invalid=(
        Invalid("degree 0", lambda: Case({"X": np.ones((3, 2))}, {"degree": 0}), ValueError,
                "degree"),
        Invalid("NaN in X", lambda: Case({"X": np.full((3, 2), np.nan)}, {"degree": 2}),
                ValueError, r"\bX\b"),
        Invalid("3-d X", lambda: Case({"X": np.ones((3, 2, 1))}, {"degree": 2}), ValueError,
                r"\bX\b"),
    ),
    peers={"sklearn": _sk_poly},
))


@st.composite
def _polyreg_cases(draw, dtype):
    degree = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    n_out = len(_combos(d, degree, False))
    n = draw(st.integers(n_out + 2, n_out + 10))
    rng = draw(S.seeds())
    X = rng.uniform(-2.0, 2.0, (n, d))
    y = np.sin(X).sum(axis=1) + 0.1 * rng.standard_normal(n)
    return Case({"X": X.astype(dtype), "y": y.astype(dtype)}, {"degree": degree})


def _polyreg_twin(X, y, degree=2):
    return _lstsq_twin(_poly_twin(X, degree, False), y)


def _polyreg_tol(case: Case, upstream):
    Phi, _ = L.polynomial_features(case.inputs["X"].astype(np.float64),
                                   degree=case.params["degree"], include_bias=False)
    return ls_tol(Phi, case.inputs["y"], case.inputs["X"].dtype)


def _polyreg_size(nd, dtype):
    case = _poly_size(nd, dtype)
    X = case.inputs["X"]
    y = (np.sin(X.astype(np.float64)).sum(axis=1)).astype(dtype)
    return Case({"X": X, "y": y}, {"degree": case.params["degree"]})


def _sk_polyreg(params):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures
    return make_pipeline(PolynomialFeatures(params["degree"], include_bias=False), _sk_linear())


def _polyreg_cost(case: Case) -> Cost:
    n, d = case.inputs["X"].shape
    n_out = len(_combos(d, case.params["degree"], False))
    return Cost(flops=2.0 * n * n_out * n_out + n_out ** 3,
                bytes=float(n * n_out * case.inputs["X"].itemsize))


register(Spec(
    name="polynomial_regression_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="least squares on polynomial features (no bias column; fitted intercept)",
    forward=lambda X, y, **p: (L.polynomial_regression_fit(X, y, **p), None),
    torch=_polyreg_twin, cases=_polyreg_cases,
    sizes={k: (lambda dtype, nd=nd: _polyreg_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=_polyreg_cost,
    case_tol=_polyreg_tol,
    invalid=_bad_fit_inputs({"degree": 2})[:4],
    peers={"sklearn": _sk_fit(_sk_polyreg)},
))


# ---------------------------------------------------------------------------------------------
# prediction


@st.composite
def _predict_cases(draw, dtype):
    n, d = draw(data_shape(max_n=12, max_d=6))
    return Case({"X": draw(S.arrays(dtype, (n, d))), "coef": draw(S.arrays(dtype, (d,))),
                 "intercept": draw(S.arrays(dtype, ()))})


def _predict_tol(case: Case, upstream):
    X, w, b = (case.inputs[k].astype(np.float64) for k in ("X", "coef", "intercept"))
    return accumulation_tol(case.inputs["X"].dtype, X.shape[1] + 1,
                            float((np.abs(X) @ np.abs(w)).max()) + abs(float(b)))


def _predict_size(nd, dtype):
    rng = np.random.default_rng(0)
    return Case({"X": S.normal(rng, nd, dtype), "coef": S.normal(rng, nd[1:], dtype),
                 "intercept": np.asarray(0.5, dtype=dtype)})


def _sk_predict(case: Case, pass_: str):
    m = _sk_linear()
    m.coef_ = case.inputs["coef"]
    m.intercept_ = float(case.inputs["intercept"])
    m.n_features_in_ = case.inputs["X"].shape[1]
    X = case.inputs["X"]
    return lambda: m.predict(X)


def _predict_invalid():
    X = np.ones((4, 3))
    return (
        Invalid("coef of the wrong length", lambda: Case(
            {"X": X, "coef": np.ones(2), "intercept": np.asarray(0.0)}), ValueError, "coef"),
        Invalid("intercept of shape (1,)", lambda: Case(
            {"X": X, "coef": np.ones(3), "intercept": np.zeros(1)}), ValueError, "intercept"),
        Invalid("inf in X", lambda: Case(
            {"X": np.where(np.eye(4, 3) > 0, np.inf, 1.0), "coef": np.ones(3),
             "intercept": np.asarray(0.0)}), ValueError, r"\bX\b"),
    )


register(Spec(
    name="linear_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="X w + b (float64 accumulation)",
    forward=lambda X, coef, intercept: (L.linear_predict(X, coef, intercept), None),
    torch=lambda X, coef, intercept: X @ coef + intercept,
    cases=_predict_cases, sizes=_sized(_predict_size), cost=pass_cost, case_tol=_predict_tol,
    invalid=_predict_invalid(),
    peers={"sklearn": _sk_predict},
))


# ---------------------------------------------------------------------------------------------
# objectives


@st.composite
def _objective_cases(draw, dtype):
    n, d = draw(data_shape(max_n=10, max_d=5))
    return Case({"X": draw(S.arrays(dtype, (n, d))), "y": draw(S.arrays(dtype, (n,))),
                 "coef": draw(S.arrays(dtype, (d,), elements=st.one_of(
                     S.floats(dtype, -3.0, 3.0), st.just(0.0)))),
                 "intercept": draw(S.arrays(dtype, (), lo=-3.0, hi=3.0))},
                {"alpha": draw(st.sampled_from(_ALPHAS))})


def _objective_tol(case: Case, upstream, *, per_sample: float):
    """Sums over the n residuals (each a d-term dot) of their squares (forward) or of
    x_ij r_i (gradient); scale = sum of the terms' magnitudes, times the objective's factor."""
    X, y, w, b = (case.inputs[k].astype(np.float64) for k in ("X", "y", "coef", "intercept"))
    n, d = X.shape
    r = np.abs(X) @ np.abs(w) + abs(float(b)) + np.abs(y)
    g = 1.0 if upstream is None else float(np.abs(upstream[0]))
    if upstream is None:
        scale = per_sample * float(r @ r) + case.params["alpha"] * float(np.abs(w).sum()
                                                                           + w @ w)
    else:
        scale = g * 2 * per_sample * max(float((np.abs(X).T @ r).max()), float(r.sum()))
    return accumulation_tol(case.inputs["X"].dtype, n + d, scale)


def _off_zero(case: Case) -> Case:
    """Move coefficients within 1e-3 of |w|'s kink at 0 to +-0.5 (gradcheck only)."""
    w = case.inputs["coef"].copy()
    near = np.abs(w) < 1e-3
    w[near] = np.where(np.signbit(w[near]), -0.5, 0.5)
    return Case({**case.inputs, "coef": w}, case.params)


def _objective_size(nd, dtype):
    case = _fit_size(nd, dtype)
    rng = np.random.default_rng(1)
    return Case({**case.inputs, "coef": S.normal(rng, nd[1:], dtype),
                 "intercept": np.asarray(0.5, dtype=dtype)}, {"alpha": 0.1})


def _objective_invalid():
    X, y = regression_data(np.random.default_rng(1), 6, 2, np.float64)
    w, b = np.ones(2), np.asarray(0.0)
    return (
        Invalid("coef of the wrong length", lambda: Case({"X": X, "y": y, "coef": np.ones(3),
                                                          "intercept": b}, {"alpha": 1.0}),
                ValueError, "coef"),
        Invalid("NaN in y", lambda: Case({"X": X, "y": np.full(6, np.nan), "coef": w,
                                          "intercept": b}, {"alpha": 1.0}), ValueError,
                r"\by\b"),
        Invalid("negative alpha", lambda: Case({"X": X, "y": y, "coef": w, "intercept": b},
                                               {"alpha": -1.0}), ValueError, "alpha"),
    )


register(Spec(
    name="ridge_objective", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="||y - Xw - b||^2 + alpha ||w||^2 (scikit-learn's Ridge, no 1/n)",
    forward=L.ridge_objective, backward=L.ridge_objective_backward,
    grad_inputs=("coef", "intercept"),
    torch=lambda X, y, coef, intercept, alpha: ((y - X @ coef - intercept) ** 2).sum()
    + alpha * (coef * coef).sum(),
    cases=_objective_cases, sizes=_sized(_objective_size), cost=pass_cost,
    case_tol=lambda c, u: _objective_tol(c, u, per_sample=1.0),
    invalid=_objective_invalid(),
))

register(Spec(
    name="lasso_objective", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="(1/2n) ||y - Xw - b||^2 + alpha ||w||_1; derivative of |w| is 0 at 0",
    forward=L.lasso_objective, backward=L.lasso_objective_backward,
    grad_inputs=("coef", "intercept"),
    torch=lambda X, y, coef, intercept, alpha: ((y - X @ coef - intercept) ** 2).sum()
    / (2 * X.shape[0]) + alpha * coef.abs().sum(),
    cases=_objective_cases, sizes=_sized(_objective_size), cost=pass_cost, smooth=_off_zero,
    case_tol=lambda c, u: _objective_tol(c, u, per_sample=1.0 / (2 * c.inputs["X"].shape[0])),
    invalid=_objective_invalid(),
))
