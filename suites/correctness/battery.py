"""The bad-input battery's engine: probes of one spec, chosen within a budget, and their verdicts.

``suites/correctness/test_battery.py`` runs it over the catalog; ``suites/selftest/
test_battery_power.py`` shows that it catches deliberately broken toy specs. Nothing here reads
the catalog, so a spec that is not registered (a toy) can be checked too.

Per spec and dtype, on the spec's "small" case (a few hundred to a few thousand elements, built
from a fixed seed; one over ``MAX_CASE_ELEMENTS`` is replaced by a deterministic draw from the
spec's ``cases`` strategy):

- **backward probes**, always all of them: ``ctx`` None, an int, and contexts of a few other
  algorithms (two siblings of the same family, whose contexts are the likeliest to share a
  layout, and two of other families); ``grad_out`` with a leading axis, one element shorter,
  of the other float dtype, int64, a list, a string; a tuple one short or a lone array for
  several outputs. Each must raise TypeError/ValueError naming ``ctx`` or ``grad_out``.
- **argument probes**, within a budget: for each input a bad dtype, a list, a string, None,
  the other float dtype, NaNs, an axis more or less, an empty array; for each parameter a
  string, an object, huge integers, bools, NaN, inf, negative and zero values; an unknown
  keyword (always). Strict ones must raise; doubtful ones (NaNs, ranks, signs) may also be
  accepted, but a refusal must be a clean TypeError/ValueError naming an argument.
  The full list is ordered round-robin over the arguments, each argument's list rotated by
  its position (so the first round gives every argument one probe and spreads the kinds
  over them); the first dtype takes the first ``budget`` probes of that order, the second
  dtype the next ``budget``, so the two together cover twice as many.
- **unusual but valid arrays**, all of them: every array input (floats, indices, masks) and
  every upstream gradient as a non-contiguous slice, in Fortran order, with negative strides,
  big-endian and read-only. Five forward+backward calls cover every (input, variant) pair, as
  a Latin square: in call ``c`` input ``i`` gets variant ``(i + c) mod 5``, so each call also
  mixes layouts. Outputs and gradients must equal the C-contiguous call's bit for bit. When a
  call differs, each of its pairs is rerun alone to name the culprit.
- **mutation after forward**: inputs and returned outputs overwritten in place between
  forward and backward must not change the gradients; a second backward on the same ctx gives
  the same answer.

``budget=None`` runs every argument probe (the ``thorough`` Hypothesis profile does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from suites.catalog.spec import FLOAT32, FLOAT64, Case, Spec

HUGE = (2**31, 2**63, 10**30)
# Argument probes per dtype in CI. Backward, layout and mutation probes come on top, unbudgeted.
BUDGET = 24
# A "small" case larger than this (total elements) is replaced by a draw from ``spec.cases``.
MAX_CASE_ELEMENTS = 1 << 15


@dataclass
class Probe:
    what: str                 # for the failure list
    call: Callable[[], object]
    names: tuple[str, ...]    # an error must name one of these (empty: any clean error)
    strict: bool              # True: must raise; False: may also succeed


def clean(exc: BaseException, names: tuple[str, ...]) -> str:
    """'' when ``exc`` is a clean, argument-naming refusal, else what is wrong with it."""
    kind = type(exc)
    if not issubclass(kind, (TypeError, ValueError)) or "numba" in kind.__module__:
        return f"{kind.__module__}.{kind.__name__}: {str(exc)[:200]}"
    msg = str(exc)
    if names and not any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", msg) for n in names):
        return f"{kind.__name__} does not name {' or '.join(names)}: {msg[:200]}"
    return ""


def run_probe(probe: Probe) -> str:
    try:
        probe.call()
    except Exception as exc:  # noqa: BLE001 - classifying any exception is the point
        return clean(exc, probe.names)
    return "accepted a bad call" if probe.strict else ""


# ---------------------------------------------------------------------------------------------
# the case


def case_size(case: Case) -> int:
    return sum(int(np.asarray(a).size) for a in case.inputs.values())


def draw_case(spec: Spec, dtype, *, examples: int = 8, seed: int = 0) -> Case:
    """A deterministic case from ``spec.cases(dtype)``: of ``examples`` draws with a fixed
    seed, the one with the most distinct float values within ``MAX_CASE_ELEMENTS``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    drawn: list[Case] = []

    @fixed_seed(seed)
    @settings(database=None, max_examples=examples, phases=[Phase.generate], deadline=None,
              derandomize=False, suppress_health_check=list(HealthCheck))
    @given(spec.cases(dtype))
    def collect(case):
        drawn.append(case)

    collect()

    def richness(case: Case) -> tuple[bool, int]:
        floats = [np.asarray(a) for a in case.inputs.values() if np.asarray(a).dtype.kind == "f"]
        return (case_size(case) <= MAX_CASE_ELEMENTS,
                sum(len(np.unique(a)) for a in floats if a.size))

    return max(drawn, key=richness)


