"""The generic checks, as plain functions of (spec, case, ...).

The parametrized tests in this folder call them for every spec; the harness's own tests call
them with deliberately wrong specs and expect a ``Mismatch``. Nothing here knows any algorithm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from suites import conditioning, twin
from suites.catalog.spec import FLOAT64, Case, Spec, Tol, case_dtype
from suites.catalog.strategies import normal
from suites.conditioning import in_float64
from suites.recording import CheckRecord, Mismatch, compare


def upstream(spec: Spec, outs: tuple[np.ndarray, ...], rng: np.random.Generator):
    """A random upstream gradient for each differentiable output: never ones, never a sum."""
    return tuple(normal(rng, o.shape, o.dtype) for o in outs[: spec.n_diff_outputs])


# compare() fails a reference that is all zeros where the twin is not, even below atol: the
# guard against a backward that returns zeros. But some exact answers are zero (a constant
# slice normalized, layer norm over one value) and the twin's nonzeros are then its rounding.
# In that one situation the twin is re-run with every float input in float64; if it stays
# below ZERO_CONFIRM of the tolerance there, the exact answer is taken to be zero and the
# reference is compared with zeros. A true gradient that is merely small keeps its size in
# float64 and still trips the guard; a backward that wrongly returns zeros meets O(1) twin
# gradients on the other examples. (float64 twins' own noise reaches ~1e-13 = 1e-6 atol:
# torch's float64 layer norm of one value, measured.)
ZERO_CONFIRM = 1e-3


def _all_zero_against_noise(mine, theirs: np.ndarray) -> bool:
    return (isinstance(mine, np.ndarray) and mine.shape == theirs.shape and mine.size > 0
            and not np.any(mine) and bool(np.any(theirs != 0))
            and bool(np.all(np.isfinite(theirs))))


# A float32 twin can also overflow or underflow in an intermediate where the answer is finite:
# torch's float32 AdamW backward forms lr m / den^2 / (2 sqrt v) = 5e38 (past float32's 3.4e38)
# on its way to a gradient of -1.3e19, and says -inf; its float32 Adagrad squares g_hat = 4e-30
# to 0 and takes sqrt'(0) = inf where the true derivative is finite. The reference works in
# float64 and gets them right. Where a float32 twin is inf or NaN and the reference is not the
# same, the twin is re-run with every float input in float64 and its values (rounded to
# float32) replace the float32 twin's there, and only there. A reference that is wrongly
# finite meets the float64 twin's own inf or NaN and still fails.
def _twin_nonfinite(mine, theirs: np.ndarray) -> np.ndarray | None:
    """Where the float32 twin is inf or NaN and the reference is not the same; None if nowhere."""
    if not (isinstance(mine, np.ndarray) and mine.shape == theirs.shape
            and theirs.dtype == np.float32):
        return None
    odd = ~np.isfinite(theirs) & ~((mine == theirs) | (np.isnan(mine) & np.isnan(theirs)))
    return odd if np.any(odd) else None


def _zero_confirmed(value64: np.ndarray, atol: float) -> bool:
    return bool(np.all(np.abs(value64) <= ZERO_CONFIRM * atol))


def _once(compute):
    """``compute()``, run on the first call only (the float64 twin, needed by few checks)."""
    kept = []

    def get():
        if not kept:
            kept.append(compute())
        return kept[0]
    return get


def _settled(mine, theirs: np.ndarray, theirs64, atol: float) -> np.ndarray:
    """The twin's answer to compare with, after the two float64 re-runs above: zeros where
    its nonzeros are confirmed noise, the float64 twin's values where the float32 twin alone
    is inf or NaN. ``theirs64()`` gives the float64 twin's output (computed only if needed)."""
    if _all_zero_against_noise(mine, theirs) and _zero_confirmed(theirs64(), atol):
        return np.zeros_like(theirs)
    odd = _twin_nonfinite(mine, theirs)
    if odd is not None:
        return np.where(odd, theirs64().astype(theirs.dtype), theirs)
    return theirs


# A case can sit within one rounding of a place where the answer jumps or is ill-conditioned,
# and then neither side can be judged closer than that: a MobileNet block (float64) with a
# constant input (-2.5) and constant depthwise weights has depthwise outputs equal up to the
# order of their sums; batch norm normalises that rounding (x_hat ~ 1e-13, of rounding-decided
# sign) and adds a bias of -3.1e-77 before ReLU6, so whether the gradient passes the ReLU (it
# is -468 where it does) is decided by rounding: the reference's sums tie and it said 0, the
# twin's do not and it said -468 (found by the dev profile; test_harness has the case). Such a
# case is recognised by the twin itself: moving the inputs by one rounding
# (suites/conditioning.py) moves its answer as far. So a comparison that
# misses its tolerance is judged again with 3 e_u added, e_u the twin's largest move over
# ``MOVES`` moves of the inputs for that output (more twin runs, only on a miss). A wrong
# formula on a well-conditioned case still fails: there e_u is a few ulps.
def _judge(mine, theirs: np.ndarray, theirs64, tol: Tol, label: str,
           record: CheckRecord | None, case: Case, moves, i: int) -> None:
    """``compare`` the reference with the twin (``_settled``) under ``tol``; a miss is judged
    again under ``tol.wider(i)`` when the spec measures one, else under ``tol`` plus 3 e_u
    (``moves()[i]``, see above): a trial without the record first, so that a pass is recorded
    against the tolerance that passed it."""
    try:
        compare(mine, _settled(mine, theirs, theirs64, tol.atol), tol.rtol, tol.atol,
                label=label)
    except Mismatch:
        tol = tol.wider(i) if tol.wider is not None else Tol(tol.rtol,
                                                              tol.atol + 3.0 * moves()[i])
    compare(mine, _settled(mine, theirs, theirs64, tol.atol), tol.rtol, tol.atol, label=label,
            record=record, case=case.describe)


