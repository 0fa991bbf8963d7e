"""reports/: the builder on checked-in result files (golden summaries), hostile and broken
input, partial results, comparisons, the gate, and the size and speed of a catalog-sized report.

Golden files live in suites/selftest/data/reports/golden; after an intended change of the
report, regenerate them with ``REFBENCH_UPDATE_GOLDEN=1 pytest suites/selftest/test_reports.py``
and review the diff.
"""

from __future__ import annotations

import contextlib
import html.parser
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reports import paired, stats
from reports.__main__ import main
from reports.build import build, compare, run_gate, write_baseline
from reports.config import load_config
from reports.loading import CHECK_ORDER, PROBS, InputError, Timing, load
from reports.render import md

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "reports"
GOLDEN = DATA / "golden"
HOSTILE = '<script>alert("pwned")</script>'


def _fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m reports ARGS``, in this process (a fresh interpreter per call would cost
    seconds of imports each); test_build_prints_path... runs the real command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def f(name: str) -> str:
    return str(DATA / name)


class _Text(html.parser.HTMLParser):
    """The visible text of chosen sections, one line per block, without scripts and charts."""

    SKIP = {"script", "style", "svg"}
    BLOCK = {"p", "div", "tr", "li", "h1", "h2", "h3", "h4", "pre", "section", "table",
             "thead", "tbody", "details", "summary", "br"}

    def __init__(self, ids: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.ids, self.stack, self.skip, self.out = ids, [], 0, []
        self.depth_in = None

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "meta", "input", "img", "line"):
            return
        self.stack.append(tag)
        if self.depth_in is None and dict(attrs).get("id") in self.ids:
            self.depth_in = len(self.stack)
        if tag in self.SKIP:
            self.skip += 1
        if tag in self.BLOCK or tag in ("td", "th"):
            self.out.append("\n" if tag in self.BLOCK else " | ")

    def handle_endtag(self, tag):
        if tag in ("br", "meta", "input", "img", "line") or not self.stack:
            return
        if tag in self.SKIP:
            self.skip -= 1
        if self.depth_in is not None and len(self.stack) == self.depth_in:
            self.depth_in = None
            self.out.append("\n")
        self.stack.pop()

    def handle_data(self, data):
        if self.depth_in is not None and not self.skip:
            self.out.append(" ".join(data.split()) + (" " if data[-1:].isspace() else ""))

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.out).splitlines())
        return "\n".join(ln for ln in lines if ln.strip(" |"))


def visible(html_text: str, *ids: str) -> str:
    p = _Text(set(ids))
    p.feed(html_text)
    return p.text()


SCENARIOS = {
    "cpu": ("cpu_correctness.json", ["cpu_bench.json"]),
    "gpu": (None, ["gpu_bench.json"]),
    "failing": ("failing_correctness.json", ["cpu_bench.json", "gpu_bench.json"]),
    "old": (None, ["old_bench.json"]),
    "same_machine": ("cpu_correctness.json", ["cpu_bench.json", "slower_bench.json"]),
    "paired": ("paired_correctness.json", ["paired_bench.json"]),
    "busy": (None, ["paired_busy_bench.json"]),
    # A CI matrix: two shards of a CPU run, and a GPU box (see test_merge.py).
    "matrix": (["shard1_correctness.json", "shard2_correctness.json", "gpu_correctness.json"],
               ["shard1_bench.json", "shard2_bench.json", "gpu_bench.json"]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden(name, tmp_path):
    corr, benches = SCENARIOS[name]
    corr = [corr] if isinstance(corr, str) else corr or []
    built = build([f(c) for c in corr], [f(b) for b in benches], tmp_path)
    page = built.html.read_text()
    got = (built.markdown.replace(str(built.html), "OUT/index.html")
           + "\n----- html: verdict, failures, algorithms, comparison -----\n"
           + visible(page, "verdict", "failures", "overview", "comparison") + "\n")
    got = got.replace(str(DATA) + "/", "")
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("REFBENCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert golden.exists(), f"no golden file {golden}: run with REFBENCH_UPDATE_GOLDEN=1"
    assert got == golden.read_text()


def test_report_is_one_offline_file(tmp_path):
    built = build(f("failing_correctness.json"), [f("cpu_bench.json"), f("gpu_bench.json")],
                  tmp_path)
    page = built.html.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "summary.md"]
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) is None
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    assert page.count("<script") == 1 and "<script>" in page  # our inline script only
    assert page.count("<svg") >= 6  # scaling charts, inline
    assert "k=" in page  # fitted exponents beside the lines
    assert built.markdown.startswith("## ❌ refbench: FAILED")


def test_deterministic(tmp_path):
    a = build(f("cpu_correctness.json"), [f("cpu_bench.json")], tmp_path / "a")
    b = build(f("cpu_correctness.json"), [f("cpu_bench.json")], tmp_path / "b")
    assert a.html.read_bytes() == b.html.read_bytes()


# -- hostile input ------------------------------------------------------------------------------

def test_hostile_names_and_messages_are_escaped(tmp_path):
    built = build(f("failing_correctness.json"), [f("hostile_bench.json")], tmp_path)
    page = built.html.read_text()
    assert HOSTILE not in page
    assert "<img src=x" not in page and "<b><script" not in page and "<i>host" not in page
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page
    assert "évil &#34;family&#34; &#39;x&#39; ∑😀" in page  # quotes escaped, unicode kept
    assert "ß∑😀 relu &#34;quoted&#34;" in page
    # Attribute values stay inside their quotes.
    for value in re.findall(r'data-(?:family|copy)="([^"]*)"', page):
        assert "<" not in value and '"' not in value
    # An anchor id is made of safe characters only, and unique.
    ids = re.findall(r'<article class="algo" id="([^"]+)"', page)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids) and len(ids) == len(set(ids))
    assert "<script>" not in built.markdown.replace("`", "").split("python -m pytest")[0]
    assert "\\<script\\>" in built.markdown


def test_markdown_escaping():
    assert md("a|b <b>*x*</b> [l](u) `c`") == (
        "a\\|b \\<b\\>\\*x\\*\\</b\\> \\[l\\](u) \\`c\\`")
    assert md("x &amp; y & z\nnext") == "x &amp;amp; y & z next"


# -- broken input: one line on stderr, exit 2, no traceback -------------------------------------

def _broken_files(tmp: Path) -> dict[str, Path]:
    good = (DATA / "cpu_bench.json").read_text()
    files = {
        "missing": tmp / "nope.json",
        "empty": tmp / "empty.json",
        "blank": tmp / "blank.json",
        "truncated": tmp / "truncated.json",
        "not json": tmp / "text.json",
        "binary": tmp / "binary.json",
        "a list": tmp / "list.json",
        "other schema": tmp / "schema.json",
        "records wrong": tmp / "records.json",
        "bad verdict": tmp / "verdict.json",
        "bad stats": tmp / "stats.json",
        "directory": tmp,
    }
    files["empty"].write_text("")
    files["blank"].write_text("  \n\n")
    files["truncated"].write_text(good[: len(good) // 2])
    files["not json"].write_text("median: 3 us\n")
    files["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    files["a list"].write_text("[1, 2, 3]")
    files["other schema"].write_text('{"schema": "someone.else/9", "records": []}')
    files["records wrong"].write_text('{"schema": "refbench.correctness/1", "records": {}}')
    files["bad verdict"].write_text(json.dumps({
        "schema": "refbench.correctness/1",
        "records": [{"nodeid": "x", "verdict": "<b>maybe</b>"}]}))
    doc = json.loads(good)
    doc["benchmarks"][3]["stats"] = {"median": "fast"}
    files["bad stats"].write_text(json.dumps(doc))
    return files


def _one_clear_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "truncated", "not json",
                                  "binary", "a list", "other schema", "records wrong",
                                  "bad verdict", "bad stats", "directory"])
def test_broken_input_as_correctness_and_bench(case, tmp_path):
    path = _broken_files(tmp_path)[case]
    for args in (["build", "--correctness", str(path), "--out", str(tmp_path / "o1")],
                 ["build", "--bench", str(path), "--out", str(tmp_path / "o2")],
                 ["gate", "--correctness", str(path)],
                 ["compare", str(path), f("cpu_bench.json")]):
        line = _one_clear_line(cli(*args))
        assert str(path) in line
    assert not (tmp_path / "o1" / "index.html").exists()


def test_broken_input_messages_say_what_is_wrong(tmp_path):
    files = _broken_files(tmp_path)
    expect = {"missing": "no such file", "empty": "empty file", "truncated": "truncated",
              "a list": "top level is a JSON list", "other schema": "someone.else/9",
              "bad verdict": "is not one of", "bad stats": "'median' should be float",
              "binary": "not UTF-8", "directory": "is a directory"}
    for case, words in expect.items():
        with pytest.raises(InputError, match=re.escape(words)):
            load(files[case], ("correctness", "benchmark") if case != "bad verdict"
                 else ("correctness",))


def test_wrong_kind_of_file(tmp_path):
    line = _one_clear_line(cli("build", "--correctness", f("cpu_bench.json"), "--out",
                               str(tmp_path)))
    assert "expected a correctness file" in line and "pytest-benchmark" in line
    line = _one_clear_line(cli("build", "--bench", f("cpu_correctness.json"), "--out",
                               str(tmp_path)))
    assert "expected a pytest-benchmark JSON file" in line
    line = _one_clear_line(cli("compare", f("cpu_correctness.json"), f("cpu_bench.json")))
    assert "compare two of the same kind" in line


def test_bad_config(tmp_path):
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.refbench.gate]\nmax_slowdown = 0.5\n")
    line = _one_clear_line(cli("gate", "--correctness", f("cpu_correctness.json"),
                               "--config", str(cfg)))
    assert "max_slowdown" in line and "out of range" in line
    cfg.write_text("[tool.refbench.gate.overrides]\nsoftmax = { max_slowdon = 2 }\n")
    assert "unknown keys" in _one_clear_line(
        cli("gate", "--correctness", f("cpu_correctness.json"), "--config", str(cfg)))
    cfg.write_text("[tool.refbench\n")
    assert "not valid TOML" in _one_clear_line(
        cli("gate", "--correctness", f("cpu_correctness.json"), "--config", str(cfg)))


