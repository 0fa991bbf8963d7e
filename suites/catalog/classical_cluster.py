"""Specs of the classical family: k-means, hierarchical clustering, Gaussian mixtures.

Fitting procedures have ``torch=None`` (their oracle is scikit-learn/scipy, in
``suites/correctness/test_classical.py``); the full-covariance Gaussian log-likelihood of the
E-step has a ``torch.distributions.MultivariateNormal`` twin and a backward. Initial centres and
parameters are inputs, so the peers get the same draw.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from reference import cluster as C
from reference import mixture as M
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.classical import FAMILY, _assert, _nan_at_first, blobs, seeded_data
from suites.catalog.spec import FLOAT64_FIRST, Case, Cost, Invalid, Invariant, Spec, Tol

_EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# k-means

_KM_SHAPES = {"small": (512, 8, 4), "medium": (20_000, 32, 8), "large": (100_000, 100, 16)}


@st.composite
def _kmeans_cases(draw, dtype):
    """Any data (Gaussian blobs or plain noise), k initial centres drawn from the samples."""
    rng, n, d, k = draw(seeded_data(dtype, max_n=40, max_k=5))
    if draw(st.booleans(), label="blobs"):
        x, _ = blobs(rng, n, d, k, dtype)
    else:
        x = S.normal(rng, (n, d), dtype)
    init = x[rng.choice(n, k, replace=False)].copy()
    params = {"max_iter": draw(st.sampled_from([300, 3, 1]), label="max_iter"),
              "tol": draw(st.sampled_from([1e-4, 0.0, 1e-2]), label="tol")}
    return Case({"X": x, "init": init}, params)


def _kmeans_sizes():
    def builder(n, d, k):
        def build(dtype):
            rng = np.random.default_rng(0)
            x, _ = blobs(rng, n, d, k, dtype, spread=1.5)
            init = x[rng.choice(n, k, replace=False)].copy()
            return Case({"X": x, "init": init}, {"max_iter": 20, "tol": 0.0})
        return build
    return {key: builder(*v) for key, v in _KM_SHAPES.items()}


def _kmeans_predict_sizes():
    def builder(n, d, k):
        def build(dtype):
            rng = np.random.default_rng(0)
            x, _ = blobs(rng, n, d, k, dtype, spread=1.5)
            return Case({"X": x, "centers": x[rng.choice(n, k, replace=False)].copy()})
        return build
    return {key: builder(*v) for key, v in _KM_SHAPES.items()}


def _kmeans_cost(case: Case) -> Cost:
    x = case.inputs["X"]
    n, d = x.shape
    k = (case.inputs.get("init") if "init" in case.inputs else case.inputs["centers"]).shape[0]
    iters = case.params.get("max_iter", 1)
    return Cost(flops=3.0 * n * d * k * iters, bytes=float(x.nbytes) * iters)


def _inertia_does_not_rise(case: Case, outs) -> None:
    """Lloyd's descent: assignment and mean update each lower the inertia (relocating an empty
    cluster too: the moved sample's distance becomes 0). Each history value is a float64 sum of n
    directly summed squared distances, relative error <= (n + d + 2) eps; twice that bounds the
    rounding of a difference. Rounding to float32 afterwards is monotone."""
    hist = outs[4].astype(np.float64)
    n, d = case.inputs["X"].shape
    slack = 2 * (n + d + 2) * _EPS64
    for t in range(1, hist.size):
        _assert(hist[t] <= hist[t - 1] * (1 + slack),
                f"inertia rose at iteration {t}: {hist[t - 1]!r} -> {hist[t]!r}")
    _assert(int(outs[3]) == hist.size <= case.params.get("max_iter", 300), "n_iter mismatch")
    _assert(float(outs[2]) <= float(hist[-1]) * (1 + slack) + 0.0,
            f"final inertia {outs[2]} above the last assignment's {hist[-1]}")


def _sk_kmeans(kind: str):
    def factory(case: Case, pass_: str):
        from sklearn.cluster import KMeans
        x = case.inputs["X"]
        if kind == "fit":
            init, p = case.inputs["init"], case.params
            return lambda: KMeans(init.shape[0], init=init, n_init=1, algorithm="lloyd",
                                  max_iter=p["max_iter"], tol=p["tol"]).fit(x)
        centers = case.inputs["centers"]
        est = KMeans(centers.shape[0], init=centers, n_init=1, max_iter=1).fit(centers)
        est.cluster_centers_ = centers
        return lambda: est.predict(x)
    return factory


def _kmeans_invalid():
    x = np.arange(12.0).reshape(6, 2)
    return (
        Invalid("NaN in X", lambda: Case({"X": _nan_at_first(x), "init": x[:2].copy()}),
                ValueError, r"\bX\b"),
        Invalid("n_samples < n_clusters", lambda: Case({"X": x[:2], "init": x[:3].copy()}),
                ValueError, "n_clusters"),
        Invalid("init with other columns", lambda: Case({"X": x, "init": np.ones((2, 3))}),
                ValueError, "init"),
        Invalid("inf in init", lambda: Case({"X": x, "init": np.full((2, 2), np.inf)}),
                ValueError, "init"),
        Invalid("max_iter 0", lambda: Case({"X": x, "init": x[:2].copy()}, {"max_iter": 0}),
                ValueError, "max_iter"),
        Invalid("negative tol", lambda: Case({"X": x, "init": x[:2].copy()}, {"tol": -1.0}),
                ValueError, "tol"),
    )


register(Spec(
    name="kmeans_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="Lloyd's k-means from given centres (scikit-learn's variance-scaled tol)",
    forward=C.kmeans_fit, torch=None, cases=_kmeans_cases, sizes=_kmeans_sizes(),
    cost=_kmeans_cost,
    invariants=(Invariant("each Lloyd iteration does not raise the inertia",
                          _inertia_does_not_rise),),
    invalid=_kmeans_invalid(), peers={"sklearn": _sk_kmeans("fit")},
))


@st.composite
def _kmeans_predict_cases(draw, dtype):
    case = draw(_kmeans_cases(dtype))
    return Case({"X": case.inputs["X"], "centers": case.inputs["init"]})


def _nearest_centre(case: Case, outs) -> None:
    """Every label is a nearest centre: no centre is closer by more than the float64 rounding
    of a directly summed distance ((d + 2) eps relative)."""
    x = case.inputs["X"].astype(np.float64)
    c = case.inputs["centers"].astype(np.float64)
    dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    mine = dist[np.arange(x.shape[0]), outs[0]]
    slack = 2 * (x.shape[1] + 2) * _EPS64
    _assert((mine <= dist.min(axis=1) * (1 + slack)).all(), "a label is not a nearest centre")


register(Spec(
    name="kmeans_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="nearest k-means centre and the inertia",
    forward=C.kmeans_predict, torch=None, cases=_kmeans_predict_cases,
    sizes=_kmeans_predict_sizes(), cost=_kmeans_cost,
    invariants=(Invariant("labels are nearest centres", _nearest_centre),),
    invalid=(Invalid("centers with other columns", lambda: Case(
        {"X": np.ones((3, 2)), "centers": np.ones((2, 3))}), ValueError, "centers"),
             Invalid("NaN in X", lambda: Case({"X": np.full((3, 2), np.nan),
                                               "centers": np.ones((2, 2))}), ValueError,
                     r"\bX\b")),
    peers={"sklearn": _sk_kmeans("predict")},
))


# ---------------------------------------------------------------------------------------------
# hierarchical clustering

_LINK_SHAPES = {"small": (64, 4), "medium": (1000, 16), "large": (4000, 16)}


@st.composite
def _linkage_cases(draw, dtype):
    rng, n, d, _ = draw(seeded_data(dtype, max_n=30, max_k=1))
    n = max(n, 2)
    x = S.normal(rng, (n, d), dtype)
    return Case({"X": x}, {"method": draw(st.sampled_from(C.LINKAGE_METHODS), label="method")})


def _linkage_sizes():
    def builder(n, d):
        return lambda dtype: Case({"X": blobs(np.random.default_rng(0), n, d, 8, dtype)[0]},
                                  {"method": "ward"})
    return {key: builder(*v) for key, v in _LINK_SHAPES.items()}


def _linkage_cost(case: Case) -> Cost:
    n, d = case.inputs["X"].shape
    return Cost(flops=3.0 * n * n * d / 2 + 4.0 * n * n, bytes=8.0 * n * n)


def _valid_hierarchy(case: Case, outs) -> None:
    """Heights ascend (every method here is monotone), each merge joins two clusters that exist
    and are still unmerged, counts add up, the last cluster holds every sample."""
    z = outs[0].astype(np.float64)
    n = case.inputs["X"].shape[0]
    _assert((np.diff(z[:, 2]) >= 0).all(), "heights not ascending")
    size = np.ones(2 * n - 1)
    used = np.zeros(2 * n - 1, bool)
    for t, (a, b, _, cnt) in enumerate(z):
        a, b = int(a), int(b)
        _assert(a < b < n + t and not used[a] and not used[b], f"merge {t} is not valid")
        used[a] = used[b] = True
        size[n + t] = size[a] + size[b]
        _assert(cnt == size[n + t], f"merge {t} count {cnt} != {size[n + t]}")
    _assert(z[-1, 3] == n, "the last cluster does not hold every sample")


def _scipy_linkage(case: Case, pass_: str):
    from scipy.cluster.hierarchy import linkage
    x, method = case.inputs["X"], case.params["method"]
    return lambda: linkage(x, method=method)


register(Spec(
    name="linkage", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="agglomerative clustering (single, complete, average, ward): scipy's linkage matrix",
    forward=C.linkage, torch=None, cases=_linkage_cases, sizes=_linkage_sizes(),
    cost=_linkage_cost, invariants=(Invariant("a valid hierarchy", _valid_hierarchy),),
    invalid=(
        Invalid("one sample", lambda: Case({"X": np.ones((1, 2))}), ValueError, r"\bX\b"),
        Invalid("unknown method", lambda: Case({"X": np.ones((3, 2))}, {"method": "centroid"}),
                ValueError, "method"),
        Invalid("NaN in X", lambda: Case({"X": np.full((3, 2), np.nan)}), ValueError, r"\bX\b"),
    ),
    peers={"scipy": _scipy_linkage},
))


# ---------------------------------------------------------------------------------------------
# Gaussian mixture

_GMM_SHAPES = {"small": (512, 4, 3), "medium": (10_000, 16, 5), "large": (20_000, 16, 8)}


def initial_parameters(rng: np.random.Generator, x: np.ndarray, k: int, covariance_type: str):
    """Equal weights, k samples as means, the data's (diagonal) covariance for every component:
    the caller's draw, given to both sides."""
    x64 = x.astype(np.float64)
    means = x64[rng.choice(x.shape[0], k, replace=False)]
    var = x64.var(axis=0) + 1e-3
    cov = np.stack([np.diag(var)] * k) if covariance_type == "full" else np.stack([var] * k)
    return (np.full(k, 1.0 / k).astype(x.dtype), means.astype(x.dtype), cov.astype(x.dtype))


