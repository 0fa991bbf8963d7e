"""The report opened in a real headless Chromium, driven over the DevTools protocol.

Checks what a person would see: no console errors or uncaught exceptions, no network request
(the file must be self-contained), the verdict and a scaling chart visible, sorting and filtering
working, and the page still complete with JavaScript off. A screenshot is kept for a look
(``REFBENCH_SCREENSHOTS=DIR``).

Needs Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it) and the
``websocket-client`` package (the ``test`` dependency group). Skips with the reason when
Chromium cannot be found; nothing else skips it.

Chromium's profile and temporary files go to a short directory under /tmp, whatever TMPDIR
says: its Unix sockets live there, and a socket path may not exceed 107 bytes, which a session
temp directory inside a deep checkout (``.nox/tmp``) easily does.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from reports.build import build

DATA = Path(__file__).parent / "data" / "reports"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1400,1000",
         "--remote-debugging-port=0"]


# A Unix socket path (sun_path) holds at most 107 bytes; Chromium's names under its temp and
# profile directories add ~50 to the directory's length.
SOCKET_DIR_MAX = 50


def short_temp_dir() -> str:
    """A fresh private directory with a short path for Chromium's profile and sockets: under
    /tmp when it is usable, else under the session's temp dir if that is short enough."""
    for base in ("/tmp", "/var/tmp", tempfile.gettempdir()):
        if len(base) <= SOCKET_DIR_MAX - 20 and os.path.isdir(base) and os.access(
                base, os.W_OK | os.X_OK):
            return tempfile.mkdtemp(prefix="rb-chr-", dir=base)
    raise RuntimeError("no writable temp directory with a path short enough for Unix sockets "
                       "(/tmp, /var/tmp, TMPDIR)")


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools protocol."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        import websocket  # websocket-client

        self.timeout = timeout
        self.profile = short_temp_dir()
        tmp = os.path.join(self.profile, "t")
        os.mkdir(tmp)
        env = {**os.environ, "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp}
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] \
                    if self.proc.poll() is not None else "timed out"
                self.close()
                raise RuntimeError(f"chromium did not start: {err}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(method)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for msg in self.events:
            if msg["method"] == event:
                return msg
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == event:
                    return msg
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, javascript: bool = True) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setScriptExecutionDisabled", value=not javascript)
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + str(p.get("exceptionDetails", {}).get("text")))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + str(p["entry"].get("text")))
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                try:
                    self.send("Browser.close")
                except Exception:  # noqa: BLE001 - the browser may already be gone
                    pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


def test_chromium_dirs_are_short_under_a_long_tmpdir(tmp_path, monkeypatch):
    """A checkout ~70 characters deep put TMPDIR at .nox/tmp and Chromium died with "Socket
    path too long": the profile must not follow TMPDIR there."""
    deep = tmp_path / ("a-long-checkout-path-" * 6) / ".nox" / "tmp"
    deep.mkdir(parents=True)
    assert len(str(deep)) > 108
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert tempfile.gettempdir() == str(deep)
    d = short_temp_dir()
    try:
        assert len(d) <= SOCKET_DIR_MAX and not d.startswith(str(deep))
        assert os.access(d, os.W_OK) and oct(os.stat(d).st_mode & 0o777) == "0o700"
    finally:
        os.rmdir(d)


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not found (install Debian's `chromium` package, or set CHROMIUM="
                    "/path/to/chrome); the report is not opened in a browser")
    pytest.importorskip("websocket", reason="websocket-client is in the test dependency group")
    browser = Chromium(binary)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    built = build(str(DATA / "failing_correctness.json"),
                  [str(DATA / "cpu_bench.json"), str(DATA / "gpu_bench.json")], out)
    return built.html


def _shots() -> Path | None:
    d = os.environ.get("REFBENCH_SCREENSHOTS")
    if not d:
        return None
    Path(d).mkdir(parents=True, exist_ok=True)
    return Path(d)


def test_report_in_chromium(chromium, report):
    t0 = time.monotonic()
    chromium.open(report.as_uri())
    load_s = time.monotonic() - t0
    assert chromium.problems() == []
    outside = [u for u in chromium.requests() if not u.startswith(("file:", "data:", "about:"))]
    assert outside == [], f"the report fetched from the network: {outside}"
    assert load_s < 10

    verdict = chromium.evaluate("""(() => {
        const v = document.querySelector('#verdict h1');
        const r = v.getBoundingClientRect();
        return {text: v.innerText, top: r.top, height: r.height,
                visible: r.height > 0 && r.top >= 0 && r.bottom <= innerHeight};
    })()""")
    assert verdict["visible"], verdict
    assert "FAILED" in verdict["text"]
    # The hostile names in the fixtures arrive as text, never as markup or script.
    assert chromium.evaluate("document.querySelectorAll('script').length") == 1
    assert chromium.evaluate("window.__pwned === undefined")
    assert chromium.evaluate(
        "document.body.innerText.includes('<script>alert(\"pwned\")</script>')")

    chart = chromium.evaluate("""(() => {
        const svg = document.querySelector('figure.chart svg');
        svg.scrollIntoView({block: 'center'});
        const r = svg.getBoundingClientRect();
        return {w: r.width, h: r.height, top: r.top, bottom: r.bottom, inner: innerHeight,
                lines: svg.querySelectorAll('path').length,
                text: svg.textContent};
    })()""")
    assert chart["w"] > 200 and chart["h"] > 120, chart
    assert 0 <= chart["top"] and chart["bottom"] <= chart["inner"], chart
    assert "k=" in chart["text"]  # fitted exponents are printed beside the lines
    shots = _shots()
    if shots:
        chromium.screenshot(shots / "chart.png")
        chromium.evaluate("scrollTo(0, 0)")
        chromium.screenshot(shots / "top.png")