# -- partial results ----------------------------------------------------------------------------

def test_partial_results_render_not_run(tmp_path):
    only_bench = build(None, [f("gpu_bench.json")], tmp_path / "b")
    page = only_bench.html.read_text()
    assert "correctness not run (no --correctness file)" in page
    assert "Correctness not run for this algorithm." in page
    # The crashed benchmark (softmax numba large forward+backward) reads "not run".
    softmax = page[page.index('id="algo-softmax"'):page.index('id="algo-step"')]
    assert 'class="num notrun">not run</td>' in softmax
    assert "1 not run" in only_bench.markdown

    only_corr = build(f("cpu_correctness.json"), [], tmp_path / "c")
    page = only_corr.html.read_text()
    assert "Performance not run (no --bench file)." in page
    assert "Performance not run for this algorithm." in page
    assert "- Benchmarks: not run" in only_corr.markdown

    nothing = cli("build", "--out", str(tmp_path / "n"))
    assert nothing.returncode == 0, nothing.stderr
    assert "NOT RUN" in (tmp_path / "n" / "index.html").read_text()


def test_cpu_only_run_next_to_gpu_run(tmp_path):
    built = build(f("cpu_correctness.json"), [f("cpu_bench.json"), f("gpu_bench.json")],
                  tmp_path)
    page = built.html.read_text()
    # The CPU run never had torch-cuda: its cells say "not run" but do not count as missing.
    assert "torch-cuda" in page and "1 not run" in built.markdown
    assert "NVIDIA H100 80GB HBM3" in page and "570.124.06" in page and "12.8" in page


def test_old_pytest_benchmark_file(tmp_path):
    run = load(f("old_bench.json"), ("benchmark",))
    relu = [b for b in run.benchmarks if b.algorithm == "relu"]
    assert len(relu) == 6 and {b.impl for b in relu} == {"numba", "torch-cpu"}
    assert all(not b.timing.raw for b in run.benchmarks)  # no stats.data: quartiles only
    assert {b.algorithm for b in run.benchmarks} == {"relu", "test_something_else"}
    built = build(None, [f("old_bench.json")], tmp_path)
    assert "has no raw timings" in built.html.read_text()


# -- statistics ---------------------------------------------------------------------------------

def _timing(samples: np.ndarray) -> Timing:
    q1, med, q3 = np.quantile(samples, (0.25, 0.5, 0.75))
    return Timing(float(med), float(q1), float(q3), samples.size, np.quantile(samples, PROBS),
                  True)


def test_ratio_interval_covers_the_truth_and_detects_changes():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(100):
        a = _timing(rng.lognormal(np.log(1e-5), 0.1, 200))
        b = _timing(rng.lognormal(np.log(1e-5), 0.1, 200))
        r = stats.ratio(a, b, alpha=0.05, key=i)
        covered += r.lo <= 1.0 <= r.hi
    assert covered >= 88  # a 95% interval, give or take sampling
    slow = _timing(rng.lognormal(np.log(1.1e-5), 0.1, 200))
    base = _timing(rng.lognormal(np.log(1e-5), 0.1, 200))
    r = stats.ratio(slow, base, alpha=0.01)
    assert r.significant and r.verdict == "slower" and r.lo < 1.1 < r.hi
    few = stats.ratio(_timing(np.array([1.0])), base, alpha=0.01)
    assert not few.judged and few.verdict == "not judged"


def test_ratio_of_ratios_cancels_the_machine():
    rng = np.random.default_rng(1)

    def t(m):
        return _timing(rng.lognormal(np.log(m), 0.05, 300))

    # A machine twice as slow for both implementations: no change in the within-run ratio.
    same = stats.ratio_of_ratios(t(2e-5), t(4e-5), t(1e-5), t(2e-5), alpha=0.01)
    assert not same.significant and abs(same.value - 1) < 0.03
    worse = stats.ratio_of_ratios(t(3e-5), t(4e-5), t(1e-5), t(2e-5), alpha=0.01)
    assert worse.significant and 1.4 < worse.value < 1.6


def test_power_fit_and_crossovers():
    n = np.array([64, 65536, 16777216.0])
    assert stats.power_fit(n, 3e-9 * n**1.5) == pytest.approx(1.5)
    assert stats.power_fit([64], [1.0]) is None
    x = stats.crossovers(n, [1e-6, 1e-4, 1e-1], [1e-5, 1e-4 * 0.5, 1e-2])
    assert len(x) == 1 and 64 < x[0] <= 65536


# -- paired timings (reports/paired.py, imported by the benchmarks) ------------------------------

def _order_stat_rank(n: int, level: float) -> int:
    """The textbook rank of the median's interval, from exact binomial sums (math.comb)."""
    best = 0
    for k in range(1, (n + 1) // 2 + 1):
        tail = sum(math.comb(n, j) for j in range(k)) / 2**n
        if 1 - 2 * tail >= level:
            best = k
    return best


def test_paired_ratio_interval_is_the_order_statistic_interval():
    rng = np.random.default_rng(3)
    for n in (1, 5, 6, 7, 20, 21, 60, 301):
        a = rng.lognormal(0.0, 0.2, n)
        b = rng.lognormal(0.0, 0.2, n)
        value, lo, hi = paired.paired_ratio(a, b)
        r = np.sort(a / b)
        assert value == pytest.approx(float(np.median(r)))
        k = _order_stat_rank(n, 0.95)
        if k == 0:
            assert lo is None and hi is None, n
        else:
            assert (lo, hi) == (r[k - 1], r[n - k]), n
    assert _order_stat_rank(5, 0.95) == 0 and _order_stat_rank(20, 0.95) == 6  # the tables'
    _, lo, hi = paired.paired_ratio(np.ones(9), np.ones(9), level=0.99)
    assert lo == hi == 1.0


def test_paired_ratio_cancels_shared_load_and_covers_the_truth():
    rng = np.random.default_rng(4)
    covered, widths = 0, []
    for _ in range(300):
        # Each round's load (1x .. 50x, heavy-tailed) hits both sides; A is truly 2x B.
        load = np.exp(rng.exponential(0.8, 40)).clip(1, 50)
        b = 1e-5 * load * rng.lognormal(0, 0.03, 40)
        a = 2e-5 * load * rng.lognormal(0, 0.03, 40)
        value, lo, hi = paired.paired_ratio(a, b)
        covered += lo <= 2.0 <= hi
        widths.append(hi / lo)
    assert 0.91 <= covered / 300 <= 0.995  # a 95% interval, give or take 300 trials
    assert np.median(widths) < 1.05  # the shared load cancelled
    # A timed while the machine was quiet, B while it was busy: the ratio of medians says A
    # is 5x faster; the same two sides timed in shared rounds give the truth.
    load = np.r_[np.ones(20), np.full(20, 30.0)]
    assert float(np.median(2e-5 * np.ones(40)) / np.median(1e-5 * load)) < 0.2
    value, lo, hi = paired.paired_ratio(2e-5 * load, 1e-5 * load)
    assert value == pytest.approx(2.0) and lo == pytest.approx(2.0) == hi


def test_paired_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="same number of rounds"):
        paired.paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="b_times: expected positive finite"):
        paired.paired_ratio([1.0], [0.0])
    with pytest.raises(ValueError, match="a_times: expected positive finite"):
        paired.paired_ratio([float("nan")], [1.0])
    with pytest.raises(ValueError, match="level"):
        paired.paired_ratio([1.0], [1.0], level=1.5)
    with pytest.raises(ValueError, match="at least one"):
        paired.noise([])
    with pytest.raises(TypeError, match="times"):
        paired.noise(object())