@st.composite
def _gmm_cases(draw, dtype):
    """Blobs of at least 12 samples each (3 (d + 1) for d <= 3), reg_covar = 0: EM's ascent
    holds exactly for the unregularised likelihood (see the invariant). The blobs are well
    apart (spread 6) and one initial mean sits in each: started from other means, a component
    can collapse onto a few samples, where the likelihood is unbounded and its float64
    evaluation breaks down (a variance of 1e-28 and a falling L_t were seen) or the fit stops
    with "not positive definite". That degeneracy is the model's, not the reference's."""
    rng, n, d, k = draw(seeded_data(dtype, max_n=60, max_d=3, max_k=3, min_n_per_k=12))
    x, _ = blobs(rng, n, d, k, dtype, spread=6.0)
    ctype = draw(st.sampled_from(M.COVARIANCE_TYPES), label="covariance_type")
    w, _, cov = initial_parameters(rng, x, k, ctype)
    mu = x[:k].copy()  # one sample of each blob
    return Case({"X": x, "weights": w, "means": mu, "covariances": cov},
                {"covariance_type": ctype, "reg_covar": 0.0,
                 "max_iter": draw(st.sampled_from([100, 5]), label="max_iter"),
                 "tol": draw(st.sampled_from([1e-3, 0.0]), label="tol")})


