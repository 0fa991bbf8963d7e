"""The optim family's own checks, beyond the generic ones on single steps:

- trajectory parity: K = 50 steps of each optimizer over several tensors of mixed shapes (a 0-d
  one included) against one ``torch.optim`` optimizer, with a fixed gradient sequence that has
  an all-zero step; parameters and every state buffer compared at several milestones, for the
  pure step and for the in-place one (which must also equal the pure step bit for bit);
- the in-place steps (``sgd_`` ...): bit-equality with the pure step over Hypothesis cases of
  every flag combination (one tensor, lists crossing the kernels' group and chunk sizes, mixed
  dtypes), in-place semantics (the same objects updated, no other memory touched, None
  returned), and invalid inputs (read-only, non-contiguous, mismatched, repeated arrays);
- schedules against ``torch.optim.lr_scheduler`` over 1200 steps, chained (torch's recursive
  ``step()``) and closed form;
- initialisation: fans and gains equal to torch's exactly; samples pass a Kolmogorov-Smirnov
  test against the intended distribution, and the test rejects a std off by 10% (power);
- early stopping: properties on Hypothesis-generated value sequences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from reference import early_stopping as E
from reference import init as I
from reference import optim as O
from reference import schedules as L
from suites.catalog import get
from suites.catalog import optim as C
from suites.catalog.spec import DEFAULT_TOL
from suites.recording import compare

FAMILY = "optim"

# ---------------------------------------------------------------------------------------------
# trajectories

SHAPES = [(3, 4), (), (5,), (2, 3, 2), (1,)]
K = 50
MILESTONES = (1, 2, 7, 8, 20, K)
ZERO_STEP = 7  # every gradient is zero at this step

CONFIGS = [
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("adagrad", dict(lr=0.1, eps=1e-6, maximize=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, momentum=0.9, centered=True)),
    ("adam", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("adamw", dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]
_TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
          "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _init_state(name, params, hyper):
    if name == "sgd":
        return O.sgd_init_state(params, momentum=hyper.get("momentum", 0.0))
    if name == "adagrad":
        return O.adagrad_init_state(
            params, initial_accumulator_value=hyper.get("initial_accumulator_value", 0.0))
    if name == "rmsprop":
        return O.rmsprop_init_state(params, momentum=hyper.get("momentum", 0.0),
                                    centered=hyper.get("centered", False))
    return O.adam_init_state(params, amsgrad=hyper.get("amsgrad", False))


def _tolerance(dtype, k: int, scale: float):
    """Per step each side rounds every element a handful of times (torch: the decay, the
    moment updates, the root, the division, the update: <= 8 roundings of at most half an ulp
    of the largest magnitude in play, ``scale``); ours rounds once. A difference in a state
    buffer is carried to the next step undamped at worst (decay factors <= 1), and adds up
    with the new ones, so after k steps the two trajectories differ by at most
    ``k * 8 * eps * scale``, on top of torch.testing's default tolerance."""
    base = DEFAULT_TOL[np.dtype(dtype)]
    return base.rtol, base.atol + k * 8 * float(np.finfo(dtype).eps) * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "hyper"), CONFIGS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_trajectory_parity(name, hyper, dtype, record):
    record.bind(name, FAMILY, "trajectory (50 steps, 5 tensors)", dtype, "cpu")
    rng = np.random.default_rng(7)
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    grads_seq = [[np.asarray(rng.standard_normal(s) * (0.0 if k == ZERO_STEP else 1.0), dtype)
                  for s in SHAPES] for k in range(1, K + 1)]
    tparams = [torch.from_numpy(p.copy()) for p in params]
    topt = _TORCH[name](tparams, **hyper)
    state = _init_state(name, params, hyper)
    # the in-place step walks the same trajectory on arrays of its own
    params_ip = [p.copy() for p in params]
    state_ip = {b: [a.copy() for a in arrs] for b, arrs in state.items()}
    step_fn, step_ip = getattr(O, name), getattr(O, f"{name}_")
    ours = {k: v for k, v in hyper.items() if k != "initial_accumulator_value"}
    for k in range(1, K + 1):
        for t, g in zip(tparams, grads_seq[k - 1], strict=True):
            t.grad = torch.from_numpy(g.copy())
        topt.step()
        (params, state), _ = step_fn(params, grads_seq[k - 1], state, k, **ours)
        assert step_ip(params_ip, grads_seq[k - 1], state_ip, k, **ours) is None
        _assert_bitwise(params_ip, params, f"{name} step {k}: in-place params")
        for b in state:
            _assert_bitwise(state_ip[b], state[b], f"{name} step {k}: in-place {b}")
        if k not in MILESTONES:
            continue
        record.examples += 1
        for i, t in enumerate(tparams):
            pairs = [("param", params[i], t.detach().numpy()),
                     ("param (in place)", params_ip[i], t.detach().numpy())]
            pairs += [(b, state[b][i], topt.state[t][b].numpy()) for b in state]
            pairs += [(f"{b} (in place)", state_ip[b][i], topt.state[t][b].numpy())
                      for b in state]
            for what, mine, theirs in pairs:
                scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
                rtol, atol = _tolerance(dtype, k, scale)
                compare(mine, theirs, rtol, atol, record=record,
                        label=f"{name} {hyper} step {k}, tensor {i} {SHAPES[i]}, {what}")


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _assert_bitwise(got, want, label: str) -> None:
    """Equal bit for bit (signed zeros and NaN payloads included), array by array."""
    got, want = (x if isinstance(x, list) else [x] for x in (got, want))
    assert len(got) == len(want), label
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (label, i, a.dtype, b.dtype)
        diff = _bits(a) != _bits(b)
        assert not diff.any(), (f"{label}, tensor {i}: {int(diff.sum())} elements differ, e.g. "
                                f"{np.asarray(a)[diff][:3]} vs {np.asarray(b)[diff][:3]}")


