"""Specs of the linear classifiers (family ``classical``): logistic regression and linear SVM.

Torch twins: autograd of the objectives (``binary_cross_entropy_with_logits``, ``cross_entropy``
and the (squared) hinge written with ``relu``), and the predictions. The fits have no torch
twin (``torch=None``): scikit-learn is their oracle in ``test_linear_models.py``; their
invariant here (the objective's gradient vanishes at the fit) needs no oracle.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st

from reference import logistic_svm as LS
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._linear_tools import (
    FAMILY,
    accumulation_tol,
    class_data,
    data_shape,
    pass_cost,
)
from suites.catalog.spec import FLOAT64_FIRST, Case, Invalid, Invariant, Spec

_SIZES = {"small": (64, 8), "medium": (10_000, 50), "large": (100_000, 100)}
_CS = [0.01, 1.0, 10.0]


def _scores64(case: Case) -> np.ndarray:
    X, W, b = (case.inputs[k].astype(np.float64) for k in ("X", "coef", "intercept"))
    return X @ W.T + b


def _signs(y: torch.Tensor, rows: int, dtype) -> torch.Tensor:
    if rows == 1:
        return (2 * y - 1).to(dtype)[:, None]
    return 2 * F.one_hot(y, rows).to(dtype) - 1


# ---------------------------------------------------------------------------------------------
# objectives


@st.composite
def _objective_cases(draw, dtype, svm: bool = False):
    n, d = draw(data_shape(max_n=10, max_d=4))
    rows = draw(st.sampled_from([1, 2, 3]))
    classes = max(rows, 2)
    case = Case({"X": draw(S.arrays(dtype, (n, d))),
                 "y": draw(S.arrays(np.int64, (n,), elements=st.integers(0, classes - 1))),
                 "coef": draw(S.arrays(dtype, (rows, d), lo=-3.0, hi=3.0)),
                 "intercept": draw(S.arrays(dtype, (rows,), lo=-3.0, hi=3.0))},
                {"C": draw(st.sampled_from(_CS))})
    if svm:
        loss = draw(st.sampled_from(list(LS.SVM_LOSSES)))
        case = Case(case.inputs, {**case.params, "loss": loss,
                                  "intercept_scaling": draw(st.sampled_from([0.5, 1.0, 10.0]))})
        if loss == "hinge":
            # The hinge's derivative jumps at margin 1 - s f = 0. The reference decides the
            # side in float64, a float32 twin in float32: within rounding of the kink the two
            # may legitimately pick different sides (and central differences straddle it).
            # That set has measure zero; cases with a margin within 1e-3 of it are left out.
            y = case.inputs["y"]
            s = np.where(np.arange(rows) == y[:, None], 1.0, -1.0) if rows > 1 else \
                (2.0 * y - 1.0)[:, None]
            assume(not np.any(np.abs(1.0 - s * _scores64(case)) < 1e-3))
    return case


def _logistic_twin(X, y, coef, intercept, C=1.0):
    f = X @ coef.T + intercept
    if coef.shape[0] == 1:
        data = F.binary_cross_entropy_with_logits(f[:, 0], y.to(X.dtype), reduction="sum")
    else:
        data = F.cross_entropy(f, y, reduction="sum")
    return 0.5 * (coef * coef).sum() + C * data


def _svm_twin(X, y, coef, intercept, C=1.0, loss="squared_hinge", intercept_scaling=1.0):
    f = X @ coef.T + intercept
    margin = F.relu(1 - _signs(y, coef.shape[0], X.dtype) * f)
    data = (margin * margin).sum() if loss == "squared_hinge" else margin.sum()
    return (0.5 * (coef * coef).sum() + 0.5 * (intercept * intercept).sum()
            / intercept_scaling ** 2 + C * data)


def _objective_tol(case: Case, upstream):
    """A sum over n samples of per-sample losses, each from K dots of d terms; scale = the
    sum of the terms' magnitudes (|f| bounds a logistic or hinge loss up to log K + 1,
    1 + |f| bounds a margin, squared for the squared hinge)."""
    X = case.inputs["X"].astype(np.float64)
    W = case.inputs["coef"].astype(np.float64)
    b = case.inputs["intercept"].astype(np.float64)
    n, d = X.shape
    C = case.params["C"]
    f = np.abs(X) @ np.abs(W).T + np.abs(b)
    per = 1.0 + f + np.log(W.shape[0] + 1)
    if case.params.get("loss") == "squared_hinge":
        per = per * per
    count = n + d + W.shape[0]
    s = case.params.get("intercept_scaling", 1.0)
    if upstream is None:
        return accumulation_tol(case.inputs["X"].dtype, count,
                                C * float(per.sum()) + float((W * W).sum())
                                + float((b * b).sum()) / s ** 2)
    g = float(np.abs(upstream[0]))
    dl = 2.0 * per if case.params.get("loss") == "squared_hinge" else np.ones_like(per)
    scale = g * (C * max(float((np.abs(X).T @ dl).max()), float(dl.sum(axis=0).max()))
                 + float(np.abs(W).max()) + float(np.abs(b).max()) / s ** 2)
    return accumulation_tol(case.inputs["X"].dtype, count, scale)


def _objective_size(nd, dtype, **params):
    X, y = class_data(np.random.default_rng(0), *nd, 2, dtype)
    rng = np.random.default_rng(1)
    return Case({"X": X, "y": y, "coef": S.normal(rng, (1, nd[1]), dtype, 0.1),
                 "intercept": np.zeros(1, dtype)}, {"C": 1.0, **params})


def _objective_invalid(params):
    X, y = class_data(np.random.default_rng(1), 6, 2, 2, np.float64)
    W, b = np.ones((1, 2)), np.zeros(1)
    return (
        Invalid("float labels", lambda: Case({"X": X, "y": y.astype(np.float64), "coef": W,
                                              "intercept": b}, params), TypeError, r"\by\b"),
        Invalid("label 2 with one row of coef", lambda: Case(
            {"X": X, "y": np.full(6, 2), "coef": W, "intercept": b}, params), ValueError,
            r"\by\b"),
        Invalid("intercept of the wrong length", lambda: Case(
            {"X": X, "y": y, "coef": W, "intercept": np.zeros(2)}, params), ValueError,
            "intercept"),
        Invalid("C = 0", lambda: Case({"X": X, "y": y, "coef": W, "intercept": b},
                                      {**params, "C": 0.0}), ValueError, r"\bC\b"),
        Invalid("y one longer than X", lambda: Case(
            {"X": X, "y": np.append(y, 0), "coef": W, "intercept": b}, params), ValueError,
            r"\by\b"),
    )


register(Spec(
    name="logistic_objective", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="1/2 ||W||^2 + C sum log-loss (binary: one row; multinomial: K rows)",
    forward=LS.logistic_objective, backward=LS.logistic_objective_backward,
    grad_inputs=("coef", "intercept"), torch=_logistic_twin, cases=_objective_cases,
    sizes={k: (lambda dtype, nd=nd: _objective_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=pass_cost, case_tol=_objective_tol, invalid=_objective_invalid({"C": 1.0}),
))

register(Spec(
    name="linear_svm_objective", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="1/2 ||W||^2 + (b/s)^2/2 + C sum (squared) hinge, one-vs-rest (LinearSVC)",
    forward=LS.linear_svm_objective, backward=LS.linear_svm_objective_backward,
    grad_inputs=("coef", "intercept"), torch=_svm_twin,
    cases=lambda dtype: _objective_cases(dtype, svm=True),
    sizes={k: (lambda dtype, nd=nd: _objective_size(nd, dtype, loss="squared_hinge"))
           for k, nd in _SIZES.items()},
    cost=pass_cost, case_tol=_objective_tol,
    invalid=_objective_invalid({"C": 1.0}) + (
        Invalid("loss='log'", lambda: Case(dict(zip(
            ("X", "y"), class_data(np.random.default_rng(1), 6, 2, 2, np.float64),
            strict=True)) | {"coef": np.ones((1, 2)), "intercept": np.zeros(1)},
            {"loss": "log"}), ValueError, "loss"),
    ),
))


# ---------------------------------------------------------------------------------------------
# fits


@st.composite
def _fit_cases(draw, dtype):
    k = draw(st.integers(2, 4))
    n = draw(st.integers(k, 30))
    d = draw(st.integers(1, 4))
    X, y = class_data(draw(S.seeds()), n, d, k, dtype, sep=draw(st.sampled_from([0.5, 3.0])))
    return Case({"X": X, "y": y}, {"C": draw(st.sampled_from([0.1, 1.0, 10.0])),
                                   "fit_intercept": draw(st.booleans()),
                                   "tol": 1e-9, "max_iter": 10_000})


def _stationary(objective, backward):
    def check(case: Case, outs) -> None:
        """At a float64 fit the gradient of the objective / (C n) (what L-BFGS drives below
        tol = 1e-9, or until the relative decrease stalls at 64 eps) is small: we require
        1e-6, the gradient's size when the objective is within ~1e-12 relative of its
        minimum (square root of the ftol-limited excess times the curvature), and the
        intercept's component only when it was fitted."""
        X, y = case.inputs["X"], case.inputs["y"]
        if X.dtype != np.float64:
            return
        W, b = outs
        _, ctx = objective(X, y, W, b, C=case.params["C"])
        dW, db = (g / (case.params["C"] * X.shape[0])
                  for g in backward(ctx, np.asarray(1.0)))
        worst = max(float(np.abs(dW).max()),
                    float(np.abs(db).max()) if case.params["fit_intercept"] else 0.0)
        assert worst <= 1e-6, f"scaled gradient {worst:.3g} at the fit"
    return check


