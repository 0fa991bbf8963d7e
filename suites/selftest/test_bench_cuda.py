"""The benchmark's CUDA-event timing of numba-cuda beside torch-cuda, without a GPU.

``test_bench._CudaStamp`` is the timer ``timing.measure`` gets for the group of GPU
implementations: a CUDA event on torch's current stream whose difference is device time.
Here torch's events read a fake device clock that the timed callables advance by a known
amount, so what the harness reports is known exactly: numba-cuda and torch-cuda leave the
CPU group, are timed together by events (their per-call figures and ratio are the device
clock's, whatever the host clock did), and each implementation's test reads the Result that
timed it. Nothing here measures speed.
"""

from __future__ import annotations

import pytest
import torch

from suites.performance import test_bench as tb
from suites.performance import timing


class _Clock:
    """The fake device: a time in seconds that only the callables move."""

    now = 0.0


class _Event:
    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t: float | None = None

    def record(self, stream=None) -> None:
        self.t = _Clock.now

    def synchronize(self) -> None:
        assert self.t is not None, "waited for an event never recorded"

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1e3  # milliseconds, as torch's


class _Bench:
    _max_time, _min_time, _min_rounds, _disable_gc = 0.02, 1e-3, 8, False


def _device_work(seconds: float):
    def fn():
        _Clock.now += seconds
    return fn


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    _Clock.now = 0.0


def test_gpu_implementations_are_timed_together_by_events(fake_cuda, monkeypatch):
    unsynchronised = _device_work(1e-3)  # torch-cuda as the event group times it

    def torch_call(spec, case, grads, pass_, device, sync=True):
        assert device == "cuda" and sync is False
        return unsynchronised

    monkeypatch.setattr(tb, "_torch_call", torch_call)
    fns = {"numba": lambda: None, "torch-cpu": lambda: None,
           "numba-cuda": _device_work(3e-3), "torch-cuda": _device_work(2e-3)}
    gpu = tb._cuda_group(fns, None, None, (), "forward")
    assert list(fns) == ["numba", "torch-cpu"]
    assert list(gpu) == ["numba-cuda", "torch-cuda"] and gpu["torch-cuda"] is unsynchronised
    res = tb._measure_cuda(gpu, _Bench)
    # per call: the device time between the events, 3 ms and 1 ms in every round
    assert len(res.times["numba-cuda"]) >= _Bench._min_rounds
    assert res.times["numba-cuda"] == pytest.approx([3e-3] * len(res.times["numba-cuda"]))
    assert res.times["torch-cuda"] == pytest.approx([1e-3] * len(res.times["torch-cuda"]))
    assert res.ratios["numba-cuda"]["torch-cuda"]["value"] == pytest.approx(3.0)
    assert res.anchor == "numba-cuda"
    # each test reads the Result that timed its implementation
    main = timing.Result(names=list(fns))
    main.cuda_part = res  # type: ignore[attr-defined]
    assert tb._part(main, "numba-cuda") is res and tb._part(main, "torch-cuda") is res
    assert tb._part(main, "numba") is main
    main.cuda_part = None  # type: ignore[attr-defined]
    assert tb._part(main, "torch-cuda") is main


def test_without_numba_cuda_torch_cuda_stays_in_the_group(fake_cuda):
    fns = {"numba": lambda: None, "torch-cuda": _device_work(1e-3)}
    assert tb._cuda_group(fns, None, None, (), "forward") == {}
    assert list(fns) == ["numba", "torch-cuda"]


def test_no_gpu_skips_both_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for impl in tb.GPU_IMPLS:
        assert tb._unavailable(impl) == f"{impl}: torch sees no CUDA device on this machine"
    assert tb._unavailable("numba") is None


def test_numba_cuda_covers_each_kernel_pass():
    """Every CUDA_KERNELS entry names functions reference.cuda has; backward where named."""
    import importlib

    from suites.catalog import get

    for name, (module, fwd, bwd) in tb.CUDA_KERNELS.items():
        mod = importlib.import_module(f"reference.cuda.{module}")
        assert callable(getattr(mod, fwd)), (name, fwd)
        assert bwd is None or callable(getattr(mod, bwd)), (name, bwd)
        spec = get(name)
        assert tb._impls(spec, ["numba-cuda"]) == ["numba-cuda"]
    assert tb._impls(get("conv2d"), ["numba-cuda"]) == []
