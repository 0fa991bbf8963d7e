"""Specs of batch norm and layer norm.

Batch norm returns the updated running statistics after its output: they are compared in
forward parity, and are not differentiable (``n_diff_outputs=1``). Strategies draw (N, C),
(N, C, L) and (N, C, H, W), training and eval, affine off / weight only / both, momentum 0 to
1, and channels of tiny spread (1e-3) on an offset, the stress case of normalization.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from hypothesis import strategies as st

from reference import norm as Nm
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog._layer_tools import FAMILY, U32, gamma, small_floats
from suites.catalog.spec import (
    DEFAULT_TOL,
    FLOAT32,
    Case,
    Cost,
    Invalid,
    Invariant,
    Spec,
    Tol,
    case_dtype,
)


def _affine(draw, dtype, shape, inputs):
    """Affine off, weight only, or weight and bias (inputs are positional: no bias alone)."""
    k = draw(st.integers(0, 2))
    if k >= 1:
        inputs["weight"] = draw(small_floats(dtype, shape))
    if k == 2:
        inputs["bias"] = draw(small_floats(dtype, shape))


@st.composite
def _stressed(draw, dtype, shape):
    """Values with an offset and a spread, from ordinary (0, 1) to tiny (3, 1e-3)."""
    offset = draw(st.sampled_from([0.0, 0.0, 3.0, -1.5]))
    spread = draw(st.sampled_from([1.0, 1.0, 0.1, 1e-3]))
    return (draw(small_floats(dtype, shape)) * dtype.type(spread) + dtype.type(offset)
            ).astype(dtype)


# ---------------------------------------------------------------------------------------------
# batch norm


def _torch_batch_norm(x, running_mean, running_var, weight=None, bias=None, *, training,
                      momentum, eps):
    rm, rv = running_mean.clone(), running_var.clone()  # F.batch_norm updates them in place
    y = F.batch_norm(x, rm, rv, weight, bias, training, momentum, eps)
    return y, rm, rv


@st.composite
def _bn_cases(draw, dtype):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(), (1,), (3,), (1, 1), (2, 3), (4, 1)]))
    training = draw(st.booleans())
    if training and n * math.prod(spatial) == 1:
        training = False  # one value per channel: training raises (see invalid=), eval is fine
    rng = draw(S.seeds())
    inputs = {"x": draw(_stressed(dtype, (n, c) + spatial)),
              "running_mean": S.normal(rng, (c,), dtype),
              "running_var": (rng.random(c) * 2 + 0.05).astype(dtype)}
    _affine(draw, dtype, (c,), inputs)
    return Case(inputs, {"training": training,
                         "momentum": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                         "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]))})


def _bn_size(shape):
    def build(dtype):
        rng = np.random.default_rng(0)
        c = shape[1]
        return Case({"x": S.normal(rng, shape, dtype), "running_mean": np.zeros(c, dtype),
                     "running_var": np.ones(c, dtype), "weight": S.normal(rng, (c,), dtype),
                     "bias": S.normal(rng, (c,), dtype)},
                    {"training": True, "momentum": 0.1, "eps": 1e-5})
    return build


def _channel_stats(case: Case):
    """Per channel, in float64: x as (N, C, L), mean and invstd used to normalize, |gamma|."""
    x = case.inputs["x"].astype(np.float64)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    eps = case.params["eps"]
    if case.params["training"]:
        mu, var = x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))
    else:
        mu = case.inputs["running_mean"].astype(np.float64)
        var = case.inputs["running_var"].astype(np.float64)
    invstd = 1 / np.sqrt(var + eps)
    w = np.abs(case.inputs["weight"].astype(np.float64)) if "weight" in case.inputs else 1.0
    return x3, mu, invstd, w * np.ones_like(mu)


def _bn_tol(case: Case, upstream) -> Tol | None:
    """float32: the error of normalizing in float32, derived from the case's conditioning.

    torch's CPU batch norm accumulates its statistics in double, then evaluates
    y = x a + c with a = gamma invstd and c = beta - mean a in float32. The roundings of a,
    x a, c and the sum each err by at most u of their operands, so
        |dy| <= 4 u (|a| (|x| + |mean|) + |beta|),
    large when the spread is tiny next to the mean (a ~ 1/spread). The backward
    dx = a (g - mean g - x_hat mean(g x_hat)) forms (x - mean) invstd and its products in
    float32 the same way: |d dx| <= 4 u |a| (|g| + |mean g| + (|x| + |mean|) invstd
    |mean(g x_hat)|). dgamma and dbeta are sums of M terms: gamma_M sum |g x_hat| and
    gamma_M sum |g| cover any accumulation order; dgamma's terms carry x_hat formed in
    float32 too, each off by up to 4 u (|x| + |mean|) invstd (as y's), summed with |g|: tiny
    spread next to the mean makes this the larger part (x = [3.0002, 2.9998, 3.0010], eps
    1e-5: dgamma off by 1.6e-5 in 0.145). The reference works in float64 throughout, so the
    bound is torch's error alone.
    """
    if case_dtype(case) != FLOAT32:
        return None
    x3, mu, invstd, w = _channel_stats(case)
    a = w * invstd
    xmax = np.abs(x3).max(axis=(0, 2))
    beta = np.abs(case.inputs["bias"].astype(np.float64)) if "bias" in case.inputs else 0.0
    bound = 4 * U32 * float(np.max(a * (xmax + np.abs(mu)) + beta))
    if upstream is not None:
        g = upstream[0].astype(np.float64).reshape(x3.shape)
        xh = (x3 - mu[None, :, None]) * invstd[None, :, None]
        m = x3.shape[0] * x3.shape[2]
        mg, mgx = g.mean(axis=(0, 2)), (g * xh).mean(axis=(0, 2))
        dx = 4 * U32 * a * (np.abs(g).max(axis=(0, 2)) + np.abs(mg)
                            + (xmax + np.abs(mu)) * invstd * np.abs(mgx))
        sums = gamma(m) * np.maximum(np.abs(g * xh).sum(axis=(0, 2)), np.abs(g).sum(axis=(0, 2)))
        formed = 4 * U32 * invstd * (np.abs(g) * (np.abs(x3) + np.abs(mu)[None, :, None])
                                     ).sum(axis=(0, 2))
        sums = sums + formed
        bound = max(float(np.max(dx)), float(np.max(sums)))
    base = DEFAULT_TOL[FLOAT32]
    return Tol(base.rtol, max(base.atol, bound))


def _bn_normalizes(case: Case, outs) -> None:
    """Training without affine: each channel of y has mean 0 and variance var / (var + eps)."""
    if not case.params["training"] or "weight" in case.inputs:
        return
    x3, mu, invstd, _ = _channel_stats(case)
    y = outs[0].astype(np.float64).reshape(x3.shape)
    m = x3.shape[0] * x3.shape[2]
    var = x3.var(axis=(0, 2))
    want = var / (var + case.params["eps"])
    # mean(y) = (mean - computed mean) invstd + roundings: the float64 mean of M values errs
    # by gamma_M max|x|; each y is then rounded once to its dtype (eps/2 |y|).
    eps = float(np.finfo(outs[0].dtype).eps)
    ymax = np.abs(y).max(axis=(0, 2))
    bound = 2 * gamma(m + 1, 2.0 ** -53) * np.abs(x3).max(axis=(0, 2)) * invstd + eps * ymax
    assert np.all(np.abs(y.mean(axis=(0, 2))) <= bound), "channel means are not 0"
    assert np.all(np.abs(y.var(axis=(0, 2)) - want) <= 4 * bound * (ymax + 1)), \
        "channel variances are not var / (var + eps)"


def _bn_stats_eval(case: Case, outs) -> None:
    """Eval mode returns the running statistics unchanged."""
    if case.params["training"]:
        return
    assert np.array_equal(outs[1], case.inputs["running_mean"]), "eval changed running_mean"
    assert np.array_equal(outs[2], case.inputs["running_var"]), "eval changed running_var"


def _bn_cost(case: Case) -> Cost:
    x = case.inputs["x"]
    return Cost(8.0 * x.size, 2 * x.nbytes)


def _bn_bad(description, error, match, x=(2, 3, 4), c=3, **params):
    params = {"training": True, "momentum": 0.1, "eps": 1e-5} | params
    inputs = dict(params.pop("inputs", {}))

    def case():
        base = {"x": np.ones(x), "running_mean": np.zeros(c), "running_var": np.ones(c)}
        return Case(base | {k: v() for k, v in inputs.items()}, params)
    return Invalid(description, case, error, match)


register(Spec(
    name="batch_norm", family=FAMILY,
    summary="batch norm, training (batch stats, running update) and eval, affine or not",
    forward=Nm.batch_norm, backward=Nm.batch_norm_backward,
    grad_inputs=("x", "weight", "bias"), n_diff_outputs=1,
    torch=_torch_batch_norm,
    cases=_bn_cases,
    sizes={"small": _bn_size((8, 16, 8, 8)), "medium": _bn_size((8, 32, 32, 32)),
           "large": _bn_size((16, 64, 32, 32))},
    cost=_bn_cost,
    case_tol=_bn_tol,
    invariants=(Invariant("training normalizes each channel", _bn_normalizes),
                Invariant("eval keeps the running statistics", _bn_stats_eval)),
    invalid=(
        _bn_bad("one value per channel in training", ValueError, r"\bx\b.*more than 1 value",
                x=(1, 3)),
        _bn_bad("one value per channel in training, 4-d", ValueError, r"\bx\b", x=(1, 3, 1, 1)),
        _bn_bad("running_mean of the wrong length", ValueError, "running_mean", c=2),
        _bn_bad("weight of the wrong length", ValueError, "weight",
                inputs={"weight": lambda: np.ones(4)}),
        _bn_bad("momentum above 1", ValueError, "momentum", momentum=1.5),
        _bn_bad("negative eps", ValueError, "eps", eps=-1e-5),
        _bn_bad("a 1-d x", ValueError, r"\bx\b", x=(3,)),
        _bn_bad("training not a bool", TypeError, "training", training="yes"),
        Invalid("no running statistics in eval", lambda: _bn_eval_needs_stats(), ValueError,
                "running_mean and running_var"),
    ),
))


# ---------------------------------------------------------------------------------------------
# layer norm


def _torch_layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    # F.layer_norm takes a tuple only; an int means (int,) as in nn.LayerNorm
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    return F.layer_norm(x, shape, weight, bias, eps)


def _layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    """The reference with the spec's argument order (inputs positional, shape a parameter)."""
    return Nm.layer_norm(x, normalized_shape, weight, bias, eps)


@st.composite
def _ln_cases(draw, dtype):
    shape = draw(S.shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    k = draw(st.integers(1, len(shape)))
    norm_shape = shape[len(shape) - k:]
    inputs = {"x": draw(_stressed(dtype, shape))}
    _affine(draw, dtype, norm_shape, inputs)
    ns = norm_shape[0] if k == 1 and draw(st.booleans()) else tuple(norm_shape)
    return Case(inputs, {"normalized_shape": ns, "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]))})


def _ln_size(rows, d):
    def build(dtype):
        rng = np.random.default_rng(0)
        return Case({"x": S.normal(rng, (rows, d), dtype), "weight": S.normal(rng, (d,), dtype),
                     "bias": S.normal(rng, (d,), dtype)}, {"normalized_shape": (d,), "eps": 1e-5})
    return build


def _ln_rows(case: Case):
    ns = case.params["normalized_shape"]
    d = ns if isinstance(ns, int) else math.prod(ns)
    x2 = case.inputs["x"].astype(np.float64).reshape(-1, d)
    mu = x2.mean(axis=1)
    invstd = 1 / np.sqrt(x2.var(axis=1) + case.params["eps"])
    return x2, mu, invstd, d


def _ln_tol(case: Case, upstream) -> Tol | None:
    """float32: torch's error in normalizing, from the case's conditioning (cf. _bn_tol).

    torch's float32 layer norm accumulates each row's mean and variance of D values in
    float32 (the reference works in float64, so the bound is torch's error alone). The mean
    errs by gamma_D max|x|, the variance and so invstd relatively by about gamma_D, and forming
    (x - mean) * invstd adds 2 u: the computed x_hat is off by at most
        e = rel ((|x| + |mean|) invstd + |x_hat|),   rel = gamma_D + 4 u,
    and y = x_hat w + b by |w| e + 4 u |b|. The backward
        dx = invstd (g' - mean g' - x_hat mean(g' x_hat)),   g' = g w,
    inherits e through x_hat (e |mean(g' x_hat)| + |x_hat| mean(|g'| e)), adds gamma_D of its
    two row sums (mean|g'| + |x_hat| mean|g' x_hat|) and rel of its terms (invstd's error and
    the final roundings); dw = sum over the M rows of g x_hat errs by sum |g| e + gamma_M
    sum |g x_hat|, db by gamma_M sum |g|. The bound is the largest of these. The reference's
    own float32 output pass (see reference.norm) adds 5 u (|x_hat w| + |b|) to y.
    """
    if case_dtype(case) != FLOAT32:
        return None
    x2, mu, invstd, d = _ln_rows(case)
    xh = (x2 - mu[:, None]) * invstd[:, None]
    w = (np.abs(case.inputs["weight"].astype(np.float64)).reshape(-1) if "weight" in case.inputs
         else np.ones(d))
    b = (np.abs(case.inputs["bias"].astype(np.float64)).reshape(-1) if "bias" in case.inputs
         else np.zeros(d))
    rel = gamma(d) + 4 * U32
    e = rel * ((np.abs(x2) + np.abs(mu)[:, None]) * invstd[:, None] + np.abs(xh))
    bound = float(np.max(w * e + 4 * U32 * b + 5 * U32 * (np.abs(xh) * w + b), initial=0))
    if upstream is not None:
        g = upstream[0].astype(np.float64).reshape(x2.shape)
        gp = g * w
        row = lambda a: np.mean(a, axis=1, keepdims=True)  # noqa: E731
        m_gx = np.abs(row(gp * xh))
        dx = invstd[:, None] * (
            e * m_gx + np.abs(xh) * row(np.abs(gp) * e)
            + gamma(d) * (row(np.abs(gp)) + np.abs(xh) * row(np.abs(gp * xh)))
            + rel * (np.abs(gp) + row(np.abs(gp)) + np.abs(xh) * m_gx))
        m = x2.shape[0]
        dw = (np.abs(g) * e).sum(axis=0) + gamma(m) * np.abs(g * xh).sum(axis=0)
        db = gamma(m) * np.abs(g).sum(axis=0)
        bound = max(float(np.max(dx, initial=0)), float(np.max(dw, initial=0)),
                    float(np.max(db, initial=0)))
    base = DEFAULT_TOL[FLOAT32]
    return Tol(base.rtol, max(base.atol, bound))


def _ln_normalizes(case: Case, outs) -> None:
    """Without affine, every normalized slice has mean 0."""
    if "weight" in case.inputs:
        return
    x2, _, invstd, d = _ln_rows(case)
    y = outs[0].astype(np.float64).reshape(-1, d)
    # as in _bn_normalizes: the float64 mean errs by gamma_D max|x|, y is rounded once
    eps = float(np.finfo(outs[0].dtype).eps)
    bound = (2 * gamma(d + 1, 2.0 ** -53) * np.abs(x2).max(axis=1) * invstd
             + eps * np.abs(y).max(axis=1))
    assert np.all(np.abs(y.mean(axis=1)) <= bound), "normalized slices do not have mean 0"


def _ln_bad(description, error, match, x=(2, 3, 4), **params):
    params = {"normalized_shape": (3, 4), "eps": 1e-5} | params
    inputs = dict(params.pop("inputs", {}))
    return Invalid(description, lambda: Case({"x": np.ones(x)} | {k: v() for k, v in
                                                                  inputs.items()}, params),
                   error, match)


register(Spec(
    name="layer_norm", family=FAMILY,
    summary="layer norm over the trailing normalized_shape dims, affine or not",
    forward=_layer_norm, backward=Nm.layer_norm_backward, grad_inputs=("x", "weight", "bias"),
    torch=_torch_layer_norm,
    cases=_ln_cases,
    sizes={"small": _ln_size(64, 64), "medium": _ln_size(512, 512),
           "large": _ln_size(2048, 1024)},
    cost=lambda case: Cost(8.0 * case.inputs["x"].size, 2 * case.inputs["x"].nbytes),
    case_tol=_ln_tol,
    invariants=(Invariant("slices have mean 0", _ln_normalizes),),
    invalid=(
        _ln_bad("normalized_shape not trailing", ValueError, "normalized_shape",
                normalized_shape=(2, 3)),
        _ln_bad("normalized_shape longer than x", ValueError, "normalized_shape",
                normalized_shape=(1, 2, 3, 4)),
        _ln_bad("weight of the wrong shape", ValueError, "weight",
                inputs={"weight": lambda: np.ones(4)}),
        _ln_bad("negative eps", ValueError, "eps", eps=-1.0),
        _ln_bad("a float normalized_shape", TypeError, "normalized_shape", normalized_shape=4.0),
    ),
))


# ---------------------------------------------------------------------------------------------
# batch norm without running statistics (track_running_stats=False): training on batch stats


def _bn_batch_stats(x, weight=None, bias=None, *, eps):
    """The reference with ``running_mean = running_var = None``: only y is returned (both new
    statistics are None; the forward's tuple is checked here so a change cannot hide)."""
    (y, nrm, nrv), ctx = Nm.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    assert nrm is None and nrv is None, "batch_norm without running stats returned some"
    return y, ctx


def _torch_bn_batch_stats(x, weight=None, bias=None, *, eps):
    return F.batch_norm(x, None, None, weight, bias, True, 0.1, eps)


@st.composite
def _bn_batch_stats_cases(draw, dtype):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    # More than one value per channel (training needs a variance): n = 1 takes a longer row.
    spatial = draw(st.sampled_from([(3,), (2, 3), (4, 1)] if n == 1 else
                                   [(), (1,), (3,), (1, 1), (2, 3)]))
    inputs = {"x": draw(_stressed(dtype, (n, c) + spatial))}
    _affine(draw, dtype, (c,), inputs)
    return Case(inputs, {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]))})


def _bn_batch_stats_size(shape):
    full = _bn_size(shape)

    def build(dtype):
        case = full(dtype)
        return Case({k: case.inputs[k] for k in ("x", "weight", "bias")}, {"eps": 1e-5})
    return build


def _bn_batch_stats_tol(case: Case, upstream) -> Tol | None:
    # The same derivation as batch_norm's in training: that case with running stats added.
    c = case.inputs["x"].shape[1]
    dt = case.inputs["x"].dtype
    full = Case({"x": case.inputs["x"], "running_mean": np.zeros(c, dt),
                 "running_var": np.ones(c, dt), **{k: a for k, a in case.inputs.items()
                                                   if k != "x"}},
                {"training": True, "momentum": 0.1, "eps": case.params["eps"]})
    return _bn_tol(full, upstream)


def _bn_eval_needs_stats():
    return Case({"x": np.ones((2, 3)), "running_mean": None, "running_var": None},
                {"training": False})


register(Spec(
    name="batch_norm_batch_stats", family=FAMILY,
    summary="batch norm in training without running statistics (track_running_stats=False)",
    forward=_bn_batch_stats, backward=Nm.batch_norm_backward,
    grad_inputs=("x", "weight", "bias"), n_diff_outputs=1,
    torch=_torch_bn_batch_stats,
    cases=_bn_batch_stats_cases,
    sizes={"small": _bn_batch_stats_size((8, 16, 8, 8)),
           "medium": _bn_batch_stats_size((8, 32, 32, 32)),
           "large": _bn_batch_stats_size((16, 64, 32, 32))},
    cost=_bn_cost,
    case_tol=_bn_batch_stats_tol,
    invalid=(
        Invalid("one value per channel", lambda: Case({"x": np.ones((1, 3))}, {"eps": 1e-5}),
                ValueError, r"\bx\b.*more than 1 value"),
        Invalid("negative eps", lambda: Case({"x": np.ones((2, 3))}, {"eps": -1.0}),
                ValueError, "eps"),
    ),
))