def _centred_intercepts(case: Case, outs) -> None:
    """Multinomial intercepts are returned summing to zero (their common shift is free)."""
    W, b = outs
    if W.shape[0] > 1 and case.params["fit_intercept"]:
        total = float(np.abs(b.astype(np.float64)).sum())
        assert abs(float(b.astype(np.float64).sum())) <= 8 * b.size * np.finfo(
            b.dtype).eps * max(total, 1e-300), f"intercepts sum to {b.sum()!r}"


def _fit_size(nd, dtype, **params):
    X, y = class_data(np.random.default_rng(0), *nd, 2, dtype)
    return Case({"X": X, "y": y}, {"C": 1.0, **params})


def _fit_invalid(params):
    X, y = class_data(np.random.default_rng(1), 8, 2, 3, np.float64)
    Xnan = X.copy()
    Xnan[0, 0] = np.nan
    return (
        Invalid("a single class", lambda: Case({"X": X, "y": np.zeros(8, np.int64)}, params),
                ValueError, r"\by\b"),
        Invalid("class 1 missing from 0..2", lambda: Case(
            {"X": X, "y": np.array([0, 2] * 4)}, params), ValueError, r"\by\b"),
        Invalid("float labels", lambda: Case({"X": X, "y": y.astype(np.float64)}, params),
                TypeError, r"\by\b"),
        Invalid("negative label", lambda: Case({"X": X, "y": y - 1}, params), ValueError,
                r"\by\b"),
        Invalid("NaN in X", lambda: Case({"X": Xnan, "y": y}, params), ValueError, r"\bX\b"),
        Invalid("y shorter than X", lambda: Case({"X": X, "y": y[:5]}, params), ValueError,
                r"\by\b"),
        Invalid("negative C", lambda: Case({"X": X, "y": y}, {**params, "C": -1.0}),
                ValueError, r"\bC\b"),
    )


