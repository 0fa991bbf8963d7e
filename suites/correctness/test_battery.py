"""Check 6: a generated battery of bad and unusual calls of every forward and backward.

Driven by the catalog only (``Spec`` fields), so every algorithm gets it with no edit here;
the probes, how they are chosen within a budget and what each must give are described in
``suites/correctness/battery.py``. In short, for each spec and dtype:

- **bad calls** (strict): a non-array or a wrongly typed array for each input, strings,
  bools, NaN and huge integers for each parameter, an unknown keyword; for backward a None,
  a foreign (other algorithm's) ctx, a grad_out of the wrong shape, dtype or kind.
  Each must raise TypeError/ValueError whose message names the argument; never a Numba
  error, an AttributeError, an OverflowError, a MemoryError or a silent answer.
- **doubtful calls** (lenient): a rank more or less, an empty or a NaN-filled input,
  negative or zero parameters, ints for bools: each may be accepted (torch accepts several)
  or refused, but a refusal must be a clean TypeError/ValueError naming the argument.
- **unusual but valid arrays** (exact): every input, and grad_out, as a non-contiguous
  slice, in Fortran order, with negative strides, big-endian, read-only: forward and backward
  must give bit-for-bit the answer of the C-contiguous copy.
- **mutation after forward**: overwriting every input (and the returned outputs) in place
  between forward and backward must not change the gradients.

CI runs ``battery.BUDGET`` argument probes per dtype, about 100 calls per spec in all (8,366
for 84 specs, 12.6 s of CPU warm, measured on 2026-12-01; the battery this replaced made over
21,000 argument and backward probes alone and took 3-4 times as long); the ``thorough``
Hypothesis profile runs every probe. A spec fails with the full list of its
problems, so one run shows them all. ``suites/selftest/test_battery_power.py`` shows that the
battery catches each kind of fault in a deliberately broken toy spec.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from suites.catalog import all_specs, get
from suites.catalog.spec import FLOAT32, Spec
from suites.correctness import battery as B

SPECS = all_specs()
# Contexts offered to every backward besides its family's: cheap forwards of other families.
POOL = ("leaky_relu", "mse_loss", "l2_penalty", "linear")
_CTX: dict[str, object] = {}


def _ctx_of(name: str):
    """The context of spec ``name``'s small float32 (else first-dtype) forward, made once."""
    if name not in _CTX:
        other = get(name)
        dtype = FLOAT32 if FLOAT32 in other.dtypes else other.dtypes[0]
        _CTX[name] = other.run_forward(other.sizes["small"](dtype))[1]
    return _CTX[name]


def foreign(spec: Spec, dtype: np.dtype) -> list[tuple[str, Spec, object]]:
    """Contexts of two family siblings (the likeliest to share a layout) and two of the pool."""
    siblings = [s for s in SPECS if s.family == spec.family and s.differentiable]
    names = []
    if spec in siblings and len(siblings) > 1:
        at = siblings.index(spec)
        names += [siblings[(at + 1) % len(siblings)].name, siblings[at - 1].name]
    names += [n for n in POOL if get(n).family != spec.family][:2]
    out = []
    for name in dict.fromkeys(n for n in names if n != spec.name):
        try:
            out.append((name, get(name), _ctx_of(name)))
        except Exception:  # noqa: BLE001 - a broken spec fails its own battery
            pass
    return out


def _budget() -> int | None:
    return None if settings.get_current_profile_name() == "thorough" else B.BUDGET


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_battery(spec, record):
    record.bind(spec.name, spec.family, "battery", None, "cpu")
    problems, calls = B.battery(spec, foreign, budget=_budget())
    record.examples += calls
    assert not problems, (f"{spec.name}: {len(problems)} of {calls} battery calls "
                          "misbehaved:\n  " + "\n  ".join(problems))
