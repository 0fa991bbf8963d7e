"""Reading result files into plain records the report, the comparison and the gate share.

Three kinds of file, told apart by their content, never by their name:

- correctness: ``{"schema": "refbench.correctness/1", "environment": {...}, "records": [...]}``,
  written by the plugin in ``conftest.py`` (see ``suites/recording.py``);
- benchmark: pytest-benchmark's own JSON (``--benchmark-json``), any version: old files without
  ``ops``, ``fullname`` or raw timings (``stats.data``) still load. refbench's benchmarks add,
  per benchmark in ``extra_info``: ``group``, ``paired`` (``rounds``, ``partners``,
  ``attempts``, ...: the implementations of a group were timed in interleaved rounds, so
  ``stats.data[i]`` of each comes from the same round ``i``), ``ratios`` (``{other: {value, lo,
  hi, level}}``: this implementation's time over the other's, the median of per-round ratios,
  see ``reports/paired.py``), ``stable`` and ``noise`` (``iqr_rel``, ``median_over_min``,
  ``stall_fraction``, ``reasons``); and in ``machine_info.refbench``: ``load`` (``start``,
  ``end``: 1/5/15-minute load averages, ``cpus``, ``busy``), ``threading`` (free-form facts),
  per device ``peaks`` (``flops_per_s``, ``bytes_per_s``, ``stable``, ``samples``,
  ``method``) and ``not_run`` (``[{group, implementation, reason}]``: implementations that
  could not be timed, which have no entry). Every entry may carry ``first_call_s`` and
  ``compile_s``; a ``torch-compile`` entry also ``compiled`` (how dynamo captured the twin;
  "no graph (eager in disguise): ..." means its time is torch's eager path). Files without
  these load as before (ratios of medians, stability unknown);
- baseline: ``{"schema": "refbench.baseline/1", ...}``, a compact summary of a benchmark file
  (quantiles instead of raw timings) written by ``python -m reports baseline``.

Anything else (missing, empty, truncated, not JSON, another schema, a field of the wrong type)
raises ``InputError`` with one line that names the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CORRECTNESS_SCHEMA = "refbench.correctness/1"
BASELINE_SCHEMA = "refbench.baseline/1"

CHECK_ORDER = ("forward", "gradient", "gradcheck", "invariants", "invalid input", "no derivative")
IMPL_ORDER = ("numba", "torch-cpu", "torch-compile", "torch-cuda", "numba-cuda")
COMPILED = "torch-compile"
# How the benchmark says torch.compile captured a twin (extra_info.compiled): "one graph",
# "N graphs, M breaks: ...", or "no graph (eager in disguise): ..." when dynamo made no graph,
# so the "compiled" timing is torch's eager path.
EAGER_PREFIX = "no graph"
SIZE_ORDER = ("small", "medium", "large")  # by name when no problem size is known
PASS_ORDER = ("forward", "forward+backward")
VERDICTS = ("failed", "passed", "skipped")

# The probabilities at which a timing distribution is kept (a quantile function): dense near
# the median, whose confidence intervals the comparison needs, sparse in the tails.
_T = np.linspace(-1.0, 1.0, 41)
PROBS = 0.5 + 0.5 * np.sign(_T) * _T**2


class InputError(Exception):
    """A result file that cannot be used; the message is one line naming the file."""


def order_key(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    """Sort known names in their natural order, unknown ones after them alphabetically."""
    return (order.index(value), "") if value in order else (len(order), value)


def natural_key(value: str) -> tuple:
    """"s2" before "s10": digit runs compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"(\d+)", value) if p)


def size_key(value: str) -> tuple:
    """Size names without a known problem size: small < medium < large, then s1 < s2 < ..."""
    return (*order_key(value, SIZE_ORDER)[:1], natural_key(value))


# -- reading JSON ------------------------------------------------------------------------------

def read_json(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a JSON result file")
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise InputError(f"{p}: empty file (did the run that writes it crash?)")
    try:
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a JSON result file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        end = exc.pos >= len(text.rstrip()) - 1
        hint = "truncated? " if end else ""
        raise InputError(f"{p}: not valid JSON ({hint}{exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{p}: not a result file (JSON nested too deeply)") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p}: not a result file (top level is a JSON {type(doc).__name__}, "
                         f"expected an object)")
    return doc


def kind_of(doc: dict) -> str | None:
    schema = doc.get("schema")
    if schema == CORRECTNESS_SCHEMA:
        return "correctness"
    if schema == BASELINE_SCHEMA:
        return "baseline"
    if schema is None and "benchmarks" in doc:
        return "benchmark"
    return None


def _describe_kind(doc: dict) -> str:
    schema = doc.get("schema")
    if isinstance(schema, str):
        return f"schema {schema[:60]!r}"
    return "keys " + ", ".join(sorted(map(str, doc))[:5]) if doc else "an empty object"