def test_noise_unimodal_is_stable_bimodal_stalls_are_not():
    rng = np.random.default_rng(5)
    quiet = 5e-6 * rng.lognormal(0, 0.05, 200)
    n = paired.noise(quiet)
    assert n["stable"] and n["reasons"] == [] and n["rounds"] == 200
    assert n["iqr_rel"] < 0.1 and n["median_over_min"] < 1.3 and n["stall_fraction"] == 0
    # A few millisecond stalls (3%) leave the median alone: still stable.
    few = quiet.copy()
    few[::33] = 4e-3
    assert paired.noise(few)["stable"]
    # 30% of rounds stalled for milliseconds (a descheduled worker): noisy, for the stalls.
    stalled = quiet.copy()
    stalled[rng.permutation(200)[:60]] = rng.uniform(2e-3, 8e-3, 60)
    n = paired.noise(stalled)
    assert not n["stable"] and n["stall_fraction"] == pytest.approx(0.3)
    assert any(r.startswith("stalls") for r in n["reasons"]), n["reasons"]
    # Most rounds stalled (the 17 us min, 8 ms median): the median is in the slow mode.
    slow = quiet.copy()
    slow[rng.permutation(200)[:140]] = rng.uniform(7e-3, 9e-3, 140)
    n = paired.noise(slow)
    assert not n["stable"] and n["median_over_min"] > 1000
    assert any(r.startswith("slow mode") for r in n["reasons"]), n["reasons"]
    # Wide unimodal spread.
    wide = paired.noise(5e-6 * rng.lognormal(0, 0.4, 200))
    assert not wide["stable"] and any(r.startswith("spread") for r in wide["reasons"])
    # Too few rounds to say.
    few_rounds = paired.noise(quiet[:3])
    assert not few_rounds["stable"] and "only 3 rounds" in few_rounds["reasons"][0]


def test_paired_imports_only_numpy():
    code = ("import sys; import reports.paired; "
            "bad = {'torch', 'numba', 'scipy', 'suites'} & {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- comparison and gate ------------------------------------------------------------------------

def test_compare_same_machine_finds_the_slow_down(tmp_path):
    done = compare(f("cpu_bench.json"), f("slower_bench.json"), tmp_path)
    assert done.regressions >= 1
    assert "softmax large float32 forward" in done.markdown
    assert "**regression**" in done.markdown
    page = done.html.read_text()
    assert "not judged: different machines" not in page
    row = re.search(r"softmax</a></td><td>numba</td><td>large</td>.*?</tr>", page, re.S)
    assert row and ">slower</td>" in row.group(0)


def test_compare_refuses_cross_machine_unless_asked(tmp_path):
    done = compare(f("cpu_bench.json"), f("gpu_bench.json"), tmp_path)
    assert "different machines" in done.markdown and "--allow-cross-machine" in done.markdown
    assert "Absolute times:" not in done.markdown
    page = done.html.read_text()
    assert page.count("not judged: different machines") > 10
    allowed = compare(f("cpu_bench.json"), f("gpu_bench.json"), tmp_path / "x",
                      allow_cross_machine=True)
    assert "Absolute times:" in allowed.markdown
    assert "faster" in allowed.markdown


def test_compare_correctness_files(tmp_path):
    run = cli("compare", f("cpu_correctness.json"), f("failing_correctness.json"), "--out",
              str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "| softmax | gradient | float32 | cpu | passed | failed |" in run.stdout
    assert (tmp_path / "compare.html").exists()
    assert HOSTILE not in (tmp_path / "compare.html").read_text()


def test_gate(tmp_path):
    ok = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench", f("cpu_bench.json"),
             "--baseline", f("cpu_bench.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("refbench gate: PASSED")
    assert "0 regression(s)" in ok.stdout

    slow = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
               f("slower_bench.json"), "--baseline", f("cpu_bench.json"))
    assert slow.returncode == 1
    assert slow.stdout.startswith("refbench gate: FAILED")
    assert "REGRESSION softmax large float32 forward" in slow.stdout
    # In CI a flagged slow-down is measured again (reports confirm) before it fails: the gate
    # then says so rather than printing FAILED above a run that ends in "no regression stands"
    later = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                f("slower_bench.json"), "--baseline", f("cpu_bench.json"), "--then-confirm")
    assert later.returncode == 1
    assert later.stdout.startswith("refbench gate: 2 slow-down(s) flagged, not yet a failure")
    assert "FAILED" not in later.stdout.splitlines()[0]
    assert "REGRESSION softmax large float32 forward" in later.stdout

    noisy = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                f("noisy_bench.json"), "--baseline", f("cpu_bench.json"))
    assert noisy.returncode == 0, noisy.stdout
    assert "another machine" in noisy.stdout  # said, and judged on within-run ratios

    failing = cli("gate", "--correctness", f("failing_correctness.json"))
    assert failing.returncode == 1
    assert "2 of 56 checks FAILED" in failing.stdout
    assert "replay: python -m pytest" in failing.stdout


def _with_twins(src: str, dst: Path, digests: dict[str, str]) -> str:
    """``src`` with ``extra_info.twin`` set on its torch-cpu benchmarks, per algorithm."""
    doc = json.loads((DATA / src).read_text())
    for b in doc["benchmarks"]:
        e = b["extra_info"]
        if e["implementation"] == "torch-cpu" and e["algorithm"] in digests:
            e["twin"] = digests[e["algorithm"]]
    dst.write_text(json.dumps(doc))
    return str(dst)


def test_a_ratio_against_a_changed_twin_is_not_gated(tmp_path):
    """The slower fixture's softmax regression, with the twin's code said to differ between the
    runs: the ratio's denominator is another program, so the pair is listed, not judged, and
    does not fail the gate; the same digest (or a run that does not say) is judged as ever."""
    base = _with_twins("cpu_bench.json", tmp_path / "base.json", {"softmax": "v1:aaaa"})
    run = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
              _with_twins("slower_bench.json", tmp_path / "b.json", {"softmax": "v1:bbbb"}),
              "--baseline", base)
    assert "REGRESSION softmax" not in run.stdout, run.stdout
    assert re.search(r"not gated: twin changed softmax large float32 forward: [\d.]+ -> "
                     r"[\d.]+; the torch-cpu twin's code changed \(v1:aaaa in the baseline, "
                     r"v1:bbbb now\)", run.stdout), run.stdout
    for same in ({"softmax": "v1:aaaa"}, {}):
        judged = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                     _with_twins("slower_bench.json", tmp_path / "c.json", same),
                     "--baseline", base)
        assert judged.returncode == 1 and "REGRESSION softmax large float32 forward" in \
            judged.stdout, judged.stdout
    # The compact baseline keeps the digest, and a comparison shows the verdict.
    compact = write_baseline(base, tmp_path / "compact.json")
    assert '"twin":"v1:aaaa"' in compact.read_text()
    done = compare(str(compact), _with_twins("slower_bench.json", tmp_path / "d.json",
                                             {"softmax": "v1:bbbb"}), tmp_path / "cmp")
    assert "not gated: twin changed" in visible(done.html.read_text(), "comparison")


def test_gate_overrides_and_compact_baseline(tmp_path):
    base = write_baseline(f("cpu_bench.json"), tmp_path / "base.json")
    assert base.stat().st_size < (DATA / "cpu_bench.json").stat().st_size / 2
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text('[tool.refbench.gate]\nmax_slowdown = 1.25\nalpha = 0.01\n'
                   f'baseline = "{base.name}"\n'
                   '[tool.refbench.gate.overrides]\nsoftmax = { max_slowdown = 2.0 }\n')
    config = load_config(cfg)
    assert config.threshold("activations", "softmax").max_slowdown == 2.0
    assert config.threshold("activations", "relu").max_slowdown == 1.25
    # The configured baseline is used when --baseline is not given; the override lets the
    # 1.6x slow-down of softmax through.
    result = run_gate(f("cpu_correctness.json"), f("slower_bench.json"), None, config)
    assert result.ok, result.lines
    strict = load_config(cfg)
    strict.overrides.clear()
    result = run_gate(f("cpu_correctness.json"), f("slower_bench.json"), None, strict)
    assert not result.ok and any("REGRESSION softmax" in ln for ln in result.lines)


def test_gate_without_baseline_says_so():
    run = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
              f("cpu_bench.json"), "--config", f("cpu_bench.json").replace(".json", ".toml"))
    assert run.returncode == 2  # a config path that does not exist is an error
    result = run_gate(f("cpu_correctness.json"), f("cpu_bench.json"), None,
                      load_config(DATA / "no_baseline.toml"))
    assert result.ok and any("not gated (no baseline" in ln for ln in result.lines)


def test_project_gate_settings_load():
    """pyproject.toml's [tool.refbench.gate] is valid; a configured baseline must load."""
    config = load_config(ROOT / "pyproject.toml")
    assert config.max_slowdown > 1 and 0 < config.alpha < 0.5
    if config.baseline is not None:
        run = load(config.baseline, ("baseline", "benchmark"))
        assert run.benchmarks and {b.impl for b in run.benchmarks} >= {"numba", "torch-cpu"}