def _gmm_sizes(predict: bool = False):
    def builder(n, d, k):
        def build(dtype):
            rng = np.random.default_rng(0)
            x, _ = blobs(rng, n, d, k, dtype, spread=2.0)
            w, mu, cov = initial_parameters(rng, x, k, "full")
            if predict:
                (w, mu, cov, _, _), _ = M.gmm_fit(x, w, mu, cov, max_iter=10)
                return Case({"X": x, "weights": w, "means": mu, "covariances": cov})
            return Case({"X": x, "weights": w, "means": mu, "covariances": cov},
                        {"covariance_type": "full", "reg_covar": 1e-6, "max_iter": 10,
                         "tol": 0.0})
        return build
    return {key: builder(*v) for key, v in _GMM_SHAPES.items()}


def _gmm_cost(case: Case) -> Cost:
    x = case.inputs["X"]
    n, d = x.shape
    k = case.inputs["means"].shape[0]
    iters = case.params.get("max_iter", 1)
    return Cost(flops=2.0 * n * k * d * d * iters, bytes=float(x.nbytes) * iters)


def _em_ascent(case: Case, outs) -> None:
    """With reg_covar = 0 each M-step maximises the expected complete-data log-likelihood, so
    the mean log-likelihood L_t does not fall. Rounding: each l_i = logsumexp_k J_ik is a float64
    sum of O(d^2 + k) terms of size <= |J|max, so L_t is off by <= c (d^2 + k) eps |J|max; with
    |J|max <= 1e3 |L_t| here (unit-noise blobs) and c = 64, slack = 64 (d^2 + k) 1e3 eps |L_t|
    (~2e-10 relative for d = 3, k = 3)."""
    bounds = outs[4].astype(np.float64)
    d = case.inputs["X"].shape[1]
    k = case.inputs["means"].shape[0]
    rel = 64 * (d * d + k) * 1e3 * _EPS64
    if case.inputs["X"].dtype == np.float32:
        rel += float(np.finfo(np.float32).eps)  # the history is returned rounded to float32
    for t in range(1, bounds.size):
        _assert(bounds[t] >= bounds[t - 1] - rel * abs(bounds[t - 1]),
                f"log-likelihood fell at iteration {t}: {bounds[t - 1]!r} -> {bounds[t]!r}")
    _assert(abs(float(outs[0].astype(np.float64).sum()) - 1.0) < 1e-5, "weights do not sum to 1")


