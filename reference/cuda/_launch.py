"""Launch geometry, device-array checks and the block reductions every kernel shares.

Geometry: kernels loop grid-stride (elements) or block-stride (rows, channels, tiles), so any
grid is correct; the grid is sized to fill the device (a few blocks per multiprocessor) and no
more. Blocks are ``threads()`` wide, a power of two up to ``MAX_THREADS`` (the size of the
shared reduction buffers). Under numba's simulator every simulated thread is a Python thread
(~0.3-1 ms each), so there blocks are ``SIM_THREADS`` wide and grids at most ``SIM_BLOCKS``:
the same code, with rows longer than a block reached at small sizes. Tests may change both.

Reductions: ``block_sum``/``block_max`` are shared-memory trees over the block (one value per
thread in, the block's result out to every thread), in float64, in a fixed order for a given
launch (results do not depend on timing).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from reference import _validate as v

MAX_THREADS = 256   # shared reduction buffers hold one float64 per thread
GPU_THREADS = 256
SIM_THREADS = 16
SIM_BLOCKS = 4
TILE = 16           # matrix-product tiles are TILE x TILE (shared buffers' size)
SIM_TILE = 4

FLOAT_DTYPES = v.FLOAT_DTYPES


def simulated() -> bool:
    """True under ``NUMBA_ENABLE_CUDASIM=1``."""
    return bool(getattr(cuda.config, "ENABLE_CUDASIM", 0))


def threads() -> int:
    n = SIM_THREADS if simulated() else GPU_THREADS
    if n & (n - 1) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"block width must be a power of two <= {MAX_THREADS}, got {n}")
    return n


def tile() -> int:
    return SIM_TILE if simulated() else TILE


_SM_COUNT: list[int] = []


def max_blocks() -> int:
    """Enough blocks to fill the device: 32 per multiprocessor (4 under the simulator)."""
    if simulated():
        return SIM_BLOCKS
    if not _SM_COUNT:
        _SM_COUNT.append(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return 32 * _SM_COUNT[0]


def grid(items: int, per_block: int = 1) -> int:
    """Blocks for ``items`` work items, ``per_block`` of them per block per loop trip."""
    return max(1, min(-(-items // per_block), max_blocks()))


# ---------------------------------------------------------------------------------------------
# device arrays in


def _fake_type():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"a host numpy.ndarray of dtype {x.dtype} (copy it with numba.cuda.to_device)"
    return type(x).__name__


def device_array(x, name: str):
    """``x`` as a numba device array sharing its memory, or TypeError naming ``name``."""
    if simulated():
        if isinstance(x, _fake_type()):
            return x
    else:
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        if isinstance(x, DeviceNDArray):
            return x
        if cuda.is_cuda_array(x):
            return cuda.as_cuda_array(x)
    raise TypeError(f"{name} must be a CUDA device array (__cuda_array_interface__: a numba "
                    f"device array, a torch CUDA tensor), got {_describe(x)}")


def _contiguous(x, name: str):
    if x.size and not x.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device, got strides {x.strides} "
                         f"for shape {x.shape} (make a contiguous copy first)")
    return x


def float_array(x, name: str, *, ndim=None, min_ndim: int = 0, dtype=None):
    """A C-contiguous float32/float64 device array, checked as ``_validate.float_array``."""
    x = device_array(x, name)
    dt = np.dtype(x.dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {dt}")
    if dtype is not None and dt != dtype:
        raise TypeError(f"{name} must have the same dtype as the input ({dtype}), got {dt}")
    v._check_ndim(x, name, ndim, min_ndim)
    return _contiguous(x, name)


def int_array(x, name: str):
    """A C-contiguous integer device array (class labels)."""
    x = device_array(x, name)
    if np.dtype(x.dtype).kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {np.dtype(x.dtype)}")
    return _contiguous(x, name)


def grad_like(grad, name: str, like):
    """An upstream gradient with the forward output's shape and dtype."""
    g = float_array(grad, name, dtype=np.dtype(like.dtype))
    if tuple(g.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the same shape as the forward output "
                         f"{tuple(like.shape)}, got {tuple(g.shape)}")
    return g


def flat(a):
    """A 1-d view of a C-contiguous device array (0-d and empty included)."""
    return a.reshape(a.size)


def empty(shape, dtype):
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))


_PLACEHOLDERS: dict = {}


def placeholder(dtype):
    """A one-element device array for an absent optional input (its flag says: not read)."""
    key = (np.dtype(dtype), simulated())
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = cuda.to_device(np.zeros(1, key[0]))
    return _PLACEHOLDERS[key]


def rows_of(shape, axis: int) -> tuple[int, int, int]:
    """(outer, n, inner) for a reduction along ``axis`` of a C-contiguous array."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


# ---------------------------------------------------------------------------------------------
# block reductions (device functions; every thread of the block must call them)


@cuda.jit(device=True, cache=True)
def block_sum(sh, value):
    """The sum over the block of each thread's float64 ``value``, returned to every thread."""
    t = cuda.threadIdx.x
    sh[t] = value
    cuda.syncthreads()
    k = cuda.blockDim.x // 2
    while k > 0:
        if t < k:
            sh[t] += sh[t + k]
        cuda.syncthreads()
        k //= 2
    total = sh[0]
    cuda.syncthreads()  # sh is free again for the next reduction
    return total


@cuda.jit(device=True, cache=True)
def block_max(sh, value):
    """The largest ``value`` over the block, NaN skipped (IEEE maxNum); -inf if all are NaN."""
    t = cuda.threadIdx.x
    sh[t] = value if value == value else -math.inf
    cuda.syncthreads()
    k = cuda.blockDim.x // 2
    while k > 0:
        if t < k and sh[t + k] > sh[t]:
            sh[t] = sh[t + k]
        cuda.syncthreads()
        k //= 2
    m = sh[0]
    cuda.syncthreads()
    return m