def _sk_fit(make):
    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        X, y = case.inputs["X"], case.inputs["y"]
        return lambda: make(case.params).fit(X, y)
    return factory


def _sk_logistic(p):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(**p)


def _sk_svc(p):
    from sklearn.svm import LinearSVC
    return LinearSVC(**p)


register(Spec(
    name="logistic_regression_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="L2 logistic regression (binary / multinomial) by L-BFGS on the own objective",
    forward=lambda X, y, **p: (LS.logistic_regression_fit(X, y, **p), None),
    torch=None, cases=_fit_cases,
    sizes={k: (lambda dtype, nd=nd: _fit_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=pass_cost,  # one objective + gradient evaluation; L-BFGS makes tens to hundreds
    invariants=(Invariant("gradient vanishes at the fit", _stationary(LS.logistic_objective,
                                                                LS.logistic_objective_backward)),
                Invariant("multinomial intercepts sum to 0", _centred_intercepts)),
    invalid=_fit_invalid({"C": 1.0}),
    peers={"sklearn": _sk_fit(_sk_logistic)},
))

register(Spec(
    name="linear_svm_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="LinearSVC (squared hinge, penalised intercept, one-vs-rest) by L-BFGS",
    forward=lambda X, y, **p: (LS.linear_svm_fit(X, y, **p), None),
    torch=None, cases=_fit_cases,
    sizes={k: (lambda dtype, nd=nd: _fit_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=pass_cost,  # one objective + gradient evaluation; L-BFGS makes tens to hundreds
    invariants=(Invariant("gradient vanishes at the fit", _stationary(
        LS.linear_svm_objective, LS.linear_svm_objective_backward)),),
    invalid=_fit_invalid({"C": 1.0}),
    peers={"sklearn": _sk_fit(_sk_svc)},
))


# ---------------------------------------------------------------------------------------------
# prediction


@st.composite
def _predict_cases(draw, dtype):
    n, d = draw(data_shape(max_n=12, max_d=5))
    rows = draw(st.sampled_from([1, 2, 3, 5]))
    return Case({"X": draw(S.arrays(dtype, (n, d))),
                 "coef": draw(S.arrays(dtype, (rows, d), lo=-3.0, hi=3.0)),
                 "intercept": draw(S.arrays(dtype, (rows,), lo=-3.0, hi=3.0))})


def _predict_twin(X, coef, intercept):
    # In float64, the precision in which the reference forms the scores (see its docstring).
    f = X.double() @ coef.double().T + intercept.double()
    return (f[:, 0] > 0).long() if coef.shape[0] == 1 else torch.argmax(f, dim=1)


def _proba_twin(X, coef, intercept):
    f = X @ coef.T + intercept
    if coef.shape[0] == 1:
        p = torch.sigmoid(f[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(f, dim=1)


def _proba_tol(case: Case, upstream):
    """A probability moves by at most 1/4 (sigmoid) or 1/2 (softmax) of its scores' error,
    each score a d-term dot; plus the rounding of the twin's exp and normalisation."""
    X = case.inputs["X"].astype(np.float64)
    scale = float((np.abs(X) @ np.abs(case.inputs["coef"].astype(np.float64)).T).max()
                  + np.abs(case.inputs["intercept"].astype(np.float64)).max())
    return accumulation_tol(case.inputs["X"].dtype, X.shape[1] + 4, scale)


def _predict_size(nd, dtype):
    rng = np.random.default_rng(0)
    return Case({"X": S.normal(rng, nd, dtype), "coef": S.normal(rng, (3, nd[1]), dtype),
                 "intercept": S.normal(rng, (3,), dtype)})


def _sk_predict(method: str):
    def factory(case: Case, pass_: str):
        from sklearn.linear_model import LogisticRegression
        m = LogisticRegression()
        W = case.inputs["coef"]
        m.coef_, m.intercept_ = W, case.inputs["intercept"]
        m.classes_ = np.arange(max(W.shape[0], 2))
        m.n_features_in_ = W.shape[1]
        X = case.inputs["X"]
        return lambda: getattr(m, method)(X)
    return factory


def _predict_invalid():
    X = np.ones((4, 3))
    return (
        Invalid("1-d coef", lambda: Case({"X": X, "coef": np.ones(3), "intercept": np.zeros(1)}),
                ValueError, "coef"),
        Invalid("coef with 2 columns for 3 features", lambda: Case(
            {"X": X, "coef": np.ones((2, 2)), "intercept": np.zeros(2)}), ValueError, "coef"),
        Invalid("NaN in X", lambda: Case({"X": np.full((4, 3), np.nan), "coef": np.ones((1, 3)),
                                          "intercept": np.zeros(1)}), ValueError, r"\bX\b"),
    )


register(Spec(
    name="linear_classifier_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="labels of a linear classifier: [f > 0] (one row) or first argmax (K rows)",
    forward=lambda X, coef, intercept: (LS.linear_classifier_predict(X, coef, intercept), None),
    torch=_predict_twin, cases=_predict_cases,
    sizes={k: (lambda dtype, nd=nd: _predict_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=lambda case: pass_cost(case, case.inputs["coef"].shape[0]),
    nondifferentiable="piecewise-constant class labels", invalid=_predict_invalid(),
    peers={"sklearn": _sk_predict("predict")},
))

register(Spec(
    name="logistic_regression_predict_proba", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="class probabilities: [1 - sigma(f), sigma(f)] or softmax(f)",
    forward=lambda X, coef, intercept: (LS.logistic_regression_predict_proba(X, coef,
                                                                             intercept), None),
    torch=_proba_twin, cases=_predict_cases,
    sizes={k: (lambda dtype, nd=nd: _predict_size(nd, dtype)) for k, nd in _SIZES.items()},
    cost=lambda case: pass_cost(case, case.inputs["coef"].shape[0]), case_tol=_proba_tol,
    invalid=_predict_invalid(),
    peers={"sklearn": _sk_predict("predict_proba")},
))