def check_forward(spec: Spec, case: Case, device: str, record: CheckRecord | None = None,
                  ) -> None:
    outs, _ = spec.run_forward(case)
    theirs = twin.forward(spec, case, device)
    dtype = case_dtype(case)
    if len(outs) != len(theirs):
        raise Mismatch(f"{spec.name} forward: reference gave {len(outs)} outputs, "
                       f"twin {len(theirs)}")
    tol = spec.tolerance(dtype, case=case)

    def run(c: Case):
        return twin.forward(spec, c, device)
    in64 = _once(lambda: run(in_float64(case)))
    moves = _once(lambda: conditioning.moves(run, case, in64()))
    for i, (mine, ref) in enumerate(zip(outs, theirs, strict=True)):
        label = f"{spec.name} forward, {dtype}, output {i + 1} of {len(outs)}, on {device}"
        _judge(mine, ref, lambda i=i: in64()[i], tol, label, record, case, moves, i)


def present_gradients(spec: Spec, case: Case, result: tuple) -> tuple[np.ndarray, ...]:
    """The reference's gradients of the inputs the case has; an optional input the case leaves
    out must get None, one it has must get an array."""
    kept = []
    for name, g in zip(spec.grad_inputs, result, strict=True):
        if name not in case.inputs:
            if g is not None:
                raise Mismatch(f"{spec.name} backward returned a gradient for {name!r}, which "
                               f"the case leaves out (expected None)")
            continue
        if g is None:
            raise Mismatch(f"{spec.name} backward returned None for {name!r}, which the case "
                           f"has\n  case: {case.describe()}")
        kept.append(g)
    return tuple(kept)


def check_gradient(spec: Spec, case: Case, rng: np.random.Generator, device: str,
                   record: CheckRecord | None = None) -> None:
    outs, ctx = spec.run_forward(case)
    grads = upstream(spec, outs, rng)
    mine = present_gradients(spec, case, spec.run_backward(ctx, grads))
    names = spec.grad_names(case)
    # The twin differentiates the inputs this case has (optional ones may be left out).
    present = dataclasses.replace(spec, grad_inputs=names)
    theirs = twin.gradients(present, case, device, grads)
    dtype = case_dtype(case)
    tol = spec.tolerance(dtype, grad=True, case=case, upstream=grads)
    n = len(names)
    up64 = tuple(g.astype(np.float64) for g in grads)

    def run(c: Case):
        return twin.gradients(present, c, device, up64)
    in64 = _once(lambda: run(in_float64(case)))
    moves = _once(lambda: conditioning.moves(run, case, in64()))
    for i, (name, m, t) in enumerate(zip(names, mine, theirs, strict=True)):
        label = (f"{spec.name} backward, {dtype}, gradient of {name!r} ({i + 1} of {n}), "
                 f"on {device}")
        _judge(m, t, lambda i=i: in64()[i], tol, label, record, case, moves, i)


# Central differences, in float64, of phi(t) = <g, f(x + t v)> against <grad, v>.
#
# Step: h = 1e-4 along a direction v ~ N(0, 1) per element (absolute, not relative: a relative
# step on logits of 1e4 would leave the region where the function is smooth). Richardson
# extrapolation of D(h) and D(h/2) cancels the h^2 error term, leaving O(h^4) ~ 1e-16 * f^(5).
# Tolerance: each phi(t) carries a rounding error of about k * eps * S with S = sum |g * f(x)|
# and k a small count of operations per output; D(h) then errs by ~ k * eps * S / h and the
# Richardson combination by ~ 3 k * eps * S / h. We allow k = 64 (a long reduction's worth),
# plus a relative 1e-6 of sum |grad * v| for the float64 error of the analytic side itself.
GRADCHECK_STEP = 1e-4
KINK_RETRY = 64
_EPS64 = float(np.finfo(np.float64).eps)