# -- paired rounds, noise, load, scaling (issue 8) -----------------------------------------------

def _extra(name: str) -> dict:
    """extra_info by (algorithm, implementation, size, pass) of a fixture file."""
    doc = json.loads((DATA / name).read_text())
    return {(e["algorithm"], e["implementation"], e["size"], e["pass"]): e
            for e in (b["extra_info"] for b in doc["benchmarks"])}


def _article(page: str, anchor_id: str) -> str:
    start = page.index(f'id="{anchor_id}"')
    end = page.find('<article class="algo"', start + 1)
    return page[start:end if end > 0 else len(page)]


def test_within_run_ratios_come_from_paired_rounds(tmp_path):
    from reports.analysis import build_report
    from reports.config import GateConfig

    info = _extra("paired_bench.json")
    run = load(f("paired_bench.json"), ("benchmark",))
    report = build_report(None, [run], GateConfig())
    softmax = next(a for a in report.algos if a.name == "softmax")
    for row in softmax.perf:
        p = row.pair("numba", "torch-cpu")
        want = info[("softmax", "numba", row.size, row.pass_)]["ratios"]["torch-cpu"]
        assert p.method == "paired" and p.rounds == 30
        assert (p.value, p.lo, p.hi, p.level) == (want["value"], want["lo"], want["hi"],
                                                  want["level"])
        # The reverse pair reads the other side's ratio (or this one inverted). The median of
        # per-round reciprocals is the reciprocal of the median except with an even number of
        # rounds (30 here), where both average the two middle rounds: they then differ by the
        # relative gap between those two, under 2% in this fixture.
        assert row.pair("torch-cpu", "numba").value == pytest.approx(1 / p.value, rel=0.02)
    page = build(None, [f("paired_bench.json")], tmp_path / "p").html.read_text()
    assert "median of per-round ratios from interleaved rounds" in page
    v = info[("softmax", "numba", "medium", "forward")]["ratios"]["torch-cpu"]
    assert f"{v['lo']:.3g}, {v['hi']:.3g}" in _article(page, "algo-softmax")  # the interval
    # An older file: the ratio of medians, and the report says so.
    old = build_report(None, [load(f("cpu_bench.json"), ("benchmark",))], GateConfig())
    row = next(a for a in old.algos if a.name == "softmax").perf[0]
    p = row.pair("numba", "torch-cpu")
    assert p.method == "medians" and p.lo is None
    assert p.value == row.cells["numba"].timing.median / row.cells["torch-cpu"].timing.median
    page = build(None, [f("cpu_bench.json")], tmp_path / "o").html.read_text()
    assert "ratio of median times: these runs have no paired rounds" in page
    assert "ratio of medians" in _article(page, "algo-softmax")


def test_noisy_benchmarks_are_greyed_and_never_headlined(tmp_path):
    info = _extra("paired_bench.json")
    noisy = {k: e for k, e in info.items() if not e["stable"]}
    assert {k[:3] for k in noisy} == {("gelu", "torch-cpu", "small"),
                                      ("leaky_relu", "numba", "medium")}
    built = build(None, [f("paired_bench.json")], tmp_path)
    page = built.html.read_text()
    headline = visible(page, "verdict")
    # The artefacts of the issue (thousands of x faster, tens of x slower) are not headlined.
    for text in (headline, built.markdown):
        for x in re.findall(r"numba ([\d.]+)x (?:faster|slower)", text):
            assert float(x) < 20, text
        assert "2 numba / torch-cpu pair" in text
    # Greyed, with the reasons the benchmark wrote, in the algorithm's table.
    gelu = _article(page, "algo-gelu")
    reason = noisy[("gelu", "torch-cpu", "small", "forward")]["noise"]["reasons"][0]
    assert 'class="num noisy"' in gelu and reason in html.unescape(gelu)
    bench_rows = re.findall(r'<tr [^>]*data-stable="noisy"[^>]*>', page)
    assert len(bench_rows) == 2 and all('class="noisy"' in r for r in bench_rows)


def test_exponents_skip_noisy_and_dispatch_bound_sizes():
    from reports.analysis import build_report, fit_mask
    from reports.config import GateConfig

    report = build_report(None, [load(f("paired_bench.json"), ("benchmark",))], GateConfig())
    algos = {a.name: a for a in report.algos}
    # torch-cpu gelu forward: the small size is noisy (a 7 ms median for a 64-element call);
    # the fit runs over the sweep's work-bound sizes and finds the linear growth.
    line = next(ln for ln in algos["gelu"].lines if ln.impl == "torch-cpu"
                and ln.pass_ == "forward")
    assert line.noisy[line.size_names.index("small")]
    assert not line.fitted[line.size_names.index("small")]
    assert 0.85 < line.exponent < 1.1, line.exponent
    # Crossovers come from sizes where neither side was noisy: numba is faster below ~2e3.
    assert any("forward float32" in x and "numba faster below" in x
               for x in algos["gelu"].crossings)
    # An algorithm whose every call is overhead gets no exponent, and says why.
    for ln in algos["scalar_step"].lines:
        assert ln.exponent is None and ln.fit_note == "not fitted: dispatch-bound"
    assert any("not fitted: dispatch-bound" in n for n in algos["scalar_step"].fit_notes)
    # The rule itself: under 20 us or under twice the fastest stable time is not fitted.
    assert fit_mask([5e-6, 8e-6, 4e-5, 3e-4], [False] * 4) == ([False, False, True, True], "")
    assert fit_mask([1e-3, 1.5e-3, 4e-3, 3e-2], [False] * 4)[0] == [False, False, True, True]
    assert fit_mask([5e-6, 6e-6, 7e-6], [False] * 3)[1] == "not fitted: dispatch-bound"
    assert fit_mask([5e-6, 4e-5, 3e-4], [False, True, False])[1] == "not fitted: noisy"
    # Two sizes far past the floor: one point after the smallest, which is no dispatch-bound
    # call (k-means at 340 us and 25 ms was called "dispatch-bound").
    assert fit_mask([3.4e-4, 2.5e-2], [False] * 2) == (
        [False, True], "not fitted: too few sizes (the smallest is never fitted)")
    assert fit_mask([5e-6, 2.5e-2], [False] * 2)[1] == "not fitted: dispatch-bound"
    assert fit_mask([3.4e-4, 5e-4], [False] * 2)[1] == "not fitted: dispatch-bound"


def test_sizes_are_ordered_by_problem_size(tmp_path):
    info = _extra("paired_bench.json")
    elements = {size: math.prod(e["shapes"]["x"]) for (a, i, size, p), e in info.items()
                if a == "gelu" and i == "numba" and p == "forward"}
    want = sorted(elements, key=elements.get)
    assert want != sorted(elements) and len(want) == 9  # s1..s6 interleave small/medium/large
    page = build(None, [f("paired_bench.json")], tmp_path).html.read_text()
    rows = re.findall(r"<tr>\s*<td>forward</td>\s*<td>(\w+)<span", _article(page, "algo-gelu"))
    assert rows == want
    run = load(f("old_bench.json"), ("benchmark",))
    assert {b.size for b in run.benchmarks if b.algorithm == "relu"} == {"small", "medium",
                                                                          "large"}


def test_load_average_busy_banner_and_unstable_peaks(tmp_path):
    quiet_doc = json.loads((DATA / "paired_bench.json").read_text())["machine_info"]["refbench"]
    busy_doc = json.loads((DATA / "paired_busy_bench.json").read_text())["machine_info"][
        "refbench"]
    quiet = build(None, [f("paired_bench.json")], tmp_path / "q")
    busy = build(None, [f("paired_busy_bench.json")], tmp_path / "b")
    qpage, bpage = quiet.html.read_text(), busy.html.read_text()
    for page, doc in ((qpage, quiet_doc), (bpage, busy_doc)):
        text = visible(page, "verdict", "environment")
        for when in ("start", "end"):
            assert " / ".join(f"{v:.2f}" for v in doc["load"][when]) in text
        assert f"on {doc['load']['cpus']} CPUs" in text
        assert doc["threading"]["numba_threading_layer"] in text
    assert "The machine was busy" in visible(bpage, "verdict")
    assert "busy" not in visible(qpage, "verdict").lower()
    assert "Machine busy" in busy.markdown
    assert "busy" not in quiet.markdown.split("Report:")[0].lower()
    # Unstable peaks: flagged in the environment and beside every % of peak.
    assert "NOT STABLE" in visible(bpage, "environment")
    assert "peak-unstable" in bpage and "peak-unstable" not in qpage.split("</style>")[1]
    assert "not stable" in busy.markdown
    samples = busy_doc["peaks"]["cpu"]["samples"]["flops_per_s"]
    assert f"{len(samples)} samples" in visible(bpage, "environment")


