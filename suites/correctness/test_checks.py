"""The five generic checks, parametrized over every spec in the catalog and every dtype.

1. forward parity with the torch twin     2. gradient parity (random upstream gradient)
3. float64 gradcheck of the reference     4. invariants       5. invalid inputs (test_invalid)
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suites.catalog import all_specs
from suites.catalog.spec import FLOAT64
from suites.catalog.strategies import seeds
from suites.correctness import checks

SPECS = all_specs()


def _params(select=lambda spec: True, dtypes=None):
    return [
        pytest.param(spec, dtype, id=f"{spec.name}-{dtype}")
        for spec in SPECS if select(spec)
        for dtype in (dtypes or spec.dtypes)
    ]


@pytest.mark.parametrize(("spec", "dtype"), _params(lambda s: s.torch is not None))
@given(data=st.data())
def test_forward(spec, dtype, device, record, data):
    record.bind(spec.name, spec.family, "forward", dtype, device)
    case = data.draw(spec.cases(dtype), label="case")
    record.examples += 1
    checks.check_forward(spec, case, device, record)


@pytest.mark.parametrize(("spec", "dtype"),
                         _params(lambda s: s.differentiable and s.torch is not None))
@given(data=st.data())
def test_gradient(spec, dtype, device, record, data):
    record.bind(spec.name, spec.family, "gradient", dtype, device)
    case = data.draw(spec.cases(dtype), label="case")
    rng = data.draw(seeds(), label="upstream gradient seed")
    record.examples += 1
    checks.check_gradient(spec, case, rng, device, record)


@pytest.mark.parametrize(("spec", "dtype"), _params(lambda s: s.differentiable, (FLOAT64,)))
@given(data=st.data())
def test_gradcheck(spec, dtype, record, data):
    record.bind(spec.name, spec.family, "gradcheck", dtype, "cpu")
    case = data.draw(spec.cases(dtype), label="case")
    rng = data.draw(seeds(), label="direction seed")
    record.examples += 1
    checks.check_gradcheck(spec, case, rng, record)


@pytest.mark.parametrize(("spec", "dtype"), _params(lambda s: bool(s.invariants)))
@given(data=st.data())
def test_invariants(spec, dtype, record, data):
    record.bind(spec.name, spec.family, "invariants", dtype, "cpu")
    case = data.draw(spec.cases(dtype), label="case")
    record.examples += 1
    checks.check_invariants(spec, case, record)