def test_sort_and_filter(chromium, report):
    chromium.open(report.as_uri())
    shown = chromium.evaluate("""(() => {
        const bar = document.querySelector('.filters[data-target=overview-table]');
        const sel = bar.querySelector('select[data-key=status]');
        sel.value = 'failed';
        sel.dispatchEvent(new Event('input'));
        const rows = [...document.querySelectorAll('#overview-table tbody tr')];
        return rows.filter(r => !r.classList.contains('hidden')).map(r => r.dataset.status);
    })()""")
    assert shown and set(shown) == {"failed"}
    order = chromium.evaluate("""(() => {
        const th = [...document.querySelectorAll('#bench-table thead th')]
            .find(h => h.textContent.trim() === 'median');
        th.click();
        return [...document.querySelectorAll('#bench-table tbody tr')]
            .map(r => parseFloat(r.cells[th.cellIndex].dataset.sort));
    })()""")
    assert order == sorted(order) and len(order) > 3
    assert chromium.problems() == []


def test_readable_without_javascript(chromium, report):
    chromium.open(report.as_uri(), javascript=False)
    try:
        facts = chromium.evaluate("""(() => ({
            verdict: document.querySelector('#verdict h1').getBoundingClientRect().height,
            rows: document.querySelectorAll('#overview-table tbody tr').length,
            filters: [...document.querySelectorAll('.filters')]
                .every(f => getComputedStyle(f).display === 'none'),
            charts: document.querySelectorAll('figure.chart svg').length,
        }))()""")
    finally:
        chromium.send("Emulation.setScriptExecutionDisabled", value=False)
    assert facts["verdict"] > 0 and facts["rows"] > 3 and facts["charts"] > 0
    assert facts["filters"], "filter controls that need JS must stay hidden without it"


def test_busy_run_banner_and_noisy_cells(chromium, tmp_path):
    built = build(str(DATA / "paired_correctness.json"), [str(DATA / "paired_busy_bench.json")],
                  tmp_path)
    chromium.open(built.html.as_uri())
    facts = chromium.evaluate("""(() => {
        const banner = document.querySelector('#verdict .banner.busy');
        const r = banner.getBoundingClientRect();
        const noisy = document.querySelector('table.perf td.noisy');
        const plain = document.querySelector('table.perf td.num:not(.noisy):not(.notrun)');
        const bar = document.querySelector('.filters[data-target=bench-table]');
        const sel = bar.querySelector('select[data-key=stable]');
        sel.value = 'noisy';
        sel.dispatchEvent(new Event('input'));
        const shown = [...document.querySelectorAll('#bench-table tbody tr')]
            .filter(row => !row.classList.contains('hidden')).length;
        return {text: banner.innerText, visible: r.height > 0 && r.bottom <= innerHeight * 2,
                noisyColor: getComputedStyle(noisy).color,
                plainColor: getComputedStyle(plain).color,
                noisyTitle: noisy.title, shown: shown};
    })()""")
    assert chromium.problems() == []
    assert facts["visible"] and "The machine was busy" in facts["text"], facts
    assert facts["noisyColor"] != facts["plainColor"], facts  # greyed
    assert "noisy:" in facts["noisyTitle"]
    doc = json.loads((DATA / "paired_busy_bench.json").read_text())
    assert facts["shown"] == sum(not b["extra_info"]["stable"] for b in doc["benchmarks"])


def test_full_catalog_report_opens_quickly(chromium, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    corr, bench = tmp_path / "c.json", tmp_path / "b.json"
    corr.write_text(json.dumps(mf.synthetic_correctness(80)))
    # The page's size does not depend on the rounds; few of them keep this test quick.
    bench.write_text(json.dumps(mf.synthetic_bench(80, rounds=30, gpu=True)))
    built = build(str(corr), [str(bench)], tmp_path / "out")
    chromium.open(built.html.as_uri())
    timing = chromium.evaluate("""(() => {
        const t = performance.getEntriesByType('navigation')[0];
        return {load: t.loadEventEnd, charts: document.querySelectorAll('figure.chart').length};
    })()""")
    assert chromium.problems() == []
    assert timing["charts"] == 80
    assert timing["load"] < 2000, timing  # milliseconds from navigation to the load event
