"""One generic benchmark: catalog x size x dtype x pass x implementation.

Implementations: ``numba`` (the reference, CPU), ``torch-cpu`` and ``torch-cuda`` (the twin,
eager; CUDA is synchronised inside the timed call), ``numba-cuda`` (the ``reference.cuda``
kernel of the algorithm, where there is one: ``CUDA_KERNELS``), and each spec's ``peers``
(scikit-learn, torch's fused optimizer, ...). Passes: ``forward`` (torch under ``no_grad``) and
``forward+backward`` (reference forward + backward; torch forward + ``torch.autograd.grad``
with the same random upstream gradient).

The implementations of one group (algorithm x size x dtype x pass) are timed together, in
interleaved rounds (``timing.py``), when the group's first test runs; each implementation's
test then hands its rounds to pytest-benchmark, so the JSON keeps pytest-benchmark's format
with one entry per implementation and its raw per-round times (``stats.data``, in round order:
entry ``i`` of every implementation of a group comes from the same round). ``extra_info``
holds algorithm, family, implementation, device, dtype, size, pass, shapes, flops, bytes,
first_call_s, compile_s, and the pairing: ``group``, ``paired`` (rounds, partners, attempts,
and ``stall``: the rounds dropped because a thread pool stalled, see ``stalls.py``),
``ratios`` (this implementation over each partner: median of per-round ratios, its 95%
interval, and ``reasons`` why that pair is untrustworthy, empty when it is sound),
``stable`` (this implementation's own rounds and its ratio to numba are sound: a noisy
third implementation does not grey the others) and ``noise``.

numba-cuda and torch-cuda, when both run, are timed together as a group of their own (interleaved
rounds as above) by CUDA events on torch's current stream (``_CudaStamp``): each round's
untimed call is the warm-up, the closing event's wait the synchronisation, and the reported
figure the median over rounds of per-call device time. There neither side synchronises inside
its call. numba-cuda reads the very torch CUDA tensors torch-cuda's forward times (shared
through ``__cuda_array_interface__``, no copies; an optimizer step gets its own clones, as it
updates them in place). Its ratios are to torch-cuda only (the CPU sides are timed apart).
Without a CUDA device both are skipped with the reason, said once by the run (not listed as
"not run" in every group).

``--benchmark-max-time`` is the time budget per implementation of a group,
``--benchmark-min-time`` the least duration of a round, ``--benchmark-min-rounds`` the least
number of rounds, ``--benchmark-disable-gc`` and ``--benchmark-timer`` apply as usual.
``--benchmark-disable`` runs each implementation once (a smoke test). Narrow the matrix with
``--bench-sizes`` (``sweep`` adds the scaling sweep of ``sweeps.py``), ``--bench-impls``,
``--bench-dtypes`` and ``-k``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np
import pytest
import torch

from suites import twin
from suites.catalog import all_specs, get
from suites.catalog.spec import SIZES, Case, Spec, as_tuple
from suites.correctness.checks import upstream
from suites.digest import twin_digest
from suites.performance import stalls, sweeps, timing

PASSES = ("forward", "forward+backward")
NUMBA_CUDA = "numba-cuda"
GPU_IMPLS = ("torch-cuda", NUMBA_CUDA)
IMPLS = ("numba", "torch-cpu", "torch-cuda", NUMBA_CUDA)
# numba-cuda's kernels: algorithm -> (module of reference.cuda, forward, backward); backward
# None: forward only (an optimizer's in-place step, timed like the numba-inplace peer).
CUDA_KERNELS = {
    **{n: ("elementwise", n, f"{n}_backward")
       for n in ("sigmoid", "tanh", "relu", "leaky_relu", "gelu")},
    **{n: ("softmax", n, f"{n}_backward") for n in ("softmax", "log_softmax", "cross_entropy")},
    **{n: ("norm", n, f"{n}_backward") for n in ("batch_norm", "layer_norm")},
    "linear": ("linear", "linear", "linear_backward"),
    **{n: ("optim", f"{n}_", None) for n in ("sgd", "adagrad", "rmsprop", "adam", "adamw")},
}
# Timed only when asked for (--bench-impls=...,torch-compile; `nox -s compile`): inductor
# compiles each graph for seconds to tens of seconds on 2 cores, beyond CI's and the main
# job's time budgets.
COMPILED = "torch-compile"
# A twin inductor has not compiled after this long is not timed: the report says so. Most of
# the catalog's graphs compile in seconds to a minute on 2 cores; polynomial_features' (a
# Python loop over 286 monomials unrolled into one graph of 287 operations) took 221 s for the
# forward and over 17 minutes with its backward on a loaded 2-core machine.
COMPILE_TIMEOUT_S = 180.0
# Backward costs about twice the forward's flops and bytes (one product per input of each
# forward product): the usual rule for forward+backward = 3x forward.
BACKWARD_FACTOR = 2.0
# A test-only hook: REFBENCH_PLANT="name=factor,..." makes the numba side of those algorithms
# `factor` times slower (it busy-waits for (factor - 1) x each call's own duration), so the
# harness and the gate can be shown to catch a known slow-down.
PLANT = "REFBENCH_PLANT"


def _option_list(config, name: str, allowed=None) -> list[str]:
    values = [v.strip() for v in config.getoption(name).split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise pytest.UsageError(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return values


def _sizes(spec: Spec, wanted: list[str]) -> dict:
    table = dict(spec.sizes)
    if "sweep" in wanted:
        table.update(sweeps.sizes(spec.name))
    return {k: v for k, v in table.items() if k in wanted or ("sweep" in wanted
                                                               and k in sweeps.NAMES)}


def _impls(spec: Spec, impls: list[str]) -> list[str]:
    out = []
    for impl in impls:
        if impl in IMPLS or impl == COMPILED:
            if impl != "numba" and spec.torch is None:
                continue
            if impl == NUMBA_CUDA and spec.name not in CUDA_KERNELS:
                continue
            out.append(impl)
        elif impl in spec.peers:
            out.append(impl)
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench" not in metafunc.fixturenames:
        return
    config = metafunc.config
    sizes = _option_list(config, "--bench-sizes", SIZES + ("sweep",))
    peers = sorted({p for spec in all_specs() for p in spec.peers})
    impls = _option_list(config, "--bench-impls", ("all", COMPILED) + IMPLS + tuple(peers))
    if "all" in impls:
        impls = list(IMPLS) + peers + [i for i in impls if i == COMPILED]
    wanted = _option_list(config, "--bench-dtypes", ("default", "float32", "float64"))
    params = []
    for spec in all_specs():
        # "default": the spec's first dtype (float32 for deep learning, float64 where the
        # peers' users work in it, e.g. scikit-learn)
        dtypes = {spec.dtypes[0]} if "default" in wanted else set()
        dtypes |= {np.dtype(d) for d in wanted if d != "default"}
        for dtype in (d for d in spec.dtypes if d in dtypes):
            for size in _sizes(spec, sizes):
                for pass_ in PASSES if spec.differentiable else PASSES[:1]:
                    for impl in _impls(spec, impls):
                        if impl == NUMBA_CUDA and pass_ != "forward" \
                                and CUDA_KERNELS[spec.name][2] is None:
                            continue  # no backward kernel
                        pid = f"{spec.name}-{impl}-{size}-{dtype}-{pass_.replace('+', '_')}"
                        params.append(pytest.param((spec.name, impl, size, dtype, pass_), id=pid))
    metafunc.parametrize("bench", params)


@functools.lru_cache(maxsize=2)
def _case(name: str, size: str, dtype: np.dtype) -> tuple[Case, tuple[np.ndarray, ...]]:
    spec = get(name)
    builder = spec.sizes.get(size) or sweeps.sizes(name)[size]
    case = builder(dtype)
    grads = ()
    if spec.differentiable:
        outs, _ = spec.run_forward(case)
        grads = upstream(spec, outs, np.random.default_rng(0))
    return case, grads


def _numba_call(spec: Spec, case: Case, grads, pass_: str):
    args, params = tuple(case.inputs.values()), case.params
    if pass_ == "forward":
        return lambda: spec.forward(*args, **params)

    def fwd_bwd():
        _, ctx = spec.run_forward(case)
        return spec.run_backward(ctx, grads)

    return fwd_bwd


def _torch_call(spec: Spec, case: Case, grads, pass_: str, device: str, sync: bool = True):
    """The twin's pass; on CUDA synchronised inside the call unless ``sync`` is False (when
    CUDA events time it, ``_CudaStamp``)."""
    if pass_ == "forward":
        inputs = (_cuda_tensors(spec, case) if device.startswith("cuda")
                  else twin.tensors(spec, case, device, grad=False))

        def fwd():
            with torch.no_grad():
                out = twin.call(spec, case, inputs)
            if sync:
                twin.synchronize(device)
            return out

        return fwd
    inputs = twin.tensors(spec, case, device, grad=True)
    leaves = [inputs[n] for n in spec.grad_names(case)]
    up = [twin.to_tensor(g, device) for g in grads]

    def fwd_bwd():
        outs = twin.call(spec, case, inputs)[: spec.n_diff_outputs]
        got = torch.autograd.grad(outs, leaves, grad_outputs=up, allow_unused=True)
        if sync:
            twin.synchronize(device)
        return got

    return fwd_bwd


# ---------------------------------------------------------------------------------------------
# numba-cuda


_SHARED: list = []  # [(case, its torch CUDA tensors)]: the group being timed


def _cuda_tensors(spec: Spec, case: Case) -> dict[str, torch.Tensor]:
    """The case's inputs as torch CUDA tensors, made once per case: torch-cuda's forward calls
    the twin on them and numba-cuda reads them in place."""
    if not _SHARED or _SHARED[0][0] is not case:
        _SHARED[:] = [(case, twin.tensors(spec, case, "cuda", grad=False))]
    return _SHARED[0][1]


def _numba_cuda_unusable() -> str | None:
    """Why numba-cuda cannot be timed on a machine where torch sees a GPU (None: it can)."""
    try:
        from numba import cuda

        import reference.cuda  # noqa: F401 - needs the numba-cuda package
    except ImportError as exc:
        return f"{NUMBA_CUDA}: {exc}"
    if getattr(cuda.config, "ENABLE_CUDASIM", 0):
        return f"{NUMBA_CUDA}: NUMBA_ENABLE_CUDASIM is set: these would be the simulator's times"
    if not cuda.is_available():
        return f"{NUMBA_CUDA}: numba finds no usable CUDA device or driver (torch does)"
    if torch.cuda.current_stream().cuda_stream != 0 or cuda.config.CUDA_PER_THREAD_DEFAULT_STREAM:
        return (f"{NUMBA_CUDA}: torch's current stream or numba's default stream is not the "
                f"legacy default stream: reference.cuda launches on numba's default stream, "
                f"and CUDA events on torch's would not bracket its kernels")
    return None


def _numba_cuda_call(spec: Spec, case: Case, grads, pass_: str):
    """The algorithm's reference.cuda kernel(s) on torch's CUDA tensors of the case, shared
    through ``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``: no copy; numba waits
    once for the stream that made them). Not synchronised: CUDA events time it."""
    import importlib

    from numba import cuda

    module, fwd_name, bwd_name = CUDA_KERNELS[spec.name]
    mod = importlib.import_module(f"reference.cuda.{module}")
    tensors = _cuda_tensors(spec, case)
    if bwd_name is None:  # an in-place optimizer step: on its own clones, stepped on each call
        own = {k: t.clone() for k, t in tensors.items()}
        dev = {k: cuda.as_cuda_array(t) for k, t in own.items()}
        state = {k: a for k, a in dev.items() if k not in ("params", "grads")}
        hyper = {k: v for k, v in case.params.items()
                 if k not in ("step", "initial_accumulator_value")}
        step_, t = getattr(mod, fwd_name), case.params["step"]
        return lambda: step_(dev["params"], dev["grads"], state, t, **hyper)
    fwd, bwd = getattr(mod, fwd_name), getattr(mod, bwd_name)
    args = [cuda.as_cuda_array(t) for t in tensors.values()]
    params = dict(case.params)
    if spec.name == "layer_norm":  # reference.cuda.norm.layer_norm(x, normalized_shape, w, b, eps)
        shape, eps = params.pop("normalized_shape"), params.pop("eps")
        args = [args[0], shape, *args[1:], *([None] * (3 - len(args))), eps]
    if pass_ == "forward":
        return lambda: fwd(*args, **params)
    ups_t = [twin.to_tensor(g, "cuda") for g in grads]
    ups = [cuda.as_cuda_array(u) for u in ups_t]
    up = ups[0] if spec.n_diff_outputs == 1 else tuple(ups)

    def fwd_bwd():
        _, ctx = fwd(*args, **params)
        return bwd(ctx, up)

    fwd_bwd.keep = (tensors, ups_t)  # type: ignore[attr-defined]  # the memory numba reads
    return fwd_bwd


class _CudaStamp:
    """A CUDA event recorded on torch's current stream; ``later - earlier`` waits for the later
    one and gives the device time between the two, in seconds. As ``timing.measure``'s timer
    it times GPU implementations by CUDA events: each round's untimed call is the warm-up, the
    closing event's wait the synchronisation, a round's figure its device time per call."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record(torch.cuda.current_stream())

    def __sub__(self, earlier: _CudaStamp) -> float:
        self.event.synchronize()
        return earlier.event.elapsed_time(self.event) * 1e-3


