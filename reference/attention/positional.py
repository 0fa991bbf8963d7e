"""The sinusoidal positional encoding of "Attention Is All You Need", as a table and added to
an input (PyTorch tutorial's ``PositionalEncoding`` without dropout).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from reference import _validate as v
from reference._jit import kernel

__all__ = ["sinusoidal_positional_encoding", "add_positional_encoding",
           "add_positional_encoding_backward"]


# ---------------------------------------------------------------------------------------------
# sinusoidal positional encoding


@kernel()
def _pe_table(length, d_model, log_base, out):
    for pos in range(length):
        for i in range(0, d_model, 2):
            angle = pos * math.exp(-i * log_base / d_model)
            out[pos, i] = math.sin(angle)
            if i + 1 < d_model:
                out[pos, i + 1] = math.cos(angle)


@functools.lru_cache(maxsize=32)
def _pe_cached(length: int, d_model: int, base: float, dtype: np.dtype) -> np.ndarray:
    out = np.empty((length, d_model))
    _pe_table(length, d_model, math.log(base), out)
    out = out.astype(dtype)
    out.flags.writeable = False  # shared between calls
    return out


def sinusoidal_positional_encoding(length: int, d_model: int, *, base: float = 10000.0,
                                   dtype=np.float64) -> np.ndarray:
    r"""The table of "Attention Is All You Need" (and PyTorch's tutorial), (length, d_model).

    .. math::
        PE_{p, 2i} = \sin(p\, \omega_i), \quad PE_{p, 2i+1} = \cos(p\, \omega_i), \quad
        \omega_i = \text{base}^{-2i / d}

    Computed in float64 and rounded once. An odd ``d_model`` ends with a sine column.
    Forward only: it has no input to differentiate.
    """
    n = v.integer(length, "length", lo=1)
    d = v.integer(d_model, "d_model", lo=1)
    b = v.real(base, "base", lo=1.0, lo_open=True)
    dt = np.dtype(dtype)
    if dt not in v.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return _pe_cached(n, d, b, dt).copy()


class PECtx(NamedTuple):
    shape: tuple
    dtype: np.dtype


def add_positional_encoding(x: np.ndarray, *, batch_first: bool = False,
                            base: float = 10000.0) -> tuple[np.ndarray, PECtx]:
    r"""``x + PE`` over the sequence axis (PyTorch tutorial's ``PositionalEncoding``, without
    dropout): x (L, B, E), or (B, L, E) with ``batch_first``. Backward is the identity:
    :math:`\bar x = \bar y`."""
    bf = v.boolean(batch_first, "batch_first")
    x = v.float_array(x, "x", ndim=3)
    length = x.shape[1] if bf else x.shape[0]
    if length == 0 or x.shape[2] == 0:
        raise ValueError(f"x must hold a sequence of length >= 1 and E >= 1, got {x.shape}")
    b = v.real(base, "base", lo=1.0, lo_open=True)
    pe = _pe_cached(length, x.shape[2], b, x.dtype)  # the table, computed once per shape
    y = x + (pe[None] if bf else pe[:, None])
    return y, PECtx(x.shape, x.dtype)


def add_positional_encoding_backward(ctx: PECtx, grad_out: np.ndarray) -> tuple[np.ndarray]:
    """``(dx,)`` = ``(dy,)``: adding a constant table is the identity's derivative."""
    v.ctx_of(ctx, PECtx, "add_positional_encoding")
    g = v.float_array(grad_out, "grad_out", dtype=ctx.dtype)
    if g.shape != ctx.shape:
        raise ValueError(f"grad_out must have the forward output's shape {ctx.shape}, "
                         f"got {g.shape}")
    return (g.copy(),)
