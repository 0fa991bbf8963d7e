"""How numba's and torch's thread pools disturb each other on this machine.

    python -m suites.performance.threads            # every configuration, one subprocess each
    python -m suites.performance.threads --one      # the current environment only

For each configuration (numba threading layer x OpenMP wait policy) it measures, in one
process, the median latency of:

- a small torch call (``torch.relu`` on 64 floats) alone, and right after a numba parallel
  kernel (the first call, and the 2nd..20th calls after it);
- a medium torch call (``torch.sigmoid`` on 64K floats, parallel in torch) alone and right after;
- a numba parallel kernel (64K floats) alone, and right after a parallel torch call;
- the launch cost of an (almost) empty numba parallel region.

The benchmark harness uses these figures to choose how it interleaves implementations (see
``suites/performance/timing.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "numba omp, default wait": {},
    "numba workqueue, default wait": {"NUMBA_THREADING_LAYER": "workqueue"},
    "numba omp, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "numba omp, GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def measure(reps: int = 300) -> dict:
    import numba
    import numpy as np
    import torch
    from numba import prange

    @numba.njit(parallel=True, cache=False)
    def nb_kernel(x, out):
        for i in prange(x.size):
            out[i] = x[i] * 2.0 + 1.0

    small = torch.randn(64)
    medium_t = torch.randn(65536)
    x = np.random.default_rng(0).standard_normal(65536).astype(np.float32)
    out = np.empty_like(x)
    tiny = x[:2].copy()
    tiny_out = out[:2].copy()
    for _ in range(5):
        nb_kernel(x, out)
        torch.relu(small)
        torch.sigmoid(medium_t)
    pc = time.perf_counter

    def timed(fn):
        t0 = pc()
        fn()
        return pc() - t0

    res: dict[str, float] = {}
    res["torch small alone"] = _median([timed(lambda: torch.relu(small)) for _ in range(reps)])
    first, later = [], []
    for _ in range(reps):
        nb_kernel(x, out)
        first.append(timed(lambda: torch.relu(small)))
        later.append(_median([timed(lambda: torch.relu(small)) for _ in range(19)]))
    res["torch small, 1st call after numba"] = _median(first)
    res["torch small, 2nd-20th calls after numba"] = _median(later)
    res["torch medium alone"] = _median([timed(lambda: torch.sigmoid(medium_t))
                                         for _ in range(reps)])
    after = []
    for _ in range(reps):
        nb_kernel(x, out)
        after.append(timed(lambda: torch.sigmoid(medium_t)))
    res["torch medium, 1st call after numba"] = _median(after)
    res["numba medium alone"] = _median([timed(lambda: nb_kernel(x, out)) for _ in range(reps)])
    after = []
    for _ in range(reps):
        torch.sigmoid(medium_t)
        after.append(timed(lambda: nb_kernel(x, out)))
    res["numba medium, 1st call after torch"] = _median(after)
    res["numba empty parallel region"] = _median([timed(lambda: nb_kernel(tiny, tiny_out))
                                                  for _ in range(reps)])
    res["_layer"] = numba.threading_layer()
    return res


def main(argv: list[str]) -> int:
    if "--one" in argv:
        print(json.dumps(measure()))
        return 0
    rows = {}
    for name, env in CONFIGS.items():
        proc = subprocess.run([sys.executable, "-m", "suites.performance.threads", "--one"],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              check=True)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = [k for k in next(iter(rows.values())) if not k.startswith("_")]
    print(f"{'microseconds (median)':44s}" + "".join(f"{n[:26]:>28s}" for n in rows))
    for k in keys:
        print(f"{k:44s}" + "".join(f"{rows[n][k] * 1e6:28.1f}" for n in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