def _sk_gmm(kind: str):
    def factory(case: Case, pass_: str):
        from sklearn.mixture import GaussianMixture
        x, w, mu, cov = (case.inputs[k] for k in ("X", "weights", "means", "covariances"))
        ctype = case.params.get("covariance_type", "full")
        prec = np.linalg.inv(cov) if ctype == "full" else 1.0 / cov
        if kind == "fit":
            p = case.params
            return lambda: GaussianMixture(
                w.shape[0], covariance_type=ctype, reg_covar=p["reg_covar"], tol=p["tol"],
                max_iter=p["max_iter"], weights_init=w, means_init=mu, precisions_init=prec,
                init_params="random", random_state=0).fit(x)
        est = GaussianMixture(w.shape[0], covariance_type=ctype, weights_init=w, means_init=mu,
                              precisions_init=prec, max_iter=1, init_params="random",
                              random_state=0).fit(x)
        est.weights_, est.means_, est.covariances_ = w, mu, cov
        est.precisions_cholesky_ = np.linalg.cholesky(prec)
        return lambda: est.predict(x)
    return factory


def _gmm_invalid(fit: bool, order=("X", "weights", "means", "covariances")):
    def case(**kw):
        params = kw.pop("params", {})
        inputs = {"X": np.arange(12.0).reshape(6, 2), "weights": np.array([0.5, 0.5]),
                  "means": np.zeros((2, 2)), "covariances": np.stack([np.eye(2)] * 2)}
        inputs.update(kw)
        return Case({name: inputs[name] for name in order}, params)
    out = [
        Invalid("NaN in X", lambda: case(X=np.full((6, 2), np.nan)), ValueError, r"\bX\b"),
        Invalid("weights not summing to 1", lambda: case(weights=np.array([0.5, 0.6])),
                ValueError, "weights"),
        Invalid("a covariance not positive definite", lambda: case(
            covariances=np.stack([np.eye(2), -np.eye(2)])), ValueError, "covariances"),
        Invalid("means with other columns", lambda: case(means=np.zeros((2, 3))), ValueError,
                "means"),
    ]
    if fit:
        out += [
            Invalid("n_samples < n_components", lambda: case(X=np.ones((1, 2))), ValueError,
                    "n_components"),
            Invalid("negative reg_covar", lambda: case(params={"reg_covar": -1.0}), ValueError,
                    "reg_covar"),
            Invalid("unknown covariance_type", lambda: case(params={"covariance_type": "tied"}),
                    ValueError, "covariance_type"),
        ]
    return tuple(out)