def test_zero_gradient_step_keeps_adam_moving_and_sgd_still():
    """A zero gradient: plain SGD stays put exactly; Adam still moves (its first moment)."""
    p, z = np.array([1.0, -2.0]), np.zeros(2)
    (p1, _), _ = O.sgd(p, z, {}, 3, lr=0.1)
    assert np.array_equal(p1, p)
    st0 = {"exp_avg": np.array([0.5, 0.5]), "exp_avg_sq": np.array([1.0, 1.0])}
    (p2, _), _ = O.adam(p, z, st0, 3, lr=0.1)
    assert np.all(p2 < p)


def test_adam_first_step_moves_by_about_lr():
    """Step 1 from a zero state: m_hat = g, v_hat = g^2, so each element moves by
    lr * |g| / (|g| + eps) = lr (up to eps / |g|), whatever the gradient's scale."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(1000)
    g = rng.standard_normal(1000) * 10.0 ** rng.uniform(-3, 3, 1000)
    (p1, _), _ = O.adam(p, g, O.adam_init_state(p), 1, lr=0.01, eps=1e-8)
    moved = np.abs(p1 - p)
    # |g| / (|g| + eps) = 1 - eps / |g| (first order); then one rounding of p1 (|p| eps).
    allowed = 0.01 * 1e-8 / np.abs(g) + 4 * np.finfo(np.float64).eps * (np.abs(p) + 1)
    bad = np.abs(moved - 0.01) > allowed
    assert not bad.any(), (moved[bad][:3], g[bad][:3])


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "adamw"])
def test_descent_lowers_a_convex_quadratic(name):
    """f(p) = 1/2 p^T A p with A positive definite: K steps with its gradient and a small lr
    end lower than they started."""
    rng = np.random.default_rng(11)
    q = rng.standard_normal((6, 6))
    a = q @ q.T + 6 * np.eye(6)
    p = rng.standard_normal(6)
    f0 = 0.5 * p @ a @ p
    hyper = {"sgd": dict(lr=1e-3, momentum=0.5)}.get(name, dict(lr=1e-3))
    if name == "adamw":
        hyper["weight_decay"] = 0.0
    state = _init_state(name, p, hyper)
    for k in range(1, 51):
        (p, state), _ = getattr(O, name)(p, a @ p, state, k, **hyper)
    assert 0.5 * p @ a @ p < f0


def test_backward_of_a_list_matches_per_tensor_calls():
    """The list form is the per-tensor form applied to each tensor (no mixing between them)."""
    rng = np.random.default_rng(5)
    ps = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    gs = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    st_ = O.adam_init_state(ps, amsgrad=True)
    (p1, s1), ctx = O.adam(ps, gs, st_, 4, lr=0.1, amsgrad=True, differentiable=True)
    ups = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
    d_p, d_g, d_s = O.adam_backward(ctx, (ups, None))
    for i in range(len(SHAPES)):
        one = {b: st_[b][i] for b in st_}
        (q1, _), c1 = O.adam(ps[i], gs[i], one, 4, lr=0.1, amsgrad=True, differentiable=True)
        e_p, e_g, _ = O.adam_backward(c1, (ups[i], None))
        assert np.array_equal(q1, p1[i]) and np.array_equal(e_p, d_p[i])
        assert np.array_equal(e_g, d_g[i])


# ---------------------------------------------------------------------------------------------
# schedules

N_STEPS = 1200
EPS64 = float(np.finfo(np.float64).eps)


def _torch_lrs(make, base_lr=0.1):
    """torch's chained (recursive ``step()``) and closed-form rates for t = 0..N_STEPS."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = make(opt)
    chained, closed = [], []
    for _ in range(N_STEPS + 1):
        chained.append(sched.get_last_lr()[0])
        closed.append(sched._get_closed_form_lr()[0] if hasattr(sched, "_get_closed_form_lr")
                      else np.nan)
        opt.step()
        sched.step()
    return np.array(chained), np.array(closed)


SCHEDULES = {
    "step": (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30, gamma=0.5),
             lambda t: L.step_lr(t, 0.1, 30, 0.5)),
    "exponential": (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.995),
                    lambda t: L.exponential_lr(t, 0.1, 0.995)),
    "cosine": (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=300, eta_min=1e-4),
               lambda t: L.cosine_annealing_lr(t, 0.1, 300, 1e-4)),
    "linear warmup": (lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.01,
                                                                  total_iters=100),
                      lambda t: L.linear_warmup(t, 0.1, 100, 0.01)),
    "warmup then cosine": (
        lambda o: torch.optim.lr_scheduler.SequentialLR(o, [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=50),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=1000)], milestones=[50]),
        lambda t: L.warmup_cosine_lr(t, 0.1, 50, 1000, 0.1)),
    "step x exponential (ChainedScheduler)": (
        lambda o: torch.optim.lr_scheduler.ChainedScheduler([
            torch.optim.lr_scheduler.StepLR(o, step_size=100, gamma=0.5),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.999)]),
        lambda t: L.step_lr(t, 0.1, 100, 0.5) * L.exponential_lr(t, 1.0, 0.999)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("which", list(SCHEDULES))
