"""Broadcast inputs reach the kernels writeable, so they compile no extra specialisation.

numba types an array's read-only flag: a read-only array compiles every kernel it reaches once
more (a cold compile costs seconds for the larger kernels). ``np.broadcast_to`` returns a
read-only view, and where it repeats no axis that view is already C-contiguous, so
``np.ascontiguousarray`` used to hand it on unchanged: BCE-with-logits' forward kernel had 12
compiled specialisations and the attention head kernel 13 after a cold run of the correctness
suite. These call each op with such a broadcast and assert that no kernel it reached was
compiled for a read-only array.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba.core import types

from reference import losses
from reference.attention import _core, sdpa


def _read_only_signatures(dispatcher) -> list:
    return [sig for sig in dispatcher.signatures
            if any(isinstance(t, types.Array) and not t.mutable for t in sig)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_broadcast_weights_reach_the_kernel_writeable(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5)).astype(dtype)
    t = rng.random((1, 5)).astype(dtype)
    w = rng.random(5).astype(dtype)  # (5,) -> (1, 5): a contiguous read-only view
    losses.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w)
    assert _read_only_signatures(losses._bcel_fwd) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sdpa_broadcast_inputs_reach_the_kernel_writeable(dtype):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 3, 4)).astype(dtype)
    k = rng.standard_normal((2, 3, 4)).astype(dtype)  # (2, 3, 4) -> (1, 2, 3, 4): no repeat
    sdpa.scaled_dot_product_attention(q, k, k)
    assert _read_only_signatures(_core._attn_fwd) == []
    assert _read_only_signatures(_core._attn_fwd_head) == []
