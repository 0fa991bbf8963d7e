"""Input checks shared by every public reference function.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or value)
with a message that names the argument, says what was expected and what came, so a user
never meets a Numba typing error or a silent wrong answer. Checks are cheap: they run on
every call, including the small sizes where Python overhead is most of the time.

Arrays in any layout numpy has (slices, Fortran order, negative strides, read-only, the
non-native byte order) are accepted and given to the kernels as native C-contiguous copies,
so they give the answer of their C-contiguous copy.

Integer parameters (sizes, strides, paddings, counts) are refused above ``INT_MAX`` = 2^31 - 1:
no axis this library handles is that long, and a larger value would otherwise reach an
``OverflowError`` or a request for hundreds of GiB.

Backward contexts: every backward calls ``ctx_of(ctx, Type, "forward")`` first. Each forward
returns a context of its own type (a ``NamedTuple`` subclass per algorithm, made with
``ctx_type`` where several algorithms share a layout), so ``None``, a context of another
algorithm or any other object is refused with a TypeError naming ``ctx``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32, _F64 = FLOAT_DTYPES
_FLOATS = "float32 or float64"
INT_MAX = 2**31 - 1


def _native(x: np.ndarray) -> np.ndarray:
    """``x`` in the machine's byte order (a copy only for a byte-swapped array)."""
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def _kernel_ready(x: np.ndarray) -> np.ndarray:
    """``x`` C-contiguous and writeable: a copy only when it is not.

    numba types the read-only flag, so a read-only input (``np.broadcast_to``, a memory map,
    a frozen buffer) would compile every kernel it reaches once more for that type; in the
    bad-input battery's mixes of read-only inputs that was half of all compiled
    specialisations (550 of 1070). A private copy costs one pass over the array, and only for
    such inputs. The references never write into their inputs (the in-place optimizer steps
    check their arrays themselves and refuse read-only ones), so nothing else changes.
    """
    if not x.flags.c_contiguous:
        return np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def broadcast(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` broadcast to ``shape``, C-contiguous and writeable. ``np.broadcast_to`` returns a
    read-only view, and where no axis is repeated (equal shapes, or only axes of length 1
    added) that view is already C-contiguous, so ``np.ascontiguousarray`` hands it on read-only
    and the kernel it reaches compiles once more for that type (BCE's weights and the
    attention inputs did: 12 specialisations of one kernel where 4 are needed)."""
    return _kernel_ready(np.broadcast_to(x, shape))


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of dtype {x.dtype} and shape {x.shape}"
    return f"{type(x).__name__} {x!r}" if np.isscalar(x) else type(x).__name__


def float_array(
    x,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int = 0,
    dtype: np.dtype | None = None,
    allow_empty: bool = True,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 array, or raise naming ``name``.

    ``dtype``, when given, is the dtype ``x`` must share with an earlier argument.
    A numpy scalar (what arithmetic on a 0-d array returns) counts as a 0-d array.
    """
    d = x.dtype if type(x) is np.ndarray else None
    if d is _F32 or d is _F64:
        # the common case in a few attribute reads (the native float dtypes are singletons):
        # a plain ndarray of float32/float64, so only its layout is left to check
        f = x.flags
        if not (f.c_contiguous and f.writeable):
            x = _kernel_ready(x)
    else:
        if isinstance(x, np.generic):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of {_FLOATS}, got {_describe(x)}")
        if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
            raise TypeError(f"{name} must have dtype {_FLOATS}, got {x.dtype}")
        x = _kernel_ready(_native(x))
    if dtype is not None and x.dtype is not dtype and x.dtype != dtype:
        raise TypeError(f"{name} must have the same dtype as the input ({dtype}), got {x.dtype}")
    if ndim is not None or min_ndim:
        _check_ndim(x, name, ndim, min_ndim)
    if not allow_empty and x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def int_array(x, name: str, *, ndim: int | Sequence[int] | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous int64 array (class labels, indices), or raise."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {_describe(x)}")
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    _check_ndim(x, name, ndim, 0)
    if x.dtype.kind == "u" and x.size and x.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64, got {x.max()}")
    if x.dtype != np.int64 or not x.flags.c_contiguous or not x.flags.writeable:
        x = np.array(x, dtype=np.int64, order="C")  # keeps a 0-d array 0-d
    return x


def _check_ndim(x: np.ndarray, name: str, ndim, min_ndim: int) -> None:
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must be {want}-dimensional, got shape {x.shape}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}"
        )


def same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{b_name} must have the same shape as {a_name} {a.shape}, got {b.shape}"
        )


def grad_like(grad: np.ndarray, name: str, like: np.ndarray) -> np.ndarray:
    """Check an upstream gradient against the forward output it belongs to."""
    grad = float_array(grad, name, dtype=like.dtype)
    same_shape(like, "the forward output", grad, name)
    return grad


def real(value, name: str, *, lo: float = -math.inf, hi: float = math.inf,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real parameter within [lo, hi] (or open ends), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {v}")
    return v


def integer(value, name: str, *, lo: int | None = None, hi: int | None = INT_MAX) -> int:
    """An integer parameter within [lo, hi] (``hi`` defaults to ``INT_MAX``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def axis(value, name: str, ndim: int) -> int:
    """A numpy-style axis (negative counts from the end), normalised to [0, ndim)."""
    if ndim == 0:
        raise ValueError(f"{name} cannot be used on a 0-dimensional input")
    v = integer(value, name)
    if not -ndim <= v < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {v}")
    return v % ndim


def choice(value, name: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def labels(y: np.ndarray, name: str, n_classes: int, *, ignore_index: int | None = None) -> None:
    """Check that integer labels lie in [0, n_classes) (or equal ``ignore_index``)."""
    if y.size == 0:
        return
    valid = (y >= 0) & (y < n_classes)
    if ignore_index is not None:
        valid |= y == ignore_index
    if not valid.all():
        bad = y[~valid].flat[0]
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{name} must lie in [0, {n_classes}){extra}, got {bad}")


def bool_array(x, name: str, *, shape: Sequence[int] | None = None,
               like: str = "") -> np.ndarray:
    """Return ``x`` as a C-contiguous bool array (a dropout mask), or raise naming ``name``.

    ``shape``, when given, is the shape ``x`` must have; ``like`` names where it comes from.
    A numpy bool scalar counts as a 0-d array.
    """
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of bool, got {_describe(x)}")
    if x.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype bool (True = keep), got {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(int(d) for d in shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{like}, got {x.shape}")
    return _kernel_ready(x)


def int_tuple(value, name: str, n: int, *, lo: int | None = None,
              hi: int = INT_MAX) -> tuple[int, ...]:
    """An integer or a sequence of ``n`` integers (one per spatial dim: a stride, a padding),
    each in [lo, hi], as a tuple of ``n`` Python ints."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, tuple, list)):
        raise TypeError(f"{name} must be an integer or a sequence of {n} integers, "
                        f"got {_describe(value)}")
    items = [value] * n if isinstance(value, (int, np.integer)) else list(value)
    if len(items) != n:
        raise ValueError(f"{name} must be an integer or a sequence of {n} integers, "
                         f"got {len(items)} values {value!r}")
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"{name} must hold integers, got {_describe(item)} in {value!r}")
        if lo is not None and item < lo:
            raise ValueError(f"{name} must be at least {lo}, got {value!r}")
        if item > hi:
            raise ValueError(f"{name} must be at most {hi}, got {value!r}")
        out.append(int(item))
    return tuple(out)


def boolean(value, name: str) -> bool:
    """A flag (``training``, ``ceil_mode``): a Python or numpy bool, nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


def ctx_type(base: type, name: str, forward: str) -> type:
    """A context type of its own for ``forward``, with ``base``'s fields (a NamedTuple).

    Algorithms that save the same things (the elementwise activations, the pointwise losses)
    share a layout but not a type, so one's backward refuses the other's context.
    """
    cls = type(name, (base,), {"__slots__": (), "__doc__": f"What {forward}() keeps for its "
                               f"backward ({base.__name__}'s fields).",
                               "__module__": base.__module__})
    return cls


def ctx_of(ctx, cls: type, forward: str):
    """Check that ``ctx`` is the context ``forward`` returned (an instance of exactly ``cls``)."""
    if type(ctx) is not cls:
        raise TypeError(f"ctx must be the context returned by {forward}() (a {cls.__name__}), "
                        f"got {_describe(ctx) if ctx is not None else 'None'}")
    return ctx


def grad_out_tuple(grad_out, n: int, names: str):
    """A backward's upstream gradient for ``n`` outputs: a tuple or list of ``n`` entries."""
    if not isinstance(grad_out, (tuple, list)) or len(grad_out) != n:
        got = (f"a sequence of {len(grad_out)}" if isinstance(grad_out, (tuple, list))
               else _describe(grad_out))
        raise TypeError(f"grad_out must be a tuple {names}, got {got}")
    return tuple(grad_out)


def keep(x: np.ndarray, given) -> np.ndarray:
    """``x`` (a checked version of the caller's ``given``) as an array the ctx may keep.

    A backward must not see a caller's later in-place edits (torch refuses such a backward
    through its version counter): when the check returned the caller's own array, the ctx
    keeps a private copy; a copy the check already made is kept as it is.
    """
    if isinstance(given, np.ndarray) and np.may_share_memory(x, given):
        return x.copy()
    return x


def empty(shape: tuple[int, ...], dtype, blame: str) -> np.ndarray:
    """``np.empty(shape, dtype)`` for an output whose size the parameters in ``blame`` set
    (a padding, a length): a size no machine can allocate is a ValueError naming them, not a
    MemoryError asking for hundreds of GiB."""
    try:
        return np.empty(shape, dtype)
    except (MemoryError, ValueError, OverflowError):
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        raise ValueError(f"{blame} would make an output of shape {tuple(shape)} "
                         f"({nbytes / 2**30:.3g} GiB), more than can be allocated") from None
