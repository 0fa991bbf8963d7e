"""On a real GPU: time each reference.cuda kernel against torch on CUDA, and the copy bandwidth.

Not a test: a script for a session with a GPU (no simulator)::

    python suites/cudasim/gpu_check.py [--size large] [--dtype float32] [--reps 50]

Also the optimizers' in-place steps (``reference.cuda.optim``: sgd_, adagrad_, rmsprop_,
adam_, adamw_) against torch.optim's fastest path on CUDA (``fused=True``; Adagrad's fused
step is CPU-only and RMSprop has none: ``foreach=True``), each stepping its own copy of the
same tensors on at every call (forward only), with their share of the copy bandwidth too
(they are memory-bound).

Inputs are the catalog's benchmark sizes, made once as torch CUDA tensors and given to both
sides (numba reads them in place through ``__cuda_array_interface__``; both run on the
default stream). Each row is timed with CUDA events around one call, after warm-up (which
also compiles), synchronising after each call, the median of ``--reps`` interleaved rounds
(numba, then torch, in every round, so drift hits both alike). Prints a table: median
microseconds, numba / torch, effective GB/s from the spec's cost model and, for elementwise
kernels, that bandwidth as a share of the measured device-to-device copy bandwidth (the
issue's targets: elementwise >= 50% of copy bandwidth; softmax, cross-entropy and layer norm
within 2x of torch-cuda at the large size).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from suites import catalog
from suites.catalog.spec import as_tuple

ELEMENTWISE = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu")
OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
_TORCH_OPTIM = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam",
                "adamw": "AdamW"}


def _event_time(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3  # microseconds


def copy_bandwidth(nbytes: int = 1 << 28, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t = statistics.median(_event_time(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * nbytes / (t * 1e-6) / 1e9


def _pairs(name: str, case, pass_: str):
    """(numba-cuda callable, torch callable) doing the same pass on the same tensors."""
    from suites.cudasim.test_cuda_kernels import CUDA

    spec = catalog.get(name)
    fwd, bwd = CUDA[name]
    dev = {k: torch.from_numpy(np.array(a)).cuda() for k, a in case.inputs.items()}
    out, ctx = fwd(*dev.values(), **case.params)
    ups = [torch.randn(tuple(o.shape), dtype=dev[next(iter(dev))].dtype, device="cuda")
           if np.dtype(o.dtype).kind == "f" else None for o in as_tuple(out)]
    ups = ups[: spec.n_diff_outputs]
    leaves = {k: t.detach().clone().requires_grad_(k in spec.grad_inputs and t.is_floating_point())
              for k, t in dev.items()}

    def numba_fwd():
        return fwd(*dev.values(), **case.params)

    def numba_both():
        o, c = fwd(*dev.values(), **case.params)
        return bwd(c, ups[0] if spec.n_diff_outputs == 1 else tuple(ups))

    def torch_fwd():
        with torch.no_grad():
            return spec.torch(*dev.values(), **case.params)

    def torch_both():
        outs = as_tuple(spec.torch(*leaves.values(), **case.params))[: spec.n_diff_outputs]
        wanted = [t for k, t in leaves.items() if t.requires_grad]
        return torch.autograd.grad(outs, wanted, grad_outputs=ups, allow_unused=True)

    return (numba_fwd, torch_fwd) if pass_ == "forward" else (numba_both, torch_both)


def _optim_pair(name: str, case):
    """(numba-cuda in-place step, torch.optim fused/foreach step), each on its own CUDA copies
    of the case's tensors."""
    from reference.cuda import optim

    hyper = {k: v for k, v in case.params.items()
             if k not in ("step", "initial_accumulator_value")}
    step = case.params["step"]
    ours = {k: torch.from_numpy(np.array(a)).cuda() for k, a in case.inputs.items()}
    state = {k: t for k, t in ours.items() if k not in ("params", "grads")}
    step_ = getattr(optim, f"{name}_")

    def numba_step():
        step_(ours["params"], ours["grads"], state, step, **hyper)

    theirs = {k: torch.from_numpy(np.array(a)).cuda() for k, a in case.inputs.items()}
    p = theirs["params"]
    p.grad = theirs["grads"]
    fused = name in ("sgd", "adam", "adamw")
    flag = {"fused": True} if fused else {"foreach": True}
    opt = getattr(torch.optim, _TORCH_OPTIM[name])([p], **flag, **hyper)
    for k, t in theirs.items():
        if k not in ("params", "grads"):
            opt.state[p][k] = t
    if name != "sgd":  # torch's step counter: on the device for the fused kernels
        opt.state[p]["step"] = torch.tensor(float(step - 1), dtype=torch.float32,
                                            device="cuda" if fused else "cpu")
    return numba_step, opt.step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=("small", "medium", "large"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (torch sees none)")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = np.dtype(args.dtype)
    bw = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw:.0f} GB/s; "
          f"size {args.size}, {dtype}, median of {args.reps}")
    head = (f"{'algorithm':<16}{'pass':<18}{'numba-cuda us':>14}{'torch-cuda us':>14}"
            f"{'ratio':>8}{'GB/s':>9}{'% copy':>8}")
    print(head)
    print("-" * len(head))
    from suites.cudasim.test_cuda_kernels import NAMES

    for name in (*NAMES, *OPTIMIZERS):
        spec = catalog.get(name)
        case = spec.sizes[args.size](dtype)
        for pass_ in ("forward",) if name in OPTIMIZERS else ("forward", "forward+backward"):
            ours, theirs = (_optim_pair(name, case) if name in OPTIMIZERS
                            else _pairs(name, case, pass_))
            for _ in range(3):  # warm-up: compiles, loads caches, settles clocks
                ours()
                theirs()
            torch.cuda.synchronize()
            t_ours, t_theirs = [], []
            for _ in range(args.reps):
                t_ours.append(_event_time(ours))
                t_theirs.append(_event_time(theirs))
            mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
            gbs = spec.cost(case).bytes / (mo * 1e-6) / 1e9
            memory_bound = name in ELEMENTWISE + OPTIMIZERS and pass_ == "forward"
            share = f"{100 * gbs / bw:7.0f}%" if memory_bound else ""
            print(f"{name:<16}{pass_:<18}{mo:14.1f}{mt:14.1f}{mo / mt:8.2f}{gbs:9.0f}{share:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
