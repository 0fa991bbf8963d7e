"""Compile every reference.cuda kernel to PTX for a real GPU target, without a GPU.

The simulator runs kernels as Python, so it accepts code that the CUDA target cannot type or
lower. This script types and lowers each kernel with numba-cuda's compiler for sm_90 and both
float dtypes. Needs NVVM (``pip install nvidia-nvvm nvidia-cuda-nvrtc``, ~130 MB, or a CUDA
toolkit) but no GPU; run it without NUMBA_ENABLE_CUDASIM::

    python suites/cudasim/ptx_check.py
"""

from __future__ import annotations

import sys

from numba import cuda, types

from reference.cuda import elementwise, linear, norm, optim, softmax


def _signatures(f):
    a = types.Array(f, 1, "C")
    d = types.Array(types.float64, 1, "C")
    d2 = types.Array(types.float64, 2, "C")
    i64 = types.Array(types.int64, 1, "C")
    i, b, x = types.int64, types.boolean, types.float64
    return {
        "elementwise._forward": (elementwise._forward, (a, a, i, x)),
        "elementwise._backward": (elementwise._backward, (a, a, a, i, x)),
        "softmax._softmax_fwd": (softmax._softmax_fwd, (a, a, i, i, i, b)),
        "softmax._softmax_bwd": (softmax._softmax_bwd, (a, a, a, i, i, i, b)),
        "softmax._ce_rows": (softmax._ce_rows,
                             (a, i64, a, b, i, x, i, i, i, d, d, d2, d, a, b)),
        "softmax._ce_total": (softmax._ce_total, (d, d, d, b, d, d, a)),
        "softmax._ce_bwd": (softmax._ce_bwd, (a, i64, a, b, i, x, i, i, i, d2, d, a, i, a)),
        "norm._bn_fwd": (norm._bn_fwd, (a, a, a, a, b, b, i, i, i, b, x, x, a, a, a, a, d, d)),
        "norm._bn_bwd": (norm._bn_bwd, (a, a, d, d, a, b, i, i, i, b, a, a, a)),
        "norm._ln_fwd": (norm._ln_fwd, (a, a, a, a, b, b, i, i, x, d, d)),
        "norm._ln_bwd": (norm._ln_bwd, (a, a, d, d, a, b, i, i, a)),
        "norm._col_partials": (norm._col_partials, (a, a, d, d, i, i, i, b, d2)),
        "norm._col_finish": (norm._col_finish, (d2, a)),
        "linear._matmul": (linear._matmul, (a, a, a, i, i, i, b, b, a, b)),
        "optim._sgd_k": (optim._sgd_k, (a, a, a, b, x, x, x, x, b, b)),
        "optim._adagrad_k": (optim._adagrad_k, (a, a, a, x, x, x, b)),
        "optim._rmsprop_k": (optim._rmsprop_k, (a, a, a, a, a, x, x, x, x, x, b, b)),
        "optim._adam_k": (optim._adam_k, (a, a, a, a, a, x, x, x, x, x, b, b, b, x, x)),
    }


class _FakeDevice:
    compute_capability = (9, 0)


def main() -> int:
    if cuda.config.ENABLE_CUDASIM:
        print("run without NUMBA_ENABLE_CUDASIM: this compiles for the real target")
        return 2
    # Device functions ask the current device for its compute capability; there is none here.
    from numba.cuda import dispatcher

    dispatcher.get_current_device = _FakeDevice
    failed = 0
    for f in (types.float32, types.float64):
        for name, (kernel, args) in _signatures(f).items():
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, types.void(*args), cc=(9, 0))
                print(f"ok    {name} [{f}] {len(ptx)} chars of PTX")
            except Exception as exc:  # report every kernel, then fail
                failed += 1
                print(f"FAIL  {name} [{f}]: {type(exc).__name__}: {str(exc)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