def test_schedule_matches_torch(which, record):
    """Chained: torch's recursive update multiplies (or adds) one rounded factor per step, so
    after t steps its relative error is at most ~t eps (derivation: t roundings of relative
    eps/2 each, plus the cosine ratio's own few); we allow 4 t eps relative, and the same
    times the base rate absolute for the cosine's trough near eta_min. Closed form: 8 eps."""
    record.bind(f"schedule: {which}", FAMILY, "schedule vs lr_scheduler (1200 steps)",
                np.float64, "cpu")
    make, ours = SCHEDULES[which]
    chained, closed = _torch_lrs(make)
    t = np.arange(N_STEPS + 1)
    mine = ours(t)
    record.examples += N_STEPS + 1
    bound = 4 * N_STEPS * EPS64
    compare(mine, chained, bound, bound * 0.1, label=f"{which} vs torch step()", record=record)
    one_by_one = np.array([ours(int(k)) for k in t[::97]])
    assert np.array_equal(one_by_one, mine[::97]), "scalar and array t disagree"
    if not np.isnan(closed).all():
        compare(mine, closed, 8 * EPS64, 8 * EPS64 * 0.1, label=f"{which} vs closed form",
                record=record)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="T_max"):
        L.cosine_annealing_lr(3, 0.1, 0)
    with pytest.raises(ValueError, match=r"\bt\b"):
        L.step_lr(-1, 0.1, 10)
    with pytest.raises(TypeError, match=r"\bt\b"):
        L.exponential_lr(np.array([0.5]), 0.1, 0.9)


# ---------------------------------------------------------------------------------------------
# initialisation

WEIGHT_SHAPES = [(10, 7), (1, 1), (64, 3, 3, 3), (32, 4, 5, 5), (12, 3, 7), (8, 2, 3, 3, 3),
                 (5, 0), (0, 5, 3, 3)]  # linear, conv2d, grouped conv2d (in/groups = 4), ...


@pytest.mark.parametrize("shape", WEIGHT_SHAPES, ids=str)
def test_fans_equal_torch(shape):
    theirs = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert I.calculate_fan_in_and_fan_out(shape) == theirs


def test_fans_reject_vectors_like_torch():
    with pytest.raises(ValueError):
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(5))
    with pytest.raises(ValueError, match="shape"):
        I.calculate_fan_in_and_fan_out((5,))


@pytest.mark.parametrize(("nonlinearity", "param"),
                         [(n, None) for n in ("linear", "conv1d", "conv2d", "conv3d",
                                              "conv_transpose2d", "sigmoid", "tanh", "relu",
                                              "leaky_relu", "selu")]
                         + [("leaky_relu", a) for a in (0, 0.2, 1, 3.5)])
def test_gain_equals_torch(nonlinearity, param):
    assert I.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(nonlinearity,
                                                                                  param)


ALPHA = 1e-3
SEED = 20_240_611
GOF_SHAPE = (64, 8, 7, 7)  # 25088 samples: conv weight, fan_in 392, fan_out 3136


def _expected(kind: str, shape, **kw):
    """(scipy distribution, its std) from torch's own fans and gains."""
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    if kind.startswith("xavier"):
        std = kw.get("gain", 1.0) * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        fan = fan_in if kw.get("mode", "fan_in") == "fan_in" else fan_out
        std = torch.nn.init.calculate_gain(kw.get("nonlinearity", "leaky_relu"),
                                           kw.get("a", 0)) / math.sqrt(fan)
    if kind.endswith("uniform"):
        b = math.sqrt(3.0) * std
        return stats.uniform(-b, 2 * b), std
    return stats.norm(0.0, std), std


