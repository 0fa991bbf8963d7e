"""conv2d beyond the generic checks: the fast paths' side conditions, and ``input_grad``.

The generic strategy draws finite values. The kernels take shortcuts that hold only for finite
data (stride 1's "wide" column layout computes junk columns that must contribute exact zeros:
to dW when the input is finite, to dx when the weights are), so inf and NaN are checked here
against torch, position by position (``equal_nan``: a NaN where torch has a NaN, an inf of the
same sign where torch has one), on each path: generic im2col, depthwise and pointwise.
``input_grad=False`` must leave dW and db bit for bit what the full backward gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import conv as Cv
from reference import models as M

# (x shape, weight shape, params): generic 3x3 (wide layout), generic strided (narrow layout),
# depthwise (groups = C), generic 3x3 unpadded (junk columns wrap onto real pixels),
# pointwise
CASES = [
    ((2, 3, 6, 7), (4, 3, 3, 3), {"padding": 1}),
    ((2, 3, 7, 6), (4, 3, 3, 2), {"padding": 1, "stride": 2}),
    ((2, 3, 6, 7), (6, 1, 3, 3), {"padding": 1, "groups": 3}),
    ((2, 3, 6, 7), (4, 3, 3, 3), {"padding": 0}),
    ((2, 3, 6, 7), (4, 3, 1, 1), {}),
]


def _case(xs, ws, dtype, rng):
    return (rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype),
            rng.standard_normal(ws[0]).astype(dtype))


def _torch_grads(x, w, b, g, params):
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, **params)
    grads = torch.autograd.grad(y, (xt, wt, bt), torch.tensor(g, dtype=torch.float64))
    return y.detach().numpy(), [t.numpy() for t in grads]


def _same_nonfinite(got, want, what):
    got = got.astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions differ"
    assert np.array_equal(np.isposinf(got), np.isposinf(want)), f"{what}: +inf positions differ"
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{what}: -inf positions differ"
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-4, atol=1e-4, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["x", "weight"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("xs, ws, params", CASES)
def test_nonfinite_like_torch(xs, ws, params, value, where, dtype):
    rng = np.random.default_rng(1)
    x, w, b = _case(xs, ws, dtype, rng)
    target = x if where == "x" else w
    target.flat[rng.choice(target.size, 2, replace=False)] = value
    y, ctx = Cv.conv2d(x, w, b, **params)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = Cv.conv2d_backward(ctx, g)
    y_t, (dx_t, dw_t, db_t) = _torch_grads(x, w, b, g, params)
    assert np.isfinite(y_t).sum() < y_t.size  # the planted value reached the output
    for got, want, what in ((y, y_t, "y"), (dx, dx_t, "dx"), (dw, dw_t, "dW"),
                            (db, db_t, "db")):
        _same_nonfinite(got, want, what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, params", CASES)
def test_input_grad_false_keeps_dw_db(xs, ws, params, dtype):
    rng = np.random.default_rng(2)
    x, w, b = _case(xs, ws, dtype, rng)
    y, ctx = Cv.conv2d(x, w, b, **params)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = Cv.conv2d_backward(ctx, g)
    none, dw2, db2 = Cv.conv2d_backward(ctx, g, input_grad=False)
    assert none is None and dx is not None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_input_grad_must_be_bool():
    rng = np.random.default_rng(3)
    x, w, b = _case((1, 2, 4, 4), (3, 2, 3, 3), np.float64, rng)
    y, ctx = Cv.conv2d(x, w, b, padding=1)
    with pytest.raises(TypeError, match="input_grad"):
        Cv.conv2d_backward(ctx, np.ones_like(y), input_grad=1)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_model_backward_without_input_grad(model):
    """A classifier's backward with ``input_grad=False``: dx None, parameter gradients bit for
    bit those of the full backward (what ``train_step`` relies on)."""
    rng = np.random.default_rng(4)
    if model == "cnn":
        params = M.cnn_init(rng, (1, 8, 8), (4, 8, 8), 10, dtype=np.float32)
        x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    else:
        params = M.mlp_init(rng, (12, 7, 10), np.float32)
        x = rng.standard_normal((5, 12)).astype(np.float32)
    y = rng.integers(0, 10, 5)
    _, ctx = M.classifier_loss(model, x, y, params)
    # a random upstream scalar, not 1: a backward that ignored it would still agree with itself
    g = np.float32(rng.uniform(0.5, 2.0)).reshape(())
    (dx, _), grads = M.classifier_loss_backward(ctx, g)
    (none, _), grads2 = M.classifier_loss_backward(ctx, g, input_grad=False)
    assert none is None and dx.shape == x.shape
    for a, b in zip(grads, grads2, strict=True):
        np.testing.assert_array_equal(a, b)
