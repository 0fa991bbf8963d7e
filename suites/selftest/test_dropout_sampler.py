"""The library's dropout mask sampler, tested statistically, and the explicit-mask convention
tied to torch's own dropout.

``reference.layers.dropout_mask(rng, shape, p)`` must keep each entry independently with
probability 1 - p. The keep count of n entries is then Binomial(n, 1 - p): an exact binomial
test (``scipy.stats.binomtest``) rejects at level ALPHA, not a fixed band that is too loose
for large n and too tight for small. A power check shows the test, at this n, does catch a
sampler whose rate is off by half a percentage point. Seeds are fixed, so the tests are
deterministic; with a fresh seed each would fail with probability ALPHA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

from reference import layers as L

ALPHA = 1e-3
N = 200_000
SEED = 20_240_601


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(N,), (400, 500)], ids=["flat", "2-d (N, C)"])
def test_keep_rate_is_one_minus_p(p, shape):
    mask = L.dropout_mask(np.random.default_rng(SEED), shape, p)
    assert mask.dtype == np.bool_ and mask.shape == shape
    kept = int(mask.sum())
    result = binomtest(kept, mask.size, 1 - p)
    assert result.pvalue > ALPHA, (
        f"kept {kept} of {mask.size} (rate {kept / mask.size:.5f}) with p={p}: binomial test "
        f"p-value {result.pvalue:.3g} <= {ALPHA}")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("off", [-0.005, 0.005])
def test_the_binomial_test_has_power(p, off):
    """A sampler whose drop rate is off by 0.005 is rejected at this n (its standard error is
    at most 0.0011, so the shift is >= 4.5 of them): the test is not vacuous."""
    biased = np.random.default_rng(SEED).random(N) >= p + off
    result = binomtest(int(biased.sum()), biased.size, 1 - p)
    assert result.pvalue <= ALPHA, f"a bias of {off} went undetected (p-value {result.pvalue:.3g})"


def test_edges_are_exact():
    rng = np.random.default_rng(SEED)
    assert L.dropout_mask(rng, (1000,), 0.0).all(), "p = 0 must keep everything"
    assert not L.dropout_mask(rng, (1000,), 1.0).any(), "p = 1 must keep nothing"
    assert L.dropout_mask(rng, (), 0.5).shape == ()


def test_entries_are_independent_of_position():
    """Keep rates of the two halves and of even/odd positions agree (two-proportion z-test)."""
    mask = L.dropout_mask(np.random.default_rng(SEED + 1), (N,), 0.3)
    for a, b in ((mask[: N // 2], mask[N // 2:]), (mask[::2], mask[1::2])):
        pa, pb = a.mean(), b.mean()
        pooled = (a.sum() + b.sum()) / (a.size + b.size)
        z = (pa - pb) / np.sqrt(pooled * (1 - pooled) * (1 / a.size + 1 / b.size))
        assert abs(z) < 3.29, f"keep rates {pa:.4f} vs {pb:.4f} differ (z = {z:.2f})"  # 1e-3


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_explicit_mask_reproduces_torch_dropout(p):
    """torch's own F.dropout, its mask read off its output, equals our dropout with that mask:
    the explicit-mask twin (x * mask / (1 - p)) is torch's convention, not ours."""
    torch.manual_seed(0)
    x = torch.rand(64, 33, dtype=torch.float64) + 0.5  # no zeros, so y != 0 marks kept
    y = F.dropout(x, p, training=True)
    mask = (y != 0).numpy()
    ours, _ = L.dropout(x.numpy(), mask, p)
    np.testing.assert_allclose(ours, y.numpy(), rtol=4e-16, atol=0)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_explicit_mask_reproduces_torch_dropout2d(p):
    torch.manual_seed(1)
    x = torch.rand(8, 16, 3, 5, dtype=torch.float64) + 0.5
    y = F.dropout2d(x, p, training=True)
    mask = (y[:, :, 0, 0] != 0).numpy()
    assert np.array_equal(mask[:, :, None, None] * np.ones(x.shape, bool), (y != 0).numpy()), \
        "torch's dropout2d dropped part of a channel"
    ours, _ = L.dropout2d(x.numpy(), mask, p)
    np.testing.assert_allclose(ours, y.numpy(), rtol=4e-16, atol=0)