def load(path: str | Path, expect: tuple[str, ...] = ("correctness", "benchmark", "baseline")):
    """Load any result file; ``expect`` lists the kinds the caller accepts."""
    doc = read_json(path)
    kind = kind_of(doc)
    names = {"correctness": f"a correctness file (schema {CORRECTNESS_SCHEMA!r})",
             "benchmark": "a pytest-benchmark JSON file (--benchmark-json)",
             "baseline": f"a baseline file (schema {BASELINE_SCHEMA!r})"}
    if kind not in expect:
        wanted = " or ".join(names[k] for k in expect)
        got = names[kind] if kind else _describe_kind(doc)
        raise InputError(f"{path}: expected {wanted}, got {got}")
    try:
        if kind == "correctness":
            return _correctness(doc, str(path))
        return _bench_run(doc, str(path), kind)
    except _FieldError as exc:
        raise InputError(f"{path}: {exc}") from None


# -- field access with clear errors -------------------------------------------------------------

class _FieldError(Exception):
    pass


_MISSING = object()


def _get(d: dict, key: str, kind, where: str, default: Any = _MISSING):
    value = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise _FieldError(f"{where} has no {key!r}")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, str):
        try:  # non-finite numbers are written as strings ("inf", "nan")
            return float(value)
        except ValueError:
            pass
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = "/".join(k.__name__ for k in kinds)
        raise _FieldError(f"{where}: {key!r} should be {names}, got {type(value).__name__} "
                          f"{str(value)[:40]!r}")
    return value


def _text(value: Any, limit: int = 20000) -> str:
    return "" if value is None else str(value)[:limit]


# -- environment --------------------------------------------------------------------------------