def test_gate_on_paired_rounds(tmp_path):
    config = load_config(DATA / "no_baseline.toml")
    corr = f("cpu_correctness.json")
    same = run_gate(corr, f("paired_bench.json"), f("paired_bench.json"), config)
    assert same.ok, same.lines
    assert any("all from paired rounds" in ln for ln in same.lines)
    # The compact baseline keeps the per-round ratios the gate compares.
    base = write_baseline(f("paired_bench.json"), tmp_path / "base.json")
    for baseline in (f("paired_bench.json"), str(base)):
        slow = run_gate(corr, f("paired_slower_bench.json"), baseline, config)
        assert not slow.ok
        assert {r.algorithm for r in slow.regressions} == {"softmax"}
        assert all(r.method == "paired" for r in slow.regressions)
        assert any(ln.startswith("  - REGRESSION softmax") for ln in slow.lines)
        assert any("all from paired rounds" in ln for ln in slow.lines), slow.lines
        # The same commit under a CPU hog: no regression. Its planted 1.5x numba relu large
        # forward is noisy, so it is listed as not gated, never a failure.
        busy = run_gate(corr, f("paired_busy_bench.json"), baseline, config)
        assert busy.ok, busy.lines
        assert any(ln.startswith("  - not gated: noisy relu large float32 forward:")
                   for ln in busy.lines), busy.lines
    # Compared with the same run as baseline, the noisy pairs are still not gated.
    assert any("not gated: noisy" in ln for ln in same.lines)


def test_compare_does_not_judge_noisy_absolute_times(tmp_path):
    done = compare(f("paired_bench.json"), f("paired_busy_bench.json"), tmp_path)
    noisy = sum(not e["stable"] for e in _extra("paired_busy_bench.json").values())
    assert "0 regression(s)" in done.markdown
    assert f"{noisy} not judged: noisy" in done.markdown  # absolute times
    assert "relu numba large float32 forward" not in done.markdown  # planted, but noisy
    page = (tmp_path / "compare.html").read_text()
    assert page.count('data-verdict="not judged: noisy"') == noisy


def test_check_record_round_trip_and_zero_over_zero(tmp_path):
    from suites.recording import CheckRecord, compare

    rec = CheckRecord(nodeid="t::x[empty]", replay="python -m pytest 't::x[empty]'")
    rec.bind("relu", "activations", "gradient", np.float64, "cpu")
    compare(np.zeros(0), np.zeros(0), 0.0, 0.0, label="empty", record=rec)
    compare(np.zeros(3), np.zeros(3), 0.0, 0.0, label="zeros, nothing allowed", record=rec)
    assert rec.worst == 0.0 and rec.max_abs == 0.0
    rec.examples = 2
    rec.verdict = "passed"
    rec.figures.update({"accuracy": np.float64(0.9733), "epochs": np.int64(3),
                        "solver": "lbfgs", "converged": np.bool_(True), "gap": float("nan")})
    doc = {"schema": "refbench.correctness/1", "records": [rec.to_json()]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))  # plain JSON: numpy scalars were converted
    check = load(path, ("correctness",)).checks[0]
    assert check.worst == 0.0 and not check.zero_over_zero
    assert check.figures == {"accuracy": 0.9733, "epochs": 3.0, "solver": "lbfgs",
                             "converged": True, "gap": check.figures["gap"]}
    assert math.isnan(check.figures["gap"])


def test_gradcheck_of_an_empty_case_is_zero_of_the_tolerance():
    from suites.catalog import get
    from suites.catalog.spec import Case
    from suites.correctness import checks
    from suites.recording import CheckRecord

    rec = CheckRecord(nodeid="n", replay="r")
    checks.check_gradcheck(get("relu"), Case({"x": np.zeros((0,), np.float64)}),
                           np.random.default_rng(0), rec)
    assert rec.worst == 0.0


def test_passed_check_recorded_as_inf_never_shows_a_full_red_bar(tmp_path):
    doc = json.loads((DATA / "paired_correctness.json").read_text())
    old = [r for r in doc["records"] if r["worst"] == "inf"]
    assert old and all(r["verdict"] == "passed" for r in old)
    page = build(f("paired_correctness.json"), [], tmp_path).html.read_text()
    relu = page[page.index('<td><a href="#algo-relu">'):]
    relu = relu[:relu.index("</tr>")]
    cells = re.findall(r'<td class="cell v-passed"[^>]*>(.*?)</td>', relu)
    assert cells and not any(">inf" in c or "bar red" in c or "width:100" in c for c in cells)
    assert "recorded for 0/0" in relu
    assert "0/0 (nothing allowed, nothing differed) was recorded as inf" in page


def test_check_figures_are_shown_with_the_check(tmp_path):
    doc = json.loads((DATA / "paired_correctness.json").read_text())
    figures = next(r["figures"] for r in doc["records"] if r.get("figures"))
    page = build(f("paired_correctness.json"), [], tmp_path).html.read_text()
    text = visible(page, "algo-softmax")
    for label in figures:
        assert label in text
    assert "0.9733" in text and "<b>not markup</b>" in text  # text, escaped
    assert "<b>not markup</b>" not in page


def test_checks_only_some_algorithms_have_share_one_overview_column(tmp_path):
    """A column per rare check made the overview 57 columns wide on the real catalogue, with
    the timings out of sight: the checks outside CHECK_ORDER are counted in one column, a
    failure among them shows there, and a skipped one is not counted as a pass."""
    doc = json.loads((DATA / "paired_correctness.json").read_text())
    base = next(r for r in doc["records"] if r["algorithm"] == "softmax")
    extra = [dict(base, check=name, verdict=verdict, dtype=dtype, reason=reason,
                  nodeid=f"{base['nodeid']}::{name}")
             for name, verdict, dtype, reason in (
                 ("real data: iris", "passed", "float64", ""),
                 ("trajectory (3 steps)", "failed", "float32", ""),
                 ("trajectory (3 steps)", "passed", "float64", ""),
                 ("converges", "skipped", "float64", "no sklearn"))]
    doc["records"] += extra
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    page = build(str(path), [], tmp_path / "out").html.read_text()
    head = page[page.index('id="overview-table">'):]
    head = head[:head.index("</thead>")]
    names = re.findall(r'<th class="num">([^<]*)<', head)
    assert names.count("other checks") == 1
    assert not {"real data: iris", "trajectory (3 steps)", "converges"} & set(names)
    assert set(names) - {"other checks"} <= set(CHECK_ORDER)
    row = page[page.index('<td><a href="#algo-softmax">'):]
    row = row[:row.index("</tr>")]
    other = re.findall(r'<td class="cell v-(\w+)" data-sort="(\d+)" title="([^"]*)">([^<]*)</td>',
                       row)
    other = [o for o in other if "trajectory" in o[2]]
    assert len(other) == 1
    verdict, failed, title, text = other[0]
    assert (verdict, failed, text) == ("failed", "1", "✗ 1/4")
    assert "trajectory (3 steps): 1 of 2 passed" in title
    # Without the failure: the two passes are counted, the skipped one apart.
    doc["records"] = [r for r in doc["records"] if r.get("verdict") != "failed"
                      or r["check"] != "trajectory (3 steps)"]
    path.write_text(json.dumps(doc))
    page = build(str(path), [], tmp_path / "out2").html.read_text()
    row = page[page.index('<td><a href="#algo-softmax">'):]
    row = row[:row.index("</tr>")]
    assert ">✓ 2 · 1 skipped</td>" in row
    # Every check is still shown in the algorithm's own section.
    section = visible(page, "algo-softmax")
    assert "real data: iris" in section and "converges" in section and "no sklearn" in section


# -- the CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["build"], ["compare"], ["gate"], ["baseline"]])
def test_help(command):
    run = cli(*command, "--help")
    assert run.returncode == 0
    assert "usage: python -m reports" in run.stdout
    words = {(): "gate", ("build",): "opens offline", ("compare",): "--allow-cross-machine",
             ("gate",): "max_slowdown", ("baseline",): "compact"}[tuple(command)]
    assert words in run.stdout


