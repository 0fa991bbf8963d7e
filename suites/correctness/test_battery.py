"""Check 6: a generated battery of bad and unusual calls of every forward and backward.

Driven by the catalog only (``Spec`` fields), so every algorithm gets it with no edit here.
For each spec, from its float32 and float64 "small" cases:

- **bad calls** (strict): a non-array or a wrongly typed array for each input, strings,
  bools, NaN and huge integers for each parameter, an unknown keyword; for backward a None,
  a foreign (other algorithm's) or a stale ctx, a grad_out of the wrong shape, dtype or kind.
  Each must raise TypeError/ValueError whose message names the argument; never a Numba
  error, an AttributeError, an OverflowError, a MemoryError or a silent answer.
- **doubtful calls** (lenient): a rank more or less, an empty or a NaN-filled input,
  negative or zero parameters, ints for bools: each may be accepted (torch accepts several)
  or refused, but a refusal must be a clean TypeError/ValueError naming the argument.
- **unusual but valid arrays** (exact): every float input, and grad_out, as a non-contiguous
  slice, in Fortran order, with negative strides, big-endian, read-only: forward and backward
  must give bit-for-bit the answer of the C-contiguous copy.
- **mutation after forward**: overwriting every input (and the returned outputs) in place
  between forward and backward must not change the gradients (the ctx keeps private copies,
  see each reference module's docstring).

A spec fails with the full list of its problems, so one run shows them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from suites.catalog import all_specs
from suites.catalog.spec import FLOAT32, FLOAT64, Case, as_tuple

SPECS = all_specs()
HUGE = (2**31, 2**63, 10**30)


@dataclass
class Probe:
    what: str                 # for the failure list
    call: Callable[[], object]
    names: tuple[str, ...]    # an error must name one of these (empty: any clean error)
    strict: bool              # True: must raise; False: may also succeed


def _clean(exc: BaseException, names: tuple[str, ...]) -> str:
    """'' when ``exc`` is a clean, argument-naming refusal, else what is wrong with it."""
    kind = type(exc)
    if not issubclass(kind, (TypeError, ValueError)) or "numba" in kind.__module__:
        return f"{kind.__module__}.{kind.__name__}: {str(exc)[:200]}"
    msg = str(exc)
    if names and not any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", msg) for n in names):
        return f"{kind.__name__} does not name {' or '.join(names)}: {msg[:200]}"
    return ""


def _run(probe: Probe) -> str:
    try:
        probe.call()
    except Exception as exc:  # noqa: BLE001 - classifying any exception is the point
        return _clean(exc, probe.names)
    return "accepted a bad call" if probe.strict else ""


# ---------------------------------------------------------------------------------------------
# outputs, compared exactly


def _leaves(x):
    if isinstance(x, tuple | list):
        for item in x:
            yield from _leaves(item)
    else:
        yield x


def _same(a, b, what: str) -> str:
    la, lb = list(_leaves(a)), list(_leaves(b))
    if len(la) != len(lb):
        return f"{what}: {len(la)} results vs {len(lb)}"
    for i, (p, q) in enumerate(zip(la, lb, strict=True)):
        if p is None or q is None:
            if p is not q:
                return f"{what}[{i}]: {type(p).__name__} vs {type(q).__name__}"
            continue
        p, q = np.asarray(p), np.asarray(q)
        if p.shape != q.shape or p.dtype != q.dtype:
            return f"{what}[{i}]: {p.dtype}{p.shape} vs the C-contiguous call's {q.dtype}{q.shape}"
        if not np.array_equal(p, q, equal_nan=p.dtype.kind in "fc"):
            return f"{what}[{i}]: values differ from the C-contiguous call's"
    return ""


# ---------------------------------------------------------------------------------------------
# variants of one array


def _strided(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    big[..., 1::2] = a
    return big[..., 1::2]


def _reversed(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    return np.ascontiguousarray(a[::-1])[::-1]


def _big_endian(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">"))


def _read_only(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b.flags.writeable = False
    return b


UNUSUAL = {"strided": _strided, "Fortran": np.asfortranarray, "reversed": _reversed,
           "big-endian": _big_endian, "read-only": _read_only}


def _upstream(outs: tuple, n: int, rng: np.random.Generator) -> tuple:
    return tuple(np.asarray(rng.standard_normal(np.shape(o)), dtype=np.asarray(o).dtype)
                 for o in outs[:n])


def _grad_arg(spec, grads: tuple):
    return grads[0] if spec.n_diff_outputs == 1 else tuple(grads)


# ---------------------------------------------------------------------------------------------
# probes


def _input_probes(spec, case: Case) -> list[Probe]:
    names = list(case.inputs)
    first_float = next((n for n, a in case.inputs.items() if a.dtype.kind == "f"), None)
    # A shape or dtype that disagrees with another input may be blamed on either of them.
    anyone = tuple(names) + tuple(case.params)
    probes = []
    for name in names:
        a = case.inputs[name]

        def call(value, name=name):
            inputs = dict(case.inputs)
            inputs[name] = value
            return lambda: spec.forward(*inputs.values(), **case.params)

        n = (name,)
        if a.dtype.kind == "f":
            bad_dtypes = (np.int64, np.complex128, np.bool_, object)
        elif a.dtype.kind == "b":
            bad_dtypes = (np.float32, np.int64, object)
        else:
            bad_dtypes = (np.float32, np.complex128, object)
        for dt in bad_dtypes:
            probes.append(Probe(f"{name} as {np.dtype(dt)}", call(a.astype(dt)), n, True))
        probes.append(Probe(f"{name} as a list", call(a.tolist()), n, True))
        probes.append(Probe(f"{name} as a string", call("abc"), n, True))
        if a.dtype.kind == "f":
            other = FLOAT64 if a.dtype == FLOAT32 else FLOAT32
            probes.append(Probe(f"{name} as {other} beside {a.dtype}", call(a.astype(other)),
                                anyone, name != first_float))
            probes.append(Probe(f"{name} all NaN", call(np.full_like(a, np.nan)), anyone,
                                False))
        probes.append(Probe(f"{name} as None", call(None), n, False))
        probes.append(Probe(f"{name} with a leading axis", call(a[None]), anyone, False))
        if a.ndim:
            probes.append(Probe(f"{name} without its first axis", call(a[0]), anyone, False))
            probes.append(Probe(f"{name} empty", call(a[:0]), anyone, False))
    return probes


def _param_values(value) -> list[tuple[str, object, bool]]:
    """(description, bad value, strict) for one parameter's current value."""
    out: list[tuple[str, object, bool]] = [("as a string", "abc", not isinstance(value, str)),
                                           ("as an object", object(), True)]
    if isinstance(value, bool | np.bool_):
        out += [("as 1", 1, False), ("as None", None, False)]
    elif isinstance(value, int | np.integer):
        out += [(f"= {h}", h, True) for h in HUGE]
        out += [("= True", True, True), ("= False", False, True), ("= 2.5", 2.5, True),
                ("= -1", -1, False), ("= 0", 0, False), ("= NaN", float("nan"), True)]
    elif isinstance(value, float | np.floating):
        out += [("= NaN", float("nan"), True), ("= inf", float("inf"), False),
                ("= -1.0", -1.0, False), ("= True", True, True), ("= 1e300", 1e300, False)]
    elif isinstance(value, str):
        out += [("= ''", "", True), ("= None", None, True), ("= 1", 1, True)]
    elif value is None:
        out += [("= 2**31", 2**31, False), ("= 0", 0, False), ("= -1", -1, False),
                ("= True", True, False)]
    elif isinstance(value, tuple | list):
        out += [("= ()", (), False), ("with a huge entry", tuple(HUGE[:1]) * len(value), False),
                ("with a bool entry", (True,) * len(value), False)]
    return out


