"""Numba options for every kernel, in one place.

- ``cache=True``: a cold compile costs 0.1-1 s per kernel and signature; a cached load ~3 ms.
- ``error_model='numpy'``: division by zero gives inf/nan as numpy does instead of raising,
  which also lets loops containing a division vectorise.
- No blanket ``fastmath``: it assumes no NaN/inf and would change results at the edges a
  reference must get right. ``REDUCE`` is the one flag set allowed, on reductions only:
  ``reassoc`` lets a sum vectorise (a different but equally valid summation order) and
  ``contract`` allows fused multiply-add; NaN and inf still propagate.
"""

from __future__ import annotations

import numba

REDUCE = frozenset({"reassoc", "contract"})

# Below this many elements a kernel runs its serial loop: launching the thread pool costs
# ~2.5 us here, more than the whole loop takes on small inputs (measured: 64 floats, 0.9 us
# serial vs 3.2 us through prange).
PARALLEL_MIN = 1 << 16


def kernel(*, parallel: bool = False, reduce: bool = False):
    """Decorator for a private kernel: ``@kernel()`` or ``@kernel(parallel=True, reduce=True)``."""
    return numba.njit(
        cache=True,
        error_model="numpy",
        parallel=parallel,
        fastmath=set(REDUCE) if reduce else False,  # numba accepts a set, not a frozenset
    )


def inline():
    """Decorator for a scalar helper inlined into kernels (no call, vectorises with the loop)."""
    return numba.njit(inline="always", error_model="numpy", cache=True)
