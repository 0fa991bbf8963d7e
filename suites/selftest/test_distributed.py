"""Runs spread over workers and shards give the same results file as one process.

- pytest-xdist: workers hand their records to the controller (conftest.py), which alone
  writes ``--results-json``; the records are the same with 1 and 2 workers.
- ``--shard I/N``: the shards partition the tests (each test in exactly one), and merging their
  files gives the records of the unsharded run.
Durations and timestamps differ between runs by nature; everything else must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELECT = ["suites/correctness", "-k", "l1_penalty or l2_penalty", "--hypothesis-profile=ci",
          "-q", "-p", "no:cacheprovider"]


def _run(tmp_path: Path, name: str, *extra: str) -> list[dict]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", *SELECT, f"--results-json={out}",
                           *extra], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]
    if proc.returncode == 5:  # this shard collected nothing
        return []
    return [{k: v for k, v in r.items() if k != "duration_s"}
            for r in json.loads(out.read_text())["records"]]


def test_workers_and_shards_give_the_same_records(tmp_path):
    one = _run(tmp_path, "one")
    assert len(one) > 10, f"only {len(one)} records: the selection ran too little to compare"
    assert _run(tmp_path, "two", "-n", "2") == one
    shards = [_run(tmp_path, f"shard{i}", f"--shard={i}/2") for i in (1, 2)]
    ids = [r["nodeid"] for s in shards for r in s]
    assert len(ids) == len(set(ids)), "a test ran in two shards"
    assert sorted((r for s in shards for r in s), key=lambda r: r["nodeid"]) == one


def test_benchmark_json_into_a_folder_that_does_not_exist(tmp_path):
    # As `nox -s compile` or `nox -s bench` in a fresh clone: reports/out/ is not there yet.
    out = tmp_path / "not" / "yet" / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/performance", "-k",
                           "relu and not leaky", "--bench-sizes=small", "--bench-impls=numba",
                           "--benchmark-min-rounds=2", "--benchmark-max-time=0.01",
                           f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {b["extra_info"]["algorithm"] for b in json.loads(out.read_text())["benchmarks"]}
    assert names == {"relu"}


def test_torch_benchmarks_record_which_twin_they_timed(tmp_path):
    # The gate does not judge a ratio against a twin whose code changed since the baseline
    # (suites/digest.py): each torch benchmark says which twin it timed.
    from suites.catalog import get
    from suites.digest import twin_digest

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/performance", "-k",
                           "relu and not leaky and forward and not backward",
                           "--bench-sizes=small", "--bench-impls=numba,torch-cpu",
                           "--benchmark-min-rounds=2", "--benchmark-max-time=0.01",
                           f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = {b["extra_info"]["implementation"]: b["extra_info"].get("twin")
            for b in json.loads(out.read_text())["benchmarks"]}
    assert said == {"numba": None, "torch-cpu": twin_digest(get("relu").torch)}
    assert said["torch-cpu"].startswith("v1:")
