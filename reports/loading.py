"""Reading result files into plain records the report, the comparison and the gate share.

Three kinds of file, told apart by their content, never by their name:

- correctness: ``{"schema": "refbench.correctness/1", "environment": {...}, "records": [...]}``,
  written by the plugin in ``conftest.py`` (see ``suites/recording.py``);
- benchmark: pytest-benchmark's own JSON (``--benchmark-json``), any version: old files without
  ``ops``, ``fullname`` or raw timings (``stats.data``) still load;
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
IMPL_ORDER = ("numba", "torch-cpu", "torch-cuda")
SIZE_ORDER = ("small", "medium", "large")
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

    @property
    def machine(self) -> dict[str, Any]:
        """What identifies the hardware: timings from two machines are not comparable."""
        gpu = (self.gpu or {}).get("name") or ("none" if self.known else None)
        return {"host": self.node, "CPU": self.cpu, "cores": self.cores, "GPU": gpu}

    def peak(self, device: str, what: str) -> float | None:
        value = (self.peaks.get(device) or {}).get(what)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _environment(d: Any, where: str) -> Environment:
    if d is None:
        return Environment()
    if not isinstance(d, dict):
        raise _FieldError(f"{where} should be an object, got {type(d).__name__}")
    versions = d.get("versions") if isinstance(d.get("versions"), dict) else {}
    gpu = d.get("gpu") if isinstance(d.get("gpu"), dict) else None
    peaks = d.get("peaks") if isinstance(d.get("peaks"), dict) else {}
    cores = d.get("cores")
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
            worst=_get(r, "worst", float, where, 0.0),
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

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.algorithm, self.impl, self.size, self.dtype, self.pass_)

    @property
    def elements(self) -> float | None:
        """Problem size: the number of input elements (None when shapes are unknown)."""
        if not self.shapes:
            return None
        return float(sum(math.prod(s) for s in self.shapes.values()))


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

    def find(self, key) -> Bench | None:
        return self._index.get(key)

    def __post_init__(self) -> None:
        self._index = {b.key: b for b in self.benchmarks}


# test_bench[<algorithm>-<impl>-<size>-<dtype>-<pass>] when extra_info is missing (old files).
_PARAM = re.compile(r"^(?P<algorithm>.+?)-(?P<impl>numba|torch-cpu|torch-cuda|[^-]+)-"
                    r"(?P<size>small|medium|large)-(?P<dtype>float\d+)-"
                    r"(?P<pass>forward|forward_backward)$")


def _timing(stats: dict, where: str) -> Timing:
    data = stats.get("data")
    if isinstance(data, list) and data:
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise _FieldError(f"{where}: stats.data holds non-numbers") from None
        if arr.ndim != 1 or not np.all(np.isfinite(arr)):
            raise _FieldError(f"{where}: stats.data holds non-finite or nested values")
        q = np.quantile(arr, np.concatenate([PROBS, (0.25, 0.75)]))
        med = float(q[PROBS.size // 2])  # PROBS is symmetric about its middle, 0.5
        return Timing(med, float(q[-2]), float(q[-1]), int(arr.size), q[:-2], raw=True)
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
    )


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
    return BenchRun(path=path, created=_text(doc.get("datetime"), 64), env=env,
                    benchmarks=[_bench(b, i) for i, b in enumerate(benchmarks)],
                    version=_text(doc.get("version"), 32))


# -- the compact baseline -----------------------------------------------------------------------

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
        out.append(Bench(
            name=_get(b, "name", str, where, ""), algorithm=_get(b, "algorithm", str, where),
            family=_get(b, "family", str, where, "unknown"),
            impl=_get(b, "implementation", str, where), device=_get(b, "device", str, where, ""),
            dtype=_get(b, "dtype", str, where, ""), size=_get(b, "size", str, where, ""),
            pass_=_get(b, "pass", str, where, "forward"), timing=timing,
            flops=_get(b, "flops", float, where, None), bytes=_get(b, "bytes", float, where, None),
        ))
    return BenchRun(path=path, created=_text(doc.get("created"), 64), env=env, benchmarks=out,
                    kind="baseline")


def baseline_doc(run: BenchRun, source: str) -> dict:
    """The compact baseline of a benchmark run: what the gate needs, a few KB per algorithm."""
    def sig(x: float) -> float:
        return float(f"{x:.5g}")

    env = run.env
    return {
        "schema": BASELINE_SCHEMA,
        "created": run.created,
        "source": source,
        "environment": {
            "python": env.python, "platform": env.platform, "cpu": env.cpu, "cores": env.cores,
            "node": env.node, "versions": env.versions, "gpu": env.gpu, "commit": env.commit,
            "dirty": env.dirty, "peaks": env.peaks,
        },
        "benchmarks": [
            {"name": b.name, "algorithm": b.algorithm, "family": b.family,
             "implementation": b.impl, "device": b.device, "dtype": b.dtype, "size": b.size,
             "pass": b.pass_, "rounds": b.timing.rounds, "raw": b.timing.raw,
             "flops": b.flops, "bytes": b.bytes,
             "quantiles": [sig(x) for x in np.maximum.accumulate(b.timing.quantiles)]}
            for b in run.benchmarks
        ],
    }