def small_case(spec: Spec, dtype) -> Case:
    """The spec's "small" case, or a deterministic draw when that is over the size cap."""
    case = spec.sizes["small"](dtype)
    return case if case_size(case) <= MAX_CASE_ELEMENTS else draw_case(spec, dtype)


# ---------------------------------------------------------------------------------------------
# outputs, compared exactly


def _leaves(x):
    if isinstance(x, tuple | list):
        for item in x:
            yield from _leaves(item)
    else:
        yield x


def same(a, b, what: str) -> str:
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
# variants of one array (each holds the same values as ``a``)


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    big[..., 1::2] = a
    return big[..., 1::2]


def _reversed(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[::-1])[::-1]


def _big_endian(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">"))


def _read_only(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b.flags.writeable = False
    return b


# name -> (make, applies to): layouts need an axis; byte order needs a multi-byte dtype.
VARIANTS: dict[str, tuple[Callable, Callable[[np.ndarray], bool]]] = {
    "strided": (_strided, lambda a: a.ndim > 0),
    "Fortran": (np.asfortranarray, lambda a: a.ndim > 1),
    "reversed": (_reversed, lambda a: a.ndim > 0),
    "big-endian": (_big_endian, lambda a: a.dtype.itemsize > 1),
    "read-only": (_read_only, lambda a: True),
}
_VNAMES = tuple(VARIANTS)


def latin(arrays: Sequence[np.ndarray]) -> list[list[tuple[int, str]]]:
    """For each of the 5 calls, the (array index, variant) pairs it applies: in call ``c``
    array ``i`` gets variant ``(i + c) mod 5`` (where it applies to that array)."""
    calls = []
    for c in range(len(_VNAMES)):
        pairs = []
        for i, a in enumerate(arrays):
            name = _VNAMES[(i + c) % len(_VNAMES)]
            if isinstance(a, np.ndarray) and VARIANTS[name][1](a):
                pairs.append((i, name))
        calls.append(pairs)
    return calls


def _apply(arrays: Sequence, pairs: Iterable[tuple[int, str]]) -> list:
    out = list(arrays)
    for i, name in pairs:
        out[i] = VARIANTS[name][0](out[i])
    return out


def upstream(outs: tuple, n: int, rng: np.random.Generator) -> tuple:
    return tuple(np.asarray(rng.standard_normal(np.shape(o)), dtype=np.asarray(o).dtype)
                 for o in outs[:n])


def _grad_arg(spec: Spec, grads: Sequence):
    return grads[0] if spec.n_diff_outputs == 1 else tuple(grads)


# ---------------------------------------------------------------------------------------------
# probes


def input_probes(spec: Spec, case: Case) -> dict[str, list[Probe]]:
    """Bad and doubtful values of each input, per input name."""
    names = list(case.inputs)
    first_float = next((n for n, a in case.inputs.items() if a.dtype.kind == "f"), None)
    # A shape or dtype that disagrees with another input may be blamed on either of them.
    anyone = tuple(names) + tuple(case.params)
    buckets = {}
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
        probes = [Probe(f"{name} as {np.dtype(bad_dtypes[0])}", call(a.astype(bad_dtypes[0])),
                        n, True),
                  Probe(f"{name} as a list", call(a.tolist()), n, True)]
        if a.dtype.kind == "f":
            other = FLOAT64 if a.dtype == FLOAT32 else FLOAT32
            probes.append(Probe(f"{name} as {other} beside {a.dtype}", call(a.astype(other)),
                                anyone, name != first_float))
        probes.append(Probe(f"{name} as a string", call("abc"), n, True))
        probes.append(Probe(f"{name} as None", call(None), n, False))
        probes.append(Probe(f"{name} with a leading axis", call(a[None]), anyone, False))
        for dt in bad_dtypes[1:]:
            probes.append(Probe(f"{name} as {np.dtype(dt)}", call(a.astype(dt)), n, True))
        if a.ndim:
            probes.append(Probe(f"{name} empty", call(a[:0]), anyone, False))
            probes.append(Probe(f"{name} without its first axis", call(a[0]), anyone, False))
        if a.dtype.kind == "f":
            probes.append(Probe(f"{name} all NaN", call(np.full_like(a, np.nan)), anyone, False))
        buckets[name] = probes
    return buckets


def _param_values(value) -> list[tuple[str, object, bool]]:
    """(description, bad value, strict) for one parameter's current value, likeliest first."""
    out: list[tuple[str, object, bool]] = [("as a string", "abc", not isinstance(value, str))]
    if isinstance(value, bool | np.bool_):
        out += [("as 1", 1, False), ("as None", None, False)]
    elif isinstance(value, int | np.integer):
        out += [("= 2**31", 2**31, True), ("= True", True, True), ("= 2.5", 2.5, True),
                ("= -1", -1, False), ("= NaN", float("nan"), True), ("= 0", 0, False),
                ("= 2**63", 2**63, True), ("= 10**30", 10**30, True), ("= False", False, True)]
    elif isinstance(value, float | np.floating):
        out += [("= NaN", float("nan"), True), ("= True", True, True), ("= -1.0", -1.0, False),
                ("= inf", float("inf"), False), ("= 1e300", 1e300, False)]
    elif isinstance(value, str):
        out += [("= ''", "", True), ("= None", None, True), ("= 1", 1, True)]
    elif value is None:
        out += [("= 2**31", 2**31, False), ("= 0", 0, False), ("= -1", -1, False),
                ("= True", True, False)]
    elif isinstance(value, tuple | list):
        out += [("with a huge entry", tuple(HUGE[:1]) * len(value), False), ("= ()", (), False),
                ("with a bool entry", (True,) * len(value), False)]
    out.append(("as an object", object(), True))
    return out


def param_probes(spec: Spec, case: Case) -> dict[str, list[Probe]]:
    buckets = {}
    for name, value in case.params.items():
        probes = []
        for desc, bad, strict in _param_values(value):
            params = dict(case.params, **{name: bad})
            probes.append(Probe(f"{name} {desc}",
                                lambda p=params: spec.forward(*case.inputs.values(), **p),
                                (name,), strict))
        buckets[name] = probes
    return buckets


def unknown_keyword(spec: Spec, case: Case) -> Probe:
    params = dict(case.params, no_such_option=1)
    return Probe("an unknown keyword", lambda: spec.forward(*case.inputs.values(), **params),
                 ("no_such_option",), True)


def select(buckets: dict[str, list[Probe]], budget: int | None, turn: int) -> list[Probe]:
    """``budget`` probes of the round-robin order (see the module docstring), from position
    ``turn * budget`` on (cyclically); every probe when they fit or ``budget`` is None."""
    lists = [ps[i % len(ps):] + ps[:i % len(ps)] for i, ps in enumerate(buckets.values()) if ps]
    order = [ps[r] for r in range(max(map(len, lists), default=0)) for ps in lists if r < len(ps)]
    if budget is None or len(order) <= budget:
        return order
    start = (turn * budget) % len(order)
    return (order + order)[start:start + budget]


def backward_probes(spec: Spec, ctx, grads: tuple, foreign: Sequence[tuple[str, Spec, object]],
                    ) -> list[Probe]:
    """Every ctx and grad_out probe (``foreign``: (name, spec, ctx) of other algorithms)."""
    probes = [Probe("ctx=None", lambda: spec.backward(None, _grad_arg(spec, grads)),
                    ("ctx",), True),
              Probe("ctx an int", lambda: spec.backward(3, _grad_arg(spec, grads)),
                    ("ctx",), True)]
    for name, other, other_ctx in foreign:
        if other is not None and (other.backward is spec.backward or other.forward is spec.forward):
            continue
        # A context of the same type may come from the same reference function called with
        # other settings (two specs of one function): then the mismatch is grad_out's.
        names = ("ctx", "grad_out") if type(other_ctx) is type(ctx) else ("ctx",)
        probes.append(Probe(f"ctx of {name}",
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


# ---------------------------------------------------------------------------------------------
# unusual arrays and mutation


class _Counter:
    def __init__(self):
        self.calls = 0


def _forward_backward(spec: Spec, case: Case, grads, n: _Counter):
    n.calls += 1
    outs, ctx = spec.run_forward(case)
    if grads is None:
        return outs, None
    n.calls += 1
    return outs, spec.run_backward(ctx, grads)


def _layout_msg(spec: Spec, case: Case, arrays, pairs, grads, outs, ref, n: _Counter) -> str:
    """'' when the call with ``pairs`` applied gives the C-contiguous answer, else why not."""
    inputs = dict(zip(case.inputs, _apply(arrays, pairs), strict=True))
    try:
        o2, g2 = _forward_backward(spec, Case(inputs, case.params), grads, n)
    except Exception as exc:  # noqa: BLE001 - valid arrays: any exception is a problem
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return same(o2, outs, "forward") or (same(g2, ref, "backward") if grads else "")


def _grad_msg(spec: Spec, ctx, grads, pairs, ref, n: _Counter) -> str:
    n.calls += 1
    try:
        got = spec.run_backward(ctx, tuple(_apply(grads, pairs)))
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return same(got, ref, "backward")


def _describe(names: Sequence[str], pairs) -> str:
    return ", ".join(f"{names[i]} {v}" for i, v in pairs)


def unusual_problems(spec: Spec, case: Case) -> tuple[list[str], int]:
    """Layout variants of every array (Latin square) and mutation after forward."""
    n = _Counter()
    problems: list[str] = []
    names = list(case.inputs)
    arrays = [case.inputs[k] for k in names]
    grads = None
    n.calls += 1
    outs, ctx = spec.run_forward(case)
    if spec.differentiable:
        grads = upstream(outs, spec.n_diff_outputs, np.random.default_rng(1))
        n.calls += 1
        ref = spec.run_backward(ctx, grads)
    else:
        ref = None
    for pairs in latin(arrays):
        if not pairs:
            continue
        msg = _layout_msg(spec, case, arrays, pairs, grads, outs, ref, n)
        if not msg:
            continue
        alone = [(p, m) for p in pairs
                 if (m := _layout_msg(spec, case, arrays, [p], grads, outs, ref, n))]
        if alone:
            problems += [f"{_describe(names, [p])}: {m}" for p, m in alone]
        else:
            problems.append(f"{_describe(names, pairs)} together: {msg}")
    if spec.differentiable:
        gnames = [f"grad_out[{i}]" for i in range(len(grads))]
        for pairs in latin(grads):
            if not pairs:
                continue
            msg = _grad_msg(spec, ctx, grads, pairs, ref, n)
            if not msg:
                continue
            alone = [(p, m) for p in pairs if (m := _grad_msg(spec, ctx, grads, [p], ref, n))]
            problems += ([f"{_describe(gnames, [p])}: {m}" for p, m in alone] if alone
                         else [f"{_describe(gnames, pairs)} together: {msg}"])
        # Mutation after forward: overwrite every input and returned output in place.
        inputs = {k: np.copy(a) for k, a in case.inputs.items()}
        n.calls += 2
        o3, c3 = spec.run_forward(Case(inputs, case.params))
        for a in list(inputs.values()) + [o for o in o3 if isinstance(o, np.ndarray)]:
            if a.flags.writeable and a.size:
                a[...] = ~a if a.dtype.kind == "b" else a.dtype.type(7)
        try:
            msg = same(spec.run_backward(c3, grads), ref,
                       "backward after the inputs and outputs were overwritten")
        except Exception as exc:  # noqa: BLE001
            msg = f"backward after mutation: {type(exc).__name__}: {str(exc)[:200]}"
        if msg:
            problems.append(msg)
        # The same ctx used twice gives the same answer (backward must not consume it).
        n.calls += 1
        msg = same(spec.run_backward(ctx, grads), ref, "a second backward on the same ctx")
        if msg:
            problems.append(msg)
    return problems, n.calls


# ---------------------------------------------------------------------------------------------
# one spec


def battery(spec: Spec, foreign: Callable[[Spec, np.dtype], Sequence[tuple[str, Spec, object]]]
            = lambda spec, dtype: (), *, budget: int | None = BUDGET,
            case_of: Callable[[Spec, np.dtype], Case] = small_case) -> tuple[list[str], int]:
    """Every problem the battery finds in ``spec`` (an empty list: it passed) and the number
    of calls made. ``foreign(spec, dtype)`` gives other algorithms' contexts to offer backward."""
    problems: list[str] = []
    calls = 0
    for turn, dtype in enumerate(spec.dtypes):
        case = case_of(spec, dtype)
        buckets = input_probes(spec, case)
        buckets.update(param_probes(spec, case))
        probes = select(buckets, budget, turn) + [unknown_keyword(spec, case)]
        if spec.differentiable:
            outs, ctx = spec.run_forward(case)
            calls += 1
            grads = upstream(outs, spec.n_diff_outputs, np.random.default_rng(0))
            probes += backward_probes(spec, ctx, grads, foreign(spec, dtype))
        for probe in probes:
            calls += 1
            msg = run_probe(probe)
            if msg:
                problems.append(f"[{dtype}] {probe.what}: {msg}")
        found, n = unusual_problems(spec, case)
        calls += n
        problems += [f"[{dtype}] {p}" for p in found]
    return problems, calls