SAMPLERS = [
    ("xavier_uniform", {}), ("xavier_normal", {"gain": 5.0 / 3}),
    ("kaiming_uniform", {}), ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_uniform", {"a": 0.2, "mode": "fan_out"}),
    ("kaiming_normal", {"nonlinearity": "tanh"}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("kind", "kw"), SAMPLERS, ids=[f"{k}-{kw}" for k, kw in SAMPLERS])
def test_sampler_fits_its_distribution(kind, kw, dtype, record):
    record.bind(f"init: {kind}", FAMILY, "goodness of fit (KS)", dtype, "cpu")
    w = getattr(I, kind)(np.random.default_rng(SEED), GOF_SHAPE, dtype=dtype, **kw)
    assert w.shape == GOF_SHAPE and w.dtype == dtype
    dist, std = _expected(kind, GOF_SHAPE, **kw)
    record.examples += 1
    p = stats.kstest(w.reshape(-1).astype(np.float64), dist.cdf).pvalue
    record.figures["KS p-value"] = float(p)
    assert p > ALPHA, f"{kind} {kw}: KS p-value {p:.3g} <= {ALPHA} against std {std:.4g}"


@pytest.mark.parametrize("factor", [0.9, 1.1])
@pytest.mark.parametrize("kind", ["kaiming_normal", "xavier_uniform"])
def test_the_ks_test_has_power(kind, factor):
    """A sampler whose std is off by 10% is rejected at this sample size (KS statistic
    ~0.026 for normals and more for uniforms, against a critical value of ~0.012)."""
    w = getattr(I, kind)(np.random.default_rng(SEED), GOF_SHAPE) * factor
    dist, _ = _expected(kind, GOF_SHAPE)
    p = stats.kstest(w.reshape(-1).astype(np.float64), dist.cdf).pvalue
    assert p <= ALPHA, f"a std off by {factor} went undetected (p-value {p:.3g})"


def test_simple_initialisers():
    rng = np.random.default_rng(SEED)
    assert not I.zeros((3, 4)).any() and I.zeros((3, 4), np.float64).dtype == np.float64
    u = I.uniform(rng, (20000,), -2.0, 3.0)
    assert u.min() >= -2.0 and u.max() < 3.0
    assert stats.kstest(u.astype(np.float64), stats.uniform(-2.0, 5.0).cdf).pvalue > ALPHA
    n = I.normal(rng, (20000,), 1.5, 0.5, np.float64)
    assert stats.kstest(n, stats.norm(1.5, 0.5).cdf).pvalue > ALPHA
    with pytest.raises(TypeError, match="rng"):
        I.normal(0, (3,))
    with pytest.raises(ValueError, match="mode"):
        I.kaiming_normal(rng, (3, 4), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        I.calculate_gain("swish")


def test_same_generator_state_same_draw():
    a = I.kaiming_uniform(np.random.default_rng(1), (8, 4, 3, 3))
    b = I.kaiming_uniform(np.random.default_rng(1), (8, 4, 3, 3))
    assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# early stopping

_VALUES = st.lists(st.integers(0, 12).map(lambda k: k / 4), min_size=1, max_size=40)


def _oracle_stop(values, patience):
    """min mode, min_delta 0, no baseline: the best index so far is the first minimum; the
    wait is the distance to it; stop at the first epoch whose wait is >= patience and > 0."""
    for e in range(len(values)):
        best = int(np.argmin(values[: e + 1]))  # first occurrence: ties do not improve
        wait = e - best
        if wait > 0 and wait >= patience:
            return e, best
    return None, int(np.argmin(values))


@given(values=_VALUES, patience=st.integers(0, 6))
def test_early_stopping_matches_the_rule(values, patience, record):
    record.bind("early_stopping", FAMILY, "early stopping: stops exactly by the rule", None,
                "cpu")
    record.examples += 1
    assert E.early_stopping(values, patience=patience) == _oracle_stop(values, patience)


@given(values=_VALUES, patience=st.integers(0, 6), min_delta=st.sampled_from([0.0, 0.25, 1.0]),
       baseline=st.one_of(st.none(), st.sampled_from([0.5, 2.0])))
def test_early_stopping_properties(values, patience, min_delta, baseline, record):
    record.bind("early_stopping", FAMILY, "early stopping: properties", None, "cpu")
    record.examples += 1
    stop, best = E.early_stopping(values, patience=patience, min_delta=min_delta,
                                  baseline=baseline)
    # max mode is min mode on the negated values.
    neg = E.early_stopping([-x for x in values], mode="max", patience=patience,
                           min_delta=min_delta, baseline=None if baseline is None else -baseline)
    assert neg == (stop, best)
    end = len(values) - 1 if stop is None else stop
    # The best epoch is an improvement over everything before it (and the baseline), and no
    # later epoch up to the stop beats it by more than min_delta.
    ref = math.inf if baseline is None else baseline
    if best is not None:
        assert values[best] < ref - min_delta
        assert all(values[j] >= values[best] - min_delta for j in range(best + 1, end + 1))
    else:
        assert all(x >= ref - min_delta for x in values[: end + 1])
    if stop is not None:
        # Never earlier: at least `patience` epochs (>= 1) without an improvement.
        last = -1 if best is None else best
        assert stop - last >= max(patience, 1)
        # ... and not later: one epoch less and it would not have stopped.
        assert E.early_stopping(values[:stop], patience=patience, min_delta=min_delta,
                                baseline=baseline)[0] is None


@given(values=_VALUES, patience=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_restore_best_gives_the_best_epochs_weights(values, patience, seed, record):
    record.bind("early_stopping", FAMILY, "early stopping: restore best", None, "cpu")
    record.examples += 1
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(3) for _ in values]  # what training saved each epoch
    stop, best = E.early_stopping(values, patience=patience)
    end = len(values) - 1 if stop is None else stop
    restored = weights[best]
    assert values[best] == min(values[: end + 1])
    assert any(np.array_equal(restored, weights[j]) for j in range(end + 1)
               if values[j] == min(values[: end + 1]))
    assert best == values.index(min(values[: end + 1]))


def test_early_stopping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        E.early_stopping([1.0], mode="lowest")
    with pytest.raises(ValueError, match="patience"):
        E.early_stopping([1.0], patience=-1)
    with pytest.raises(ValueError, match="min_delta"):
        E.early_stopping([1.0], min_delta=-0.1)


# ---------------------------------------------------------------------------------------------
# in-place steps

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")


def _split(name: str, case):
    """A catalog case -> (params, grads, state, step, hyper) of the library's call (a 0-d
    buffer the case holds as a numpy scalar becomes a 0-d array: a scalar cannot be updated)."""
    hyper = {k: v for k, v in case.params.items()
             if k not in ("step", "initial_accumulator_value")}
    state = {b: np.asarray(case.inputs[b]) for b in C._BUFFERS[name](hyper)}
    return (np.asarray(case.inputs["params"]), case.inputs["grads"], state, case.params["step"],
            hyper)


def _copy(x):
    if isinstance(x, dict):
        return {k: _copy(a) for k, a in x.items()}
    return [a.copy() for a in x] if isinstance(x, list) else x.copy()


def _check_against_pure(name, params, grads, state, step, hyper, label):
    """Run the pure and the in-place step on the same inputs; equal bit for bit, and the
    in-place one updated the very objects it was given and no gradient."""
    (p1, s1), ctx = getattr(O, name)(params, grads, state, step, **hyper)
    assert ctx is None
    ps, st, gs = _copy(params), _copy(state), _copy(grads)
    ids = [id(a) for a in (ps if isinstance(ps, list) else [ps])]
    st_ids = {b: [id(a) for a in (x if isinstance(x, list) else [x])] for b, x in st.items()}
    assert getattr(O, f"{name}_")(ps, gs, st, step, **hyper) is None
    assert [id(a) for a in (ps if isinstance(ps, list) else [ps])] == ids
    assert {b: [id(a) for a in (x if isinstance(x, list) else [x])] for b, x in st.items()} \
        == st_ids
    _assert_bitwise(ps, p1, f"{label}: params")
    for b in s1:
        _assert_bitwise(st[b], s1[b], f"{label}: state[{b!r}]")
    _assert_bitwise(gs, grads, f"{label}: grads must not change")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", OPTIMIZERS)
@given(data=st.data())
def test_inplace_equals_pure_bitwise(name, dtype, data, record):
    """One tensor, the catalog's cases: every flag combination torch allows, 0-d tensors,
    zero gradients, extreme hyper-parameters."""
    record.bind(f"{name}_", FAMILY, "in place = pure step, bit for bit", dtype, "cpu")
    case = data.draw(get(name).cases(np.dtype(dtype)), label="case")
    params, grads, state, step, hyper = _split(name, case)
    record.examples += 1
    _check_against_pure(name, params, grads, state, step, hyper, f"{name}_ {hyper}")


@pytest.mark.parametrize("name", OPTIMIZERS)
@given(data=st.data())
def test_inplace_list_equals_pure_bitwise(name, data, record):
    """Lists of 1-11 tensors of mixed shapes (the kernels take groups of 8), one set of
    hyper-parameters drawn from the catalog, float32 and float64 tensors mixed in one list."""
    record.bind(f"{name}_", FAMILY, "in place = pure step, bit for bit (lists)", None, "cpu")
    first = data.draw(get(name).cases(np.dtype(np.float32)), label="hyper")
    _, _, _, step, hyper = _split(name, first)
    n = data.draw(st.integers(1, 11), label="tensors")
    names = C._BUFFERS[name](hyper)
    ps, gs, sts = [], [], []
    for i in range(n):
        dtype = np.dtype(data.draw(st.sampled_from([np.float32, np.float64]), label=f"dt{i}"))
        # the catalog's tensor strategy with this call's buffers (second moments >= 0)
        elements = {b: C._nonneg(dtype, 100.0) if b in C._SECOND_MOMENTS else C._values(dtype)
                    for b in names}
        x = data.draw(C._tensors(dtype, elements), label=f"tensor {i}")
        ps.append(np.asarray(x["params"])), gs.append(x["grads"])
        sts.append({b: np.asarray(x[b]) for b in names})
    state = {b: [s[b] for s in sts] for b in C._BUFFERS[name](hyper)}
    record.examples += 1
    _check_against_pure(name, ps, gs, state, step, hyper, f"{name}_ {hyper}, {n} tensors")


FLAGS = {
    "sgd": [dict(lr=0.1), dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
            dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)],
    "adagrad": [dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, maximize=True)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1,
                                    maximize=True)],
    "adam": [dict(lr=0.01, amsgrad=True, weight_decay=0.01), dict(lr=0.01, maximize=True)],
    "adamw": [dict(lr=0.01, amsgrad=True, maximize=True)],
}


