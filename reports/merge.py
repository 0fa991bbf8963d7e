"""Several result files into runs: the shards of one run merge, different runs stay apart.

A CI matrix writes one file per shard and per machine (``pytest --shard I/N --device D
--results-json=...`` and ``--benchmark-json=...``). ``reports build`` takes them all:

- **Correctness files** are grouped by where and with what they ran: the commit (and whether
  the tree was dirty), the machine (CPU model, cores, GPU), the Python and library versions
  (torch's among them), the device the torch twins ran on (``--device``, with ``auto``
  resolved) and the Hypothesis profile. Files that agree on all of that are shards of one run
  and merge into one set of checks, keyed by algorithm x check x dtype x device (and the test
  item: the invalid-input cases of an algorithm share the rest). A key that two of them both
  hold must have the same content (verdict, examples, worst error, max abs and rel error,
  figures): it is then kept once; a disagreement raises ``InputError`` naming both files and
  the key, since one run cannot have two results for one check. Files that differ in any of
  those facts are separate runs (a CPU box and a GPU box, two torch versions): each keeps its
  checks, and the report shows every check per run.
- **Benchmark files** are grouped the same way by their ``machine_info``: commit, machine
  (host, CPU, cores, GPU), versions, and the kind of file (a compact baseline never merges with
  a benchmark file). Files of one group are shards of one run and merge into one run if their
  benchmarks (by pytest's full name) are disjoint, or equal where they overlap; the same
  benchmark with other timings in two files of one run raises ``InputError`` naming both
  files (two runs of one commit on one machine are compared with ``reports compare A B``).
  Runs keep the order of their first file: the first run is the baseline of the comparison.

Each merged run remembers its files (``sources``) and the runs as loaded (``parts``), so the
report's environment table can show what differs between shards (start times, load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports.loading import (
    Bench,
    BenchRun,
    Check,
    CorrectnessRun,
    Environment,
    InputError,
)


def _device(run: CorrectnessRun) -> str:
    """The device the twins ran on: ``--device auto`` means CUDA when the machine has a GPU."""
    device = run.device or ""
    if device == "auto" and run.env.known:
        return "cuda" if run.env.gpu else "cpu"
    return device


def _facts(env: Environment) -> dict[str, object]:
    """What makes two files come from different runs, fact by fact (None: not recorded)."""
    facts: dict[str, object] = {
        "commit": env.commit, "dirty tree": env.dirty, "CPU": env.cpu, "cores": env.cores,
        "GPU": (env.gpu or {}).get("name") or ("none" if env.known else None),
        "python": env.python,
    }
    for name, version in sorted(env.versions.items()):
        facts[name] = version
    return facts


def correctness_facts(run: CorrectnessRun) -> dict[str, object]:
    return {**_facts(run.env), "device": _device(run), "Hypothesis profile": run.profile}


def bench_facts(run: BenchRun) -> dict[str, object]:
    return {"kind": run.kind, "host": run.env.node, **_facts(run.env)}


def _describe(facts: dict[str, object]) -> str:
    """The short description of a run in an error message."""
    commit = facts.get("commit")
    parts = [f"commit {str(commit)[:12]}" if commit else "commit unknown"]
    for key in ("host", "CPU", "GPU", "device", "torch"):
        if facts.get(key) not in (None, ""):
            parts.append(f"{key} {facts[key]}")
    return ", ".join(parts)


def _float(x: object) -> object:
    """A float as its exact text, so that nan equals nan when comparing records."""
    return float(x).hex() if isinstance(x, float) else x


def _content(c: Check) -> tuple:
    figures = tuple(sorted((k, _float(v)) for k, v in c.figures.items()))
    return (c.verdict, c.examples, _float(c.worst), _float(c.max_abs), _float(c.max_rel),
            figures)


def _content_text(c: Check) -> str:
    fig = f", figures {c.figures}" if c.figures else ""
    return (f"{c.verdict}, {c.examples} examples, worst {c.worst:.4g} of the tolerance, max abs "
            f"{c.max_abs:.3g}, max rel {c.max_rel:.3g}{fig}")


def _groups(runs: list, facts) -> list[list]:
    """The runs grouped by equal facts, groups in the order of their first file."""
    groups: dict[tuple, list] = {}
    for run in runs:
        key = tuple(sorted((k, repr(v)) for k, v in facts(run).items()))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _differences(runs: list, facts) -> list[dict[str, str]]:
    """Per run, the facts whose values differ between the runs (to name each run by)."""
    all_facts = [facts(r) for r in runs]
    keys = [k for k in all_facts[0] if len({repr(f.get(k)) for f in all_facts}) > 1]
    keys += [k for f in all_facts for k in f if k not in all_facts[0] and k not in keys]
    return [{k: str(f.get(k)) for k in keys if f.get(k) is not None} for f in all_facts]


_TITLE_ORDER = ("device", "GPU", "host", "torch", "CPU", "commit")


def _title(label: str, diff: dict[str, str]) -> str:
    """``label (the facts that tell this run from the others)``, the telling ones first."""
    shown = []
    for k, v in sorted(diff.items(), key=lambda kv: (
            _TITLE_ORDER.index(kv[0]) if kv[0] in _TITLE_ORDER else len(_TITLE_ORDER))):
        if k in ("device", "GPU", "CPU", "host"):
            shown.append(v if k != "GPU" or v != "none" else "no GPU")
        elif k == "commit":
            shown.append(f"commit {v[:8]}")
        elif k not in ("kind", "dirty tree"):
            shown.append(f"{k} {v}")
    return f"{label} ({', '.join(shown[:4])})" if shown else label


# -- correctness --------------------------------------------------------------------------------

@dataclass
class CorrectnessSet:
    """Every correctness check of a report, from one or more runs (each merged from its files).

    ``checks`` holds all of them; with several runs each check's ``run`` names its run.
    """

    runs: list[CorrectnessRun] = field(default_factory=list)

    @property
    def checks(self) -> list[Check]:
        return [c for r in self.runs for c in r.checks]

    @property
    def path(self) -> str:
        return ", ".join(p for r in self.runs for p in r.sources)

    @property
    def multi(self) -> bool:
        return len(self.runs) > 1


def _merge_one_run(files: list[CorrectnessRun]) -> CorrectnessRun:
    if len(files) == 1:
        return files[0]
    seen: dict[tuple, tuple[Check, str]] = {}
    checks: list[Check] = []
    for run in files:
        mine: dict[tuple, Check] = {}
        for c in run.checks:
            other = seen.get(c.key)
            if other is None:
                mine[c.key] = c
                checks.append(c)
                continue
            first, where = other
            if _content(first) != _content(c):
                algorithm, check, dtype, device, nodeid = c.key
                raise InputError(
                    f"{where} and {run.path} disagree about {algorithm} x {check} x "
                    f"{dtype or 'no dtype'} x {device or 'no device'} ({nodeid}): "
                    f"{_content_text(first)} vs {_content_text(c)}; both come from the same "
                    f"run ({_describe(correctness_facts(run))}), whose shards cannot hold two "
                    f"results for one check (a file from another run or a stale file?)")
        seen.update({k: (c, run.path) for k, c in mine.items()})
    checks.sort(key=lambda c: c.nodeid)  # as the unsharded run writes them
    durations = [r.duration_s for r in files if r.duration_s is not None]
    first = files[0]
    return CorrectnessRun(
        path=" + ".join(r.path for r in files), created=first.created,
        duration_s=sum(durations) if durations else None, device=first.device,
        profile=first.profile, env=first.env, checks=checks,
        sources=[r.path for r in files], parts=list(files))


def merge_correctness(files: list[CorrectnessRun]) -> CorrectnessSet | None:
    """Correctness files as loaded, in argument order, into runs (see the module's doc)."""
    if not files:
        return None
    runs = [_merge_one_run(g) for g in _groups(files, correctness_facts)]
    if len(runs) > 1:
        for i, (run, diff) in enumerate(zip(runs, _differences(runs, correctness_facts),
                                            strict=True)):
            run.label = f"correctness {i + 1}"
            run.title = _title(run.label, diff)
            for c in run.checks:
                c.run = run.label
    return CorrectnessSet(runs)


# -- benchmarks ---------------------------------------------------------------------------------

def _timing_key(b: Bench) -> tuple:
    t = b.timing
    data = None if b.data is None else tuple(float(x).hex() for x in b.data)
    return (_float(t.median), _float(t.q1), _float(t.q3), t.rounds, data)


def _timing_text(b: Bench) -> str:
    return f"median {b.timing.median:.6g} s over {b.timing.rounds} rounds"


def _merge_bench_run(files: list[BenchRun]) -> BenchRun:
    if len(files) == 1:
        return files[0]
    seen: dict[str, tuple[Bench, str]] = {}
    benches: list[Bench] = []
    for run in files:
        mine: dict[str, Bench] = {}
        for b in run.benchmarks:
            b.source = run.path
            name = b.fullname or b.name
            other = seen.get(name)
            if other is None:
                mine[name] = b
                benches.append(b)
                continue
            first, where = other
            if _timing_key(first) != _timing_key(b):
                raise InputError(
                    f"{where} and {run.path} both hold benchmark {name} with different "
                    f"timings ({_timing_text(first)} vs {_timing_text(b)}), yet come from "
                    f"the same run ({_describe(bench_facts(run))}): the shards of one run hold "
                    f"disjoint benchmarks. To compare two runs of one commit on one machine, "
                    f"use `python -m reports compare {where} {run.path}`")
        seen.update({k: (b, run.path) for k, b in mine.items()})
    first = files[0]
    return BenchRun(path=" + ".join(r.path for r in files), created=first.created,
                    env=first.env, benchmarks=benches, kind=first.kind, version=first.version,
                    sources=[r.path for r in files], parts=list(files),
                    not_run=list(dict.fromkeys(n for r in files for n in r.not_run)))


def merge_benches(files: list[BenchRun]) -> list[BenchRun]:
    """Benchmark files as loaded, in argument order, into runs (see the module's doc)."""
    return [_merge_bench_run(g) for g in _groups(files, bench_facts)]


def file_names(run) -> str:
    """A run's files for a heading: the first name, and how many more."""
    names = [Path(p).name for p in run.sources]
    return names[0] if len(names) == 1 else f"{names[0]} + {len(names) - 1} more"
