"""The bad-input battery catches each kind of fault it exists for, within the CI budget.

A toy algorithm, ``y = x^2`` elementwise with ``dx = 2 x g``, written correctly passes the
battery (no false alarm); each deliberately broken copy (one fault each) must be reported, with
the fault's own wording. The toys are Specs that are not registered in the catalog.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

from reference import _validate as v
from suites.catalog.spec import Case, Cost, Spec
from suites.correctness import battery as B


class SquareCtx(NamedTuple):
    x: np.ndarray


class OtherCtx(NamedTuple):  # the same layout as SquareCtx, another algorithm's type
    x: np.ndarray


def _forward(x, *, c_strides=False, ravel_k=False, reinterpret=False, refuse_read_only=False,
             keep=True, check_dtype=True):
    given = x
    if refuse_read_only and isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError("x must be writeable")  # a valid array refused
    if reinterpret and isinstance(x, np.ndarray) and not x.dtype.isnative:
        x = x.view(x.dtype.newbyteorder("="))  # the bytes read as if native: wrong values
    if c_strides and isinstance(x, np.ndarray) and x.ndim and min(x.strides) > 0 and not (
            x.flags.c_contiguous or x.flags.f_contiguous):
        # A kernel that assumes packed rows reads the memory after the first element (here
        # only forward strides, so that the toy reads inside the array's buffer).
        x = as_strided(x, x.shape, np.empty(x.shape, x.dtype).strides)
    if ravel_k and isinstance(x, np.ndarray):
        x = x.ravel(order="K").reshape(x.shape)  # memory order taken for C order
    xc = v.float_array(x, "x") if check_dtype else np.asarray(x, dtype=np.float64)
    y = xc * xc
    return y, SquareCtx(v.keep(xc, given) if keep else xc)


def _backward(ctx, grad_out, *, check_ctx=True, duck_ctx=False, check_grad=True,
              cast_grad=False):
    if check_ctx:
        v.ctx_of(ctx, SquareCtx, "square")
    elif duck_ctx and ctx is None:
        raise TypeError("ctx must not be None")  # but any object with an ``x`` will do
    # Without the check, a None ctx is taken for "no input saved": zeros.
    x = np.zeros(np.shape(grad_out)) if ctx is None else ctx.x
    if check_grad:
        g = v.grad_like(grad_out, "grad_out", x)
    elif cast_grad:
        g = np.asarray(grad_out, dtype=x.dtype)  # casts whatever dtype it gets
        if g.shape != x.shape:
            raise ValueError(f"grad_out must have shape {x.shape}, got {g.shape}")
    else:
        g = grad_out  # broadcasts whatever shape comes
    return (2 * x * g,)


def _toy(name: str, fwd_opts=None, bwd_opts=None) -> Spec:
    fwd_opts, bwd_opts = fwd_opts or {}, bwd_opts or {}

    def small(dtype):
        rng = np.random.default_rng(0)
        return Case({"x": np.asarray(rng.standard_normal((3, 4)), dtype=dtype)})

    return Spec(
        name=name, family="toy", summary="y = x^2",
        forward=lambda x: _forward(x, **fwd_opts),
        backward=lambda ctx, g: _backward(ctx, g, **bwd_opts), grad_inputs=("x",),
        torch=None, cases=lambda dtype: st.just(small(dtype)),
        sizes={"small": small, "medium": small, "large": small},
        cost=lambda case: Cost(0.0, 0.0),
    )


def _other_ctx(spec, dtype):
    x = np.arange(12.0, dtype=dtype).reshape(3, 4)
    return [("other", None, OtherCtx(x))]


# toy -> (forward options, backward options, words one reported problem must contain)
FAULTS = {
    "backward accepts ctx=None": ({}, {"check_ctx": False}, "ctx=None: accepted a bad call"),
    "backward accepts a foreign ctx": ({}, {"check_ctx": False, "duck_ctx": True},
                                       "ctx of other: accepted a bad call"),
    "grad_out of a wrong shape accepted": ({}, {"check_grad": False},
                                           "grad_out with a leading axis: accepted a bad call"),
    "grad_out of a wrong dtype accepted": ({}, {"check_grad": False, "cast_grad": True},
                                           "grad_out as float"),
    "strided input misread": ({"c_strides": True}, {}, "x strided: forward"),
    "Fortran input misread": ({"ravel_k": True}, {}, "x Fortran: forward"),
    "big-endian input misread": ({"reinterpret": True}, {}, "x big-endian: forward"),
    "read-only input refused": ({"refuse_read_only": True}, {}, "x read-only: ValueError"),
    "ctx keeps the caller's array": ({"keep": False}, {},
                                     "backward after the inputs and outputs were overwritten"),
    "forward accepts any dtype": ({"check_dtype": False}, {}, "x as int64: accepted a bad call"),
}


def test_correct_toy_passes():
    problems, calls = B.battery(_toy("square"), _other_ctx)
    assert not problems, problems
    assert calls > 40  # the battery did run: probes of both dtypes, layouts, mutation


# A misread array makes huge or complex values: the broken toys' warnings are expected.
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("fault", FAULTS)
def test_battery_catches(fault):
    fwd, bwd, words = FAULTS[fault]
    problems, _ = B.battery(_toy("broken_square", fwd, bwd), _other_ctx)
    assert any(words in p for p in problems), (
        f"the battery missed '{fault}'; it reported:\n  " + "\n  ".join(problems))


def test_layout_faults_named_alone():
    """A layout fault found in a mixed call is traced to its (input, variant) pair."""
    problems, _ = B.battery(_toy("broken_square", {"ravel_k": True}), _other_ctx)
    layout = [p for p in problems if "Fortran" in p or "reversed" in p]
    assert layout and all("together" not in p for p in layout), problems


def test_select_covers_arguments_and_kinds():
    """Within the budget, each argument gets a probe and the two dtypes take different ones."""
    def probe(arg, kind):
        return B.Probe(f"{arg} {kind}", lambda: None, (arg,), True)

    kinds = [f"k{i}" for i in range(8)]
    buckets = {f"a{j}": [probe(f"a{j}", k) for k in kinds] for j in range(5)}
    first, second = B.select(buckets, 10, 0), B.select(buckets, 10, 1)
    assert {p.names[0] for p in first} == set(buckets)
    assert len({p.what.split()[1] for p in first}) >= 5  # kinds spread over the arguments
    assert not {p.what for p in first} & {p.what for p in second}
    assert len(B.select(buckets, None, 0)) == 40


def test_oversized_small_case_is_replaced_by_a_draw():
    spec = _toy("square")
    big = Case({"x": np.ones(B.MAX_CASE_ELEMENTS + 1)})
    spec = Spec(**{**spec.__dict__, "sizes": {k: (lambda dtype: big) for k in spec.sizes}})
    case = B.small_case(spec, np.dtype(np.float32))
    assert B.case_size(case) <= B.MAX_CASE_ELEMENTS
    assert case.inputs["x"].shape == (3, 4)  # the toy's strategy gives its 3 x 4 case