@pytest.mark.parametrize("step", [1, 9])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inplace_large_lists_equal_pure_bitwise(name, step):
    """Past the serial threshold (PARALLEL_MIN elements in all) and the work-item size: a
    tensor of several chunks plus a remainder, and 10 small ones (two groups of 8)."""
    rng = np.random.default_rng(17)
    shapes = [(3 * O._CHUNK + 5, 2), (7, 3), ()] + [(int(k),) for k in rng.integers(1, 50, 10)]
    params = [rng.standard_normal(s) for s in shapes]
    params[1] = params[1].astype(np.float32)  # a second dtype: a second kernel launch
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    for hyper in FLAGS[name]:
        state = _init_state(name, params, hyper)
        for arrs in state.values():
            for a in arrs:
                a[...] = np.abs(rng.standard_normal(a.shape))
        ours = {k: v for k, v in hyper.items() if k != "initial_accumulator_value"}
        _check_against_pure(name, params, grads, state, step, ours, f"{name}_ {hyper}")


def _guarded(a: np.ndarray, guard: int = 8):
    """``a``'s values in the middle of a larger array filled with sentinels, and that array."""
    base = np.full(a.size + 2 * guard, -12345.0, dtype=a.dtype)
    view = base[guard:guard + a.size].reshape(a.shape)
    view[...] = a
    return view, base


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inplace_touches_nothing_else(name):
    """Params and buffers are views into larger arrays: the memory around them keeps its
    sentinels; the gradients and everything not passed keep their values."""
    rng = np.random.default_rng(3)
    hyper = FLAGS[name][-1]
    ours = {k: v for k, v in hyper.items() if k != "initial_accumulator_value"}
    shapes = [(4, 5), (), (O._CHUNK + 3,)]
    ps, bases = zip(*(_guarded(rng.standard_normal(s)) for s in shapes), strict=True)
    ps, bases = list(ps), list(bases)
    gs = [rng.standard_normal(s) for s in shapes]
    state = {}
    for b, arrs in _init_state(name, ps, hyper).items():
        state[b] = []
        for a in arrs:
            view, base = _guarded(np.abs(rng.standard_normal(a.shape)))
            state[b].append(view)
            bases.append(base)
    before = [b.copy() for b in bases]
    g_before = [g.copy() for g in gs]
    (p1, _), _ = getattr(O, name)(ps, gs, state, 4, **ours)
    assert getattr(O, f"{name}_")(ps, gs, state, 4, **ours) is None
    for base, old in zip(bases, before, strict=True):
        assert np.array_equal(base[:8], old[:8]) and np.array_equal(base[-8:], old[-8:])
    _assert_bitwise(gs, g_before, "grads")
    _assert_bitwise(ps, p1, "params")
    assert all(p.base is not None for p in ps)  # still the views we gave