def _cuda_group(fns: dict, spec: Spec, case: Case, grads, pass_: str) -> dict:
    """Take numba-cuda and torch-cuda out of ``fns`` when numba-cuda is among them: they are
    timed together by CUDA events (torch-cuda then without its in-call synchronisation)."""
    if NUMBA_CUDA not in fns:
        return {}
    out = {NUMBA_CUDA: fns.pop(NUMBA_CUDA)}
    if fns.pop("torch-cuda", None) is not None:
        out["torch-cuda"] = _torch_call(spec, case, grads, pass_, "cuda", sync=False)
    return out


def _measure_cuda(fns: dict, benchmark) -> timing.Result:
    torch.cuda.synchronize()
    return timing.measure(fns, max_time=benchmark._max_time, min_time=benchmark._min_time,
                          min_rounds=benchmark._min_rounds, timer=_CudaStamp,
                          disable_gc=benchmark._disable_gc)


def _part(result: timing.Result, impl: str) -> timing.Result:
    """The Result that timed ``impl``: the CUDA-event group's for numba-cuda and torch-cuda
    when they were timed apart, else the group's."""
    cuda_part = getattr(result, "cuda_part", None)
    return cuda_part if cuda_part is not None and impl in cuda_part.names else result


def _compiled_call(spec: Spec, case: Case, grads, pass_: str):
    """The twin through ``torch.compile`` (inductor, default mode, static shapes), on the CPU.

    Returns ``(fn, how)``: ``how`` says whether dynamo captured the twin in one graph, in
    several (graph breaks), or in none (then the "compiled" timing is eager in disguise).
    """
    compiled = torch.compile(spec.torch, dynamic=False)
    how = _graphs(spec, case)
    inputs = twin.tensors(spec, case, "cpu", grad=pass_ != "forward")
    if pass_ == "forward":
        def fwd():
            with torch.no_grad():
                return compiled(*inputs.values(), **case.params)
        return fwd, how
    leaves = [inputs[n] for n in spec.grad_names(case)]
    up = [twin.to_tensor(g, "cpu") for g in grads]

    def fwd_bwd():
        outs = as_tuple(compiled(*inputs.values(), **case.params))[: spec.n_diff_outputs]
        return torch.autograd.grad(outs, leaves, grad_outputs=up, allow_unused=True)

    return fwd_bwd, how


