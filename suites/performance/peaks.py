"""This machine's attainable peaks, measured once per benchmark run for the roofline columns.

- FLOP/s: a large float32 matmul (torch, all intra-op threads): 2 n^3 flops per product.
- Bandwidth: a large copy (torch ``copy_``), counting the bytes read and the bytes written.

Each is the best of ``repeat`` samples, with every sample kept. On a busy machine every sample
is low, so a best-of alone would quietly understate the peak (and overstate every "% of
peak"): the result is ``stable`` only when the best two samples agree within 10% AND the load
average while measuring stayed below the number of cores. The report flags unstable peaks and
the columns computed from them.
"""

from __future__ import annotations

import os
import time

import torch

AGREE = 1.10


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
    flops = sorted((2.0 * n**3 / t for t in _samples(matmul, repeat)), reverse=True)
    rates = sorted((2.0 * src.numel() * src.element_size() / t for t in _samples(copy, repeat)),
                   reverse=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    reasons = []
    for label, xs in (("matmul", flops), ("copy", rates)):
        if xs[0] > AGREE * xs[1]:
            reasons.append(f"{label}: best two samples differ by {xs[0] / xs[1] - 1:.0%}")
    cores = os.cpu_count() or 1
    if device == "cpu" and load_before is not None and max(load_before, load_after) >= cores:
        reasons.append(f"load average {max(load_before, load_after):.2f} >= {cores} cores "
                       f"while measuring: every sample may be low")
    return {
        "device": device,
        "flops_per_s": flops[0],
        "bytes_per_s": rates[0],
        "stable": not reasons,
        "reasons": reasons,
        "samples": {"flops_per_s": flops, "bytes_per_s": rates},
        "method": f"best of {repeat}: float32 matmul {n}x{n}; copy of {copy_mib} MiB "
                  f"(read + write)",
    }
