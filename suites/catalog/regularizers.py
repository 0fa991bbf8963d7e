"""Specs of the weight penalties (L1 and L2, the latter with the factor 1/2)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from reference import regularizers as R
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import Case, Invalid, Invariant, Spec, elementwise_cost

FAMILY = "regularizers"
_STRENGTHS = [0.0, 1e-4, 0.01, 1.0, 2.5]

# Sizes from the pipeline issue: 64 elements, 65536 (256x256), 16.7M (4096x4096).
_SHAPES = {"small": (64,), "medium": (256, 256), "large": (4096, 4096)}


def _sizes():
    def builder(shape):
        return lambda dtype: Case({"w": S.normal(np.random.default_rng(0), shape, dtype)},
                                  {"lam": 0.01})

    return {k: builder(shape) for k, shape in _SHAPES.items()}


@st.composite
def _cases(draw, dtype):
    """Any shape (0-d and empty included), values up to 1e3 and exact zeros (L1's kink)."""
    shape = draw(S.shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    w = draw(S.arrays(dtype, shape, elements=st.one_of(S.stress(dtype, 1e3), st.just(0.0))))
    # Strengths from a list (0 included) or in [2^-20, 10]: a subnormal lam makes the penalty
    # itself subnormal, where the gradcheck's relative rounding model fails.
    return Case({"w": w}, {"lam": draw(st.one_of(st.sampled_from(_STRENGTHS),
                                                 st.floats(2.0**-20, 10.0)))})


def _off_zero(case: Case) -> Case:
    """Move weights within 1e-3 of L1's kink at 0 to +-0.5 (gradcheck only)."""
    w = case.inputs["w"].copy()
    near = np.abs(w) < 1e-3
    w[near] = np.where(np.signbit(w[near]), -0.5, 0.5)
    return Case({"w": w}, case.params)


def _nonnegative(case: Case, outs) -> None:
    assert outs[0] >= 0, f"penalty {outs[0]} < 0"


def _homogeneous(forward, degree: int) -> Invariant:
    """P(2 w) = 2^degree P(w), exactly: doubling is exact in binary floating point, so every
    partial sum doubles (or quadruples) exactly and the final rounding commutes with it; only
    a result in the subnormal range may round differently (by the smallest subnormal)."""

    def check(case: Case, outs) -> None:
        w = case.inputs["w"]
        doubled = forward(w * 2, **case.params)[0].astype(np.float64)
        expect = (2.0 ** degree) * outs[0].astype(np.float64)
        tiny = 2.0 ** degree * float(np.finfo(w.dtype).smallest_subnormal)
        assert abs(doubled - expect) <= tiny, f"P(2w) = {doubled!r}, 2^{degree} P(w) = {expect!r}"

    return Invariant(f"P(2w) = {2 ** degree} P(w)", check)


_INVALID = (
    Invalid("a list as w", lambda: Case({"w": [1.0, 2.0]}, {"lam": 1.0}), TypeError, r"\bw\b"),
    Invalid("an integer w", lambda: Case({"w": np.arange(3)}, {"lam": 1.0}), TypeError, r"\bw\b"),
    Invalid("a negative lam", lambda: Case({"w": np.ones(3)}, {"lam": -0.1}), ValueError, "lam"),
    Invalid("a NaN lam", lambda: Case({"w": np.ones(3)}, {"lam": float("nan")}), ValueError,
            "lam"),
    Invalid("a string lam", lambda: Case({"w": np.ones(3)}, {"lam": "0.1"}), TypeError, "lam"),
)

register(Spec(
    name="l1_penalty", family=FAMILY, summary="lam * sum |w|; derivative 0 at w = 0",
    forward=R.l1_penalty, backward=R.l1_penalty_backward, grad_inputs=("w",),
    torch=lambda w, lam: w.abs().sum() * lam,
    cases=_cases, sizes=_sizes(), cost=elementwise_cost(2, arrays_touched=1),
    smooth=_off_zero,
    invariants=(Invariant("penalty >= 0", _nonnegative), _homogeneous(R.l1_penalty, 1)),
    invalid=_INVALID,
))

register(Spec(
    name="l2_penalty", family=FAMILY, summary="lam / 2 * sum w^2 (gradient lam * w)",
    forward=R.l2_penalty, backward=R.l2_penalty_backward, grad_inputs=("w",),
    torch=lambda w, lam: (w * w).sum() * (0.5 * lam),
    cases=_cases, sizes=_sizes(), cost=elementwise_cost(2, arrays_touched=1),
    invariants=(Invariant("penalty >= 0", _nonnegative), _homogeneous(R.l2_penalty, 2)),
    invalid=_INVALID,
))