def _param_probes(spec, case: Case) -> list[Probe]:
    probes = []
    for name, value in case.params.items():
        for desc, bad, strict in _param_values(value):
            params = dict(case.params, **{name: bad})
            probes.append(Probe(f"{name} {desc}",
                                lambda p=params: spec.forward(*case.inputs.values(), **p),
                                (name,), strict))
    params = dict(case.params, no_such_option=1)
    probes.append(Probe("an unknown keyword",
                        lambda: spec.forward(*case.inputs.values(), **params),
                        ("no_such_option",), True))
    return probes


def _backward_probes(spec, case: Case, foreign: dict) -> list[Probe]:
    outs, ctx = spec.run_forward(case)
    rng = np.random.default_rng(0)
    grads = _upstream(outs, spec.n_diff_outputs, rng)
    probes = [Probe("ctx=None", lambda: spec.backward(None, _grad_arg(spec, grads)),
                    ("ctx",), True),
              Probe("ctx an int", lambda: spec.backward(3, _grad_arg(spec, grads)),
                    ("ctx",), True)]
    for other, other_ctx in foreign.values():
        if other.backward is spec.backward or other.forward is spec.forward:
            continue
        # A context of the same type may come from the same reference function called with
        # other settings (two specs of one function): then the mismatch is grad_out's.
        names = ("ctx", "grad_out") if type(other_ctx) is type(ctx) else ("ctx",)
        probes.append(Probe(f"ctx of {other.name}",
                            lambda c=other_ctx: spec.backward(c, _grad_arg(spec, grads)),
                            names, True))
    gnames = ("grad_out",)
    for i, g in enumerate(grads):
        def with_g(value, i=i):
            gs = list(grads)
            gs[i] = value
            return lambda: spec.backward(ctx, _grad_arg(spec, gs))

        which = f"grad_out[{i}]" if spec.n_diff_outputs > 1 else "grad_out"
        other = FLOAT64 if g.dtype == FLOAT32 else FLOAT32
        probes += [
            Probe(f"{which} with a leading axis", with_g(g[None]), gnames, True),
            Probe(f"{which} as {other}", with_g(g.astype(other)), gnames, True),
            Probe(f"{which} as int64", with_g(g.astype(np.int64)), gnames, True),
            Probe(f"{which} as a list", with_g(g.tolist()), gnames, True),
            Probe(f"{which} as a string", with_g("abc"), gnames, True),
        ]
        if g.ndim:
            probes.append(Probe(f"{which} one shorter", with_g(g[..., :-1]), gnames, True))
    if spec.n_diff_outputs > 1:
        probes.append(Probe("grad_out tuple one short",
                            lambda: spec.backward(ctx, tuple(grads[:-1])), gnames, True))
        probes.append(Probe("grad_out as a single array",
                            lambda: spec.backward(ctx, grads[0]), gnames, True))
    return probes


