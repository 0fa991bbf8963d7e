"""Probes that tell, between two rounds, whether torch's or numba's thread pool is stalled.

On a machine with more runnable threads than cores, a parallel region's barrier waits until
every worker of the pool has been scheduled, so a call that enters one takes a scheduler
latency (measured here: 4 to 80 ms) instead of microseconds. It happens in phases of about a
second, and in a phase EVERY such call stalls, small ones too (torch enters its OpenMP pool
for an 8x64 softmax, layer norm or linear): measured on this 2-core machine with one busy
process per core beside the benchmark, medians over 30 calls, in us:

=========================  =======  ======  ==============
call                        alone    hog,    hog, stalled
                                     clean   phase
=========================  =======  ======  ==============
torch.sigmoid 64K, 2 thr     19       19      36,000
torch.sigmoid 64K, 1 thr     35       28          28
torch softmax 8x64            3.5      2.3    40,000
torch linear 8x64x64          5        5      80,000
numba prange 64K, 2 thr       8        8      33,000
numba prange 64K, 1 thr      14       13          13
=========================  =======  ======  ==============

(Reproduce with ``python -m suites.performance.stalls``.) A probe is one call
of a parallel elementwise kernel; it counts as stalled above 10x the same call on one
thread: healthy parallel calls run below 1x, stalled ones at 1,000x and more, so the
threshold sits two orders of magnitude from both. One thread never stalls this way (it
shares a core by plain time slicing, which pairing cancels).
"""

from __future__ import annotations

import contextlib
import functools
import time

import numba
import numpy as np
from numba import prange

from suites.performance.timing import Probe

N = 1 << 16  # above torch's grain size (32768): two chunks, two threads
LIMIT_FACTOR = 10.0


@numba.njit(parallel=True, cache=True)
def _numba_kernel(x, out):
    for i in prange(x.size):
        out[i] = x[i] * np.float32(2.0) + np.float32(1.0)


def _best(fn, reps: int = 30) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def torch_probe() -> Probe | None:
    """torch's pool; None when torch runs single-threaded (nothing can stall)."""
    import torch

    threads = torch.get_num_threads()
    if threads < 2:
        return None
    x = torch.rand(N)
    y = torch.empty_like(x)

    def fn():
        torch.sigmoid(x, out=y)

    fn()
    torch.set_num_threads(1)
    try:
        serial = _best(fn)
    finally:
        torch.set_num_threads(threads)
    fn()
    return Probe(fn, LIMIT_FACTOR * serial,
                 f"torch.sigmoid on {N} float32 ({threads} threads)")


@functools.cache
def numba_probe() -> Probe | None:
    """numba's pool; None when numba runs single-threaded."""
    threads = numba.get_num_threads()
    if threads < 2:
        return None
    x = np.random.default_rng(0).random(N, dtype=np.float32)
    out = np.empty_like(x)

    def fn():
        _numba_kernel(x, out)

    fn()
    numba.set_num_threads(1)
    try:
        serial = _best(fn)
    finally:
        numba.set_num_threads(threads)
    fn()
    return Probe(fn, LIMIT_FACTOR * serial,
                 f"a numba prange kernel on {N} float32 ({threads} threads)")


# Implementations whose thread count ``single_threaded`` controls (inductor fixes its OpenMP
# thread count in the code it generates, so torch-compile is not among them).
SERIAL_NAMES = frozenset({"numba", "numba-inplace", "torch-cpu", "torch-foreach", "torch-fused",
                          "sklearn", "scipy"})


@contextlib.contextmanager
def single_threaded():
    """numba, torch and the BLAS/OpenMP pools threadpoolctl knows, on one thread each."""
    import torch
    from threadpoolctl import threadpool_limits

    nt, tt = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(nt)
        torch.set_num_threads(tt)


def for_group(impls) -> dict[str, Probe]:
    """The probes of the runtimes a group's implementations use."""
    out = {}
    if any(i.startswith("torch") for i in impls) and (p := torch_probe()) is not None:
        out["torch"] = p
    if any(i.startswith("numba") for i in impls) and (p := numba_probe()) is not None:
        out["numba"] = p
    return out


def _main() -> None:  # pragma: no cover - a measurement for people, see the docstring
    import subprocess
    import sys

    import torch

    s, w = torch.randn(8, 64), torch.randn(64, 64)
    calls = {"probe torch": torch_probe().fn, "probe numba": numba_probe().fn,
             "torch softmax 8x64": lambda: torch.softmax(s, -1),
             "torch linear 8x64x64": lambda: torch.nn.functional.linear(s, w)}

    def medians():
        out = {}
        for name, fn in calls.items():
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name] = f"{sorted(ts)[15] * 1e6:.3g} us"
        return out

    print("alone:", medians())
    print("limits:", {"torch": torch_probe().limit_s, "numba": numba_probe().limit_s})
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2)]
    try:
        for _ in range(5):
            time.sleep(0.5)
            print("with a hog per core:", medians())
    finally:
        for h in hogs:
            h.kill()


if __name__ == "__main__":
    _main()