def _graphs(spec: Spec, case: Case) -> str:
    """How dynamo sees the twin: "one graph", "N graphs (breaks: ...)" or "no graph: ..."."""
    import torch._dynamo

    inputs = twin.tensors(spec, case, "cpu", grad=False)
    try:
        with torch.no_grad():
            ex = torch._dynamo.explain(spec.torch)(*inputs.values(), **case.params)
    except Exception as exc:  # noqa: BLE001 - the reason is what the report shows
        return f"not analysed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        torch._dynamo.reset()
    reasons = "; ".join(sorted({str(getattr(b, "reason", b)).splitlines()[0][:120]
                                for b in ex.break_reasons}))
    if ex.graph_count == 0 or ex.op_count == 0:
        return f"no graph (eager in disguise){': ' + reasons if reasons else ''}"
    if ex.graph_break_count:
        return f"{ex.graph_count} graphs, {ex.graph_break_count} breaks: {reasons}"
    return "one graph"


def planted(fn, factor: float):
    """``fn`` made ``factor`` times slower by busy-waiting after each call (test hook)."""
    def slow():
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + (factor - 1.0) * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return slow


def _plants() -> dict[str, float]:
    out = {}
    for item in filter(None, os.environ.get(PLANT, "").split(",")):
        name, _, factor = item.partition("=")
        out[name.strip()] = float(factor)
    return out


