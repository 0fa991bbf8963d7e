"""Input checks shared by the classical estimators (data matrices, labels, targets).

They build on ``_validate`` and add what fitting needs: a finite, non-empty sample matrix
``(n_samples, n_features)``, integer class labels ``0..C-1`` of the same length, float targets.
Every message names the argument, what was expected and what came.
"""

from __future__ import annotations

import numpy as np

from reference import _validate as v


def matrix(x, name: str, *, dtype: np.dtype | None = None, n_features: int | None = None,
           min_rows: int = 1) -> np.ndarray:
    """A C-contiguous float32/float64 ``(n_samples, n_features)`` array of finite values."""
    x = v.float_array(x, name, ndim=2, dtype=dtype)
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature (column), got shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} features (columns) like the fitted "
                         f"data, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf), got "
                         f"{int((~np.isfinite(x)).sum())} non-finite value(s)")
    return x


def class_labels(y, name: str, n_samples: int, *, n_classes: int | None = None) -> np.ndarray:
    """Integer class labels in ``[0, n_classes)``, one per sample, as C-contiguous int64."""
    if isinstance(y, np.ndarray) and y.dtype.kind == "f":
        raise TypeError(f"{name} must hold integer class labels 0..C-1, got dtype {y.dtype} "
                        f"(encode labels first, e.g. np.unique(y, return_inverse=True))")
    y = v.int_array(y, name, ndim=1)
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} must have one label per sample ({n_samples}), "
                         f"got {y.shape[0]}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {int(y.min())}")
    if n_classes is not None:
        v.labels(y, name, n_classes)
    return y


def targets(y, name: str, n_samples: int, dtype: np.dtype) -> np.ndarray:
    """Float regression targets, one per sample, of the data's dtype, finite."""
    y = v.float_array(y, name, ndim=1, dtype=dtype)
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} must have one target per sample ({n_samples}), "
                         f"got {y.shape[0]}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return y


def as_f64(x: np.ndarray) -> np.ndarray:
    """The float64 working copy of a float32 input (float64 inputs pass through, no copy)."""
    return x if x.dtype == np.float64 else x.astype(np.float64)