@dataclass
class Environment:
    """Where and with what a run happened; every field may be unknown (None)."""

    python: str | None = None
    platform: str | None = None
    cpu: str | None = None
    cores: int | None = None
    node: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    commit: str | None = None
    dirty: bool | None = None
    peaks: dict[str, dict[str, Any]] = field(default_factory=dict)
    known: bool = False  # whether refbench's own facts were recorded (then gpu None = no GPU)
    load: Load | None = None
    threading: dict[str, str] = field(default_factory=dict)

    @property
    def machine(self) -> dict[str, Any]:
        """What identifies the hardware: timings from two machines are not comparable."""
        gpu = (self.gpu or {}).get("name") or ("none" if self.known else None)
        return {"host": self.node, "CPU": self.cpu, "cores": self.cores, "GPU": gpu}

    def peak(self, device: str, what: str) -> float | None:
        value = (self.peaks.get(device) or {}).get(what)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def peak_stable(self, device: str) -> bool | None:
        """Whether the device's measured peaks were stable (None: the file does not say)."""
        value = (self.peaks.get(device) or {}).get("stable")
        return value if isinstance(value, bool) else None

    def peak_samples(self, device: str, what: str) -> list[float]:
        samples = (self.peaks.get(device) or {}).get("samples")
        values = samples.get(what) if isinstance(samples, dict) else None
        if not isinstance(values, list):
            return []
        return [float(v) for v in values
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


@dataclass
class Load:
    """The machine's load averages (1, 5, 15 minutes) when a run started and ended."""

    start: list[float] | None
    end: list[float] | None
    cpus: int | None
    busy: bool | None

    def text(self) -> str:
        def avg(x):
            return " / ".join(f"{v:.2f}" for v in x) if x else "unknown"
        cpus = f" on {self.cpus} CPUs" if self.cpus else ""
        return (f"load average (1 / 5 / 15 min) {avg(self.start)} at start, {avg(self.end)} "
                f"at end{cpus}")


def _load_averages(d: Any) -> Load | None:
    if not isinstance(d, dict):
        return None

    def three(x):
        if isinstance(x, list) and x and all(isinstance(v, (int, float)) and
                                             not isinstance(v, bool) and math.isfinite(v)
                                             for v in x):
            return [float(v) for v in x[:3]]
        return None
    cpus = d.get("cpus")
    busy = d.get("busy")
    return Load(three(d.get("start")), three(d.get("end")),
                cpus if isinstance(cpus, int) and not isinstance(cpus, bool) and cpus > 0
                else None, busy if isinstance(busy, bool) else None)


def _environment(d: Any, where: str) -> Environment:
    if d is None:
        return Environment()
    if not isinstance(d, dict):
        raise _FieldError(f"{where} should be an object, got {type(d).__name__}")
    versions = d.get("versions") if isinstance(d.get("versions"), dict) else {}
    gpu = d.get("gpu") if isinstance(d.get("gpu"), dict) else None
    peaks = d.get("peaks") if isinstance(d.get("peaks"), dict) else {}
    cores = d.get("cores")
    threading = d.get("threading") if isinstance(d.get("threading"), dict) else {}
    return Environment(
        python=_opt_str(d.get("python")), platform=_opt_str(d.get("platform")),
        cpu=_opt_str(d.get("cpu")), cores=cores if isinstance(cores, int) else None,
        node=_opt_str(d.get("node")),
        versions={str(k): _opt_str(v) for k, v in versions.items()},
        gpu={str(k): v for k, v in gpu.items()} if gpu else None,
        commit=_opt_str(d.get("commit")),
        dirty=d.get("dirty") if isinstance(d.get("dirty"), bool) else None,
        peaks={str(k): v for k, v in peaks.items() if isinstance(v, dict)},
        known=True,
        load=_load_averages(d.get("load")),
        threading={str(k): _text(v, 300) for k, v in threading.items()},
    )


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


# -- correctness --------------------------------------------------------------------------------

@dataclass
class Check:
    """One correctness check: algorithm x check x dtype x device (one pytest item)."""

    nodeid: str
    algorithm: str
    family: str
    check: str
    dtype: str
    device: str
    verdict: str
    examples: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: float = 0.0
    rtol: float | None = None
    atol: float | None = None
    reason: str = ""
    message: str = ""
    case: str = ""
    replay: str = ""
    duration_s: float = 0.0
    # {label: number, bool, text, or a list of numbers (a curve: loss per epoch or step)}
    figures: dict[str, float | str | bool | list[float]] = field(default_factory=dict)
    # A check that did not fail but whose worst error was recorded as inf or nan: older
    # recorders wrote 0/0 (no allowed error, no difference) that way. Shown as 0, with a note.
    zero_over_zero: bool = False
    # The label of the run the check belongs to when a report holds several correctness runs
    # (other machines, devices or versions: see merge.py); empty with one run.
    run: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """What a check is about: algorithm x check x dtype x device, and the test item (the
        invalid-input checks of one algorithm share the rest)."""
        return (self.algorithm, self.check, self.dtype, self.device, self.nodeid)


_NUMBER_LIST = re.compile(r"^\s*\[?\s*([^\[\]]*?)\s*\]?\s*$")


def curve_of(value: Any) -> list[float] | None:
    """A figure that is a series of numbers (a loss per epoch or step), else None.

    Accepts a JSON list of numbers (non-finite ones written as text) and text of two or more
    numbers separated by commas and/or spaces (optionally in brackets), as helpers that
    store curves as text write them.
    """
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        m = _NUMBER_LIST.match(value)
        items = [t for t in re.split(r"[,\s]+", m.group(1)) if t] if m else []
        if len(items) < 2:
            return None
    else:
        return None
    out = []
    for v in items:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            out.append(float(v))
            continue
        if not isinstance(v, str):
            return None
        try:
            out.append(float(v))
        except ValueError:
            return None
    return out if out else None


def _figures(value: Any, where: str) -> dict[str, float | str | bool | list[float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _FieldError(f"{where}: 'figures' should be an object, got {type(value).__name__}")
    out: dict[str, float | str | bool | list[float]] = {}
    for k, v in value.items():
        label = str(k)[:100]
        if isinstance(v, bool):
            out[label] = v
        elif isinstance(v, (int, float)):
            out[label] = float(v)
        elif v in ("nan", "inf", "-inf"):  # non-finite numbers are written as text
            out[label] = float(v)
        elif (curve := curve_of(v)) is not None:
            out[label] = curve[:10000]
        elif isinstance(v, list) and not v:
            out[label] = "(empty list)"
        elif isinstance(v, list):
            raise _FieldError(f"{where}: figure {label!r} should be a number, text or a list "
                              f"of numbers, got a list holding "
                              f"{next(type(x).__name__ for x in v if curve_of([x]) is None)}")
        else:
            out[label] = _text(v, 200)
    return out


@dataclass
class CorrectnessRun:
    path: str
    created: str
    duration_s: float | None
    device: str
    profile: str
    env: Environment
    checks: list[Check]
    kind: str = "correctness"
    label: str = "correctness"
    title: str = "correctness"
    # The files a run was merged from (merge.py): ``sources`` their paths, ``parts`` the runs
    # as loaded, one per file; a run read from one file has ``parts`` empty.
    sources: list[str] = field(default_factory=list)
    parts: list[CorrectnessRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sources = self.sources or [self.path]


def _correctness(doc: dict, path: str) -> CorrectnessRun:
    records = _get(doc, "records", list, "the file")
    checks = []
    for i, r in enumerate(records):
        where = f"record {i + 1}"
        if not isinstance(r, dict):
            raise _FieldError(f"{where} should be an object, got {type(r).__name__}")
        verdict = _get(r, "verdict", str, where)
        if verdict not in VERDICTS:
            raise _FieldError(f"{where}: verdict {verdict[:40]!r} is not one of "
                              f"{', '.join(VERDICTS)}")
        nodeid = _get(r, "nodeid", str, where, "")
        worst = _get(r, "worst", float, where, 0.0)
        zero_over_zero = verdict != "failed" and not math.isfinite(worst)
        checks.append(Check(
            nodeid=nodeid,
            algorithm=_get(r, "algorithm", str, where, "") or nodeid or f"record {i + 1}",
            family=_get(r, "family", str, where, "") or "unknown",
            check=_get(r, "check", str, where, "") or "unknown",
            dtype=_get(r, "dtype", str, where, ""),
            device=_get(r, "device", str, where, ""),
            verdict=verdict,
            examples=int(_get(r, "examples", (int, float), where, 0)),
            max_abs=_get(r, "max_abs", float, where, 0.0),
            max_rel=_get(r, "max_rel", float, where, 0.0),
            worst=0.0 if zero_over_zero else worst,
            zero_over_zero=zero_over_zero,
            figures=_figures(r.get("figures"), where),
            rtol=_get(r, "rtol", float, where, None),
            atol=_get(r, "atol", float, where, None),
            reason=_text(r.get("reason")), message=_text(r.get("message")),
            case=_text(r.get("case")), replay=_text(r.get("replay"), 2000),
            duration_s=_get(r, "duration_s", float, where, 0.0),
        ))
    return CorrectnessRun(
        path=path, created=_text(doc.get("created"), 64),
        duration_s=_get(doc, "duration_s", float, "the file", None),
        device=_text(doc.get("device"), 64), profile=_text(doc.get("profile"), 64),
        env=_environment(doc.get("environment"), "'environment'"), checks=checks)


# -- benchmarks ---------------------------------------------------------------------------------

@dataclass
class Timing:
    """A timing distribution in seconds: summary statistics and its quantile function.

    ``quantiles`` holds the distribution at ``PROBS`` (from the raw timings when the file has
    them, else interpolated from min/q1/median/q3/max); ``raw`` says which.
    """

    median: float
    q1: float
    q3: float
    rounds: int
    quantiles: np.ndarray
    raw: bool

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def inverse(self) -> Timing:
        """The distribution of 1 / x (PROBS is symmetric about 1/2)."""
        return Timing(1.0 / self.median, 1.0 / self.q3, 1.0 / self.q1, self.rounds,
                      1.0 / self.quantiles[::-1], self.raw)


def timing_of(samples: np.ndarray) -> Timing:
    """The Timing of raw samples (finite, 1-d, at least one)."""
    q = np.quantile(samples, np.concatenate([PROBS, (0.25, 0.75)]))
    med = float(q[PROBS.size // 2])  # PROBS is symmetric about its middle, 0.5
    return Timing(med, float(q[-2]), float(q[-1]), int(samples.size), q[:-2], raw=True)


@dataclass(frozen=True)
class PairRatio:
    """One implementation's time over another's, as measured within one run.

    ``method`` "paired": the median of per-round ratios of interleaved rounds, with its
    order-statistic interval [``lo``, ``hi``] at ``level`` (None when too few rounds);
    ``dist`` is the distribution of the per-round ratios when the raw timings are known (what
    the gate compares between runs). "medians": the ratio of the two medians, from a file
    without paired rounds, with no interval.
    """

    value: float
    lo: float | None = None
    hi: float | None = None
    level: float | None = None
    method: str = "paired"
    rounds: int | None = None
    dist: Timing | None = None
    # Why this pair's ratio is untrustworthy, as the benchmark judged the pair itself (empty:
    # sound); None when the file does not judge pairs (older files: each side's own
    # ``stable`` then stands for the pair).
    reasons: tuple[str, ...] | None = None
    # A baseline from several runs of one commit (separate processes): this ratio in each of
    # them, this one's first (None: a single run).
    replicates: tuple[float, ...] | None = None

    @property
    def paired(self) -> bool:
        return self.method == "paired"

    def inverse(self) -> PairRatio:
        return PairRatio(1.0 / self.value, None if self.hi is None else 1.0 / self.hi,
                         None if self.lo is None else 1.0 / self.lo, self.level, self.method,
                         self.rounds, self.dist.inverse() if self.dist else None, self.reasons,
                         None if self.replicates is None else
                         tuple(1.0 / x for x in self.replicates))

    def describe(self) -> str:
        if not self.paired:
            return "ratio of medians (this file has no paired rounds for the pair)"
        n = f" over {self.rounds} interleaved rounds" if self.rounds else ""
        if self.lo is None:
            return f"median of per-round ratios{n} (too few rounds for an interval)"
        return (f"median of per-round ratios{n}, {self.level:.0%} interval "
                f"[{self.lo:.3g}, {self.hi:.3g}]")


@dataclass
class Bench:
    name: str
    algorithm: str
    family: str
    impl: str
    device: str
    dtype: str
    size: str
    pass_: str
    timing: Timing
    shapes: dict[str, list[int]] = field(default_factory=dict)
    flops: float | None = None
    bytes: float | None = None
    first_call_s: float | None = None
    compile_s: float | None = None
    group: str = ""
    paired: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, PairRatio] = field(default_factory=dict)
    stable: bool | None = None  # None: the file does not say (older files)
    noise: dict[str, Any] = field(default_factory=dict)
    data: np.ndarray | None = field(default=None, repr=False)  # raw per-round times
    fullname: str = ""  # pytest's node id of the benchmark (the name in older files)
    source: str = ""  # the file it came from, in a run merged from several (merge.py)
    # torch-compile only: how dynamo captured the twin ("one graph", "N graphs, M breaks:
    # ...", "no graph (eager in disguise): ..."); empty for other implementations.
    compiled: str = ""
    # torch twins only: a digest of the twin's code (suites/digest.py); empty where not said
    twin: str = ""

    @property
    def eager_in_disguise(self) -> bool:
        """A torch-compile benchmark for which dynamo made no graph: its time is eager."""
        return self.compiled.startswith(EAGER_PREFIX)

    @property
    def label(self) -> str:
        """The implementation's name, marked when a "compiled" time is eager in disguise."""
        return f"{self.impl} (eager in disguise)" if self.eager_in_disguise else self.impl

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.algorithm, self.impl, self.size, self.dtype, self.pass_)

    @property
    def noisy(self) -> bool:
        return self.stable is False

    @property
    def reasons(self) -> list[str]:
        """Why the benchmark is noisy (empty when stable or unknown)."""
        if not self.noisy:
            return []
        out = [str(r) for r in self.noise.get("reasons") or [] if str(r)]
        return out or ["marked unstable by the benchmark (no reason given for this "
                       "implementation: another in its group may have been noisy)"]

    def ratio_to(self, other: Bench) -> PairRatio | None:
        """This benchmark's time over ``other``'s from paired rounds, when the run has it."""
        if other.impl in self.ratios:
            return self.ratios[other.impl]
        if self.impl in other.ratios:
            return other.ratios[self.impl].inverse()
        return None

    @property
    def elements(self) -> float | None:
        """Problem size: the number of input elements (None when shapes are unknown)."""
        if not self.shapes:
            return None
        return float(sum(math.prod(s) for s in self.shapes.values()))


@dataclass(frozen=True)
class NotRun:
    """An implementation the benchmark could not time in one group, and why (inductor could
    not compile the twin, no CUDA device, nothing comparable to that pass)."""

    algorithm: str
    impl: str
    size: str
    dtype: str
    pass_: str
    reason: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.algorithm, self.impl, self.size, self.dtype, self.pass_)


def _not_run(value: Any) -> list[NotRun]:
    """``machine_info.refbench.not_run``: ``[{group: "<algorithm> <size> <dtype> <pass>",
    implementation, reason}]``."""
    if value is None:
        return []
    where = "machine_info.refbench.not_run"
    if not isinstance(value, list):
        raise _FieldError(f"{where} should be a list, got {type(value).__name__}")
    out = []
    for i, e in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(e, dict):
            raise _FieldError(f"{w} should be an object like {{group, implementation, reason}}, "
                              f"got {type(e).__name__}")
        group = _get(e, "group", str, w)
        parts = group.rsplit(" ", 3)
        if len(parts) != 4 or not all(parts):
            raise _FieldError(f"{w}: group should read '<algorithm> <size> <dtype> <pass>', "
                              f"got {group[:80]!r}")
        algorithm, size, dtype, pass_ = parts
        out.append(NotRun(algorithm, _get(e, "implementation", str, w), size, dtype, pass_,
                          _text(_get(e, "reason", str, w, ""), 500) or "no reason given"))
    return out


@dataclass
class BenchRun:
    path: str
    created: str
    env: Environment
    benchmarks: list[Bench]
    kind: str = "benchmark"
    label: str = "run"
    version: str = ""
    title: str = ""
    # As for CorrectnessRun: the files a run was merged from, and the runs as loaded.
    sources: list[str] = field(default_factory=list)
    parts: list[BenchRun] = field(default_factory=list)
    # Implementations the benchmark could not time, with the reason (no entry in benchmarks).
    not_run: list[NotRun] = field(default_factory=list)

    def find(self, key) -> Bench | None:
        return self._index.get(key)

    def why_not_run(self, key) -> str | None:
        """The reason the benchmark gave for not timing ``key``; None when it said nothing."""
        return self._why.get(key)

    def env_of(self, b: Bench) -> Environment:
        """The environment ``b`` was measured in: its own file's, in a merged run (each shard
        measured its own peaks and load)."""
        for part in self.parts:
            if part.path == b.source:
                return part.env
        return self.env

    def __post_init__(self) -> None:
        self.sources = self.sources or [self.path]
        self._index = {b.key: b for b in self.benchmarks}
        self._why = {n.key: n.reason for n in self.not_run}


# test_bench[<algorithm>-<impl>-<size>-<dtype>-<pass>] when extra_info is missing (old files).
_PARAM = re.compile(r"^(?P<algorithm>.+?)-(?P<impl>numba-cuda|numba|torch-cpu|torch-cuda|[^-]+)-"
                    r"(?P<size>small|medium|large|s\d+)-(?P<dtype>float\d+)-"
                    r"(?P<pass>forward|forward_backward)$")


def _raw(stats: dict, where: str) -> np.ndarray | None:
    data = stats.get("data")
    if not (isinstance(data, list) and data):
        return None
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise _FieldError(f"{where}: stats.data holds non-numbers") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise _FieldError(f"{where}: stats.data holds non-finite or nested values")
    return arr


def _timing(stats: dict, where: str) -> Timing:
    arr = _raw(stats, where)
    if arr is not None:
        return timing_of(arr)
    med = _get(stats, "median", float, where)
    q1 = _get(stats, "q1", float, where, med)
    q3 = _get(stats, "q3", float, where, med)
    lo = _get(stats, "min", float, where, q1)
    hi = _get(stats, "max", float, where, q3)
    rounds = int(_get(stats, "rounds", (int, float), where, 1))
    xs = np.array([lo, q1, med, q3, hi])
    if not np.all(np.isfinite(xs)) or np.any(np.diff(xs) < 0):
        raise _FieldError(f"{where}: stats min <= q1 <= median <= q3 <= max does not hold")
    q = np.interp(PROBS, [0.0, 0.25, 0.5, 0.75, 1.0], xs)
    return Timing(med, q1, q3, max(rounds, 1), q, raw=False)


def _bench(b: Any, i: int) -> Bench:
    where = f"benchmark {i + 1}"
    if not isinstance(b, dict):
        raise _FieldError(f"{where} should be an object, got {type(b).__name__}")
    name = _get(b, "name", str, where, "") or _get(b, "fullname", str, where, "") or where
    where = f"benchmark {i + 1} ({name[:80]})"
    stats = _get(b, "stats", dict, where)
    info = b.get("extra_info") if isinstance(b.get("extra_info"), dict) else {}
    param = b.get("param") if isinstance(b.get("param"), str) else ""
    if not param and "[" in name:
        param = name[name.index("[") + 1:].rstrip("]")
    guess = _PARAM.match(param)
    g = guess.groupdict() if guess else {}
    if "pass" in g:
        g["pass"] = g["pass"].replace("_", "+")

    def pick(key: str, default: str) -> str:
        value = info.get(key) if info.get(key) not in (None, "") else g.get(key, default)
        return str(value)

    impl = pick("implementation", g.get("impl", "unknown"))
    ratios = {}
    raw_ratios = _get(info, "ratios", dict, where, {})
    for other, r in raw_ratios.items():
        w = f"{where}: ratios[{str(other)[:40]!r}]"
        if not isinstance(r, dict):
            raise _FieldError(f"{w} should be an object like {{value, lo, hi, level}}, got "
                              f"{type(r).__name__}")
        value = _get(r, "value", float, w)
        lo, hi = _get(r, "lo", float, w, None), _get(r, "hi", float, w, None)
        if not (math.isfinite(value) and value > 0) or (lo is None) != (hi is None) or (
                lo is not None and not 0 < lo <= value <= hi < math.inf):
            raise _FieldError(f"{w}: expected 0 < lo <= value <= hi, got {value!r}, {lo!r}, "
                              f"{hi!r}")
        reasons = _get(r, "reasons", list, w, None)
        ratios[str(other)] = PairRatio(value, lo, hi, _get(r, "level", float, w, None),
                                       reasons=None if reasons is None else
                                       tuple(_text(str(x), 500) for x in reasons))
    paired = _get(info, "paired", dict, where, {})
    noise = _get(info, "noise", dict, where, {})
    stable = _get(info, "stable", bool, where, None)
    shapes_in = info.get("shapes") if isinstance(info.get("shapes"), dict) else {}
    shapes = {}
    for k, v in shapes_in.items():
        if isinstance(v, list) and all(isinstance(n, int) and n >= 0 for n in v):
            shapes[str(k)] = v
    return Bench(
        name=name,
        algorithm=pick("algorithm", name),
        family=pick("family", "unknown"),
        impl=impl,
        device=pick("device", "cuda" if "cuda" in impl else "cpu"),
        dtype=pick("dtype", ""),
        size=pick("size", ""),
        pass_=pick("pass", "forward"),
        timing=_timing(stats, where),
        shapes=shapes,
        flops=_get(info, "flops", float, where, None),
        bytes=_get(info, "bytes", float, where, None),
        first_call_s=_get(info, "first_call_s", float, where, None),
        compile_s=_get(info, "compile_s", float, where, None),
        group=_text(info.get("group"), 300), paired=paired, ratios=ratios, stable=stable,
        noise=noise, data=_raw(stats, where),
        fullname=_get(b, "fullname", str, where, "") or name,
        compiled=_text(_get(info, "compiled", str, where, ""), 300),
        twin=_text(_get(info, "twin", str, where, ""), 64),
    )


def _pair_up(benchmarks: list[Bench]) -> None:
    """Attach the per-round ratio distributions of implementations timed in the same rounds.

    Two benchmarks of one group (algorithm x size x dtype x pass) are paired when the file
    says so (``paired`` or ``ratios`` naming the other) and both hold as many raw timings as
    rounds. A ratio the benchmark wrote keeps its value and interval; one it did not write is
    computed here with ``reports.paired``.
    """
    from reports.paired import paired_ratio

    index = {b.key: b for b in benchmarks}
    for b in benchmarks:
        partners = b.paired.get("partners") if isinstance(b.paired.get("partners"), list) else []
        names = [str(p) for p in partners if str(p) != b.impl]
        names += [n for n in b.ratios if n not in names]
        for other in names:
            o = index.get((b.algorithm, other, b.size, b.dtype, b.pass_))
            if o is None:
                continue
            given = b.ratios.get(other)
            same_rounds = (b.data is not None and o.data is not None
                           and b.data.size == o.data.size and bool(b.paired) and bool(o.paired))
            if same_rounds:
                per_round = b.data / o.data
                if given is None:
                    value, lo, hi = paired_ratio(b.data, o.data)
                    given = PairRatio(value, lo, hi, 0.95)
                b.ratios[other] = PairRatio(given.value, given.lo, given.hi, given.level,
                                            "paired", int(per_round.size), timing_of(per_round),
                                            given.reasons)
            elif given is not None:
                rounds = b.paired.get("rounds")
                b.ratios[other] = PairRatio(given.value, given.lo, given.hi, given.level,
                                            "paired", rounds if isinstance(rounds, int) else None,
                                            reasons=given.reasons)


def _bench_run(doc: dict, path: str, kind: str) -> BenchRun:
    if kind == "baseline":
        return _baseline(doc, path)
    benchmarks = _get(doc, "benchmarks", list, "the file")
    mi = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    env = _environment(mi.get("refbench"), "machine_info.refbench")
    # Fill what refbench's own facts lack from pytest-benchmark's machine_info.
    cpu = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    env.node = _opt_str(mi.get("node"))
    env.cpu = env.cpu or _opt_str(cpu.get("brand_raw"))
    if env.cores is None and isinstance(cpu.get("count"), int):
        env.cores = cpu["count"]
    env.python = env.python or _opt_str(mi.get("python_version"))
    if env.gpu is None and isinstance(mi.get("gpu"), dict):
        env.gpu = dict(mi["gpu"])
    ci = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    env.commit = env.commit or _opt_str(ci.get("id"))
    if env.dirty is None and isinstance(ci.get("dirty"), bool):
        env.dirty = ci["dirty"]
    benches = [_bench(b, i) for i, b in enumerate(benchmarks)]
    _pair_up(benches)
    refbench = mi.get("refbench") if isinstance(mi.get("refbench"), dict) else {}
    return BenchRun(path=path, created=_text(doc.get("datetime"), 64), env=env,
                    benchmarks=benches, version=_text(doc.get("version"), 32),
                    not_run=_not_run(refbench.get("not_run")))


# -- the compact baseline -----------------------------------------------------------------------

def _replicates(value, where: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
            for x in value):
        raise _FieldError(f"{where}: replicates should be a list of positive numbers")
    return tuple(float(x) for x in value)


def _baseline(doc: dict, path: str) -> BenchRun:
    env = _environment(doc.get("environment"), "'environment'")
    env.node = env.node or _opt_str(doc.get("node"))
    out = []
    for i, b in enumerate(_get(doc, "benchmarks", list, "the file")):
        where = f"benchmark {i + 1}"
        if not isinstance(b, dict):
            raise _FieldError(f"{where} should be an object, got {type(b).__name__}")
        q = _get(b, "quantiles", list, where)
        try:
            arr = np.asarray(q, dtype=np.float64)
        except (TypeError, ValueError):
            raise _FieldError(f"{where}: quantiles hold non-numbers") from None
        if arr.shape != PROBS.shape or np.any(np.diff(arr) < 0) or not np.all(np.isfinite(arr)):
            raise _FieldError(f"{where}: quantiles should be {PROBS.size} increasing numbers")
        med = float(np.interp(0.5, PROBS, arr))
        timing = Timing(med, float(np.interp(0.25, PROBS, arr)),
                        float(np.interp(0.75, PROBS, arr)),
                        int(_get(b, "rounds", (int, float), where, 1)), arr,
                        raw=bool(b.get("raw", True)))
        ratios = {}
        for other, r in _get(b, "ratios", dict, where, {}).items():
            w = f"{where}: ratios[{str(other)[:40]!r}]"
            if not isinstance(r, dict):
                raise _FieldError(f"{w} should be an object")
            dist = None
            if r.get("quantiles") is not None:
                rq = np.asarray(_get(r, "quantiles", list, w), dtype=np.float64)
                if rq.shape != PROBS.shape or np.any(np.diff(rq) < 0) or not np.all(
                        np.isfinite(rq)) or rq[0] <= 0:
                    raise _FieldError(f"{w}: quantiles should be {PROBS.size} increasing "
                                      f"positive numbers")
                n = int(_get(r, "rounds", (int, float), w, 1))
                dist = Timing(float(np.interp(0.5, PROBS, rq)), float(np.interp(0.25, PROBS, rq)),
                              float(np.interp(0.75, PROBS, rq)), n, rq, raw=True)
            rounds = r.get("rounds")
            reasons = _get(r, "reasons", list, w, None)
            ratios[str(other)] = PairRatio(
                _get(r, "value", float, w), _get(r, "lo", float, w, None),
                _get(r, "hi", float, w, None), _get(r, "level", float, w, None),
                "paired" if r.get("paired", True) else "medians",
                int(rounds) if isinstance(rounds, (int, float)) else None, dist,
                None if reasons is None else tuple(_text(str(x), 500) for x in reasons),
                _replicates(r.get("replicates"), w))
        out.append(Bench(
            ratios=ratios, stable=_get(b, "stable", bool, where, None),
            noise={"reasons": [str(x) for x in b.get("noise_reasons") or []]},
            group=_text(b.get("group"), 300),
            name=_get(b, "name", str, where, ""), algorithm=_get(b, "algorithm", str, where),
            family=_get(b, "family", str, where, "unknown"),
            impl=_get(b, "implementation", str, where), device=_get(b, "device", str, where, ""),
            dtype=_get(b, "dtype", str, where, ""), size=_get(b, "size", str, where, ""),
            pass_=_get(b, "pass", str, where, "forward"), timing=timing,
            flops=_get(b, "flops", float, where, None), bytes=_get(b, "bytes", float, where, None),
            fullname=_get(b, "name", str, where, ""),
            twin=_text(_get(b, "twin", str, where, ""), 64),
        ))
    return BenchRun(path=path, created=_text(doc.get("created"), 64), env=env, benchmarks=out,
                    kind="baseline")


def baseline_doc(run: BenchRun, source: str) -> dict:
    """The compact baseline of a benchmark run: what the gate needs, a few KB per algorithm.

    Per benchmark: the quantiles of its timings, whether it was stable (and why not), and per
    paired partner the within-run ratio with its interval and the quantiles of the per-round
    ratios (what the gate compares a candidate's per-round ratios with).
    """
    def sig(x: float) -> float:
        return float(f"{x:.5g}")

    def ratio(r: PairRatio) -> dict:
        d = {"value": sig(r.value), "lo": None if r.lo is None else sig(r.lo),
             "hi": None if r.hi is None else sig(r.hi), "level": r.level, "rounds": r.rounds,
             "paired": r.paired}
        if r.reasons is not None:
            d["reasons"] = list(r.reasons)
        if r.replicates is not None:
            d["replicates"] = list(r.replicates)
        if r.dist is not None:
            d["quantiles"] = [sig(x) for x in np.maximum.accumulate(r.dist.quantiles)]
        return d

    env = run.env
    return {
        "schema": BASELINE_SCHEMA,
        "created": run.created,
        "source": source,
        "environment": {
            "python": env.python, "platform": env.platform, "cpu": env.cpu, "cores": env.cores,
            "node": env.node, "versions": env.versions, "gpu": env.gpu, "commit": env.commit,
            "dirty": env.dirty, "peaks": env.peaks,
            "load": None if env.load is None else {
                "start": env.load.start, "end": env.load.end, "cpus": env.load.cpus,
                "busy": env.load.busy},
            "threading": env.threading,
        },
        "benchmarks": [
            {"name": b.name, "algorithm": b.algorithm, "family": b.family,
             "implementation": b.impl, "device": b.device, "dtype": b.dtype, "size": b.size,
             "pass": b.pass_, "rounds": b.timing.rounds, "raw": b.timing.raw,
             "flops": b.flops, "bytes": b.bytes,
             "quantiles": [sig(x) for x in np.maximum.accumulate(b.timing.quantiles)],
             "group": b.group or None, "stable": b.stable,
             "noise_reasons": b.reasons or None,
             "ratios": {k: ratio(r) for k, r in b.ratios.items()} or None,
             **({"twin": b.twin} if b.twin else {})}
            for b in run.benchmarks
        ],
    }
