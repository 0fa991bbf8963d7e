"""What each correctness check records for the report, and the comparison that fills it.

One ``CheckRecord`` per test item (algorithm x check x dtype x device). A Hypothesis test runs
its body many times; every example updates the same record (examples tried, worst error), and
the pytest hook in ``conftest.py`` adds the verdict and writes all records to JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

SCHEMA = "refbench.correctness/1"


@dataclass(repr=False)
class CheckRecord:
    nodeid: str
    replay: str
    algorithm: str = ""
    family: str = ""
    check: str = ""
    dtype: str = ""
    device: str = ""
    examples: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: float = 0.0  # worst error as a fraction of the tolerance (<= 1 passes)
    rtol: float | None = None
    atol: float | None = None
    verdict: str = ""
    reason: str = ""
    message: str = ""
    case: str = ""
    duration_s: float = 0.0
    # Named figures a check measured beside its errors (a real-data test's accuracies, a
    # model's final losses, a loss curve): {label: number, short text, or a sequence of
    # numbers}, shown with the check in the report (sequences of one check drawn as one chart;
    # text of two or more numbers separated by commas or spaces counts as a sequence).
    figures: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"CheckRecord({self.nodeid!r})"

    def _repr_pretty_(self, printer, cycle) -> None:  # keeps Hypothesis's reports short
        printer.text(repr(self))

    def bind(self, algorithm: str, family: str, check: str, dtype, device: str) -> None:
        self.algorithm, self.family, self.check = algorithm, family, check
        self.dtype = str(np.dtype(dtype)) if dtype is not None else ""
        self.device = device

    def observe(self, max_abs: float, max_rel: float, worst: float, rtol: float, atol: float,
                ) -> None:
        self.max_abs = max(self.max_abs, max_abs)
        self.max_rel = max(self.max_rel, max_rel)
        self.worst = max(self.worst, worst)
        self.rtol, self.atol = rtol, atol

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("max_abs", "max_rel", "worst"):
            d[k] = _finite_or_str(d[k])
        d["figures"] = {str(k): _figure(v) for k, v in self.figures.items()}
        return d


def _index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _finite_or_str(x: float):
    return x if np.isfinite(x) else str(x)


_MAX_CURVE = 10000  # points kept of one sequence figure


def _figure(v):
    """A named figure as JSON: a number (numpy scalars too; non-finite as text), a bool, a
    list of numbers (a list, tuple, 1-d array, or text of two or more numbers separated by
    commas or spaces), or short text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _finite_or_str(float(v))
    if isinstance(v, str):
        tokens = [t for t in v.strip().strip("[]").replace(",", " ").split() if t]
        if len(tokens) >= 2:
            try:
                return [_finite_or_str(float(t)) for t in tokens[:_MAX_CURVE]]
            except ValueError:
                pass
        return v[:200]
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v)
        if arr.ndim == 1 and arr.dtype.kind in "biuf":
            return [_finite_or_str(float(x)) for x in arr[:_MAX_CURVE]]
    return str(v)[:200]


class Mismatch(AssertionError):
    """A comparison failed; the message is the full, labelled explanation."""


def compare(actual, expected: np.ndarray, rtol: float, atol: float, *, label: str,
            record: CheckRecord | None = None, case: str | Callable[[], str] = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, and more.

    - shapes and dtypes must match (the reference keeps the input's dtype);
    - NaN matches NaN and an infinity matches the same infinity, nothing else;
    - a reference that is all zeros where the twin is not is a failure even when the twin's
      values are below ``atol`` (guards against a backward that returns zeros).
    On failure raises ``Mismatch`` naming the worst element, both values and the error against
    the tolerance; the record keeps the message and the case. ``case`` may be a function
    that describes it, called only on failure (describing every passing case took a tenth of
    the correctness suite's time).
    """
    def fail(msg: str) -> None:
        nonlocal case
        case = case() if callable(case) else case
        full = f"{label}: {msg}"
        if case:
            full += f"\n  case: {case}"
        if record is not None:
            full += f"\n  replay: {record.replay}"
            record.message, record.case = full, case
        raise Mismatch(full)

    if not isinstance(actual, np.ndarray):
        fail(f"reference returned {type(actual).__name__}, expected an array")
    if actual.shape != expected.shape:
        fail(f"shape {actual.shape} != twin's {expected.shape}")
    if actual.dtype != expected.dtype:
        fail(f"dtype {actual.dtype} != twin's {expected.dtype}")
    if actual.dtype.kind in "biu":
        bad = actual != expected
        if record is not None:
            record.observe(float(bad.any()), float(bad.any()), float(bad.any()), 0.0, 0.0)
        if bad.any():
            idx = np.unravel_index(np.argmax(bad), bad.shape)
            fail(f"element {_index(idx)}: reference {actual[idx].item()}, twin "
                 f"{expected[idx].item()} "
                 f"({int(bad.sum())}/{bad.size} differ)")
        return

    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    finite = np.isfinite(e) & np.isfinite(a)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(same, 0.0, np.where(finite, np.abs(a - e), np.inf))
        allowed = atol + rtol * np.where(np.isfinite(e), np.abs(e), 0.0)
        # 0/0 (no difference where nothing is allowed: equal zeros with atol 0, an exact
        # integer-valued result) is 0 of the tolerance, never nan or inf.
        frac = np.where(diff == 0, 0.0, diff / allowed)
        rel = np.where(same, 0.0, diff / np.abs(e))
    max_abs = float(diff.max(initial=0.0))
    max_rel = float(np.nanmax(rel, initial=0.0))
    worst = float(frac.max(initial=0.0))
    if record is not None:
        record.observe(max_abs, max_rel, worst, rtol, atol)
    if worst > 1.0:
        idx = np.unravel_index(np.argmax(frac), frac.shape)
        n_bad = int((frac > 1.0).sum())
        fail(
            f"worst element {_index(idx)}: reference {actual[idx].item()!r}, twin "
            f"{expected[idx].item()!r}, "
            f"|diff| {diff[idx]:.3g} > tolerance {allowed[idx]:.3g} (atol {atol:g} + rtol "
            f"{rtol:g} * |twin|), {worst:.3g}x the tolerance; {n_bad}/{frac.size} elements "
            f"out, max abs {max_abs:.3g}, max rel {max_rel:.3g}"
        )
    if a.size and not np.any(a) and np.any(np.isfinite(e) & (e != 0)):
        fail(f"reference is all zeros but the twin is not (max |twin| "
             f"{np.abs(e[np.isfinite(e)]).max():.3g}, below atol {atol:g})")
