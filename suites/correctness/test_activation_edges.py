"""relu and leaky_relu on the values Hypothesis' finite strategies do not reach, exactly as
torch: -inf, +inf, NaN, -0.0, +0.0, subnormals, huge values. The sign of a zero result is not
compared: torch 2.13 returns -0.0 for relu(-0.0) on an 11-element tensor, and which sign its
vectorised max gives depends on the operand order of the instruction; the reference returns +0.0.

relu(-inf) must be 0 (torch.relu clamps), while leaky_relu(-inf, 0) is NaN in torch
(``x * 0``); a relu written as leaky_relu with slope 0 returned NaN for -inf. Their backward
reads the branch mask kept by the forward; it must choose torch's branch at the same values,
NaN included (relu's gradient at NaN is dy, leaky_relu's is slope * dy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import activations as A
from reference.attention import encoder

EDGES = [-np.inf, np.inf, np.nan, -0.0, 0.0, -1e-40, 1e-40, -3.5, 2.25, -1e30, 1e30]


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    both_nan = np.isnan(ours) & np.isnan(theirs)
    return bool(np.all(both_nan | (ours == theirs)))  # -0.0 == +0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_edges_match_torch(dtype):
    x = np.array(EDGES, dtype)
    ours = A.relu(x)[0]
    theirs = torch.relu(torch.from_numpy(x)).numpy()
    assert ours[0] == 0 and not np.signbit(ours[0])  # relu(-inf) = +0
    assert _same(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("slope", [0.0, 0.01, 2.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaky_relu_edges_match_torch(dtype, slope):
    x = np.array(EDGES, dtype)
    ours = A.leaky_relu(x, slope)[0]
    theirs = torch.nn.functional.leaky_relu(torch.from_numpy(x), slope).numpy()
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), (ours, theirs)
    # float32: the reference rounds the float64 product x * slope once; torch multiplies by
    # float32(slope) in float32. The two differ by slope's rounding (<= 2^-24 relative) plus
    # one product rounding (<= 2^-24): rtol 2^-23; a subnormal result is off by at most one
    # subnormal step (2^-149). float64: the same double product, exact.
    rtol, atol = (2.0**-23, 2.0**-149) if dtype == np.float32 else (0.0, 0.0)
    ok = np.isnan(ours) | (ours == theirs) | np.isclose(ours, theirs, rtol=rtol, atol=atol)
    assert ok.all(), (ours, theirs)


@pytest.mark.parametrize("slope", [None, 0.0, 0.01, 2.0])  # None: relu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_gradients_at_the_edges_match_torch(dtype, slope):
    # Backward reads only the branch mask the forward kept: at NaN, both zeros and the
    # subnormals it must pick the branch torch picks (torch.relu's backward passes dy where the
    # output is not <= 0, NaN included; leaky_relu's where the input is > 0).
    x = np.array(EDGES, dtype)
    dy = np.random.default_rng(0).uniform(-2.0, 2.0, x.shape).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    if slope is None:
        y, ctx = A.relu(x)
        (dx,) = A.relu_backward(ctx, dy)
        torch.relu(xt).backward(torch.from_numpy(dy))
    else:
        y, ctx = A.leaky_relu(x, slope)
        (dx,) = A.leaky_relu_backward(ctx, dy)
        torch.nn.functional.leaky_relu(xt, slope).backward(torch.from_numpy(dy))
    theirs = xt.grad.numpy()
    assert not np.isnan(dx).any()
    # dy * slope: the float32 rounding of the forward's products above (rtol 2^-23; relu and
    # slope 1 or 0 are exact)
    rtol = 2.0**-23 if dtype == np.float32 else 0.0
    assert np.allclose(dx, theirs, rtol=rtol, atol=0.0), (dx, theirs)
    assert np.array_equal(dx == 0, theirs == 0), (dx, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encoder_relu_of_minus_inf_is_zero(dtype):
    pre = np.array([[-np.inf, np.nan, -0.0, 1.5]], dtype)
    out = np.empty_like(pre)
    encoder._act_drop(pre, False, np.zeros((1, 1), np.bool_), False, 1.0, out)
    assert _same(out, torch.relu(torch.from_numpy(pre)).numpy()), out
