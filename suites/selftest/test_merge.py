"""reports/merge.py: several result files into one report. Shards of one run merge into what
the unsharded run gives; a CPU box and a GPU box (or two torch versions) stay separate runs,
each check shown per run; two results for one key in one run are an error naming both files.

Fixtures (suites/selftest/data/reports, written by make_fixtures.py): shard1/2_correctness
and shard1/2_bench split cpu_correctness and cpu_bench as ``--shard=I/2`` splits a run;
gpu_correctness is the same commit on a GPU box with ``--device cuda``.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from reports.analysis import build_report
from reports.build import build, load_benches, load_correctness, run_gate
from reports.config import GateConfig, load_config
from reports.loading import InputError
from reports.merge import merge_correctness
from reports.render import environment_table
from suites.selftest.test_reports import DATA, ROOT, cli, f, visible

NO_BASELINE = DATA / "no_baseline.toml"


def _doc(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _write(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _content(c) -> tuple:
    return (c.key, c.verdict, c.examples, c.worst, c.max_abs, c.max_rel, c.rtol, c.atol,
            c.reason, c.message, c.replay, c.figures)


def _one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


# -- shards of one run --------------------------------------------------------------------------

def test_fixture_shards_partition_the_run():
    whole = {r["nodeid"] for r in _doc("cpu_correctness.json")["records"]}
    parts = [{r["nodeid"] for r in _doc(f"shard{i}_correctness.json")["records"]}
             for i in (1, 2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == whole
    whole = {b["fullname"] for b in _doc("cpu_bench.json")["benchmarks"]}
    parts = [{b["fullname"] for b in _doc(f"shard{i}_bench.json")["benchmarks"]} for i in (1, 2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == whole


def test_correctness_shards_merge_into_the_unsharded_run(tmp_path):
    shards = [f("shard1_correctness.json"), f("shard2_correctness.json")]
    merged = load_correctness(shards)
    whole = load_correctness(f("cpu_correctness.json"))
    assert len(merged.runs) == 1 and merged.runs[0].sources == shards
    # Merged checks come in test-id order, as a real run writes them (the fixture is not).
    ordered = sorted(whole.checks, key=lambda c: c.nodeid)
    assert [_content(c) for c in merged.checks] == [_content(c) for c in ordered]
    assert all(c.run == "" for c in merged.checks)  # one run: no run labels anywhere
    # A check present in both shards with the same result is kept once.
    s1, s2 = _doc("shard1_correctness.json"), _doc("shard2_correctness.json")
    s2["records"].append(s1["records"][0])
    again = load_correctness([shards[0], _write(tmp_path / "s2dup.json", s2)])
    assert [_content(c) for c in again.checks] == [_content(c) for c in ordered]

    # The report of the shards is the report of the unsharded run, but for its files.
    a = build(shards, [f("cpu_bench.json")], tmp_path / "a")
    b = build(f("cpu_correctness.json"), [f("cpu_bench.json")], tmp_path / "b")
    sections = ("verdict", "failures", "overview", "details")
    assert visible(a.html.read_text(), *sections) == visible(b.html.read_text(), *sections)
    assert a.markdown.replace(str(a.html), "") == b.markdown.replace(str(b.html), "")
    env = visible(a.html.read_text(), "environment")
    assert "files | shard1_correctness.json, shard2_correctness.json" in env
    # Where the shards differ (their start), each file's value is shown.
    for i in (1, 2):
        assert f"{s1['created'] if i == 1 else s2['created']} (shard{i}_correctness.json)" in env


def test_bench_shards_merge_into_one_run(tmp_path):
    shards = [f("shard1_bench.json"), f("shard2_bench.json")]
    (run,) = load_benches(shards)
    (whole,) = load_benches([f("cpu_bench.json")])
    assert run.sources == shards and len(run.parts) == 2
    assert sorted(b.fullname for b in run.benchmarks) == sorted(b.fullname
                                                                for b in whole.benchmarks)
    for b in whole.benchmarks:
        m = run.find(b.key)
        assert m.timing.median == b.timing.median and (m.data == b.data).all()
    a = build(None, shards, tmp_path / "a")
    b = build(None, [f("cpu_bench.json")], tmp_path / "b")
    page = a.html.read_text()
    assert visible(page, "overview") == visible(b.html.read_text(), "overview")
    assert 'id="comparison"' not in page  # one run: nothing to compare with
    assert "54 in 1 run(s); run merged from 2 files" in a.markdown
    # Each shard measured its own load and peaks; each benchmark's % of peak uses its file's.
    docs = [_doc("shard1_bench.json"), _doc("shard2_bench.json")]
    text = visible(page, "verdict")
    for i, doc in enumerate(docs, 1):
        start = doc["machine_info"]["refbench"]["load"]["start"]
        assert f"during run (shard{i}_bench.json): load average (1 / 5 / 15 min) " \
               f"{' / '.join(f'{v:.2f}' for v in start)}" in text
    report = build_report(None, [run], GateConfig())
    shard_of = {b["fullname"]: i for i, doc in enumerate(docs) for b in doc["benchmarks"]}
    rows = [row for algo in report.algos for row in algo.perf]
    assert {shard_of[row.any_bench.fullname] for row in rows} == {0, 1}
    for row in rows:
        want = docs[shard_of[row.any_bench.fullname]]["machine_info"]["refbench"]["peaks"]
        assert row.peaks["cpu"]["bytes_per_s"] == want["cpu"]["bytes_per_s"]


def test_not_run_entries_of_shards_merge(tmp_path):
    """Each shard lists what it could not time (machine_info.refbench.not_run); the merged
    run shows every reason, as the unsharded run does."""
    from suites.selftest.test_reports import _fixtures

    mf = _fixtures()
    whole = _doc("compiled_bench.json")
    paths = []
    for i in (1, 2):
        doc = json.loads(json.dumps(whole))
        doc["benchmarks"] = [b for b in doc["benchmarks"]
                             if mf.shard_of("bench " + b["extra_info"]["group"], i, 2)]
        refbench = doc["machine_info"]["refbench"]
        refbench["not_run"] = [e for e in refbench["not_run"]
                               if mf.shard_of("bench " + e["group"], i, 2)]
        assert doc["benchmarks"] and refbench["not_run"]
        paths.append(_write(tmp_path / f"compiled{i}.json", doc))
    (run,) = load_benches(paths)
    (one,) = load_benches([f("compiled_bench.json")])
    assert sorted(run.not_run, key=lambda n: n.key) == sorted(one.not_run, key=lambda n: n.key)
    a = build(None, paths, tmp_path / "a")
    b = build(None, [f("compiled_bench.json")], tmp_path / "b")
    assert visible(a.html.read_text(), "details") == visible(b.html.read_text(), "details")
    n = len(whole["machine_info"]["refbench"]["not_run"])
    assert f"Not run with a reason: {n} implementation(s)" in a.markdown


def test_two_results_for_one_key_in_one_run_is_an_error(tmp_path):
    s1, s2 = _doc("shard1_correctness.json"), _doc("shard2_correctness.json")
    stale = dict(s1["records"][0], verdict="failed", worst=3.5, message="an older result")
    s2["records"].append(stale)
    bad = _write(tmp_path / "stale_shard2.json", s2)
    first = f("shard1_correctness.json")
    with pytest.raises(InputError) as err:
        load_correctness([first, bad])
    text = str(err.value)
    key = f"{stale['algorithm']} x {stale['check']} x {stale['dtype']} x {stale['device']}"
    assert first in text and bad in text and key in text and stale["nodeid"] in text
    assert "passed" in text and "failed" in text  # what each file says
    for args in (["build", "--correctness", first, bad, "--out", str(tmp_path / "o")],
                 ["gate", "--correctness", first, bad]):
        line = _one_line_error(cli(*args))
        assert first in line and bad in line and key in line
    assert not (tmp_path / "o" / "index.html").exists()

    b1, b2 = _doc("shard1_bench.json"), _doc("shard2_bench.json")
    twice = json.loads(json.dumps(b1["benchmarks"][0]))
    twice["stats"]["data"] = [x * 1.5 for x in twice["stats"]["data"]]
    twice["stats"]["median"] *= 1.5
    b2["benchmarks"].append(twice)
    bad = _write(tmp_path / "stale_bench2.json", b2)
    line = _one_line_error(cli("build", "--bench", f("shard1_bench.json"), bad, "--out",
                               str(tmp_path / "o")))
    assert f("shard1_bench.json") in line and bad in line and twice["fullname"] in line
    assert "reports compare" in line  # the way to put two runs of one commit side by side
    line = _one_line_error(cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                               f("shard1_bench.json"), bad))
    assert twice["fullname"] in line


# -- different runs: a CPU box and a GPU box, two torch versions ---------------------------------

def test_cpu_and_gpu_runs_are_kept_apart_and_shown_per_run(tmp_path):
    files = [f("shard1_correctness.json"), f("shard2_correctness.json"),
             f("gpu_correctness.json")]
    corr = load_correctness(files)
    assert [r.sources for r in corr.runs] == [files[:2], files[2:]]
    cpu, gpu = corr.runs
    assert cpu.label == "correctness 1" and gpu.label == "correctness 2"
    assert cpu.title.startswith("correctness 1 (cpu, no GPU")
    assert gpu.title.startswith("correctness 2 (cuda, NVIDIA H100 80GB HBM3")
    n_cpu = len(_doc("cpu_correctness.json")["records"])
    n_gpu = len(_doc("gpu_correctness.json")["records"])
    assert len(cpu.checks) == n_cpu and len(gpu.checks) == n_gpu
    # The same key in both runs (relu's forward on cuda): skipped on the CPU box, passed on
    # the GPU box. Not a conflict, since the runs differ; each is kept.
    key = next(c.key for c in gpu.checks if "test_forward_cuda[relu" in c.nodeid)
    verdicts = {c.run: c.verdict for c in corr.checks if c.key == key}
    assert verdicts == {"correctness 1": "skipped", "correctness 2": "passed"}

    built = build(files, [f("cpu_bench.json"), f("gpu_bench.json")], tmp_path)
    page = built.html.read_text()
    # One environment column per run: two correctness runs and two benchmark runs.
    heads, rows = environment_table(corr.runs + load_benches([f("cpu_bench.json"),
                                                              f("gpu_bench.json")]))
    assert len(heads) == 4 and heads[0].startswith(cpu.title) and heads[1].startswith(gpu.title)
    env = visible(page, "environment")
    assert "shard1_correctness.json, shard2_correctness.json | gpu_correctness.json" in env
    assert "| torch | 2.13.0+cpu | 2.13.0+cu128 |" in env
    # Each check per run, in the algorithm's table, with a run column.
    relu = visible(page, "algo-relu")
    assert "| check | dtype | device | run | examples |" in relu
    assert re.search(r"\| forward \| float32 \| cuda \| correctness 1 \| – \| .*skipped", relu)
    assert re.search(r"\| forward( × 2)? \| float32 \| cuda \| correctness 2 \| \d+ \| .*passed",
                     relu)
    assert f"{n_cpu + n_gpu - 5} checks passed (5 skipped)" in built.markdown
    assert "Correctness runs: 2" in built.markdown

    # The gate counts every check of every run, and says in which run a failure was.
    ok = run_gate(files, None, None, load_config(NO_BASELINE))
    assert ok.ok and any("correctness from 2 runs" in ln for ln in ok.lines), ok.lines
    g = _doc("gpu_correctness.json")
    bad = next(r for r in g["records"] if r["check"] == "gradient" and r["dtype"] == "float32")
    bad.update(verdict="failed", worst=12.0, message="softmax gradient on cuda: 12x the tol")
    failing = files[:2] + [_write(tmp_path / "gpu_failing.json", g)]
    result = run_gate(failing, None, None, load_config(NO_BASELINE))
    assert not result.ok
    assert any(ln.startswith(f"  - {bad['algorithm']} gradient float32 on cuda (correctness 2")
               for ln in result.lines), result.lines
    page = build(failing, [], tmp_path / "f").html.read_text()
    assert "gradient · float32 · on cuda · correctness 2" in visible(page, "failures")


def test_another_torch_version_on_the_same_machine_is_another_run(tmp_path):
    doc = _doc("cpu_correctness.json")
    doc["environment"]["versions"]["torch"] = "2.14.0+cpu"
    doc["records"][0]["worst"] = 0.9  # the same check, another result: not a conflict
    other = _write(tmp_path / "torch214.json", doc)
    corr = load_correctness([f("cpu_correctness.json"), other])
    assert len(corr.runs) == 2
    assert corr.runs[1].title == "correctness 2 (torch 2.14.0+cpu)"
    assert corr.runs[0].title == "correctness 1 (torch 2.13.0+cpu)"


def test_repeated_and_listed_file_options_are_the_same(tmp_path):
    a = cli("build", "--correctness", f("shard1_correctness.json"), f("shard2_correctness.json"),
            "--bench", f("shard1_bench.json"), f("shard2_bench.json"), "--out", str(tmp_path))
    b = cli("build", "--correctness", f("shard1_correctness.json"), "--correctness",
            f("shard2_correctness.json"), "--bench", f("shard1_bench.json"), "--bench",
            f("shard2_bench.json"), "--out", str(tmp_path))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and "run merged from 2 files" in a.stdout
    # Benchmark files of two runs: merged runs are compared with the first, as before.
    two = cli("build", "--bench", f("shard1_bench.json"), f("shard2_bench.json"),
              f("gpu_bench.json"), "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    assert "in 2 run(s), 1 not run; run 1 (vm) merged from 2 files" in two.stdout
    assert "run 2 (gpu-box) vs run 1 (vm)" in two.stdout
    # The gate takes the shards of one run, not two runs.
    line = _one_line_error(cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                               f("cpu_bench.json"), f("gpu_bench.json")))
    assert "one benchmark run" in line and "gpu_bench.json" in line


def test_merge_of_nothing_is_nothing():
    assert merge_correctness([]) is None and load_benches(None) == []


# -- the README's example: two shards on one machine ---------------------------------------------

# Runs pytest command lines side by side, each in a child forked after the libraries and the
# catalog were imported once: each child calls pytest's own console entry point (what
# `python -m pytest ARGS` runs) with the command's ARGS, in a fresh pytest session. Start-up
# (torch, numba, the reference kernels' modules: ~8 s of a ~20 s shard here) is paid once, not
# four times: about half the CPU time of four separate interpreters (measured 14.5 s + 2.2 s
# sys vs 31.5 s + 3.0 s, wall 53 s vs 111 s at load average ~11 on 2 cores).
_FORK_RUNNER = r"""
import json, os, sys
root, jobs, logs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
os.chdir(root)
sys.path.insert(0, root)  # as `python -m pytest` from the root puts it first
import numpy, torch, numba, hypothesis, pytest, pytest_benchmark  # noqa: E401,F401
from suites.catalog import all_specs
all_specs()  # import every reference module once; no kernel runs, no thread pool starts
pids = []
for argv, log in zip(jobs, logs):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    pid = os.fork()
    if pid == 0:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = ["pytest", *argv]
        try:
            code = pytest.console_main()
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))
    os.close(fd)
    pids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]))