def test_build_prints_path_and_summary_without_torch_or_numba(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numba'] = None\n"
            "from reports.__main__ import main\n"
            f"sys.exit(main(['build', '--correctness', {f('failing_correctness.json')!r}, "
            f"'--bench', {f('cpu_bench.json')!r}, '--out', {str(tmp_path)!r}]))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr  # failed checks still give a report, exit 0
    first, *rest = run.stdout.splitlines()
    assert first == str(tmp_path / "index.html")
    assert "## ❌ refbench: FAILED" in run.stdout
    assert (tmp_path / "summary.md").read_text().strip() in run.stdout


# -- size and speed on a catalog-sized input ----------------------------------------------------

def test_full_catalog_report_is_small(tmp_path):
    mf = _fixtures()
    corr, cpu, gpu = tmp_path / "c.json", tmp_path / "cpu.json", tmp_path / "gpu.json"
    corr.write_text(json.dumps(mf.synthetic_correctness(80)))
    # 80 algorithms x 3 sizes x 3 implementations x 2 passes, 1000 rounds each, plus a
    # second (CPU) run to compare with.
    gpu.write_text(json.dumps(mf.synthetic_bench(80, rounds=1000, gpu=True, paired=True)))
    cpu.write_text(json.dumps(mf.synthetic_bench(80, rounds=300, gpu=False, seed=5)))
    t0, c0 = time.perf_counter(), time.process_time()
    built = build(str(corr), [str(gpu)], tmp_path / "one")
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    assert "median of per-round ratios" in built.markdown  # the paired path was exercised
    size = built.html.stat().st_size
    print(f"full catalog, one run: {size / 1e6:.2f} MB, {wall:.1f} s wall, {cpu_s:.1f} s CPU")
    assert size < 5e6
    # No assertion on the time: speed is for benchmarks, not tests (a CPU-time bound of 10 s,
    # ~2x the quiet figure, failed in CI at 10.5 s beside an xdist worker sharing the cores).
    two = build(str(corr), [str(cpu), str(gpu)], tmp_path / "two")
    size2 = two.html.stat().st_size
    print(f"full catalog, two runs compared: {size2 / 1e6:.2f} MB")
    assert size2 < 5e6


# -- torch.compile, peers, "not run" with a reason, check curves (issue 13) ----------------------

def _perf_rows(article: str) -> list[dict[str, str]]:
    """The per-algorithm performance table as {column heading: cell HTML} per row."""
    table = re.search(r'<table class="perf">(.*?)</table>', article, re.S).group(1)
    head, body = table.split("</thead>")

    def heading(th: str) -> str:
        th = re.sub(r'<span class="(?:sub|badge)[^"]*"[^>]*>.*?</span>', "", th, flags=re.S)
        return " ".join(re.sub(r"<[^>]+>", " ", th).split())
    names = [heading(th) for th in re.findall(r"<th[^>]*>(.*?)</th>", head, re.S)]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>.*?</td>", tr, re.S)
        assert len(cells) == len(names), (names, cells)
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def _cell_text(cell: str) -> str:
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", cell).split()))


def _compiled_doc() -> dict:
    return json.loads((DATA / "compiled_bench.json").read_text())


def _row_of(rows: list[dict[str, str]], size: str, pass_: str) -> dict[str, str]:
    (row,) = [r for r in rows if _cell_text(r["pass"]) == pass_
              and _cell_text(r["size"]).split()[0] == size]
    return row


def test_torch_compile_compile_time_and_graphs_shown_like_numbas(tmp_path):
    from reports.format import time_text

    doc = _compiled_doc()
    built = build(None, [f("compiled_bench.json")], tmp_path)
    page = built.html.read_text()
    compiled = [b["extra_info"] for b in doc["benchmarks"]
                if b["extra_info"]["implementation"] == "torch-compile"]
    assert {e["algorithm"] for e in compiled} == {"relu", "lstm", "kmeans_assign"}
    for e in compiled:
        row = _row_of(_perf_rows(_article(page, f"algo-{e['algorithm']}")), e["size"],
                      e["pass"])
        # Compile time and first call in their own column, apart from the steady state.
        text = _cell_text(row["torch-compile compile"])
        assert text.startswith(f"{time_text(e['compile_s'])} {time_text(e['first_call_s'])}")
        assert time_text(e["compile_s"]) not in _cell_text(row["torch-compile"]).split(" · ")[0]
        # How dynamo captured the twin, with the torch-compile figures.
        assert e["compiled"] in _cell_text(row["torch-compile"])
        assert e["compiled"] in _cell_text(row["torch-compile compile"])
    # The overview gives inductor's compile time per algorithm beside numba's.
    overview = visible(page, "overview")
    heads = next(ln for ln in overview.splitlines() if ln.startswith("| family"))
    assert heads.endswith("| compile | numba / torch-compile | torch-compile compile")
    relu = next(ln for ln in overview.splitlines() if "| relu |" in ln)
    worst = max(e["compile_s"] for e in compiled if e["algorithm"] == "relu")
    assert relu.split(" | ")[-1].rstrip(" |") == time_text(worst)


def test_overview_ratio_of_an_algorithm_without_a_torch_twin_is_against_its_peer(tmp_path):
    """A classical algorithm has no torch twin: its overview cell gives numba / its peer
    (named), not "not run"; an algorithm with checks and no benchmark at all shows a dash."""
    doc = _compiled_doc()
    doc["benchmarks"] = [b for b in doc["benchmarks"]
                         if not (b["extra_info"]["algorithm"] == "kmeans_assign"
                                 and b["extra_info"]["implementation"].startswith("torch"))]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    page = build(f("paired_correctness.json"), [str(path)], tmp_path / "out").html.read_text()
    rows = {ln.split(" | ")[1]: ln for ln in visible(page, "overview").splitlines()
            if ln.startswith("| ") and not ln.startswith("| family")}
    # the harness's own record of numba / sklearn per size (small, medium, large)
    want = [e["ratios"]["sklearn"]["value"] for e in
            sorted((b["extra_info"] for b in doc["benchmarks"]
                    if b["extra_info"]["algorithm"] == "kmeans_assign"
                    and b["extra_info"]["implementation"] == "numba"),
                   key=lambda e: ("small", "medium", "large").index(e["size"]))]
    # the cells after it: compile, numba / torch-compile, inductor's compile time
    cell = rows["kmeans_assign"].split(" | ")[-4]
    assert cell == "/ sklearn: " + "· ".join(f"{v:.2g}" for v in want), rows["kmeans_assign"]
    assert "/ sklearn" not in rows["relu"]  # relu has its torch twin
    checked_only = {r["algorithm"] for r in json.loads(
        (DATA / "paired_correctness.json").read_text())["records"]} - {
        b["extra_info"]["algorithm"] for b in doc["benchmarks"]}
    assert checked_only
    for name in checked_only:
        ratio_cell = rows[name].split(" | ")[-4]
        assert ratio_cell == "–", rows[name]


def test_eager_in_disguise_is_labelled_wherever_its_time_appears(tmp_path):
    doc = _compiled_doc()
    eager = {b["extra_info"]["algorithm"] for b in doc["benchmarks"]
             if b["extra_info"].get("compiled", "").startswith("no graph (eager in disguise)")}
    assert eager == {"lstm"}
    built = build(None, [f("compiled_bench.json")], tmp_path)
    page = built.html.read_text()
    label = "eager in disguise"
    for name in ("lstm", "relu", "kmeans_assign"):
        article = _article(page, f"algo-{name}")
        rows = _perf_rows(article)
        assert rows
        for row in rows:
            for column in ("torch-compile", "numba vs torch-compile", "torch-compile compile"):
                assert (label in _cell_text(row[column])) == (name in eager), (name, column)
        # the chart's legend names the line
        assert ("torch-compile (eager in disguise)" in article) == (name in eager)
        # the heading of the column says it too
        head = article[article.index('<table class="perf">'):article.index("</thead>")]
        assert (label in head) == (name in eager)
    # The overview (headline columns) and the verdict.
    for line in visible(page, "overview").splitlines():
        if line.startswith("| sequence | lstm |"):
            # the last two cells: numba / torch-compile, inductor's compile time
            assert label in line.split(" | ")[-2] and label in line.split(" | ")[-1]
        elif line.startswith("| activations | relu |"):
            assert label not in line
    verdict = visible(page, "verdict")
    assert f"{label}: torch.compile made no graph for lstm" in verdict
    assert re.search(r"lstm numba [\d.]+x (faster|slower) \(torch-compile eager in disguise",
                     built.markdown)
    assert re.search(r"relu numba [\d.]+x (faster|slower)(,|$)", built.markdown, re.M)
    assert "Eager in disguise: torch.compile made no graph for lstm" in built.markdown
    # Every torch-compile row of lstm among all benchmarks is marked.
    rows = re.findall(r"<tr data-family=\"sequence\" data-impl=\"torch-compile\".*?</tr>", page)
    assert rows and all(label in r for r in rows)
    # A comparison's absolute times mark it too.
    done = compare(f("compiled_bench.json"), f("compiled_bench.json"), tmp_path / "cmp")
    cmp_page = (tmp_path / "cmp" / "compare.html").read_text()
    lstm_rows = [r for r in re.findall(r'<tr data-impl="torch-compile".*?</tr>', cmp_page, re.S)
                 if "#algo-lstm" in r or ">lstm<" in r]
    assert lstm_rows and all(label in r for r in lstm_rows)
    assert done.markdown  # rendered without error


def test_not_run_shows_the_reason_in_its_cell(tmp_path):
    doc = _compiled_doc()
    not_run = doc["machine_info"]["refbench"]["not_run"]
    kinds = {e["reason"].split(":")[1].strip()[:20] for e in not_run}
    assert len(kinds) == 3, kinds  # inductor failed, no CUDA device, nothing comparable
    built = build(None, [f("compiled_bench.json")], tmp_path)
    page = built.html.read_text()
    tables = {}
    for e in not_run:
        algorithm, size, dtype, pass_ = e["group"].rsplit(" ", 3)
        impl = e["implementation"]
        if algorithm not in tables:
            tables[algorithm] = _perf_rows(_article(page, f"algo-{algorithm}"))
        row = _row_of(tables[algorithm], size, pass_)
        assert _cell_text(row[impl]) == f"not run {e['reason']}", (e, row[impl])
        ratio = "torch-cuda vs numba" if impl == "torch-cuda" else f"numba vs {impl}"
        assert _cell_text(row[ratio]) == f"not run {e['reason']}"
    # adam_step has no torch-compile benchmark at all, yet its column is there, not run.
    assert "torch-compile" in tables["adam_step"][0]
    # Explained, so not counted as missing; the summary counts them.
    assert f"Not run with a reason: {len(not_run)} implementation(s)" in built.markdown
    assert "not run;" not in built.markdown.split("- Benchmarks:")[1].splitlines()[0]
    # A malformed entry is an input error naming the field.
    bad = _compiled_doc()
    bad["machine_info"]["refbench"]["not_run"][0]["group"] = "relu-small"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    line = _one_clear_line(cli("build", "--bench", str(path), "--out", str(tmp_path / "o")))
    assert "not_run[0]" in line and "relu-small" in line


def test_numba_against_each_peer_with_its_paired_interval(tmp_path):
    doc = _compiled_doc()
    page = build(None, [f("compiled_bench.json")], tmp_path).html.read_text()
    seen = set()
    for b in doc["benchmarks"]:
        e = b["extra_info"]
        if e["implementation"] != "numba":
            continue
        row = _row_of(_perf_rows(_article(page, f"algo-{e['algorithm']}")), e["size"], e["pass"])
        for peer, r in e["ratios"].items():
            if peer == "torch-cpu":
                continue
            cell = row[f"numba vs {peer}"]
            assert f"[{r['lo']:.3g}, {r['hi']:.3g}]" in cell, (e["algorithm"], peer, cell)
            word = "faster" if r["value"] < 1 else "slower"
            assert _cell_text(cell).split()[1] == word and "95%:" in cell
            seen.add(peer)
    assert seen == {"torch-compile", "sklearn", "torch-fused"}


def test_check_curves_are_one_inline_svg_chart(tmp_path):
    mf = _fixtures()
    doc = json.loads((DATA / "paired_correctness.json").read_text())
    (rec,) = [r for r in doc["records"] if "loss per epoch torch" in r.get("figures", {})]
    assert isinstance(rec["figures"]["loss per epoch reference"], list)
    assert isinstance(rec["figures"]["loss per epoch torch"], str)  # the helper's text form
    page = build(f("paired_correctness.json"), [], tmp_path).html.read_text()
    article = _article(page, f"algo-{rec['algorithm']}")
    (figures,) = re.findall(r'<tr class="figures">.*?</tr>', article, re.S)
    svgs = re.findall(r'<svg class="curves".*?</svg>', figures, re.S)
    assert len(svgs) == 1  # both curves of the check in one chart
    assert "href" not in svgs[0] and "<script" not in svgs[0]
    lines = re.findall(r'<polyline points="([^"]+)"', svgs[0])
    curves = [mf.CURVE_LIST, [float(x) for x in mf.CURVE_TEXT.split()]]
    assert len(lines) == 2
    for ln, ys in zip(lines, curves, strict=True):
        pts = [tuple(map(float, p.split(","))) for p in ln.split()]
        assert len(pts) == len(ys)
        assert all(a[0] < b[0] for a, b in zip(pts, pts[1:], strict=False))  # x: epoch order
        # y: the higher the loss, the higher on the chart (SVG y grows downwards)
        order = np.argsort(ys)
        assert all(pts[i][1] > pts[j][1] for i, j in zip(order, order[1:], strict=False))
    text = visible(page, f"algo-{rec['algorithm']}")
    assert "loss per epoch reference" in text and "loss per epoch torch" in text
    assert mf.CURVE_TEXT not in text  # drawn, not printed as a string of numbers
    assert "final loss reference 0.1806" in text  # a scalar stays text


def test_curve_figures_load_from_lists_and_text_and_record_as_lists(tmp_path):
    from reports.loading import curve_of
    from suites.recording import CheckRecord

    assert curve_of([1, 2.5, "nan"])[:2] == [1.0, 2.5]
    assert curve_of("0.5, 0.25 0.125") == [0.5, 0.25, 0.125]
    assert curve_of("[3 2 1]") == [3.0, 2.0, 1.0]
    assert curve_of("0.5") is None and curve_of("lbfgs 2") is None and curve_of(3.0) is None
    rec = CheckRecord(nodeid="t::m", replay="r")
    rec.bind("mlp_step", "models", "trajectory", np.float32, "cpu")
    rec.verdict = "passed"
    long_text = " ".join(f"{x:.4f}" for x in np.linspace(3, 0.1, 80))  # > 200 characters
    rec.figures.update({"loss ref": np.linspace(2, 1, 5), "loss torch": long_text,
                        "steps": (1, 2, 3), "solver": "adam", "accuracy": 0.97})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema": "refbench.correctness/1",
                                "records": [rec.to_json()]}))
    figures = load(path, ("correctness",)).checks[0].figures
    assert figures["loss ref"] == pytest.approx(np.linspace(2, 1, 5).tolist())
    assert figures["loss torch"] == pytest.approx([float(x) for x in long_text.split()])
    assert figures["steps"] == [1.0, 2.0, 3.0]
    assert figures["solver"] == "adam" and figures["accuracy"] == 0.97