def _callable(spec: Spec, impl: str, case: Case, grads, pass_: str):
    """The zero-argument callable timed for ``impl``; None when it has nothing comparable."""
    if impl == "numba":
        fn = _numba_call(spec, case, grads, pass_)
        factor = _plants().get(spec.name)
        return planted(fn, factor) if factor else fn
    if impl in spec.peers:
        return spec.peers[impl](case, pass_)
    if impl == COMPILED:
        return _compiled_call(spec, case, grads, pass_)
    if impl == NUMBA_CUDA:
        return _numba_cuda_call(spec, case, grads, pass_)
    return _torch_call(spec, case, grads, pass_, "cuda" if impl == "torch-cuda" else "cpu")


def _group_of(item: pytest.Item) -> tuple | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "bench" not in callspec.params:
        return None
    name, impl, size, dtype, pass_ = callspec.params["bench"]
    return (name, size, str(dtype), pass_)


_RESULTS: dict[tuple, timing.Result] = {}
_COMPILE_TIMES: list[tuple[float, float]] = []


class _Budget:
    """``--bench-budget``: the run's seconds of measurement, shared among its groups.

    A group's share is what is left of the budget divided by the groups left; the rounds get
    that share less the measuring overhead the groups so far needed (calibration, stall probes,
    retries: their mean), split among the implementations, never more than
    ``--benchmark-max-time`` each and never less than ``MIN_SHARE`` of it (a budget too small
    for the run is overrun rather than leaving groups too few rounds to judge), and
    ``timing.measure`` runs ``--benchmark-min-rounds`` rounds whatever the share. First calls
    (compilation, cache loads) are not counted: a cold run measures as many rounds as a warm
    one and takes longer by its compile time.
    """

    def __init__(self) -> None:
        self.keys: list[tuple] | None = None
        self.spent = 0.0        # seconds measured so far, first calls excluded
        self.overhead = 0.0     # of which not in the timed budget (probes, calibration, ...)
        self.done = 0
        self.wall = 0.0         # everything, first calls included

    def eta(self, config, session) -> float:
        """Seconds the groups left should take, from the budget or the pace so far."""
        left = len(self.groups(session)) - self.done
        done = max(self.done, 1)
        total = config.getoption("--bench-budget")
        if total is None or not left:
            return self.wall / done * left
        # what is left of the budget, but at least each group's overhead so far (min_rounds,
        # probes: the floor), plus the first calls at the pace so far
        first_calls = (self.wall - self.spent) / done * left
        return max(total - self.spent, self.overhead / done * left) + first_calls

    def groups(self, session) -> list[tuple]:
        if self.keys is None:
            self.keys = list(dict.fromkeys(k for k in map(_group_of, session.items) if k))
        return self.keys

    def max_time(self, config, session, default: float, n_impls: int) -> float:
        total = config.getoption("--bench-budget")
        if total is None or n_impls == 0:
            return default
        left = max(len(self.groups(session)) - self.done, 1)
        share = max(total - self.spent, 0.0) / left
        per_impl = max(share - (self.overhead / self.done if self.done else 0.0), 0.0) / n_impls
        return min(default, max(per_impl, default * MIN_SHARE))

    def add(self, result: timing.Result) -> None:
        measured = max(result.wall_s - sum(result.first_call_s.values()), 0.0)
        timed = sum(sum(t) * result.iterations[n] for n, t in result.times.items())
        self.spent += measured
        self.wall += result.wall_s
        self.overhead += max(measured - timed, 0.0)
        self.done += 1


