"""reference/_blas.py: the products kernels make, by MKL where it is installed, else OpenBLAS.

Every layout the kernels pass (C- and F-ordered, row slices, transposed views, empty sizes,
strides without a unit dimension) against a float64 product, through both entry points; MKL
chosen exactly where the wheel is installed; ``REFBENCH_BLAS=openblas`` giving the OpenBLAS
path (in a fresh interpreter) with its own kernel cache; results independent of alignment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import _blas as B

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = {"dot_serial": B.dot_serial, "dot_one_thread": B.dot_one_thread}
# The OpenBLAS branch is compiled for the non-contiguous layouts here too (MKL takes them), and
# Numba warns that np.dot is slower on them: true, and not what these tests look at.
pytestmark = pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")


def _layouts(rng, m, k, n, dtype):
    """(name, a, b) with a of shape (m, k) and b of shape (k, n) in the layouts kernels pass."""
    a0 = rng.standard_normal((m + 2, k + 3)).astype(dtype)
    b0 = rng.standard_normal((k + 4, n + 1)).astype(dtype)
    a_c, b_c = np.ascontiguousarray(a0[:m, :k]), np.ascontiguousarray(b0[:k, :n])
    return [
        ("C @ C", a_c, b_c),
        ("C @ F", a_c, np.asfortranarray(b_c)),
        ("C @ transposed view", a_c, np.ascontiguousarray(b_c.T).T),
        ("row slices", a0[1:m + 1, :k], b0[2:k + 2, :n]),
        ("sub-blocks", a0[1:m + 1, 1:k + 1], b0[1:k + 1, 1:n + 1]),
        ("F @ C", np.asfortranarray(a_c), b_c),
    ]


def _bound(a, b, dtype):
    # |fl(a @ b) - a @ b| <= gamma_k |a| @ |b| with gamma_k = k u / (1 - k u), u = eps / 2
    # (any summation order, fma or not); k + 2 eps covers it and the final rounding to dtype.
    k = a.shape[1]
    eps = float(np.finfo(dtype).eps)
    return (k + 2) * eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (1, 9, 4), (6, 1, 3), (6, 4, 1),
                                   (0, 3, 2), (3, 0, 2), (3, 2, 0), (33, 17, 65),
                                   (600, 100, 100)])  # the last over THREADED_MNK: row blocks
def test_products_in_every_layout(entry, dtype, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    for name, a, b in _layouts(rng, m, k, n, dtype):
        if not B.HAVE_MKL and not a.flags.c_contiguous:
            continue  # OpenBLAS's row blocks need a C-contiguous a (the documented contract)
        out = np.full((m, n), np.nan, dtype)
        ENTRIES[entry](a, b, out)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        err = np.abs(out.astype(np.float64) - exact)
        assert np.all(err <= _bound(a, b, dtype)), f"{entry}, {name}, {shape}: {err.max()}"


def test_operands_without_a_unit_stride_are_not_given_to_mkl():
    a = np.arange(24, dtype=np.float64).reshape(3, 8)[:, ::2]  # no unit-stride dimension
    b = np.ones((4, 2))
    out = np.zeros((3, 2))
    assert not B._gemm_one_thread(a, b, out)
    assert np.all(out == 0)  # nothing written: the caller falls back to np.dot
    B.dot_one_thread(np.ascontiguousarray(a), b, out)
    assert np.array_equal(out, a @ b)


def _mkl_installed() -> bool:
    try:
        importlib.metadata.version("mkl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return sys.platform == "linux" and platform.machine() == "x86_64"


def test_mkl_is_used_exactly_where_it_is_installed():
    # A failed load must not pass as a platform without MKL (the ratios would quietly change).
    if os.environ.get("REFBENCH_BLAS", "").lower() == "openblas":
        assert not B.HAVE_MKL
    else:
        assert B.HAVE_MKL == _mkl_installed(), B.BACKEND
    assert B.BACKEND.startswith("MKL") == B.HAVE_MKL


_FALLBACK = """
import json, numpy as np
from reference import _blas as B, _jit
rng = np.random.default_rng(0)
a = rng.standard_normal((40, 30)).astype(np.float32)
b = rng.standard_normal((30, 20)).astype(np.float32)
out = np.empty((40, 20), np.float32)
B.dot_one_thread(a, b, out)
err = float(np.abs(out - a.astype(np.float64) @ b.astype(np.float64)).max())
print(json.dumps({"mkl": B.HAVE_MKL, "backend": B.BACKEND, "err": err,
                  "digest": _jit._digest(B)}))
"""


def test_openblas_on_request_with_its_own_cache(tmp_path):
    env = dict(os.environ, REFBENCH_BLAS="openblas", NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", _FALLBACK], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["mkl"] is False and got["backend"] == "OpenBLAS"
    assert got["err"] <= 32 * float(np.finfo(np.float32).eps) * 30  # bound above, |x| <~ 4
    if B.HAVE_MKL:  # kernels compiled for one library are never loaded by the other
        from reference import _jit

        assert got["digest"] != _jit._digest(B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_results_do_not_depend_on_alignment(dtype):
    # A reference gives the same bits for the same values wherever the arrays sit in memory.
    rng = np.random.default_rng(1)
    for m, k, n in [(32, 128, 512), (144, 1024, 32), (7, 33, 5)]:
        a0 = rng.standard_normal((m, k)).astype(dtype)
        b0 = rng.standard_normal((k, n)).astype(dtype)
        results = []
        for off in range(8):
            a = np.empty(m * k + off, dtype)[off:].reshape(m, k)
            b = np.empty(k * n + 7 - off, dtype)[7 - off:].reshape(k, n)
            a[:], b[:] = a0, b0
            out = np.empty((m, n), dtype)
            B.dot_one_thread(a, b, out)
            results.append(out)
        assert all(np.array_equal(results[0], r) for r in results[1:]), (m, k, n)