@pytest.mark.parametrize("pair_reasons, gated", [([], True), (["numba: only 3 rounds"], False)])
def test_gate_judges_the_pair_not_the_group(tmp_path, pair_reasons, gated):
    """A noisy third implementation marks numba unstable in an older file's sense; the file's
    own judgement of the numba / torch-cpu pair decides whether that pair is gated."""
    doc = json.loads((DATA / "slower_bench.json").read_text())
    for b in doc["benchmarks"]:
        if b["name"] == "test_bench[softmax-numba-large-float32-forward]":
            med = b["stats"]["median"]
            den = next(o for o in doc["benchmarks"] if o["name"] == b["name"].replace(
                "numba", "torch-cpu"))["stats"]["median"]
            b.setdefault("extra_info", {}).update(
                stable=False, noise={"reasons": ["ratio to torch-fused known only within "
                                                 "[0.1, 3]"]},
                ratios={"torch-cpu": {"value": med / den, "lo": med / den * 0.99,
                                      "hi": med / den * 1.01, "level": 0.95,
                                      "reasons": pair_reasons}})
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    result = run_gate(f("cpu_correctness.json"), str(cand), f("cpu_bench.json"),
                      load_config(DATA / "no_baseline.toml"))
    hit = any("REGRESSION softmax large float32 forward:" in ln for ln in result.lines)
    quiet = any("not gated: noisy softmax large float32 forward:" in ln and "only 3 rounds" in ln
                for ln in result.lines)
    assert (hit, quiet) == (gated, not gated), result.lines


def _with_numba_cuda(doc: dict, timed: set[str], not_run: dict[str, str]) -> dict:
    """``doc`` (a GPU run) with numba-cuda as the benchmark writes it: for the algorithms in
    ``timed``, an entry beside each torch-cuda one, timed in the same rounds at 0.8x its times
    (paired, as the CUDA-event group); for those in ``not_run``, a reason in every group."""
    import copy

    out = copy.deepcopy(doc)
    entries = []
    for b in out["benchmarks"]:
        e = b["extra_info"]
        if e["implementation"] != "torch-cuda":
            continue
        if e["algorithm"] in not_run:
            out["machine_info"].setdefault("refbench", {}).setdefault("not_run", []).append(
                {"group": f"{e['algorithm']} {e['size']} {e['dtype']} {e['pass']}",
                 "implementation": "numba-cuda", "reason": not_run[e["algorithm"]]})
        if e["algorithm"] not in timed:
            continue
        nb = copy.deepcopy(b)
        for key in ("name", "fullname", "param"):
            nb[key] = nb[key].replace("torch-cuda", "numba-cuda")
        nb["extra_info"]["implementation"] = "numba-cuda"
        nb["extra_info"]["timer"] = "CUDA events on torch's current stream"
        data = [0.8 * t for t in b["stats"]["data"]]
        nb["stats"] = {**b["stats"], "data": data, "median": float(np.median(data)),
                       "min": min(data), "max": max(data)}
        rounds = len(data)
        for entry, other, value in ((nb, "torch-cuda", 0.8), (b, "numba-cuda", 1.25)):
            entry["extra_info"]["paired"] = {"rounds": rounds,
                                             "partners": ["numba-cuda", "torch-cuda"]}
            entry["extra_info"]["ratios"] = {other: {"value": value, "lo": value, "hi": value,
                                                     "level": 0.95, "reasons": []}}
        entries.append(nb)
    out["benchmarks"] += entries
    return out