def _unusual_problems(spec, case: Case) -> tuple[list[str], int]:
    problems, calls = [], 0
    outs, ctx = spec.run_forward(case)
    grads = None
    if spec.differentiable:
        grads = _upstream(outs, spec.n_diff_outputs, np.random.default_rng(1))
        ref = spec.run_backward(ctx, grads)
    for vname, make in UNUSUAL.items():
        for name, a in case.inputs.items():
            if a.dtype.kind != "f" or (vname in ("strided", "reversed", "Fortran") and a.ndim == 0):
                continue
            inputs = dict(case.inputs, **{name: make(a)})
            calls += 1
            try:
                o2, c2 = spec.run_forward(Case(inputs, case.params))
                msg = _same(o2, outs, f"forward with {name} {vname}")
                if not msg and spec.differentiable:
                    calls += 1
                    msg = _same(spec.run_backward(c2, grads), ref,
                                f"backward after {name} {vname}")
            except Exception as exc:  # noqa: BLE001
                msg = f"{name} {vname}: {type(exc).__name__}: {str(exc)[:200]}"
            if msg:
                problems.append(msg)
        if spec.differentiable:
            for i, g in enumerate(grads):
                if g.ndim == 0 and vname in ("strided", "reversed", "Fortran"):
                    continue
                gs = list(grads)
                gs[i] = make(g)
                calls += 1
                try:
                    msg = _same(spec.run_backward(ctx, tuple(gs)), ref,
                                f"backward with grad_out[{i}] {vname}")
                except Exception as exc:  # noqa: BLE001
                    msg = f"grad_out[{i}] {vname}: {type(exc).__name__}: {str(exc)[:200]}"
                if msg:
                    problems.append(msg)
    if spec.differentiable:
        # Mutation after forward: overwrite every input and returned output in place.
        inputs = {n: a.copy() for n, a in case.inputs.items()}
        o3, c3 = spec.run_forward(Case(inputs, case.params))
        for a in list(inputs.values()) + [o for o in o3 if isinstance(o, np.ndarray)]:
            if a.flags.writeable and a.size:
                a[...] = a.dtype.type(7) if a.dtype.kind != "b" else ~a
        calls += 2
        try:
            msg = _same(spec.run_backward(c3, grads), ref,
                        "backward after the inputs and outputs were overwritten")
        except Exception as exc:  # noqa: BLE001
            msg = f"backward after mutation: {type(exc).__name__}: {str(exc)[:200]}"
        if msg:
            problems.append(msg)
        # The same ctx used twice gives the same answer (backward must not consume it).
        calls += 1
        msg = _same(spec.run_backward(ctx, grads), ref, "a second backward on the same ctx")
        if msg:
            problems.append(msg)
    return problems, calls


_FOREIGN: dict = {}


def _foreign_ctxs() -> dict:
    if not _FOREIGN:
        for s in SPECS:
            if s.differentiable:
                try:
                    _FOREIGN[s.name] = (s, s.run_forward(s.sizes["small"](FLOAT32))[1])
                except Exception:  # noqa: BLE001 - a broken spec fails its own battery
                    pass
    return _FOREIGN


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_battery(spec, record):
    record.bind(spec.name, spec.family, "battery", None, "cpu")
    problems: list[str] = []
    for dtype in spec.dtypes:
        case = spec.sizes["small"](dtype)
        probes = _input_probes(spec, case) + _param_probes(spec, case)
        if spec.differentiable:
            probes += _backward_probes(spec, case, _foreign_ctxs())
        for probe in probes:
            record.examples += 1
            msg = _run(probe)
            if msg:
                problems.append(f"[{dtype}] {probe.what}: {msg}")
        found, calls = _unusual_problems(spec, case)
        record.examples += calls
        problems += [f"[{dtype}] {p}" for p in found]
    assert not problems, (f"{spec.name}: {len(problems)} of {record.examples} battery calls "
                          "misbehaved:\n  " + "\n  ".join(problems))