def test_inplace_accepts_any_gradient_layout():
    """Gradients are only read: a strided, Fortran-ordered, read-only or byte-swapped one is
    taken as its C-contiguous copy, as by the pure step."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal((6, 5))
    wide = rng.standard_normal((6, 10))
    ro = rng.standard_normal((6, 5))
    ro.flags.writeable = False
    for g in (wide[:, ::2], np.asfortranarray(rng.standard_normal((6, 5))), ro,
              rng.standard_normal((6, 5)).astype(">f8")):
        state = O.adam_init_state(p, amsgrad=True)
        _check_against_pure("adam", p, g, state, 3, dict(lr=0.1, amsgrad=True), "adam_")
    # read-only and writeable gradients in one list
    ps = [rng.standard_normal(3) for _ in range(3)]
    gs = [ro[0, :3], rng.standard_normal(3), ro[1, :3]]
    _check_against_pure("sgd", ps, gs, {}, 2, dict(lr=0.1), "sgd_")


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


INVALID_INPLACE = [
    ("a read-only param", lambda p, s: (_ro(p), s), ValueError, r"params.*writeable"),
    ("a read-only buffer", lambda p, s: (p, dict(s, exp_avg=_ro(s["exp_avg"]))), ValueError,
     r"state\['exp_avg'\].*writeable"),
    ("a strided param", lambda p, s: (np.repeat(p, 2)[::2], s), ValueError,
     r"params.*C-contiguous"),
    ("a Fortran-ordered buffer", lambda p, s: (p.reshape(2, 3), {
        k: (np.asfortranarray(a.reshape(2, 3)) if k == "exp_avg_sq" else a.reshape(2, 3).copy())
        for k, a in s.items()}), ValueError, r"state\['exp_avg_sq'\].*C-contiguous"),
    ("a float32 buffer for float64 params", lambda p, s: (p, dict(
        s, exp_avg=s["exp_avg"].astype(np.float32))), TypeError, r"state\['exp_avg'\].*dtype"),
    ("a buffer of another shape", lambda p, s: (p, dict(s, exp_avg=np.zeros(7))), ValueError,
     r"state\['exp_avg'\].*shape"),
    ("the same array as two buffers", lambda p, s: (p, dict(s, exp_avg_sq=s["exp_avg"])),
     ValueError, "distinct"),
    ("a buffer that is the param", lambda p, s: (p, dict(s, exp_avg=p)), ValueError, "distinct"),
    ("a numpy scalar param", lambda p, s: (np.float64(1.0), {
        k: np.zeros(()) for k in s}), TypeError, r"params.*numpy scalar"),
    ("an int param", lambda p, s: (np.arange(6), s), TypeError, r"params.*float32 or float64"),
    ("a missing buffer", lambda p, s: (p, {"exp_avg": s["exp_avg"]}), ValueError, "exp_avg_sq"),
    ("a list of buffers for one param", lambda p, s: (p, dict(s, exp_avg=[s["exp_avg"]])),
     ValueError, r"state\['exp_avg'\].*structure"),
]


@pytest.mark.parametrize(("what", "spoil", "error", "match"), INVALID_INPLACE,
                         ids=[c[0] for c in INVALID_INPLACE])
def test_inplace_rejects(what, spoil, error, match):
    """Bad arrays raise an error naming the argument, before anything is written."""
    p = np.linspace(-1.0, 1.0, 6)
    state = O.adam_init_state(p)
    params, state = spoil(p, state)
    grads = np.ones(np.shape(params))
    snapshot = [np.array(x, copy=True) for x in [params, *state.values()]]
    with pytest.raises(error, match=match):
        O.adam_(params, grads, state, 1, lr=0.1)
    for x, old in zip([params, *state.values()], snapshot, strict=True):
        assert np.array_equal(np.asarray(x), old), f"{what}: an array changed before the error"


def test_inplace_rejects_in_lists_and_bad_hyperparameters():
    ps = [np.ones(3), np.ones(2)]
    gs = [np.ones(3), np.ones(3)]
    with pytest.raises(ValueError, match=r"grads\[1\].*shape"):
        O.sgd_(ps, gs, {}, 1, lr=0.1)
    with pytest.raises(ValueError, match=r"grads.*structure"):
        O.sgd_(ps, gs[:1], {}, 1, lr=0.1)
    bufs = {"momentum_buffer": [np.zeros(3), np.zeros(2, np.float32)]}
    with pytest.raises(TypeError, match=r"state\['momentum_buffer'\]\[1\].*dtype"):
        O.sgd_(ps, [np.ones(3), np.ones(2)], bufs, 2, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\blr\b"):
        O.adamw_(ps[0], gs[0], O.adam_init_state(ps[0]), 1, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        O.sgd_(ps, [np.ones(3), np.ones(2)], {}, 1, lr=0.1, nesterov=True)
    assert all(np.array_equal(p, np.ones(p.shape)) for p in ps)


# ---------------------------------------------------------------------------------------------
# the in-place steps' float32 arithmetic (opmath="dtype")
#
# The bound: each float32 program of the kernels (reference/optim.py, _*_span32) is replayed
# here in float64 with a running error bound. A value carries (x, e): x the exact value of the
# formula (float64, from the float32 inputs and the float64 hyper-parameters) and e a bound on
# |computed float32 value - x|. With u = 2^-24 and eta = 2^-150 (the absolute rounding error of
# a subnormal float32 result), for computed inputs a^ = a + da (|da| <= ea), b^ likewise:
#   a^ + b^:  |da + db| + the rounding u |a^ + b^|          -> ea + eb + u(|a + b| + ea + eb)
#   a^ * b^:  |a db + b da + da db| + rounding              -> |a| eb + |b| ea + ea eb + u(...)
#   a^ / b^ (|b| > eb): |a^/b^ - a/b| = |b da - a db| / (|b| |b^|) <= (ea + |a/b| eb) / (|b| - eb)
#   sqrt(a^): |sqrt(a^) - sqrt(a)| = |da| / (sqrt(a^) + sqrt(a)) <= min(sqrt(ea), ea / sqrt(a))
#   max(a^, b^): max is 1-Lipschitz in each argument       -> max(ea, eb)
# plus eta per rounding; a hyper-parameter rounded to float32 starts with e = |fl32(h) - h|,
# and multiplying by an exact +-1 or 1 adds nothing. The "float64" step's result is x rounded
# once (to within far less than a float32 ulp: float64 errors are 2^-29 times smaller), so
#   |float32 step - float64 step| <= e (1 + 2^-20) + u |float64 step|.
# Where the bound is infinite (a quotient whose divisor's error reaches the divisor) or the
# float64 step is not finite, nothing is asserted.

_U, _ETA = 2.0 ** -24, 2.0 ** -150


class _Tracked:
    """A float64 array of exact values and a bound on the float32 program's error."""

    def __init__(self, x, e=0.0):
        self.x = np.asarray(x, np.float64)
        self.e = np.broadcast_to(np.asarray(e, np.float64), self.x.shape)

    @staticmethod
    def of(a):
        return a if isinstance(a, _Tracked) else _Tracked(a)

    def _round(self, x, e):
        return _Tracked(x, e + _U * (np.abs(x) + e) + _ETA)

    def __add__(self, other):
        o = _Tracked.of(other)
        return self._round(self.x + o.x, self.e + o.e)

    def __sub__(self, other):
        o = _Tracked.of(other)
        return self._round(self.x - o.x, self.e + o.e)

    def __mul__(self, other):
        o = _Tracked.of(other)
        return self._round(self.x * o.x, np.abs(self.x) * o.e + np.abs(o.x) * self.e
                           + self.e * o.e)

    def __truediv__(self, other):
        o = _Tracked.of(other)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = self.x / o.x
            room = np.abs(o.x) - o.e
            e = np.where(room > 0, (self.e + np.abs(q) * o.e) / room, np.inf)
        return self._round(q, e)

    def sqrt(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.sqrt(self.x)
            e = np.minimum(np.sqrt(self.e), np.where(r > 0, self.e / r, np.inf))
        return self._round(r, e)

    def max(self, other):
        o = _Tracked.of(other)
        return _Tracked(np.maximum(self.x, o.x), np.maximum(self.e, o.e))

    def exact_scale(self, factor: float):
        """times an exact +-1 or 1 (maximize; Adam's shrink): no rounding."""
        return _Tracked(self.x * factor, self.e)


def _h(value) -> _Tracked:
    """A hyper-parameter rounded to float32 once."""
    return _Tracked(value, abs(float(np.float32(value)) - value))


def _bound_program(name, hyper, step, p, g, st):
    """The float32 kernel's operations in order, tracked: {output name: _Tracked}."""
    p, g = _Tracked(p), _Tracked(g)
    st = {b: _Tracked(a) for b, a in st.items()}
    sg = -1.0 if hyper.get("maximize") else 1.0
    wd = hyper.get("weight_decay", 0.0)
    gi = g.exact_scale(sg)
    if name == "sgd":
        _, (first, lr, mu, damp, wd, nesterov, _) = O._sgd_scalars(
            step, hyper["lr"], hyper.get("momentum", 0.0), hyper.get("dampening", 0.0), wd,
            hyper.get("nesterov", False), False)
        gi = gi + _h(wd) * p if wd != 0.0 else gi
        if mu == 0.0:
            return {"params": p - _h(lr) * gi}
        bn = gi if first else _h(mu) * st["momentum_buffer"] + _h(1.0 - damp) * gi
        u = gi + _h(mu) * bn if nesterov else bn
        return {"params": p - _h(lr) * u, "momentum_buffer": bn}
    if name == "adagrad":
        clr, eps, _, _ = O._adagrad_scalars(step, hyper["lr"], hyper.get("lr_decay", 0.0), wd,
                                            hyper.get("eps", 1e-10), False)
        gi = gi + _h(wd) * p if wd != 0.0 else gi
        sn = st["sum"] + gi * gi
        return {"params": p - _h(clr) * (gi / (sn.sqrt() + _h(eps))), "sum": sn}
    if name == "rmsprop":
        alpha, eps = hyper.get("alpha", 0.99), hyper.get("eps", 1e-8)
        mu, lr = hyper.get("momentum", 0.0), hyper["lr"]
        gi = gi + _h(wd) * p if wd != 0.0 else gi
        sqn = _h(alpha) * st["square_avg"] + _h(1.0 - alpha) * gi * gi
        out, var = {"square_avg": sqn}, sqn
        if hyper.get("centered"):
            gan = _h(alpha) * st["grad_avg"] + _h(1.0 - alpha) * gi
            out["grad_avg"], var = gan, sqn - gan * gan
        den = var.sqrt() + _h(eps)
        if mu > 0.0:
            bn = _h(mu) * st["momentum_buffer"] + gi / den
            out["momentum_buffer"], out["params"] = bn, p - _h(lr) * bn
        else:
            out["params"] = p - _h(lr) * (gi / den)
        return out
    _, (lr, b1, b2, eps, wd, decoupled, amsgrad, _, c, k) = O._adam_scalars(
        step, hyper.get("lr", 1e-3), hyper.get("betas", (0.9, 0.999)), hyper.get("eps", 1e-8),
        hyper.get("weight_decay", 1e-2 if name == "adamw" else 0.0), hyper.get("amsgrad", False),
        False, name == "adamw")
    pi = p * _h(1.0 - lr * wd) if decoupled else p
    gi = gi + _h(wd) * pi if wd != 0.0 and not decoupled else gi
    mn = _h(b1) * st["exp_avg"] + _h(1.0 - b1) * gi
    vn = _h(b2) * st["exp_avg_sq"] + _h(1.0 - b2) * gi * gi
    out = {"exp_avg": mn, "exp_avg_sq": vn}
    vm = vn
    if amsgrad:
        vm = out["max_exp_avg_sq"] = st["max_exp_avg_sq"].max(vn)
    out["params"] = pi - _h(c) * mn / (vm.sqrt() / _h(k) + _h(eps))
    return out


def _f32_case(name, case):
    params, grads, state, step, hyper = _split(name, case)
    if name == "adamw":
        hyper.setdefault("weight_decay", 1e-2)
    return params, grads, state, step, hyper


@pytest.mark.parametrize("name", OPTIMIZERS)
@given(data=st.data())
def test_inplace_float32_arithmetic_within_its_error_bound(name, data, record):
    """opmath="dtype" on float32 tensors vs the float64-arithmetic step: within the forward
    error bound of the float32 program (derived above), element by element, every output."""
    record.bind(f"{name}_", FAMILY, "in place, float32 arithmetic: error bound", np.float32,
                "cpu")
    case = data.draw(get(name).cases(np.dtype(np.float32)), label="case")
    params, grads, state, step, hyper = _f32_case(name, case)
    bound = _bound_program(name, hyper, step, params, np.asarray(grads), state)
    ref_p, ref_s = params.copy(), _copy(state)
    getattr(O, f"{name}_")(ref_p, grads, ref_s, step, **hyper)
    got_p, got_s = params.copy(), _copy(state)
    getattr(O, f"{name}_")(got_p, grads, got_s, step, **hyper, opmath="dtype")
    record.examples += 1
    for label, got, ref in [("params", got_p, ref_p)] + [(b, got_s[b], ref_s[b]) for b in ref_s]:
        e = bound[label].e
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        sure = np.isfinite(e) & np.isfinite(ref64)
        with np.errstate(invalid="ignore"):
            ok = ~sure | (np.abs(got64 - ref64) <= e * (1 + 2.0 ** -20) + _U * np.abs(ref64))
        assert ok.all(), (f"{name}_ {hyper} step={step}: {label} off by "
                          f"{np.abs(got64 - ref64)[~ok]} > bound {e[~ok]} at {np.nonzero(~ok)}")
        assert got.dtype == np.float32


@pytest.mark.parametrize("name", OPTIMIZERS)
@given(data=st.data())
def test_inplace_float32_arithmetic_matches_torch(name, data, record):
    """opmath="dtype" against torch's float32 step (the catalog's twin) with the forward-parity
    tolerance, unchanged (the spec's case_tol: the default plus twice torch's own float32
    deviation on the case)."""
    spec = get(name)
    record.bind(f"{name}_", FAMILY, "in place, float32 arithmetic vs torch", np.float32, "cpu")
    case = data.draw(spec.cases(np.dtype(np.float32)), label="case")
    params, grads, state, step, hyper = _split(name, case)
    params, state = params.copy(), _copy(state)  # the case's arrays stay the twin's inputs
    getattr(O, f"{name}_")(params, grads, state, step, **hyper, opmath="dtype")
    want = twin_forward(spec, case)
    tol = spec.tolerance(np.dtype(np.float32), case=case)
    record.examples += 1
    for label, got, e in zip(["params", *state], [params, *state.values()], want, strict=True):
        compare(got, np.asarray(e), tol.rtol, tol.atol, label=f"{name}_ {label}",
                record=record, case=case.describe)


def twin_forward(spec, case):
    from suites import twin

    return twin.forward(spec, case, "cpu")


def test_opmath_is_checked():
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="opmath"):
        O.sgd_(p, p.copy(), {}, 1, lr=0.1, opmath="float32")
    assert (p == 1).all()
