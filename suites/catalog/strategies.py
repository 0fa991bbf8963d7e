"""Hypothesis building blocks shared by the specs.

Arrays stay small (the checks run thousands of them) and are drawn from values representable
in the target dtype, so float32 and float64 see the same kinds of edge: zeros, exact ties,
signed values, tiny and huge magnitudes when a spec asks for them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def _check_range(lo: float, hi: float) -> None:
    if not lo < hi:
        raise ValueError(f"strategy range needs lo < hi, got lo={lo}, hi={hi}")


def floats(dtype: np.dtype, lo: float = -10.0, hi: float = 10.0) -> st.SearchStrategy[float]:
    """Finite floats in [lo, hi], exactly representable in ``dtype``."""
    _check_range(lo, hi)
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.floats(lo, hi, width=width, allow_nan=False, allow_infinity=False)


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 7,
           ) -> st.SearchStrategy[tuple[int, ...]]:
    """Small shapes, including sides of 1 and odd, non-square sizes."""
    if min_dims > max_dims:
        raise ValueError(f"shapes needs min_dims <= max_dims, got {min_dims} > {max_dims}")
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def arrays(dtype: np.dtype, shape, lo: float = -10.0, hi: float = 10.0,
           elements: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``dtype`` with elements from ``elements`` (default: ``floats(dtype, lo, hi)``)."""
    if elements is None:
        elements = floats(dtype, lo, hi)
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


def stress(dtype: np.dtype, magnitude: float) -> st.SearchStrategy[float]:
    """Ordinary values mixed with values of size ``magnitude`` (large logits, saturation)."""
    big = st.sampled_from([magnitude, -magnitude, magnitude / 2, -magnitude / 3])
    return st.one_of(floats(dtype), big)


@st.composite
def seeds(draw) -> np.random.Generator:
    """A numpy Generator from a drawn seed: shrinks to seed 0, replays exactly."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def normal(rng: np.random.Generator, shape, dtype: np.dtype, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)