register(Spec(
    name="gmm_fit", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="Gaussian mixture by EM, full or diagonal covariances, scikit-learn's reg_covar",
    forward=M.gmm_fit, torch=None, cases=_gmm_cases, sizes=_gmm_sizes(), cost=_gmm_cost,
    invariants=(Invariant("each EM iteration does not lower the log-likelihood", _em_ascent),),
    invalid=_gmm_invalid(True), peers={"sklearn": _sk_gmm("fit")},
))

register(Spec(
    name="gmm_predict", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="Gaussian mixture: most probable component",
    forward=M.gmm_predict, torch=None,
    cases=lambda dtype: _gmm_cases(dtype).map(lambda c: Case(
        c.inputs, {"covariance_type": c.params["covariance_type"]})),
    sizes=_gmm_sizes(predict=True), cost=_gmm_cost, invalid=_gmm_invalid(False),
    peers={"sklearn": _sk_gmm("predict")},
))


@st.composite
def _full_lp_cases(draw, dtype):
    """Samples and means in [-10, 10]; covariances A A^T + s I with A entries in [-1, 1] and
    s in [0.1, 4] (condition number <= ~40)."""
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    x = draw(S.arrays(dtype, (draw(st.integers(1, 6)), d)), label="X")
    means = draw(S.arrays(dtype, (k, d)), label="means")
    a = np.asarray(draw(S.arrays(np.float64, (k, d, d), -1.0, 1.0), label="A"))
    shift = draw(st.floats(0.1, 4.0), label="s")
    cov = (a @ np.swapaxes(a, 1, 2) + shift * np.eye(d)).astype(dtype)
    cov = (cov + np.swapaxes(cov, 1, 2)) / 2
    w = np.asarray(draw(S.arrays(np.float64, (k,), 0.1, 1.0), label="weight draws"))
    return Case({"X": x, "means": means, "covariances": cov,
                 "weights": (w / w.sum()).astype(dtype)})


def _torch_full_lp(x, means, cov, weights):
    mvn = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    return mvn.log_prob(x[:, None, :]) + weights.log()


def _full_lp_tol(case: Case, upstream):
    """torch works in the input's dtype: its Mahalanobis term (x - mu)^T Sigma^-1 (x - mu), up
    to |x - mu|^2 / s_min <= 80 d / 0.1, carries a relative error ~ cond(Sigma) d eps (Cholesky
    and triangular solve), i.e. atol ~ 40 d eps * maha. For float32 that is far above the
    default atol; for float64 below it. Gradients s = Sigma^-1 (x - mu) scale the same way
    without the |x - mu| factor."""
    x = case.inputs["X"]
    eps = float(np.finfo(x.dtype).eps)
    d = x.shape[1]
    diff = x[:, None, :].astype(np.float64) - case.inputs["means"][None].astype(np.float64)
    cov = case.inputs["covariances"].astype(np.float64)
    sol = np.einsum("kab,ikb->ika", np.linalg.inv(cov), diff)
    if upstream is None:
        maha = float(np.abs((sol * diff).sum(-1)).max()) + d
        base = Tol(1.3e-6, 1e-5) if x.dtype == np.float32 else Tol(1e-7, 1e-7)
        return Tol(base.rtol, base.atol + 40 * d * eps * maha)
    g = float(np.abs(upstream[0]).sum(axis=1).max())
    s = float(np.abs(sol).max()) + 1.0
    base = Tol(1.3e-6, 1e-5) if x.dtype == np.float32 else Tol(1e-7, 1e-7)
    return Tol(base.rtol, base.atol + 40 * d * eps * s * g)


def _full_lp_sizes():
    def builder(n, d, k):
        def build(dtype):
            rng = np.random.default_rng(0)
            x, _ = blobs(rng, n, d, k, dtype, spread=2.0)
            w, mu, cov = initial_parameters(rng, x, k, "full")
            return Case({"X": x, "means": mu, "covariances": cov, "weights": w})
        return build
    return {key: builder(*v) for key, v in _GMM_SHAPES.items()}


register(Spec(
    name="gaussian_full_log_likelihood", family=FAMILY, dtypes=FLOAT64_FIRST,
    summary="log weight + full-covariance Gaussian log-density (the GMM E-step)",
    forward=M.gaussian_full_log_likelihood, backward=M.gaussian_full_log_likelihood_backward,
    grad_inputs=("X", "means"), torch=_torch_full_lp, cases=_full_lp_cases,
    sizes=_full_lp_sizes(), cost=_gmm_cost, case_tol=_full_lp_tol,
    invalid=_gmm_invalid(False, order=("X", "means", "covariances", "weights")),
))
