"""The harness proves itself: deliberately wrong implementations must be caught.

Each test swaps one piece of a real spec for a wrong one and asks Hypothesis to *find* a case
on which the generic check fails. ``find`` raises ``NoSuchExample`` if the check let every
case through, which fails the test: a check that cannot catch these bugs is worthless.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import find, settings
from hypothesis import strategies as st

from reference import activations as A
from suites import twin
from suites.catalog import get
from suites.catalog.spec import FLOAT32, FLOAT64, Case, Tol
from suites.catalog.strategies import seeds
from suites.correctness import checks
from suites.recording import CheckRecord, Mismatch, compare

SEARCH = settings(max_examples=300, derandomize=True, database=None, deadline=None)


def _caught(spec, dtype, check) -> Case:
    """Find a case on which ``check(spec, case, rng)`` raises Mismatch."""

    def fails(drawn) -> bool:
        case, rng = drawn
        try:
            check(spec, case, rng)
        except Mismatch:
            return True
        return False

    case, _ = find(st.tuples(spec.cases(dtype), seeds()), fails, settings=SEARCH)
    return case


def _gradient(spec, case, rng):
    checks.check_gradient(spec, case, rng, "cpu")


def _gradcheck(spec, case, rng):
    checks.check_gradcheck(spec, case, rng)


def _forward(spec, case, rng):
    checks.check_forward(spec, case, "cpu")


def _with_backward(name, backward):
    spec = dataclasses.replace(get(name), backward=backward)
    if backward in _KEEPING_X:  # a planted backward that reads x, which the real ctx lacks
        spec = dataclasses.replace(spec, forward=_KEEPING_X[backward])
    return spec


def _scaled(ctx, g):
    (dx,) = A.sigmoid_backward(ctx, g)
    return (dx * dx.dtype.type(1.01),)


def _dropped_term(ctx, g):
    # softmax backward without the "- sum_j g_j y_j" term
    return ((ctx.y * g).astype(ctx.y.dtype),)


def _transposed_sum(ctx, g):
    # the sum taken over the wrong axis (a transposed reduction), broadcast back
    wrong = 0 if ctx.axis != 0 else -1
    s = (g * ctx.y).sum(axis=wrong, keepdims=True)
    return ((ctx.y * (g - s)).astype(ctx.y.dtype),)


def _relu_one_at_zero(x, g):
    # the ctx is x itself (_relu_keeping_x): relu's own keeps only which branch each element took
    return (np.where(x >= 0, g, 0).astype(g.dtype),)


def _relu_keeping_x(x):
    return A.relu(x)[0], np.array(x, copy=True)


_KEEPING_X = {_relu_one_at_zero: _relu_keeping_x}


def _zeros(ctx, g):
    return (np.zeros_like(g),)


WRONG_BACKWARDS = [
    pytest.param("sigmoid", _scaled, id="backward scaled by 1.01"),
    pytest.param("softmax", _dropped_term, id="softmax backward with a dropped term"),
    pytest.param("softmax", _transposed_sum, id="softmax backward with a transposed sum"),
    pytest.param("relu", _relu_one_at_zero, id="relu'(0) = 1"),
    pytest.param("softmax", _zeros, id="softmax backward returning zeros"),
]


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@pytest.mark.parametrize(("name", "backward"), WRONG_BACKWARDS)
def test_gradient_parity_catches(name, backward, dtype):
    _caught(_with_backward(name, backward), dtype, _gradient)


def _first_scaled(name: str, by: float):
    backward = get(name).backward

    def wrong(ctx, *g):
        first, *rest = backward(ctx, *g)
        return (first * first.dtype.type(by), *rest)
    return wrong


def test_a_wider_tolerance_is_measured_only_for_a_miss_and_recorded_as_passed():
    asked = []

    def wider(i):
        asked.append(i)
        return Tol(rtol=0.0, atol=1e-3)

    tol = Tol(rtol=0.0, atol=1e-6, wider=wider)
    theirs = np.ones(3, np.float32)

    def judge(mine, record=None):
        checks._judge(mine, theirs, lambda: theirs.astype(np.float64), tol, "t", record,
                      Case({}, {}), lambda: [0.0], 0)

    judge(theirs + np.float32(1e-7))  # within tol: the wider one is never measured
    assert not asked
    rec = CheckRecord("t", "replay t")
    judge(theirs + np.float32(1e-4), rec)  # misses tol, within the wider one: passes
    assert asked == [0] and 0.0 < rec.worst <= 1.0, rec.worst
    assert rec.atol == 1e-3 and not rec.message
    with pytest.raises(Mismatch):
        judge(theirs + np.float32(1e-2))


@pytest.mark.parametrize("dtype", [FLOAT32, FLOAT64], ids=str)
@pytest.mark.parametrize("name", ["scaled_dot_product_attention", "transformer_encoder_layer"])
def test_measured_tolerance_catches_a_one_per_cent_error(name, dtype):
    # The attention family's tolerance is measured on each case, and it grows with the case's
    # conditioning (_attention_tools: the twin's float32 error and the move of one rounding in
    # the inputs); a backward 1% off in its first gradient must still fail.
    _caught(_with_backward(name, _first_scaled(name, 1.01)), dtype, _gradient)


@pytest.mark.parametrize(("name", "backward"), [
    p for p in WRONG_BACKWARDS if p.id != "relu'(0) = 1"  # a kink is not a gradcheck's business
])
def test_gradcheck_catches(name, backward):
    _caught(_with_backward(name, backward), FLOAT64, _gradcheck)


def _softmax_unshifted(x, axis=-1):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(x.astype(np.float64))
        return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype), None


def _sigmoid_float32_math(x):
    # computes in float16: loses digits a float32 reference must keep
    y = (1 / (1 + np.exp(-x.astype(np.float16)))).astype(x.dtype)
    return y, None


@pytest.mark.parametrize(("name", "forward"), [
    pytest.param("softmax", _softmax_unshifted, id="softmax without the max shift"),
    pytest.param("sigmoid", _sigmoid_float32_math, id="sigmoid in half precision"),
])
def test_forward_parity_catches(name, forward):
    spec = dataclasses.replace(get(name), forward=forward)
    _caught(spec, FLOAT32, _forward)


def test_invariant_catches_unnormalised_softmax():
    spec = dataclasses.replace(
        get("softmax"), forward=lambda x, axis=-1: (A.softmax(x, axis)[0] * 1.001, None))
    _caught(spec, FLOAT64, lambda s, case, rng: checks.check_invariants(s, case))


# -- the comparison itself ---------------------------------------------------------------------


def test_compare_rejects_zeros_below_atol():
    """A twin whose values are all below atol: plain allclose would accept zeros."""
    expected = np.array([3e-6, -2e-6, 1e-6], np.float32)
    with pytest.raises(Mismatch, match="all zeros"):
        compare(np.zeros(3, np.float32), expected, 1.3e-6, 1e-5, label="t")


def test_compare_accepts_matching_nan_and_inf():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    compare(a, a.copy(), 1e-7, 1e-7, label="t")


@pytest.mark.parametrize(("actual", "expected", "what"), [
    (np.array([np.nan]), np.array([1.0]), "NaN vs a number"),
    (np.array([np.inf]), np.array([1e300]), "inf vs a finite number"),
    (np.array([np.inf]), np.array([-np.inf]), "opposite infinities"),
    (np.ones(3, np.float32), np.ones(3), "dtype"),
    (np.ones(3), np.ones(4), "shape"),
])
def test_compare_rejects(actual, expected, what):
    with pytest.raises(Mismatch):
        compare(actual, expected, 1e-7, 1e-7, label=what)


def test_failure_message_is_actionable():
    rec = CheckRecord(nodeid="n", replay="python -m pytest 'n' --hypothesis-profile=ci")
    rec.bind("softmax", "activations", "gradient", FLOAT32, "cpu")
    actual = np.array([[1.0, 2.0], [3.0, 4.5]], np.float32)
    expected = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    with pytest.raises(Mismatch) as info:
        compare(actual, expected, 1.3e-6, 1e-5, label="softmax backward, float32",
                record=rec, case="x: float32[2, 2]")
    msg = str(info.value)
    for part in ("softmax backward, float32", "worst element [1, 1]", "4.5", "tolerance",
                 "case: x: float32[2, 2]", "replay: python -m pytest"):
        assert part in msg, f"{part!r} missing from: {msg}"
    assert rec.worst > 1 and rec.message == msg



def test_a_compile_past_its_deadline_is_not_timed(monkeypatch):
    """A twin inductor has not compiled after COMPILE_TIMEOUT_S is reported as not timed, with
    the reason, instead of stalling the run (polynomial_features once took over 17 minutes)."""
    import time

    from suites.performance import test_bench as tb

    monkeypatch.setattr(tb, "COMPILE_TIMEOUT_S", 0.2)
    calls = []

    def slow():
        calls.append(1)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 5.0:  # a compile that would take 5 s
            sum(range(1000))

    t0 = time.perf_counter()
    reason = tb._compile_first(slow, "one graph")
    # stopped well before the 5 s (the first torch._dynamo.reset() imports dynamo: ~2 s)
    assert time.perf_counter() - t0 < 4.5
    assert reason is not None and "had not compiled the twin after 0 s" in reason, reason
    assert calls == [1]  # not called again to warm it
    assert tb._compile_first(lambda: None, "one graph") is None  # a quick one is timed
    tb._COMPILE_TIMES.pop()


def test_the_case_is_described_only_when_a_comparison_fails():
    calls = []

    def describe():
        calls.append(1)
        return "x: float64[2] [1, 2]"

    compare(np.ones(2), np.ones(2), 1e-7, 0.0, label="ok", case=describe)
    assert calls == []
    with pytest.raises(Mismatch, match=r"case: x: float64\[2\] \[1, 2\]"):
        compare(np.ones(2), np.zeros(2), 1e-7, 0.0, label="bad", case=describe)
    assert calls == [1]


def test_compile_first_reports_a_twin_that_recompiles_every_call():
    """A compiled twin that dynamo compiles again on each call (torch.optim builds new objects
    per call) is not run, with that reason, instead of failing in the timed rounds."""
    import torch

    from suites.performance import test_bench as tb

    calls = []

    def recompiling():
        calls.append(torch._dynamo.eval_frame._stance.stance)
        if torch._dynamo.eval_frame._stance.stance == "fail_on_recompile":
            raise RuntimeError("Detected recompile when torch.compile stance is "
                               "'fail_on_recompile'. filename: 'x.py', function name: 'step', "
                               "line number: 1")

    reason = tb._compile_first(recompiling, "one graph")
    assert reason is not None and "compiles again on every call" in reason, reason
    assert "function name: 'step'" in reason
    assert calls == ["default", "default", "fail_on_recompile"]
    assert torch._dynamo.eval_frame._stance.stance == "default"  # put back
    assert tb._compile_first(lambda: None, "one graph") is None  # a steady twin is timed
    tb._COMPILE_TIMES.pop()


def _adagrad_case(params, grads, weight_decay):
    f = np.float32
    return Case({"params": np.array(params, f), "grads": np.array(grads, f),
                 "sum": np.array(0.0, f)},
                dict(step=1, lr=0.001, lr_decay=0.0, weight_decay=weight_decay, eps=1e-08,
                     maximize=False, initial_accumulator_value=0.0))


# Cases the dev profile found where torch's float32 step is inf in an intermediate and the true
# gradient is finite: Adagrad squares g_hat = 1e-4 * 3.9e-26 to 0 in float32 (sqrt'(0) = inf),
# AdamW's backward passes 3.4e38 on its way to -1.3e19.
FLOAT32_TWIN_OVERFLOWS = [
    pytest.param("adagrad", _adagrad_case(3.9270118e-26, 0.0, 1e-4), id="adagrad g_hat^2 = 0"),
    pytest.param("adamw_model", Case(
        {"params": np.zeros(2, np.float32), "grads": np.array([0, 1e-18], np.float32),
         "exp_avg": np.array([0, 1], np.float32), "exp_avg_sq": np.zeros(2, np.float32)},
        dict(step=1, sizes=(1, 1), lr=1.0, betas=(0.5, 0.99), eps=1e-10, weight_decay=0.0,
             amsgrad=False, maximize=False)), id="adamw past float32's max"),
]


@pytest.mark.parametrize(("name", "case"), FLOAT32_TWIN_OVERFLOWS)
def test_a_float32_twins_overflow_is_judged_in_float64(name, case):
    spec = get(name)
    outs, ctx = spec.run_forward(case)
    grads = checks.upstream(spec, outs, np.random.default_rng(0))
    mine = checks.present_gradients(spec, case, spec.run_backward(ctx, grads))
    present = dataclasses.replace(spec, grad_inputs=spec.grad_names(case))
    theirs = twin.gradients(present, case, "cpu", grads)
    pairs = zip(mine, theirs, strict=True)
    assert any(np.any(~np.isfinite(t) & np.isfinite(m)) for m, t in pairs), \
        "the float32 twin no longer overflows here: the case tests nothing"
    checks.check_gradient(spec, case, np.random.default_rng(0), "cpu")


def _adagrad_finite(ctx, g):
    # turns the inf and NaN of sqrt'(0) into zeros: wrongly finite
    return tuple(None if d is None else np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
                 for d in get("adagrad").backward(ctx, g))


def test_a_wrongly_finite_gradient_still_fails_against_the_float64_twin():
    spec = dataclasses.replace(get("adagrad"), backward=_adagrad_finite)
    with pytest.raises(Mismatch):
        checks.check_gradient(spec, _adagrad_case(0.0, 0.0, 0.0), np.random.default_rng(0),
                              "cpu")


def test_adams_backward_keeps_a_subnormal_first_moment():
    # float64, found by the dev profile: m = 5e-324 over v = 0. c dp m underflowed to 0 before
    # the division by den^2, and 0 / (2 sqrt 0) gave NaN where the derivative is +-inf (torch's
    # division backward divides by den twice first, as the reference now does)
    f = np.float64
    case = Case({"params": np.zeros(2, f), "grads": np.zeros(2, f),
                 "exp_avg": np.array([0.0, 5e-324]), "exp_avg_sq": np.zeros(2, f),
                 "max_exp_avg_sq": np.zeros(2, f)},
                dict(step=1, sizes=(1, 1), lr=0.001, betas=(0.9, 0.0), eps=1e-08,
                     weight_decay=0.0, amsgrad=True, maximize=False))
    checks.check_gradient(get("adam_model"), case, np.random.default_rng(0), "cpu")


def test_gradcheck_allows_for_the_rounding_of_its_moved_inputs(monkeypatch):
    # ridge_objective at its minimum: residual 1 - 1 = 0, objective ~ r^2 ~ 1e-8 at the step,
    # while rounding 1 + t v to float64 moves it by ~1e-20 (found by the dev profile; see
    # checks._input_rounding). Without that allowance the exact 0 of backward fails.
    spec = get("ridge_objective")
    case = Case({"X": np.zeros((1, 1)), "y": np.ones(1), "coef": np.zeros(1),
                 "intercept": np.array(1.0)}, {"alpha": 0.0})
    checks.check_gradcheck(spec, case, np.random.default_rng(0))
    monkeypatch.setattr(checks, "_input_rounding", lambda *args: 0.0)
    with pytest.raises(Mismatch):
        checks.check_gradcheck(spec, case, np.random.default_rng(0))


def test_a_branch_decided_by_rounding_is_judged_by_the_twins_own_moves():
    # MobileNet block, float64, found by the dev profile: a constant input and constant
    # depthwise weights make the outputs of channel 0 equal up to the order of their sums; batch
    # norm normalises that rounding (x_hat ~ 1e-13, its sign the summation order's) and adds a
    # bias of -3.1e-77 before ReLU6, so whether the gradient passes is decided by rounding. The
    # reference's sums tie (0 passes), torch's do not (-468 passes); moving the inputs by one ulp
    # flips torch's branch (conditioning.moves).
    f = np.float64
    case = Case({
        "x": np.full((1, 3, 4, 2), -2.5), "dw_weight": np.full((3, 1, 3, 3), -1 / 3),
        "bn1_weight": np.ones(3), "bn1_bias": np.array([-3.147368919463164e-77, 0.5, 0.5]),
        "bn1_running_mean": np.array([0.06286511054669665, -0.06605243164565094,
                                      0.32021132522164103]),
        "bn1_running_var": np.array([0.5165276355285291, 1.3132702392002724,
                                     1.4127555772777218]),
        "pw_weight": np.array([0.10888556549031268, -0.1144061675737378,
                               0.5546222844428438]).reshape(1, 3, 1, 1),
        "bn2_weight": np.ones(1), "bn2_bias": np.array([0.06286511054669665]),
        "bn2_running_mean": np.array([0.6520000225650686]),
        "bn2_running_var": np.array([1.2294965609839985])},
        dict(stride=3, training=True, momentum=0.1, eps=1e-05))
    assert all(a.dtype == f for a in case.inputs.values())
    spec = get("mobilenet_block")
    outs, ctx = spec.run_forward(case)
    grads = checks.upstream(spec, outs, np.random.default_rng(0))
    mine = checks.present_gradients(spec, case, spec.run_backward(ctx, grads))
    theirs = twin.gradients(spec, case, "cpu", grads)
    assert np.abs(mine[0] - theirs[0]).max() > 1.0, "the branch no longer differs: tests nothing"
    checks.check_gradient(spec, case, np.random.default_rng(0), "cpu")


def test_the_polynomial_twin_differentiates_where_a_product_underflows():
    # X = [1e-45, 0.5] in float32: x0 * x1 underflows to 0, and d(x0 x1)/dx0 = 0.5. The twin
    # built on Tensor.prod divided the product by each factor and said 0 (found by the dev
    # profile); the chain of products says 0.5, as the reference does.
    spec = get("polynomial_features")
    case = Case({"X": np.array([[1e-45, 0.5]], np.float32)}, {"degree": 2,
                                                               "include_bias": False})
    (dx,) = twin.gradients(spec, case, "cpu", (np.ones((1, 5), np.float32),))
    # outputs x0, x1, x0^2, x0 x1, x1^2: d/dx0 = 1 + 2 x0 + x1, d/dx1 = 1 + x0 + 2 x1
    assert dx[0, 0] == np.float32(1.5) and dx[0, 1] == np.float32(2.0)
    for seed in range(5):
        checks.check_gradient(spec, case, np.random.default_rng(seed), "cpu")
