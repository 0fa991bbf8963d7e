"""This machine's attainable peaks, measured once per benchmark run for the roofline columns.

- FLOP/s: a large float32 matmul (torch, all intra-op threads): 2 n^3 flops per product.
- Bandwidth: a large copy (torch ``copy_``), counting the bytes read and the bytes written.
Best of a few repetitions; about two seconds in all on the CPU.
"""

from __future__ import annotations

import time

import torch


def _best(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(device: str = "cpu", n: int = 2048, copy_mib: int = 256, repeat: int = 3) -> dict:
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

    t_mm = _best(matmul, repeat)
    t_cp = _best(copy, repeat)
    return {
        "device": device,
        "flops_per_s": 2.0 * n**3 / t_mm,
        "bytes_per_s": 2.0 * src.numel() * src.element_size() / t_cp,
        "method": f"float32 matmul {n}x{n}; copy of {copy_mib} MiB (read + write)",
    }