def _input_rounding(spec: Spec, case: Case, grads, directions, h: float) -> float:
    """What rounding the moved inputs x + t v to float64 can add to the differences at step h.

    ``phi``'s rounding allowance scales with its value S, but the moved inputs are themselves
    rounded, by up to eps/2 |x_i|, which moves phi by sum_i |d phi / d x_i| eps/2 |x_i|: far
    more than eps S where phi is small beside its inputs. ridge_objective at its minimum (X = 0,
    y = 1, intercept = 1: the residual 1 - 1 = 0, phi ~ r^2 ~ 1e-8 at the step) gave
    differences of 1.5e-17 against an allowance of 3.4e-21 and an exact 0 from backward
    (found by the dev profile). The gradient is taken at x +- h v (backward, twice: only
    for a disagreement that stands after the kink retry), doubled for its change over the
    step, times 3 for the Richardson combination (4 d2 - d1) / 3 of four values of phi."""
    worst = 0.0
    for t in (h, -h):
        moved = Case({name: (np.asarray(a + t * directions[name]) if name in directions else a)
                      for name, a in case.inputs.items()}, case.params)
        _, ctx = spec.run_forward(moved)
        parts = present_gradients(spec, moved, spec.run_backward(ctx, grads))
        worst = max(worst, sum(float(np.sum(np.abs(g.astype(np.float64) * moved.inputs[name])))
                               for name, g in zip(spec.grad_names(moved), parts, strict=True)))
    return 3 * 2 * 0.5 * _EPS64 * worst / h


def check_gradcheck(spec: Spec, case: Case, rng: np.random.Generator,
                    record: CheckRecord | None = None) -> None:
    if spec.smooth is not None:
        case = spec.smooth(case)
    outs, ctx = spec.run_forward(case)
    grads = upstream(spec, outs, rng)
    analytic_parts = present_gradients(spec, case, spec.run_backward(ctx, grads))
    names = spec.grad_names(case)
    directions = {name: normal(rng, case.inputs[name].shape, FLOAT64) for name in names}

    analytic = sum(float(np.sum(g.astype(np.float64) * directions[name]))
                   for name, g in zip(names, analytic_parts, strict=True))
    analytic_scale = sum(float(np.sum(np.abs(g.astype(np.float64) * directions[name])))
                         for name, g in zip(names, analytic_parts, strict=True))

    def phi(t: float) -> tuple[float, float]:
        moved = {name: (np.asarray(a + t * directions[name]) if name in directions else a)
                 for name, a in case.inputs.items()}
        outs_t, _ = spec.run_forward(Case(moved, case.params))
        terms = [g * o.astype(np.float64) for g, o in zip(grads, outs_t, strict=False)]
        return (sum(float(np.sum(x)) for x in terms),
                sum(float(np.sum(np.abs(x))) for x in terms))

    _, s0 = phi(0.0)

    def differences(h: float) -> tuple[float, float]:
        p1, s1 = phi(h)
        m1, _ = phi(-h)
        p2, _ = phi(h / 2)
        m2, _ = phi(-h / 2)
        d1 = (p1 - m1) / (2 * h)
        d2 = (p2 - m2) / h
        allowed = 3 * 64 * _EPS64 * max(s0, s1) / h + 1e-6 * analytic_scale
        return (4 * d2 - d1) / 3, allowed

    numeric, allowed = differences(GRADCHECK_STEP)
    diff = abs(numeric - analytic)
    if not diff <= allowed:
        # A kink within the step's reach (two max-pool inputs closer than the step moves them:
        # a hypothesis case met a gap of 5e-5) corrupts the differences of every step that
        # reaches it and of none shorter; a wrong gradient is wrong at every step. So a
        # disagreement is judged again at KINK_RETRY times shorter a step, with the same
        # rounding allowance formula (KINK_RETRY times wider: ~1e-10 of S in float64).
        step = GRADCHECK_STEP / KINK_RETRY
        numeric, allowed = differences(step)
        diff = abs(numeric - analytic)
        if not diff <= allowed:
            allowed += _input_rounding(spec, case, grads, directions, step)
    label = f"{spec.name} gradcheck (float64 central differences vs own backward)"
    if record is not None:
        rel = diff / abs(numeric) if numeric else (0.0 if diff == 0 else np.inf)
        # 0/0 (nothing allowed, nothing differs: an empty input) is 0 of the tolerance.
        worst = diff / allowed if allowed else (0.0 if diff == 0 else np.inf)
        record.observe(diff, rel, worst, 1e-6, allowed)
    if not np.isfinite(numeric) or not np.isfinite(analytic) or diff > allowed:
        msg = (f"{label}: directional derivative by differences {numeric!r}, by backward "
               f"{analytic!r}, |diff| {diff:.3g} > allowed {allowed:.3g}")
        msg += f"\n  case: {case.describe()}"
        if record is not None:
            msg += f"\n  replay: {record.replay}"
            record.message, record.case = msg, case.describe()
        raise Mismatch(msg)


def check_invariants(spec: Spec, case: Case, record: CheckRecord | None = None) -> None:
    outs, _ = spec.run_forward(case)
    for inv in spec.invariants:
        try:
            inv.check(case, outs)
        except AssertionError as err:
            msg = f"{spec.name} invariant '{inv.name}' broken: {err}\n  case: {case.describe()}"
            if record is not None:
                msg += f"\n  replay: {record.replay}"
                record.message, record.case = msg, case.describe()
            raise Mismatch(msg) from None
