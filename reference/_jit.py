"""Numba options for every kernel, in one place.

- ``cache=True``: a cold compile costs 0.1-1 s per kernel and signature; a cached load ~3 ms.
  Numba keys a cached kernel on its own source file only, yet a kernel inlines what it calls
  from other modules (``_vmath``, ``_prims``, ``_blas``): after an edit there, the cache would
  keep serving the old code. So each module's kernels are cached in a directory named by a
  digest of the sources of every ``reference`` module it reaches through its globals
  (``_cache_dir``), and of the ``CACHE_SALT`` of those that have one (``_blas``: which BLAS its
  kernels call); an edit anywhere in that closure starts a fresh directory.
- ``error_model='numpy'``: division by zero gives inf/nan as numpy does instead of raising,
  which also lets loops containing a division vectorise.
- No blanket ``fastmath``: it assumes no NaN/inf and would change results at the edges a
  reference must get right. ``REDUCE`` is the one flag set allowed, on reductions only:
  ``reassoc`` lets a sum vectorise (a different but equally valid summation order) and
  ``contract`` allows fused multiply-add; NaN and inf still propagate.
- The whole vector width: on a CPU with AVX-512, LLVM's tuning for most Intel parts prefers
  256-bit vectors, so Numba's loops would use half the register torch's kernels use. Where
  512-bit vectors do not lower the clock much (``_full_width``), this module turns that
  preference off before the first kernel is compiled (``NUMBA_CPU_FEATURES``, when set,
  wins). Measured paired against torch-cpu on a 2-core AVX-512 Xeon, medium float32, one run
  each: sigmoid forward 1.49 -> 1.11, binary cross-entropy with logits 1.68 -> 1.25,
  log-softmax forward+backward 1.15 -> 0.91, relu 1.28 -> 1.08, cross-entropy 1.03 -> 0.91.
  It applies only when this module is imported before any other code has compiled a Numba
  function in the process (Numba fixes its target then); ``target()`` says what is in force.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import types
from pathlib import Path

import numba
from llvmlite import binding as _llvm

# Parts whose 512-bit instructions cost clock speed for the whole core (the first AVX-512
# generations): LLVM's 256-bit preference is right there.
_THROTTLING = frozenset({"skylake-avx512", "cascadelake", "cooperlake", "knl", "knm"})


def _wide_host() -> bool:
    """Whether this CPU has AVX-512 and is not one of the parts it slows down."""
    return bool(_llvm.get_host_cpu_features().get("avx512f")) and \
        _llvm.get_host_cpu_name() not in _THROTTLING


def _full_width() -> str | None:
    """The CPU feature string that lets LLVM use 512-bit vectors, or None to leave numba's."""
    if numba.config.CPU_FEATURES is not None or numba.config.CPU_NAME is not None:
        return None  # the user chose
    if not _wide_host():
        return None
    return _llvm.get_host_cpu_features().flatten() + ",-prefer-256-bit"


def target() -> dict:
    """What Numba compiles for in this process: CPU name and the widest vectors it prefers."""
    from numba.core.registry import cpu_target

    features = cpu_target.target_context.codegen()._tm_features  # noqa: SLF001
    wide = "+avx512f" in features and "-prefer-256-bit" in features
    return {"cpu": numba.config.CPU_NAME or _llvm.get_host_cpu_name(),
            "vector_bits": 512 if wide else 256 if "+avx" in features else 128}


if (_features := _full_width()) is not None:
    numba.config.CPU_FEATURES = _features

REDUCE = frozenset({"reassoc", "contract"})

# Below this many elements a kernel runs its serial loop: launching the thread pool costs
# ~2.5 us here, more than the whole loop takes on small inputs (measured: 64 floats, 0.9 us
# serial vs 3.2 us through prange).
PARALLEL_MIN = 1 << 16


def kernel(*, parallel: bool = False, reduce: bool = False):
    """Decorator for a private kernel: ``@kernel()`` or ``@kernel(parallel=True, reduce=True)``."""
    return _cached(numba.njit(
        cache=True,
        error_model="numpy",
        parallel=parallel,
        fastmath=set(REDUCE) if reduce else False,  # numba accepts a set, not a frozenset
    ))


