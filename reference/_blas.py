"""Small matrix products on one BLAS thread, for kernels that make many of them in a loop.

OpenBLAS (SciPy's, which ``np.dot`` calls inside Numba) splits a product over its threads once
``m * n * k`` exceeds 2^18 (``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``). For the
products of a recurrence step or of one attention head (e.g. (128 x 32) @ (32 x 128)) waking
and joining the threads costs more than they save, and when the other core is busy they stall
(measured here, 64 heads of (128 x 32) @ (32 x 128): 1.7 ms on one thread, 2.5 ms on two on
an idle machine, 13.8 ms on a loaded one). ``dot_serial`` cuts the product into row blocks
under the threshold, so each call runs on the calling thread. Large products (all time steps
at once, weight gradients, a step of a large network) keep using ``np.dot`` and its threads.

Products made in Python code between kernels call ``dot_serial`` too, never NumPy's ``np.dot``
or ``@``: NumPy's wheel bundles a second OpenBLAS (64-bit indices) with a thread pool of its
own, whose threads spin for a while after a call and fight this one's for the cores. Measured on
2 cores, an LSTM forward + backward (medium) whose input product went through NumPy: 19.5 ms in
a loop; either pool held to one thread: 7.3-7.8 ms (a test scans reference/ for such products).
"""

from __future__ import annotations

import numpy as np

from reference._jit import kernel

SERIAL_MNK = 1 << 18  # OpenBLAS runs a product on one thread when m * n * k <= this
# Above this many multiply-adds (~50 us on one core) threads pay for themselves: the product
# goes to np.dot whole. (LSTM hidden 512, batch 64: one step is 2^26 and runs 2.5x faster
# threaded on an idle machine.)
THREADED_MNK = 1 << 22


@kernel()
def dot_serial(a, b, out):
    """``out = a @ b``: in row blocks of at most ``SERIAL_MNK`` multiply-adds each when the
    whole product is small (at most ``THREADED_MNK``), else in one threaded call.

    ``a`` and ``out`` C-contiguous 2-d; ``b`` C- or F-contiguous (a transposed view is fine).
    """
    m, k = a.shape
    n = b.shape[1]
    rows = max(1, SERIAL_MNK // max(1, k * n))
    if rows >= m or m * k * n > THREADED_MNK:
        np.dot(a, b, out)
        return
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        np.dot(a[r0:r1], b, out[r0:r1])


@kernel()
def dot_one_thread(a, b, out):
    """``out = a @ b`` in row blocks of at most ``SERIAL_MNK`` multiply-adds, whatever the
    size, so OpenBLAS runs every call on the calling thread and never wakes its own threads.

    For kernels that are themselves parallel (a Numba ``prange`` over independent items, each
    making its own products): BLAS threads beside Numba's would fight for the cores, and a
    woken OpenBLAS thread spins for a while after its call, slowing whatever runs next (on
    this loaded 2-core machine a (32 x 144) @ (144 x 8688) float32 product took 50 ms on two
    OpenBLAS threads against 1.2 ms on one). The caller keeps ``k * n <= SERIAL_MNK`` so that
    one row is under the threshold. ``a`` and ``out`` C-contiguous 2-d; ``b`` C- or
    F-contiguous.
    """
    m, k = a.shape
    n = b.shape[1]
    rows = max(1, SERIAL_MNK // max(1, k * n))
    if rows >= m:
        np.dot(a, b, out)
        return
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        np.dot(a[r0:r1], b, out[r0:r1])
