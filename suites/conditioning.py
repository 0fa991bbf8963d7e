"""How far the exact answer moves when a case's inputs move by one rounding.

A float evaluation of a backward-stable algorithm errs by about what one rounding of its
inputs does to the exact answer. Where that is large (an ill-conditioned case: a layer norm of a
nearly constant row, Adam's first step on gradients that are rounding noise, a ReLU whose input
is zero up to rounding), no reference can be held closer to the twin than that. ``moved``
moves every float input by one unit roundoff of its dtype (float32: 2^-24 relative, applied in
float64; float64: one ulp, 2^-52, since a move of 2^-53 can round back to the input), signs
at random; running the twin (in float64) on such moves and comparing with its answer at the
case measures that scale (``max_error``). Rounding errors behave like random signs rather than
like the worst case, and ``MOVES`` draws make a lucky small one unlikely: where a rounding
decides a branch (the sign of a difference of two equal sums), each move flips it with
probability 1/2, so eight draws all miss it with probability 1/256 (two draws missed it on
the MobileNet case in ``checks``). The moves are measured only for a comparison that fails
its first tolerance, so their cost does not count.
"""

from __future__ import annotations

import numpy as np

from suites.catalog.spec import FLOAT32, FLOAT64, Case

MOVES = 8
MOVE = {FLOAT32: float(np.finfo(FLOAT32).eps) / 2, FLOAT64: float(np.finfo(FLOAT64).eps)}


def in_float64(case: Case) -> Case:
    """``case`` with its float inputs in float64 (masks and integer inputs as they are)."""
    return Case({k: (a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                     else a)
                 for k, a in case.inputs.items()}, case.params)


def moved(case: Case, seed: int) -> Case:
    """``case`` in float64 with every float input moved by ``MOVE`` of its dtype (relative),
    signs drawn from ``seed`` (masks and integer inputs as they are)."""
    rng = np.random.default_rng(seed)
    return Case({k: (a.astype(np.float64) * (1.0 + MOVE[a.dtype] * rng.choice([-1.0, 1.0],
                                                                                a.shape))
                     if isinstance(a, np.ndarray) and a.dtype in MOVE else a)
                 for k, a in case.inputs.items()}, case.params)


def max_error(got, exact) -> float:
    """The largest absolute difference over the finite elements of outputs paired in order."""
    worst = 0.0
    for a, e in zip(got, exact, strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        finite = np.isfinite(a) & np.isfinite(e)
        if finite.any():
            worst = max(worst, float(np.max(np.abs(a[finite] - e[finite]))))
    return worst


def moves(run, case: Case, exact) -> list[float]:
    """Per output, the largest move of ``run``'s outputs (the twin, in float64) over ``MOVES``
    moves of ``case``'s inputs, against ``exact`` (``run`` at ``in_float64(case)``). A move the
    twin refuses (a probability moved past 1, say) counts for nothing: the question asked
    (does a rounding of the inputs move the answer this far?) has no answer there, and the
    miss that asked it stands."""
    runs = []
    for seed in range(MOVES):
        try:
            runs.append(run(moved(case, seed)))
        except Exception:  # noqa: BLE001 - see above
            continue
    return [max((max_error([r[i]], [exact[i]]) for r in runs), default=0.0)
            for i in range(len(exact))]
