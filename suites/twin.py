"""Running a spec's torch twin on a case, on any device, forward and backward."""

from __future__ import annotations

import numpy as np
import torch

from suites.catalog.spec import Case, Spec, as_tuple


def resolve_device(name: str) -> str:
    """``auto`` means CUDA when torch sees a GPU, else CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_tensor(a: np.ndarray, device: str, requires_grad: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True)).to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def tensors(spec: Spec, case: Case, device: str, *, grad: bool) -> dict[str, torch.Tensor]:
    return {
        name: to_tensor(a, device, requires_grad=grad and name in spec.grad_inputs)
        for name, a in case.inputs.items()
    }


def call(spec: Spec, case: Case, inputs: dict[str, torch.Tensor]) -> tuple:
    return as_tuple(spec.torch(*inputs.values(), **case.params))


def forward(spec: Spec, case: Case, device: str) -> tuple[np.ndarray, ...]:
    """The twin's outputs as numpy arrays."""
    with torch.no_grad():
        outs = call(spec, case, tensors(spec, case, device, grad=False))
    return tuple(to_numpy(o) for o in outs)


def gradients(spec: Spec, case: Case, device: str, grads: tuple[np.ndarray, ...],
              ) -> tuple[np.ndarray, ...]:
    """``torch.autograd.grad`` of the differentiable outputs against ``grads``, per grad input.

    An input the outputs do not depend on gets zeros (autograd returns None for it).
    """
    inputs = tensors(spec, case, device, grad=True)
    outs = call(spec, case, inputs)[: spec.n_diff_outputs]
    leaves = [inputs[name] for name in spec.grad_inputs]
    upstream = [to_tensor(g, device) for g in grads]
    got = torch.autograd.grad(outs, leaves, grad_outputs=upstream, allow_unused=True)
    return tuple(
        np.zeros(case.inputs[name].shape, case.inputs[name].dtype) if g is None else to_numpy(g)
        for name, g in zip(spec.grad_inputs, got, strict=True)
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
