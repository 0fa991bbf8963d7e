"""Copies, fills and adds of 1-d views, as loops: what kernels use instead of slice assignment.

Numba's slice assignment (``a[i:j] = b[k:l]``) costs ~25 ns of bookkeeping a call (shape
checks, a possible-overlap test, a generic strided copy); these loops over views indexed from 0
cost ~5 and vectorise. It matters where a kernel makes thousands of short copies: conv2d's
im2col (the 144 rows of each 55-column block: 73 -> 15 us a sample of the medium forward), the
recurrent layers' per-step row copies.
"""

from __future__ import annotations

from reference._jit import kernel


@kernel()
def copy_row(dst, src):
    """``dst[:] = src`` (1-d views of one length)."""
    for k in range(dst.size):
        dst[k] = src[k]


@kernel()
def zero_row(dst):
    """``dst[:] = 0``."""
    for k in range(dst.size):
        dst[k] = 0


@kernel()
def add_row(dst, src):
    """``dst += src`` (1-d views of one length)."""
    for k in range(dst.size):
        dst[k] += src[k]
