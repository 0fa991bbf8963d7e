"""Matrix products for kernels that make many of them in a loop, on one thread where they are small.

Two libraries make the products. Where Intel's MKL is installed (the ``mkl`` wheel, a
dependency on x86-64 Linux), every product that runs on the calling thread goes to its
``cblas_?gemm`` with MKL's sequential layer: no thread pool at all. On the shapes these kernels
make it is as fast as the MKL inside torch and 1.2-1.5x faster than SciPy's OpenBLAS (measured
on one core of an AVX-512 Xeon, float32: (32 x 128) @ (128 x 512) 28 us vs 41 us, (8192 x 144)
@ (144 x 32) 0.47 ms vs 0.70 ms). MKL is called through its C symbols, registered with LLVM by
name, so kernels that call it still cache. A large product (over ``THREADED_MNK``) is cut into
row blocks, each one sequential MKL call, shared among Numba's threads: no BLAS thread pool
runs beside Numba's and torch's (OpenBLAS's spinning threads had made torch's timings of the
RNNs, linear layers and MLPs up to 20x slower). Without MKL (another platform) the products go
to ``np.dot``, i.e. SciPy's OpenBLAS: in row blocks small enough to stay on the calling thread,
or whole on its threads when large.

OpenBLAS (SciPy's, which ``np.dot`` calls inside Numba) splits a product over its threads once
``m * n * k`` exceeds 2^18 (``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``). For the
products of a recurrence step or of one attention head (e.g. (128 x 32) @ (32 x 128)) waking
and joining the threads costs more than they save, and when the other core is busy they stall
(measured here, 64 heads of (128 x 32) @ (32 x 128): 1.7 ms on one thread, 2.5 ms on two on
an idle machine, 13.8 ms on a loaded one). Large products (all time steps at once, weight
gradients, a step of a large network) use every core.

Products made in Python code between kernels call ``dot_serial`` too, never NumPy's ``np.dot``
or ``@``: NumPy's wheel bundles a second OpenBLAS (64-bit indices) with a thread pool of its
own, whose threads spin for a while after a call and fight this one's for the cores. Measured on
2 cores, an LSTM forward + backward (medium) whose input product went through NumPy: 19.5 ms in
a loop; either pool held to one thread: 7.3-7.8 ms (a test scans reference/ for such products).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import sys

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from reference._jit import kernel

SERIAL_MNK = 1 << 18  # OpenBLAS runs a product on one thread when m * n * k <= this
# Above this many multiply-adds (~50 us on one core) threads pay for themselves: the product
# goes to np.dot whole. (LSTM hidden 512, batch 64: one step is 2^26 and runs 2.5x faster
# threaded on an idle machine.)
THREADED_MNK = 1 << 22
# With MKL a threaded product is cut into row blocks of about this many multiply-adds (at
# least two blocks, at most ``MAX_BLOCKS_PER_THREAD`` per Numba thread). Each block packs all
# of b again, so blocks must stay large: measured on 2 cores, float32, (512 x 1024) @ (1024 x
# 128)^T: 2 blocks 0.43 ms, 4 0.49, 16 0.86, against 0.52 for OpenBLAS's own two threads.
BLOCK_MNK = 1 << 24
# Without the cap a (1024 x 1024) @ (1024 x 1024) linear layer made 64 blocks of 16 rows:
# 34 ms against torch's 14; with 2 blocks 13.6 ms, 4 13.4, 8 13.7, 16 16.0. Fewer blocks for
# every product (one per thread) was tried too: the MobileNet block's forward went from 0.85
# and 0.93 to 1.24 and 1.24 of torch's time (two alternated runs), so the rule stands below
# the cap.
MAX_BLOCKS_PER_THREAD = 4
# A constant, not numba.get_num_threads() inside the kernel: a kernel calling that is not
# cached (every caller of dot_serial would compile again in each process).
_MAX_BLOCKS = MAX_BLOCKS_PER_THREAD * max(1, numba.config.NUMBA_NUM_THREADS)

_SEQUENTIAL = 1  # MKL_THREADING_SEQUENTIAL
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT32_MAX = (1 << 31) - 1  # cblas takes 32-bit sizes (MKL's LP64 interface)


def _load_mkl() -> str | None:
    """Load MKL's single runtime library with its sequential layer and register its two
    ``cblas_?gemm`` symbols with LLVM; the library's version, or None where it is missing or
    ``REFBENCH_BLAS=openblas`` asks for SciPy's OpenBLAS alone (to compare the two)."""
    if os.environ.get("REFBENCH_BLAS", "").lower() == "openblas":
        return None
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None
    try:
        files = importlib.metadata.files("mkl") or []
        version = importlib.metadata.version("mkl")
    except importlib.metadata.PackageNotFoundError:
        return None
    paths = [f.locate() for f in files if f.name.startswith("libmkl_rt.so")]
    if not paths:
        return None
    # RTLD_LOCAL: MKL's symbols reach only the kernels (through LLVM), never interpose on the
    # BLAS symbols of other libraries in the process.
    lib = ctypes.CDLL(str(paths[0]), mode=ctypes.RTLD_LOCAL)
    lib.MKL_Set_Threading_Layer(ctypes.c_int(_SEQUENTIAL))
    for name in ("cblas_sgemm", "cblas_dgemm"):
        llvm.add_symbol(name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    return version


MKL_VERSION = _load_mkl()
HAVE_MKL = MKL_VERSION is not None
# Kernels compiled with one backend must not be loaded from the cache by a process with the
# other (reference._jit adds this to the cache directory's digest).
CACHE_SALT = f"mkl-{MKL_VERSION}" if HAVE_MKL else "openblas"
BACKEND = (f"MKL {MKL_VERSION} (sequential; large products in row blocks on Numba's threads)"
           if HAVE_MKL else "OpenBLAS")


@intrinsic
def _cblas_gemm(typingctx, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
    """``c = op(a) @ op(b)`` by ``cblas_sgemm``/``cblas_dgemm``, row major; ``op`` transposes
    where ``trans_*`` is true. Leading dimensions in elements."""
    dt = c.dtype if isinstance(c, types.Array) else None
    if dt not in (types.float32, types.float64) or a.dtype != dt or b.dtype != dt:
        return None

    def codegen(context, builder, sig, args):
        fl = ir.FloatType() if dt == types.float32 else ir.DoubleType()
        i32 = ir.IntType(32)
        ptr = ir.PointerType(fl)
        fnty = ir.FunctionType(ir.VoidType(), [i32] * 6 + [fl, ptr, i32, ptr, i32, fl, ptr, i32])
        name = "cblas_sgemm" if dt == types.float32 else "cblas_dgemm"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        ta, tb, mm, nn, kk, aa, la, bb, lb, cc, lc = args

        def flag(v):
            return builder.select(builder.icmp_unsigned("!=", v, v.type(0)), i32(_TRANS),
                                  i32(_NO_TRANS))

        def int32(v):
            return builder.trunc(v, i32)

        def data(ty, v):
            return context.make_array(ty)(context, builder, v).data

        builder.call(fn, [i32(_ROW_MAJOR), flag(ta), flag(tb), int32(mm), int32(nn), int32(kk),
                          fl(1.0), data(sig.args[5], aa), int32(la), data(sig.args[7], bb),
                          int32(lb), fl(0.0), data(sig.args[9], cc), int32(lc)])
        return context.get_dummy_value()

    sig = types.none(types.boolean, types.boolean, types.intp, types.intp, types.intp, a,
                     types.intp, b, types.intp, c, types.intp)
    return sig, codegen


@kernel()
def _lead(outer, inner, s_outer, s_inner, item):
    """Leading dimension (elements) of a matrix stored with unit stride along ``inner`` items
    and stride ``s_outer`` bytes along ``outer`` ones; -1 when it is not stored so."""
    if inner > 1 and s_inner != item:
        return -1
    if outer <= 1:
        return max(inner, 1)
    if s_outer % item != 0 or s_outer // item < inner:
        return -1
    return s_outer // item


@kernel()
def _layout(x):
    """(transposed, leading dimension) of a 2-d array for a row-major gemm; leading dimension
    -1 when neither dimension has unit stride (or the other overlaps it)."""
    rows, cols = x.shape
    s0, s1 = x.strides
    ld = _lead(rows, cols, s0, s1, x.itemsize)
    if ld > 0:
        return False, ld
    return True, _lead(cols, rows, s1, s0, x.itemsize)


@kernel()
def _gemm_args(a, b, out):
    """(ok, trans_a, lda, trans_b, ldb, ldc) for ``out = a @ b`` by cblas; not ok when an
    operand has no unit stride, ``out`` is not row-major or a size needs more than 32 bits."""
    m, k = a.shape
    n = b.shape[1]
    ta, lda = _layout(a)
    tb, ldb = _layout(b)
    tc, ldc = _layout(out)
    ok = (lda > 0 and ldb > 0 and ldc > 0 and not tc
          and max(m, n, k, lda, ldb, ldc) <= _INT32_MAX)
    return ok, ta, lda, tb, ldb, ldc


@kernel()
def _gemm_one_thread(a, b, out):
    """``out = a @ b`` by MKL on the calling thread; False (nothing written) when
    ``_gemm_args`` says the layout is not one cblas takes."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return True
    if k == 0:
        out[:] = 0
        return True
    ok, ta, lda, tb, ldb, ldc = _gemm_args(a, b, out)
    if not ok:
        return False
    _cblas_gemm(ta, tb, m, n, k, a, lda, b, ldb, out, ldc)
    return True


@kernel(parallel=True)
def _gemm_rows(a, b, out, rows):
    """``out = a @ b`` in blocks of ``rows`` rows, one MKL call each, the blocks shared among
    Numba's threads. The blocks depend on the shapes only, so the result does not depend on
    the number of threads."""
    m = a.shape[0]
    for i in prange((m + rows - 1) // rows):
        r0 = i * rows
        _gemm_one_thread(a[r0:min(m, r0 + rows)], b, out[r0:min(m, r0 + rows)])


@kernel()
def dot_serial(a, b, out):
    """``out = a @ b``: on the calling thread when the whole product is small (at most
    ``THREADED_MNK``; one MKL call, or without MKL ``np.dot`` in row blocks of at most
    ``SERIAL_MNK`` multiply-adds each), else on every core: with MKL in row blocks of about
    ``BLOCK_MNK`` multiply-adds (at most ``MAX_BLOCKS_PER_THREAD`` per thread) shared among
    Numba's threads (one thread pool for the whole library), without it (or when ``a`` has one
    row) one threaded ``np.dot``.

    With MKL any layout with a unit stride; without it, ``a`` and ``out`` C-contiguous 2-d
    and ``b`` C- or F-contiguous (a transposed view is fine).
    """
    m, k = a.shape
    n = b.shape[1]
    if HAVE_MKL:
        if m * k * n <= THREADED_MNK:
            if _gemm_one_thread(a, b, out):
                return
        elif m >= 2 and _gemm_args(a, b, out)[0]:
            blocks = min(m, _MAX_BLOCKS, max(2, m * k * n // BLOCK_MNK))
            _gemm_rows(a, b, out, (m + blocks - 1) // blocks)
            return
    rows = max(1, SERIAL_MNK // max(1, k * n))
    if rows >= m or m * k * n > THREADED_MNK or not a.flags.c_contiguous:
        np.dot(a, b, out)
        return
    # Typed C-contiguous, so the row blocks below are C arrays to np.dot (no copy where ``a``
    # is typed C; a transposed view typed 'A' but contiguous is copied once).
    ac = np.ascontiguousarray(a)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        np.dot(ac[r0:r1], b, out[r0:r1])


@kernel()
def dot_one_thread(a, b, out):
    """``out = a @ b`` on the calling thread whatever the size: one MKL call where MKL is
    installed, else ``np.dot`` in row blocks of at most ``SERIAL_MNK`` multiply-adds, so that
    OpenBLAS never wakes its own threads.

    For kernels that are themselves parallel (a Numba ``prange`` over independent items, each
    making its own products): BLAS threads beside Numba's would fight for the cores, and a
    woken OpenBLAS thread spins for a while after its call, slowing whatever runs next (on
    this loaded 2-core machine a (32 x 144) @ (144 x 8688) float32 product took 50 ms on two
    OpenBLAS threads against 1.2 ms on one). The caller keeps ``k * n <= SERIAL_MNK`` so that
    one row is under the threshold. ``a`` and ``out`` C-contiguous 2-d; ``b`` C- or
    F-contiguous.
    """
    if HAVE_MKL and _gemm_one_thread(a, b, out):
        return
    m, k = a.shape
    n = b.shape[1]
    rows = max(1, SERIAL_MNK // max(1, k * n))
    if rows >= m:
        np.dot(a, b, out)
        return
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        np.dot(a[r0:r1], b, out[r0:r1])