"""


def test_readme_two_shard_example_runs(tmp_path):
    """The README's commands, as written, on one algorithm (-k) and into a temporary folder.

    The four pytest commands run side by side, as a CI matrix would (the README runs the
    benchmark shards one after the other for their timings' sake; here only their files
    matter), each in a fresh pytest session forked from one interpreter that imported the
    libraries once (``_FORK_RUNNER``); the two `reports` commands run in this process.
    """
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running across workers and machines", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[-1]
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert len(commands) == 6 and all(c[0] == ".nox/tests/bin/python" for c in commands)
    commands = [[a.replace("reports/out/", f"{tmp_path}/") for a in c[1:]] for c in commands]
    pytest_runs = [c for c in commands if c[:2] == ["-m", "pytest"]]
    reports_runs = [c for c in commands if c[:2] == ["-m", "reports"]]
    assert len(pytest_runs) == 4 and len(reports_runs) == 2

    def narrowed(argv: list[str]) -> list[str]:
        # l2_penalty: each shard holds some of its checks and one of its benchmark groups;
        # the benchmarks get a tiny time budget (their files, not their timings, matter).
        argv = [*argv[2:], "-k", "l2_penalty and (forward or gradient)", "-p",
                "no:cacheprovider"]
        if "suites/performance" in argv:
            argv.append("--benchmark-max-time=0.02")
        return argv

    logs = [str(tmp_path / f"pytest{i}.log") for i in range(len(pytest_runs))]
    run = subprocess.run([sys.executable, "-c", _FORK_RUNNER, str(ROOT),
                          json.dumps([narrowed(c) for c in pytest_runs]), json.dumps(logs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    codes = json.loads(run.stdout.strip().splitlines()[-1])
    for argv, code, log in zip(pytest_runs, codes, logs, strict=True):
        assert code == 0, shlex.join(argv) + "\n" + Path(log).read_text()[-3000:]
    commits = {json.loads((tmp_path / f"shard{i}.json").read_text())["environment"]["commit"]
               for i in (1, 2)}
    assert len(commits) == 1, f"the checkout changed commit during the test: {commits}"
    out = {}
    for c in reports_runs:  # in this process: the same entry point, without a start-up
        done = cli(*c[2:])
        assert done.returncode == 0, done.stdout + done.stderr
        out[c[2]] = done.stdout
    shards = [json.loads((tmp_path / f"shard{i}.json").read_text())["records"] for i in (1, 2)]
    assert shards[0] and shards[1]
    benches = [json.loads((tmp_path / f"bench{i}.json").read_text())["benchmarks"]
               for i in (1, 2)]
    assert benches[0] and benches[1]
    assert "run merged from 2 files" in out["build"], out["build"]
    assert f"all {len(shards[0]) + len(shards[1])} checks passed" in out["build"]
    assert "correctness: merged from 2 files of one run (shard1.json, shard2.json)" in out["gate"]