# The least share of --benchmark-max-time a group gets under --bench-budget: the report's 0.2 s
# becomes at worst CI's 0.05 s per implementation.
MIN_SHARE = 0.25
_BUDGET = _Budget()
# Implementations that could not be timed, with the reason: conftest.py puts them in the
# benchmark JSON's machine_info (pytest-benchmark writes no entry for a skipped test).
NOT_RUN: list[dict] = []


class _CompileTimeout(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise ``_CompileTimeout`` in the main thread after ``seconds`` (SIGALRM; elsewhere, or
    where there is no SIGALRM, no deadline)."""
    import signal
    import threading

    if not hasattr(signal, "setitimer") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _CompileTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _compile_first(fn, how: str) -> str | None:
    """Compile (first call, timed) and warm; the reason as a string when inductor fails or
    takes longer than ``COMPILE_TIMEOUT_S``."""
    try:
        t0 = time.perf_counter()
        try:
            with _deadline(COMPILE_TIMEOUT_S):
                fn()
        except _CompileTimeout:
            torch._dynamo.reset()
            return (f"{COMPILED}: inductor had not compiled the twin after "
                    f"{COMPILE_TIMEOUT_S:.0f} s (dynamo's capture: {how}); not timed")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        second = time.perf_counter() - t0
        # A twin that builds new objects dynamo guards on (torch.optim's optimizers, a train
        # step around one) compiles again on every call: no steady state to time. Found here,
        # it is "not run" with the reason rather than a failure in the timed rounds.
        torch.compiler.set_stance("fail_on_recompile")
        try:
            fn()
        except RuntimeError as exc:
            if "recompile" not in str(exc):
                raise
            msg = str(exc)
            where = msg[msg.find("filename:"):].splitlines()[0][:200] if "filename:" in msg \
                else ""
            return (f"{COMPILED}: the twin compiles again on every call (dynamo's guards fail "
                    f"on objects it builds per call{': ' + where if where else ''}), so "
                    f"there is no steady state to time; not timed")
        finally:
            torch.compiler.set_stance("default")
    except Exception as exc:  # noqa: BLE001 - the reason is what the report shows
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return f"{COMPILED}: inductor could not compile the twin: {type(exc).__name__}: {msg}"
    _COMPILE_TIMES.append((first, max(first - second, 0.0)))
    return None


def _unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run on this machine at all (None: it can)."""
    if impl in GPU_IMPLS and not torch.cuda.is_available():
        return f"{impl}: torch sees no CUDA device on this machine"
    if impl == NUMBA_CUDA:
        return _numba_cuda_unusable()
    return None


def _measure_group(request, key: tuple, benchmark) -> timing.Result:
    """Time every selected implementation of the group of ``key`` together (once)."""
    if key in _RESULTS:
        return _RESULTS[key]
    name, size, dtype, pass_ = key
    spec = get(name)
    members = [it.callspec.params["bench"][1] for it in request.session.items
               if _group_of(it) == key]
    case, grads = _case(name, size, np.dtype(dtype))
    fns, skipped = {}, {}
    for impl in members:
        if why := _unavailable(impl):
            skipped[impl] = why
            continue
        fn = _callable(spec, impl, case, grads, pass_)
        if impl == COMPILED:
            fn, how = fn
            compiled = _compile_first(fn, how)
            if isinstance(compiled, str):
                skipped[impl] = compiled
                continue
        if fn is None:
            skipped[impl] = f"{impl}: nothing comparable to the reference's {pass_} pass"
            continue
        fns[impl] = fn
    cuda_fns = _cuda_group(fns, spec, case, grads, pass_)
    # A recompilation while timing would be a compile timed as a slow call: it is an error.
    stance = torch.compiler.set_stance("fail_on_recompile") if COMPILED in fns else None
    max_time = _BUDGET.max_time(request.config, request.session, benchmark._max_time, len(fns))
    try:
        result = timing.measure(
            fns, max_time=max_time, min_time=benchmark._min_time,
            min_rounds=benchmark._min_rounds, timer=benchmark._timer,
            disable_gc=benchmark._disable_gc, probes=stalls.for_group(fns),
            serial=stalls.single_threaded, serial_names=stalls.SERIAL_NAMES)
    finally:
        if stance is not None:
            torch.compiler.set_stance("default")
    if COMPILED in fns and COMPILED in result.first_call_s:
        # the compiling call happened in _compile_first; its time is the compile time
        result.first_call_s[COMPILED], result.compile_s[COMPILED] = _COMPILE_TIMES.pop()
    result.cuda_part = _measure_cuda(cuda_fns, benchmark) if cuda_fns else None  # type: ignore[attr-defined]
    for impl, reason in skipped.items():
        if impl in GPU_IMPLS and not torch.cuda.is_available():
            continue  # a machine without a GPU: said once by the run, not in every group
        NOT_RUN.append({"group": " ".join(map(str, key)), "implementation": impl,
                        "reason": reason})
    result.skipped = skipped  # type: ignore[attr-defined]
    result.compiled = {COMPILED: how} if COMPILED in fns else {}  # type: ignore[attr-defined]
    _BUDGET.add(result)
    _RESULTS.clear()  # groups run one after another: keep only the current one
    _RESULTS[key] = result
    _progress(request, key, result)
    return result


def _progress(request, key, result: timing.Result) -> None:
    """One line per group: what was measured, the paired ratio, and how far along the run is."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    keys = _BUDGET.groups(request.session)
    n = keys.index(key) + 1 if key in keys else 0
    name, size, dtype, pass_ = key
    parts = []
    if "numba" in result.timed:
        for other, r in result.ratios["numba"].items():
            ci = f" [{r['lo']:.3g}, {r['hi']:.3g}]" if r["lo"] is not None else ""
            parts.append(f"numba/{other} {r['value']:.3g}{ci}")
    cuda_part = getattr(result, "cuda_part", None)
    if cuda_part is not None and "torch-cuda" in cuda_part.timed:
        r = cuda_part.ratios[NUMBA_CUDA]["torch-cuda"]
        ci = f" [{r['lo']:.3g}, {r['hi']:.3g}]" if r["lo"] is not None else ""
        parts.append(f"numba-cuda/torch-cuda {r['value']:.3g}{ci} (CUDA events)")
    rounds = len(next(iter(result.times.values()), []))
    state = "stable" if result.stable else "NOISY"
    if result.stall.get("dropped"):
        state += f", {result.stall['dropped']} stalled round(s) dropped"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        tr.ensure_newline()
        tr.write_line(f"bench [{n}/{len(keys)}] {name} {size} {dtype} {pass_}: "
                  f"{'; '.join(parts) or ', '.join(result.timed)} ({rounds} rounds, "
                      f"{result.attempts} attempt(s), {state}, {result.wall_s:.1f} s; "
                      f"about {_minutes(_BUDGET.eta(request.config, request.session))} left)")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def test_bench(benchmark, bench, request):
    name, impl, size, dtype, pass_ = bench
    spec = get(name)
    key = (name, size, str(dtype), pass_)
    case, _ = _case(name, size, dtype)
    cost = spec.cost(case)
    factor = 1.0 if pass_ == "forward" else 1.0 + BACKWARD_FACTOR
    benchmark.group = f"{name} {size} {dtype} {pass_}"
    benchmark.extra_info.update(
        algorithm=name, family=spec.family, implementation=impl,
        device="cuda" if impl.endswith("cuda") else "cpu", dtype=str(dtype), size=size,
        shapes={k: list(np.shape(a)) for k, a in case.inputs.items()},
        flops=cost.flops * factor, bytes=cost.bytes * factor, group=benchmark.group,
        **{"pass": pass_},
    )
    # Which code was timed as numba's partner: a ratio against a twin (or peer) whose code
    # changed since the baseline is not judged by the gate (suites/digest.py).
    other = (spec.peers.get(impl) if impl in spec.peers else
             spec.torch if impl in ("torch-cpu", COMPILED, "torch-cuda") else None)
    if other is not None:
        benchmark.extra_info["twin"] = twin_digest(other)
    if not benchmark.enabled:  # --benchmark-disable: a smoke test of every callable
        if why := _unavailable(impl):
            pytest.skip(why)
        fn = _callable(spec, impl, case, _case(name, size, dtype)[1], pass_)
        if fn is None:
            pytest.skip(f"{impl}: nothing comparable to the reference's {pass_} pass")
        benchmark(fn)
        return
    result = _measure_group(request, key, benchmark)
    if impl in result.skipped:  # type: ignore[attr-defined]
        pytest.skip(result.skipped[impl])  # type: ignore[attr-defined]
    compiled = result.compiled  # type: ignore[attr-defined]
    result = _part(result, impl)
    if result is not _RESULTS.get(key):
        benchmark.extra_info["timer"] = "CUDA events on torch's current stream"
    if impl in result.errors:
        raise result.errors[impl]
    if impl in compiled:
        benchmark.extra_info["compiled"] = compiled[impl]
    benchmark.extra_info.update(
        first_call_s=result.first_call_s[impl], compile_s=result.compile_s[impl],
        paired={"rounds": len(result.times[impl]), "partners": result.timed,
                "attempts": result.attempts,
                "order": "every order once per block of rounds, the blocks shuffled",
                "warmup": ("one untimed call before each timed round"
                           if impl in result.warm_up else
                           f"none (calls over {timing.WARM_UP_BELOW_S * 1e3:g} ms)"),
                "recalibrated": impl in result.recalibrated,
                "iterations": result.iterations[impl], "stall": result.stall},
        ratios={other: {**r, "reasons": result.pair_reasons(impl, other)}
                for other, r in result.ratios[impl].items()},
        stable=not result.reasons(impl),
        noise={**result.noise[impl], "reasons": result.reasons(impl),
               "stable": not result.reasons(impl)},
    )
    _record(benchmark, result.times[impl], result.iterations[impl])


def _record(benchmark, times: list[float], iterations: int) -> None:
    """Hand measured per-call times to pytest-benchmark as if it had timed them itself.

    pytest-benchmark has no public call for externally timed rounds; ``_make_stats`` and
    ``Metadata.update`` are what its own ``pedantic`` mode uses (checked by the selftest).
    """
    benchmark._mode = "interleaved(...)"
    stats = benchmark._make_stats(iterations)
    for t in times:
        stats.update(t * iterations)
