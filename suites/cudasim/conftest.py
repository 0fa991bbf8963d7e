"""suites/cudasim runs reference.cuda's kernels: under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before Python starts) on any machine, or on a real GPU.
Without either it refuses to run instead of passing with nothing checked."""

from __future__ import annotations

import sys

import pytest
from numba import cuda

SIMULATED = bool(getattr(cuda.config, "ENABLE_CUDASIM", 0))
if not SIMULATED and not cuda.is_available():
    raise pytest.UsageError(
        "suites/cudasim needs numba's CUDA simulator or a CUDA GPU, and this machine has no "
        "GPU: run it as  NUMBA_ENABLE_CUDASIM=1 python -m pytest suites/cudasim")

_SWITCH = sys.getswitchinterval()


def pytest_configure(config: pytest.Config) -> None:
    # The simulator runs each CUDA thread as a Python thread, and a barrier waits for the GIL
    # to pass round every thread of the block. A 50 us switch interval made the suite ~5x
    # faster than the default 5 ms, but with numba-cuda 0.30.4 it also made block reductions
    # come out wrong now and then (1-5 of 124 tests per full run, different ones each time,
    # each passing alone: a thread reading shared memory before the others had written it).
    # Until that race is found, the simulator runs at Python's default interval.
    if SIMULATED:
        sys.setswitchinterval(_SWITCH)


def pytest_unconfigure(config: pytest.Config) -> None:
    sys.setswitchinterval(_SWITCH)
