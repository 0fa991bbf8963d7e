"""The spec contract: everything the generic tests and benchmarks need to know of an algorithm.

A spec binds a reference forward/backward to its torch twin, a Hypothesis strategy of cases,
named benchmark sizes, tolerances, a cost model, invariants and invalid inputs. The generic
checks in ``suites/correctness`` and the benchmark in ``suites/performance`` read nothing else,
so adding an algorithm is reference functions + one ``register(Spec(...))``.

Calling conventions the generic code relies on:

- ``Case.inputs`` is an ordered dict of numpy arrays: the reference's positional arguments and
  the twin's, in order. ``Case.params`` are keyword arguments given to both.
- ``spec.forward(*inputs, **params) -> (out, ctx)``; ``out`` is an array or a tuple of arrays.
  The first ``n_diff_outputs`` of them are differentiable; any others (new running statistics,
  optimizer state, indices) are compared in forward parity only.
- ``spec.backward(ctx, grad_out) -> tuple`` of gradients, one per name in ``grad_inputs``, in
  that order. ``grad_out`` is one array when ``n_diff_outputs == 1``, else a tuple.
- ``spec.torch(*tensors, **params)`` returns a tensor or a tuple of tensors, the same
  structure as ``out``. Float inputs named in ``grad_inputs`` arrive with ``requires_grad``.
  ``torch=None`` says torch has no twin for this algorithm (a decision tree, a linkage): the
  generic parity checks are then not generated for it, and the family's own tests must
  compare it with its oracle (scikit-learn, scipy).
- ``spec.peers`` are further implementations timed beside ``numba`` and ``torch-cpu``
  (scikit-learn, torch's fused optimizer step, ...): ``name -> factory(case, pass_)`` where
  the factory returns a zero-argument callable doing the same work as the reference's pass,
  or None when the peer has nothing comparable for that pass. The name is the benchmark's
  ``implementation`` (e.g. ``"sklearn"``, ``"torch-fused"``).
- Optional inputs (a bias, a norm's affine parameters): a case may leave them out of
  ``Case.inputs`` (then also every input after them, since inputs are positional). Backward
  returns ``None`` in the place of a left-out input, and the checks compare the gradients of
  the inputs the case has (``spec.grad_names(case)``). Benchmark sizes give every input.
- The case's dtype is that of its first float input (``case_dtype``): integer inputs (indices,
  labels) may come first, in the order the torch function takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
DTYPES = (FLOAT32, FLOAT64)
# The same two, float64 first: the benchmarks time a spec's first dtype by default, and the
# users of scikit-learn-style estimators work in float64.
FLOAT64_FIRST = (FLOAT64, FLOAT32)
SIZES = ("small", "medium", "large")


@dataclass(frozen=True)
class Case:
    """One input to an algorithm: arrays in call order, plus keyword parameters."""

    inputs: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self, limit: int = 6) -> str:
        """A short, replayable-by-eye description (shapes, dtypes, a few values, params)."""
        parts = []
        for name, a in self.inputs.items():
            flat = np.asarray(a).reshape(-1)
            head = np.array2string(flat[:limit], precision=9, separator=", ")
            more = f" ... (+{flat.size - limit})" if flat.size > limit else ""
            parts.append(f"{name}: {a.dtype}{list(a.shape)} {head}{more}")
        if self.params:
            parts.append("params: " + ", ".join(f"{k}={v!r}" for k, v in self.params.items()))
        return "; ".join(parts)


@dataclass(frozen=True)
class Tol:
    """Elementwise tolerance: ``|actual - expected| <= atol + rtol * |expected|``.

    ``wider(i)``: a larger tolerance for the i-th output that is dear to measure (more twin
    runs), asked for only where a comparison of that output fails this one (a pass here is a
    pass there). None: this one is final."""

    rtol: float
    atol: float
    wider: Callable[[int], Tol] | None = field(default=None, compare=False, repr=False)


# torch.testing.assert_close's defaults for these dtypes.
DEFAULT_TOL: Mapping[np.dtype, Tol] = {
    FLOAT32: Tol(rtol=1.3e-6, atol=1e-5),
    FLOAT64: Tol(rtol=1e-7, atol=1e-7),
}


@dataclass(frozen=True)
class Cost:
    """Work of one call: floating-point operations and the minimal bytes moved."""

    flops: float
    bytes: float


@dataclass(frozen=True)
class Invariant:
    """A property of the reference that needs no oracle.

    ``check(case, outs)`` raises ``AssertionError`` with a message when it does not hold;
    ``outs`` is the forward output as a tuple of arrays.
    """

    name: str
    check: Callable[[Case, tuple[np.ndarray, ...]], None]


@dataclass(frozen=True)
class Invalid:
    """A bad call and the error it must raise; ``match`` is a regex that must name the argument."""

    description: str
    case: Callable[[], Case]
    error: type[Exception]
    match: str


@dataclass(frozen=True, repr=False)
class Spec:
    name: str
    family: str
    summary: str
    forward: Callable[..., tuple[Any, Any]]
    torch: Callable[..., Any] | None
    cases: Callable[[np.dtype], Any]  # dtype -> hypothesis SearchStrategy[Case]
    sizes: Mapping[str, Callable[[np.dtype], Case]]  # "small"/"medium"/"large" -> builder
    cost: Callable[[Case], Cost]
    backward: Callable[..., tuple[np.ndarray, ...]] | None = None
    grad_inputs: tuple[str, ...] = ()
    n_diff_outputs: int = 1
    tol: Mapping[np.dtype, Tol] = field(default_factory=lambda: DEFAULT_TOL)
    grad_tol: Mapping[np.dtype, Tol] | None = None  # defaults to ``tol``
    invariants: tuple[Invariant, ...] = ()
    invalid: tuple[Invalid, ...] = ()
    # Moves a case away from points where the derivative does not exist (relu at 0, max ties)
    # so that central differences are meaningful; applied in the gradcheck only.
    smooth: Callable[[Case], Case] | None = None
    dtypes: tuple[np.dtype, ...] = DTYPES
    # For a forward-only spec: why it has no derivative. The generic checks then assert that
    # torch cannot differentiate the twin either, so the declaration is tested, not trusted.
    nondifferentiable: str = ""
    # A tolerance derived from the case itself, for algorithms whose rounding error grows with
    # the case (float32 sums of K products; normalizing by a small spread). Called as
    # ``case_tol(case, upstream)``: ``upstream`` is None for forward outputs and the upstream
    # gradients for gradients. Returns a Tol (its derivation in a comment), or None for
    # ``tol``/``grad_tol``.
    case_tol: Callable[[Case, tuple[np.ndarray, ...] | None], Tol | None] | None = None
    # Implementations timed beside numba and torch (see the module docstring).
    peers: Mapping[str, Callable[[Case, str], Callable[[], Any] | None]] = field(
        default_factory=dict)

    def __post_init__(self) -> None:
        if (self.backward is None) != (not self.grad_inputs):
            raise ValueError(f"spec {self.name!r}: backward and grad_inputs go together")
        missing = set(SIZES) - set(self.sizes)
        if missing:
            raise ValueError(f"spec {self.name!r}: sizes lacks {sorted(missing)}")

    def __repr__(self) -> str:
        return f"Spec({self.name!r})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's falsifying-example printer
        printer.text(repr(self))

    @property
    def differentiable(self) -> bool:
        return self.backward is not None

    def tolerance(self, dtype: np.dtype, *, grad: bool = False, case: Case | None = None,
                  upstream: tuple[np.ndarray, ...] | None = None) -> Tol:
        if self.case_tol is not None and case is not None:
            derived = self.case_tol(case, upstream if grad else None)
            if derived is not None:
                return derived
        table = (self.grad_tol or self.tol) if grad else self.tol
        return table[np.dtype(dtype)]

    def grad_names(self, case: Case) -> tuple[str, ...]:
        """The differentiable inputs this case has (optional ones may be left out)."""
        return tuple(name for name in self.grad_inputs if name in case.inputs)

    # -- calling the reference, uniformly ---------------------------------------------------

    def run_forward(self, case: Case) -> tuple[tuple[np.ndarray, ...], Any]:
        out, ctx = self.forward(*case.inputs.values(), **case.params)
        return as_tuple(out), ctx

    def run_backward(self, ctx: Any, grads: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        assert self.backward is not None
        grad_out = grads[0] if self.n_diff_outputs == 1 else tuple(grads)
        result = self.backward(ctx, grad_out)
        if not isinstance(result, tuple) or len(result) != len(self.grad_inputs):
            raise TypeError(
                f"{self.name} backward must return a tuple of {len(self.grad_inputs)} gradients "
                f"({', '.join(self.grad_inputs)}), got {type(result).__name__}"
            )
        return result


def case_dtype(case: Case) -> np.dtype:
    """The dtype of the case's first float input (integer indices or labels may come first)."""
    for a in case.inputs.values():
        if np.asarray(a).dtype.kind == "f":
            return np.asarray(a).dtype
    return next(iter(case.inputs.values())).dtype


def as_tuple(out: Any) -> tuple:
    if isinstance(out, tuple):
        return tuple(_flatten(out))
    return (out,)


def _flatten(items):
    for item in items:
        if isinstance(item, tuple | list):
            yield from _flatten(item)
        else:
            yield item


def elementwise_cost(flops_per_element: float, arrays_touched: int = 2) -> Callable[[Case], Cost]:
    """Cost model of an elementwise op: per-element flops, each array read or written once."""

    def cost(case: Case) -> Cost:
        first = next(iter(case.inputs.values()))
        n = first.size
        return Cost(flops=flops_per_element * n, bytes=arrays_touched * n * first.itemsize)

    return cost