def test_numba_cuda_is_a_column_and_a_line_beside_torch_cuda(tmp_path):
    """A GPU run with numba-cuda: its own column (time), the numba-cuda vs torch-cuda ratio
    from their shared rounds, a line on the chart; where it was not run, the reason in its
    cells and on the chart's legend."""
    from reports.format import speed_text, time_text

    reason = "numba-cuda: numba finds no usable CUDA device or driver (torch does)"
    doc = _with_numba_cuda(json.loads((DATA / "gpu_bench.json").read_text()), {"relu"},
                           {"gelu": reason})
    path = tmp_path / "gpu_numba_cuda.json"
    path.write_text(json.dumps(doc))
    built = build(None, [str(path)], tmp_path / "out")
    page = built.html.read_text()
    ours = [b for b in doc["benchmarks"] if b["extra_info"]["implementation"] == "numba-cuda"]
    assert ours
    relu = _article(page, "algo-relu")
    rows = _perf_rows(relu)
    assert rows
    for b in ours:
        e = b["extra_info"]
        row = _row_of(rows, e["size"], e["pass"])
        assert _cell_text(row["numba-cuda"]).startswith(time_text(b["stats"]["median"]))
        ratio = _cell_text(row["numba-cuda vs torch-cuda"])
        assert ratio.startswith(speed_text(0.8)), ratio
        assert "not run" not in ratio
    # its line on the chart, in its own colour, with a legend entry
    from reports.charts import COLORS

    assert COLORS["numba-cuda"] in relu and "numba-cuda" in relu[relu.index("<figcaption"):]
    # gelu: numba-cuda not run, with the benchmark's reason, in the table and the legend
    gelu = _article(page, "algo-gelu")
    for row in _perf_rows(gelu):
        assert _cell_text(row["numba-cuda"]) == f"not run {reason}"
        assert _cell_text(row["numba-cuda vs torch-cuda"]) == f"not run {reason}"
    legend = html.unescape(gelu[gelu.index("<figcaption"):])
    assert f"numba-cuda: not run: {reason.removeprefix('numba-cuda: ')}" in legend
    # not a peer of numba (no "numba vs numba-cuda"); softmax never had it: no column
    assert "numba vs numba-cuda" not in page
    assert "numba-cuda" not in _article(page, "algo-softmax")


def _paired_doc(src: str, scale: float = 1.0) -> dict:
    """``src`` with a within-run ratio numba/torch-cpu (times ``scale``) on softmax large
    float32 forward, as refbench's benchmarks write it."""
    doc = json.loads((DATA / src).read_text())
    by_name = {b["name"]: b for b in doc["benchmarks"]}
    num = by_name["test_bench[softmax-numba-large-float32-forward]"]
    den = by_name["test_bench[softmax-torch-cpu-large-float32-forward]"]
    value = num["stats"]["median"] / den["stats"]["median"] * scale
    num.setdefault("extra_info", {})["ratios"] = {"torch-cpu": {
        "value": value, "lo": value * 0.99, "hi": value * 1.01, "level": 0.95, "reasons": []}}
    return doc


@pytest.mark.parametrize("drift, verdict", [(1.0, "regression"), (1.1, "regression"),
                                            (1.5, "not gated")])
def test_gate_allows_the_baseline_replicates_drift(tmp_path, drift, verdict):
    """A baseline of two runs of one commit: the slowed candidate (1.6x) is judged against the
    highest replicate; replicates spread beyond max_replicate_spread leave the pair ungated."""
    files = []
    for i, (src, scale) in enumerate([("cpu_bench.json", 1.0), ("cpu_bench.json", drift),
                                      ("slower_bench.json", 1.0)]):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(_paired_doc(src, scale)))
    base = write_baseline(str(files[0]), tmp_path / "base.json", [str(files[1])])
    reps = [r["ratios"]["torch-cpu"]["replicates"] for r in json.loads(base.read_text())[
        "benchmarks"] if r["name"] == "test_bench[softmax-numba-large-float32-forward]"][0]
    assert reps[1] == pytest.approx(reps[0] * drift, rel=1e-4)
    result = run_gate(f("cpu_correctness.json"), str(files[2]), str(base),
                      load_config(DATA / "no_baseline.toml"))
    lines = [ln for ln in result.lines if "softmax large float32 forward:" in ln
             or "softmax large float32 forward " in ln and "forward+backward" not in ln]
    if verdict == "regression":
        limit = f"limit {1.25 * drift:.3g}x"
        assert any("REGRESSION" in ln and limit in ln for ln in lines), result.lines
    else:
        assert not [c for c in result.regressions if c.pass_ == "forward"], result.lines
        assert any("not gated: noisy" in ln and "moves 1.5x between its 2 runs" in ln
                   for ln in lines), result.lines


def _as_commit_of(doc: dict, other: dict) -> dict:
    """``doc`` as if measured at ``other``'s commit (a later run of the same code)."""
    doc["commit_info"] = dict(other["commit_info"])
    doc["machine_info"]["refbench"]["commit"] = other["machine_info"]["refbench"]["commit"]
    doc["machine_info"]["refbench"]["dirty"] = other["machine_info"]["refbench"]["dirty"]
    return doc


def _noisy(doc: dict) -> dict:
    """``doc`` with softmax's pairs judged noisy in that run."""
    for b in doc["benchmarks"]:
        if b["name"].startswith("test_bench[softmax-numba-large-float32"):
            for r in b.get("extra_info", {}).get("ratios", {}).values():
                r["reasons"] = ["3 of 30 rounds stalled (planted in the test)"]
            b["extra_info"]["stable"] = False
            b["extra_info"].setdefault("noise", {})["reasons"] = ["planted noise"]
    return doc


@pytest.mark.parametrize("confirming, stands", [
    (["slower"], True),            # every re-run measures the slow-down: it stands
    (["slower", "same"], False),   # one re-run measures it within the limit: drift, dismissed
    (["same"], False),
    (["noisy"], True),             # a noisy re-run judges nothing: the first verdict stands
    (["noisy", "same"], False),
])
def test_gate_confirmation_runs(tmp_path, confirming, stands):
    """A regression of the first run stands unless a later run of the same code, in another
    process, judged the pair and measured its change within the limit."""
    slower = _paired_doc("slower_bench.json")
    docs = {"slower": lambda: _paired_doc("slower_bench.json"),
            "same": lambda: _as_commit_of(_paired_doc("cpu_bench.json"), slower),
            "noisy": lambda: _noisy(_paired_doc("slower_bench.json"))}
    (tmp_path / "base.json").write_text(json.dumps(_paired_doc("cpu_bench.json")))
    (tmp_path / "cand.json").write_text(json.dumps(slower))
    confirm = []
    for i, kind in enumerate(confirming):
        confirm.append(str(tmp_path / f"re{i}.json"))
        Path(confirm[-1]).write_text(json.dumps(docs[kind]()))
    config = load_config(DATA / "no_baseline.toml")
    first = run_gate(f("cpu_correctness.json"), str(tmp_path / "cand.json"),
                     str(tmp_path / "base.json"), config)
    assert {c.label for c in first.regressions} == {"softmax large float32 forward",
                                                     "softmax large float32 forward+backward"}
    result = run_gate(f("cpu_correctness.json"), str(tmp_path / "cand.json"),
                      str(tmp_path / "base.json"), config, confirm)
    fwd = [ln for ln in result.lines if "softmax large float32 forward:" in ln]
    assert len(fwd) == 1, result.lines
    assert result.ok is not stands
    if stands:
        assert fwd[0].startswith("  - REGRESSION"), fwd
        assert ("noisy, not judged" in fwd[0]) == (confirming == ["noisy"]), fwd
    else:
        assert fwd[0].startswith("  - not confirmed"), fwd
        assert "re-run" in fwd[0] and "drift between processes" in fwd[0], fwd
        assert "softmax large float32 forward" in result.summary()["not_confirmed"]
    summary = result.summary()
    assert summary["passed"] is result.ok
    assert [p["algorithm"] for p in summary["regressed_pairs"]] == ["softmax"] * (2 * stands)


def test_gate_summary_and_confirmation_of_other_code(tmp_path):
    """--summary writes the verdict as JSON; a --confirm file of another commit is refused
    (a confirmation must measure the same code), naming the file."""
    summary = tmp_path / "gate.json"
    (tmp_path / "base.json").write_text(json.dumps(_paired_doc("cpu_bench.json")))
    (tmp_path / "cand.json").write_text(json.dumps(_paired_doc("slower_bench.json")))
    run = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
              str(tmp_path / "cand.json"), "--baseline", str(tmp_path / "base.json"),
              "--summary", str(summary))
    assert run.returncode == 1, run.stdout + run.stderr
    got = json.loads(summary.read_text())
    assert got["passed"] is False and got["correctness_failures"] == 0
    assert {"algorithm": "softmax", "size": "large", "dtype": "float32",
            "pass": "forward"} in got["regressed_pairs"]
    other = cli("gate", "--correctness", f("cpu_correctness.json"), "--bench",
                str(tmp_path / "cand.json"), "--baseline", str(tmp_path / "base.json"),
                "--confirm", str(tmp_path / "base.json"))
    assert other.returncode == 2, other.stdout + other.stderr
    assert "base.json" in other.stderr and "same code" in other.stderr
