"""Check 5: bad input raises a clear TypeError/ValueError that names the argument.

Each spec lists its own invalid calls; on top, every float input of every spec is tried with
unsupported dtypes (float16, int32), so no algorithm can forget the dtype check.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from suites import twin
from suites.catalog import all_specs
from suites.catalog.spec import Case

SPECS = all_specs()


def _expect(spec, case: Case, error, match, record, description):
    record.bind(spec.name, spec.family, "invalid input", None, "cpu")
    record.examples += 1
    with pytest.raises(error, match=match) as info:
        spec.forward(*case.inputs.values(), **case.params)
    # A numba typing error is a TypeError subclass in some versions: refuse it explicitly.
    assert "numba" not in type(info.value).__module__, (
        f"{spec.name}: {description} raised a Numba error, not a checked one: {info.value}")


@pytest.mark.parametrize(
    ("spec", "invalid"),
    [pytest.param(s, inv, id=f"{s.name}-{inv.description}") for s in SPECS for inv in s.invalid],
)
def test_declared_invalid_inputs(spec, invalid, record):
    _expect(spec, invalid.case(), invalid.error, invalid.match, record, invalid.description)


@pytest.mark.parametrize("bad_dtype", [np.float16, np.int32])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_unsupported_dtypes(spec, bad_dtype, record):
    base = spec.sizes["small"](np.dtype(np.float32))
    floats = [name for name, a in base.inputs.items() if a.dtype.kind == "f"]
    assert floats, f"{spec.name}: its small case has no float input to check"
    for name in floats:
        inputs = dict(base.inputs)
        inputs[name] = inputs[name].astype(bad_dtype)
        named = rf"(?<!\w){re.escape(name)}(?!\w)"  # the name itself, e.g. params[0]
        _expect(spec, Case(inputs, base.params), TypeError, named, record,
                f"{name} as {np.dtype(bad_dtype)}")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.nondifferentiable], ids=lambda s: s.name)
def test_nondifferentiable_declaration(spec, record):
    """A spec that declares no derivative: torch must not be able to differentiate it either."""
    record.bind(spec.name, spec.family, "no derivative", None, "cpu")
    record.examples += 1
    case = spec.sizes["small"](np.dtype(np.float64))
    inputs = {n: twin.to_tensor(a, "cpu", requires_grad=a.dtype.kind == "f")
              for n, a in case.inputs.items()}
    outs = twin.call(spec, case, inputs)
    leaves = [t for t in inputs.values() if t.requires_grad]
    with pytest.raises(RuntimeError):
        if not any(o.requires_grad for o in outs):
            raise RuntimeError("the twin's output does not require grad")
        torch.autograd.grad([o.sum() for o in outs], leaves)
    assert not hasattr(spec.forward, "backward")
