"""Helpers the attention specs share (``attention``, ``attention_mha``, ``attention_encoder``):
the float32 tolerance measured on the twin, the builder of invalid cases, the projections and
masks of torch's multi-head attention, and its flop count.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from suites import conditioning, twin
from suites.catalog import get
from suites.catalog import strategies as S
from suites.catalog.spec import (
    FLOAT32,
    Case,
    Tol,
    case_dtype,
)
from suites.conditioning import MOVE, in_float64, max_error

FAMILY = "sequence"


# float32 tolerance: the oracle's own float32 rounding error on this case. Attention's float32
# error depends on the case far more than elementwise ops' (scores of size S = c |q||k| carry
# absolute errors ~ sqrt(E) u S that softmax turns into relative errors of the weights; layer
# norm divides by a row's spread, amplifying its input's errors by max|z| / std), and the
# worst-case bounds of that chain are 1e3-1e6 times what happens. So we measure instead: the
# twin in float32 against the twin in float64 (the exact answer to 1e-16 here) gives e, the
# float32 error torch itself makes on this case with the same operations. The reference rounds
# the same operations in the same precision (in other orders: BLAS blocking, float64 row sums),
# so |reference - twin| <= |reference - exact| + e, and we allow |reference - exact| <= 3e:
# DEFAULT_TOL (the spec's table) + 4e in all. The reference is thereby held to torch's own
# float32 accuracy on each case (within 3x), and the tolerance does not depend on the
# reference's output at all.
#
# But e is one draw of a random-looking error, and on an ill-conditioned case the twin can be
# lucky: a transformer encoder layer with d_model = 2 and a nearly constant row (layer norm's
# backward then multiplies its input's rounding errors by invstd up to 316) had the twin's dx
# off by 0.0038 and the reference's by 0.0166, while the float64 reference and twin agreed to
# 3e-11. Moving every float32 input by one unit roundoff u = 2^-24, signs at random, moved the
# exact dx by 0.0076-0.0174 over four draws: what rounding the inputs of one operation does,
# and what any backward-stable float32 evaluation can err by. So the scale the reference is held
# to is s = max(e, e_u), e_u the largest such move over ``conditioning.MOVES`` draws (a
# rounding error behaves like random signs, not like the worst case), and the
# tolerance is DEFAULT_TOL + e + 3 s. On well-conditioned cases e_u is about e and nothing
# changes; a wrong formula errs by O(1) relative, far above either.
#
# float64 has no more precise twin (e = 0), but the same conditioning: a generated LM with
# d_model = 1 (layer norm's output is then its bias whatever the input, every gradient through
# it exactly 0) and one Adam step with lr = 0.5, eps = 1e-8. The reference's gradients are exact
# zeros; torch's are noise of 3e-17 to 4e-16, which Adam's first step divides by |g| + eps and
# multiplies by lr, so the twin's new parameters move by up to 1.8e-7, past DEFAULT_TOL's 1e-7
# (found by the dev profile). Moving the float64 inputs by one ulp (2^-52 relative: a move of
# 2^-53 can round back to the input) moved the twin's output by the same 1.8e-7 in all of four
# draws. So float64 cases are held to DEFAULT_TOL + 3 e_u, e_u from that one-ulp move; on
# well-conditioned cases e_u is ~1e-16 and DEFAULT_TOL's 1e-7 decides alone.
#
# Two moves on every check cost CI's checks of these specs 37 s -> 98 s (on two
# workers), and they can only widen the tolerance: DEFAULT_TOL + 4e is given first and the
# moves are measured only for a comparison that misses it (``Tol.wider``). That wider
# tolerance takes e and e_u per output, so a gradient the moves shift far (dx of a nearly
# constant row) widens its own tolerance, not that of a well-conditioned one beside it.


def _oracle_tol(name: str):
    def tol(case: Case, upstream) -> Tol | None:
        dtype = case_dtype(case)
        if dtype not in MOVE:
            return None
        spec = get(name)
        if upstream is None:
            def run(c: Case):
                return twin.forward(spec, c, "cpu")
        else:
            spec = dataclasses.replace(spec, grad_inputs=spec.grad_names(case))
            up64 = tuple(g.astype(np.float64) for g in upstream)

            def run(c: Case):
                return twin.gradients(spec, c, "cpu", upstream if c is case else up64)
        exact = []
        if dtype == FLOAT32:  # per output: the twin's own float32 error e
            exact.append(run(in_float64(case)))
            errs = [max_error([g], [x]) for g, x in zip(run(case), exact[0], strict=True)]
        else:  # no more precise twin to measure float64's own error by
            errs = None
        base = ((spec.grad_tol or spec.tol) if upstream is not None else spec.tol)[dtype]
        cheap = Tol(rtol=base.rtol, atol=base.atol + 4.0 * max(errs or [0.0]))
        e_u = []

        def wider(i: int) -> Tol:  # e_u per output: more runs of the twin, only on a miss
            if not e_u:
                if not exact:
                    exact.append(run(in_float64(case)))
                e_u.extend(conditioning.moves(run, case, exact[0]))
            e = errs[i] if errs else 0.0
            s = max(e, e_u[i])
            return Tol(rtol=base.rtol, atol=max(cheap.atol, base.atol + e + 3.0 * s))

        return dataclasses.replace(cheap, wider=wider)

    return tol


def _with(make, **changes):
    def build():
        case = make()
        inputs, params = dict(case.inputs), dict(case.params)
        for k, val in changes.items():
            if k in inputs or k in ("attn_mask", "key_padding_mask", "src_key_padding_mask",
                                    "src_mask"):
                inputs[k] = val(inputs.get(k)) if callable(val) else val
            else:
                params[k] = val
        return Case(inputs, params)
    return build


def _projections(rng, embed, dtype, ff=None):
    k = 1.0 / math.sqrt(embed)
    ws = {"in_proj_weight": S.normal(rng, (3 * embed, embed), dtype, k),
          "in_proj_bias": S.normal(rng, (3 * embed,), dtype, 0.1),
          "out_proj_weight": S.normal(rng, (embed, embed), dtype, k),
          "out_proj_bias": S.normal(rng, (embed,), dtype, 0.1)}
    if ff is not None:
        ws.update({"linear1_weight": S.normal(rng, (ff, embed), dtype, k),
                   "linear1_bias": S.normal(rng, (ff,), dtype, 0.1),
                   "linear2_weight": S.normal(rng, (embed, ff), dtype, 1.0 / math.sqrt(ff)),
                   "linear2_bias": S.normal(rng, (embed,), dtype, 0.1),
                   "norm1_weight": (1.0 + S.normal(rng, (embed,), dtype, 0.2)).astype(dtype),
                   "norm1_bias": S.normal(rng, (embed,), dtype, 0.1),
                   "norm2_weight": (1.0 + S.normal(rng, (embed,), dtype, 0.2)).astype(dtype),
                   "norm2_bias": S.normal(rng, (embed,), dtype, 0.1)})
    return ws


def _masks(rng, kind, batch, heads, length, dtype, kpm_name, am_name, src_len=None,
           keep_first=True):
    """torch MHA masks (bool: True = masked) over ``src_len`` keys (default ``length``). With
    ``keep_first`` key 0 is never masked, so no query row is left with nothing to attend:
    there torch's MHA gives NaN with need_weights=True but zeros with need_weights=False and
    in its encoder layer (the reference gives zeros). Without it (when bias_k or the zero row
    add keys that no mask reaches) whole rows of the given keys may be masked."""
    src_len = length if src_len is None else src_len
    out = {}
    if kind == "none":
        return out
    if kind in ("bool", "both"):
        kpm = rng.random((batch, src_len)) < (0.3 if keep_first else 0.6)
    else:
        kpm = rng.standard_normal((batch, src_len)) * 2.0
        kpm[rng.random((batch, src_len)) < (0.2 if keep_first else 0.6)] = -np.inf
        kpm = kpm.astype(dtype)
    if keep_first:
        kpm[:, 0] = False if kpm.dtype == np.bool_ else 0.0
    out[kpm_name] = kpm
    if kind in ("both", "float"):
        shape = (length, src_len) if rng.random() < 0.5 else (batch * heads, length, src_len)
        if kind == "both":
            am = rng.random(shape) < 0.3
            if keep_first:
                am[..., 0] = False
        else:
            am = (rng.standard_normal(shape) * 2.0).astype(dtype)
            if keep_first:
                am[..., 0] = 0.0
            else:
                am[rng.random(shape) < 0.3] = -np.inf
        out[am_name] = am
    return out


def _mha_flops(batch, length, embed):
    return 2 * batch * length * embed * 4 * embed + batch * length * length * (4 * embed + 5)
