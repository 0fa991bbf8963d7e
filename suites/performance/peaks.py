"""This machine's attainable peaks, measured once per benchmark run for the roofline columns.

- FLOP/s: a large float32 matmul (torch, all intra-op threads): 2 n^3 flops per product.
- Bandwidth: a large copy (torch ``copy_``), counting the bytes read and the bytes written.

Each is the best of ``repeat`` samples, with every sample kept. On a busy machine every sample
is low, so a best-of alone would quietly understate the peak (and overstate every "% of
peak"): the result is ``stable`` only when the best two samples agree within 10% AND other
processes left the cores alone while measuring. The report flags unstable peaks and the columns
computed from them.

"Other processes" is the machine's busy CPU time over the probe (``/proc/stat``) less this
process's own (``os.times``), as a share of the cores' capacity: the 1-minute load average
alone also counts what this job ran just before (the main job measures the peaks right after
its correctness phase kept both cores busy, and then reported a load of 2.56 on 2 cores that
was its own). Where ``/proc/stat`` is missing, the load average is the fallback.
"""

from __future__ import annotations

import os
import time

import torch

AGREE = 1.10
# Other processes' share of the cores' time while measuring above which the samples may all be
# low: a tenth of the machine (system daemons take well under 1%).
OTHERS_MAX = 0.10


def _machine_busy_s() -> float | None:
    """Seconds of CPU time every process has used since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _others_share(machine_busy_s: float, own_s: float, wall_s: float, cores: int) -> float:
    """Other processes' CPU time over a window as a share of the cores' capacity (0 to 1).
    /proc/stat counts in clock ticks (10 ms), so a few ticks of rounding are forgiven."""
    if wall_s <= 0:
        return 0.0
    slack = 4.0 / os.sysconf("SC_CLK_TCK")
    return min(1.0, max(0.0, machine_busy_s - own_s - slack) / (wall_s * cores))


def _samples(fn, repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(device: str = "cpu", n: int = 2048, copy_mib: int = 256, repeat: int = 7) -> dict:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def matmul():
        torch.mm(a, b)
        sync()

    src = torch.empty(copy_mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        sync()

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_before, own_before, wall_before = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
    flops = sorted((2.0 * n**3 / t for t in _samples(matmul, repeat)), reverse=True)
    rates = sorted((2.0 * src.numel() * src.element_size() / t for t in _samples(copy, repeat)),
                   reverse=True)
    busy_after, own_after, wall_after = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    reasons = []
    for label, xs in (("matmul", flops), ("copy", rates)):
        if xs[0] > AGREE * xs[1]:
            reasons.append(f"{label}: best two samples differ by {xs[0] / xs[1] - 1:.0%}")
    cores = os.cpu_count() or 1
    others = None
    if busy_before is not None and busy_after is not None:
        others = _others_share(busy_after - busy_before, own_after - own_before,
                               wall_after - wall_before, cores)
    if device == "cpu" and others is not None:
        if others >= OTHERS_MAX:
            reasons.append(f"other processes used {others:.0%} of the {cores} cores while "
                           f"measuring: every sample may be low")
    elif device == "cpu" and load_before is not None and max(load_before, load_after) >= cores:
        reasons.append(f"load average {max(load_before, load_after):.2f} >= {cores} cores "
                       f"while measuring: every sample may be low")
    return {
        "device": device,
        "flops_per_s": flops[0],
        "bytes_per_s": rates[0],
        "stable": not reasons,
        "reasons": reasons,
        "samples": {"flops_per_s": flops, "bytes_per_s": rates},
        "others_share": others,
        "method": f"best of {repeat}: float32 matmul {n}x{n}; copy of {copy_mib} MiB "
                  f"(read + write)",
    }