def inline():
    """Decorator for a scalar helper inlined into kernels (no call, vectorises with the loop)."""
    return _cached(numba.njit(inline="always", error_model="numpy", cache=True))


# ---------------------------------------------------------------------------------------------
# the cache directory of a module's kernels

_PACKAGE = "reference"
_ROOT = Path(__file__).resolve().parent
_STALE_S = 86400.0  # another digest's directory untouched this long is removed
_digests: dict[str, str] = {}


def _reached(module: types.ModuleType) -> set[str]:
    """The ``reference`` modules ``module`` reaches through its globals (itself included),
    transitively: the modules it imported and the defining modules of the functions, kernels
    and classes it imported by name."""
    seen: set[str] = set()
    todo = [module.__name__]
    while todo:
        name = todo.pop()
        if name in seen or not (name == _PACKAGE or name.startswith(_PACKAGE + ".")):
            continue
        seen.add(name)
        mod = sys.modules.get(name)
        for value in vars(mod).values() if mod is not None else ():
            if isinstance(value, types.ModuleType):
                todo.append(value.__name__)
            else:
                owner = getattr(value, "__module__", None)
                if isinstance(owner, str):
                    todo.append(owner)
    return seen


def _digest(module: types.ModuleType) -> str:
    """A digest of the source of every module ``module`` reaches (computed at its first kernel:
    the imports sit at the top of a module, above its kernels)."""
    key = module.__name__
    if key not in _digests:
        h = hashlib.sha256()
        for name in sorted(_reached(module)):
            path = getattr(sys.modules.get(name), "__file__", None)
            if path:
                h.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
                # what a module decided at import that its kernels freeze (e.g. _blas's library)
                salt = getattr(sys.modules[name], "CACHE_SALT", "")
                h.update(str(salt).encode() + b"\0")
        _digests[key] = h.hexdigest()[:16]
    return _digests[key]


def _cache_dir(module: types.ModuleType) -> str:
    """``<base>/<module>-<digest>``, base being ``$NUMBA_CACHE_DIR`` when set, else the
    package's ``__pycache__/numba``; directories of the module's older digests that no process
    has touched for a day are removed."""
    base = Path(numba.config.CACHE_DIR or _ROOT / "__pycache__" / "numba")
    path = base / f"{module.__name__}-{_digest(module)}"
    if not path.exists():
        for old in base.glob(f"{module.__name__}-*") if base.is_dir() else ():
            try:
                if time.time() - old.stat().st_mtime > _STALE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
    return str(path)


def _cached(jit):
    """Wrap numba's decorator ``jit`` so that the function's cache lives in its module's
    ``_cache_dir`` (numba picks the directory when the function is decorated)."""

    def decorate(fn):
        module = sys.modules.get(fn.__module__)
        if module is None or not getattr(module, "__file__", None):
            return jit(fn)
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = _cache_dir(module)
        try:
            dispatcher = jit(fn)
        finally:
            numba.config.CACHE_DIR = saved
        _pool_before_load(dispatcher)
        return dispatcher

    return decorate


def _pool_before_load(dispatcher) -> None:
    """Launch Numba's thread pool before ``dispatcher`` loads a kernel from its cache.

    Numba registers the pool's scheduling functions (allocate_sched, do_scheduling_*) with LLVM
    only when it launches the pool. A serial kernel that calls a parallel one (linear's, through
    dot_serial's row blocks) has calls to them in its own machine code, and its cache entry
    asks for the launch on loading only if its parallel callees were compiled in the same
    process: compiled against callees loaded from the cache, it asks for nothing, and loaded as
    the first kernel of a later process it called address 0 (numba/numba#8578; seen here as a
    segfault of ``layers.linear`` as a script's first call). Launching at import instead would
    start the pool in processes that only fork (an OpenMP pool does not survive a fork: the
    README's forked shard runs hung), so it happens on the first load, as for a parallel kernel.
    """
    cache = getattr(dispatcher, "_cache", None)
    load = getattr(cache, "load_overload", None)
    if load is None:
        return

    def load_overload(sig, target_context):
        numba.get_num_threads()  # launches the pool once; a no-op after
        return load(sig, target_context)

    cache.load_overload = load_overload
