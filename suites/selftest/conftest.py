"""Fixtures of the harness's own tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def hog():
    """A busy process per core for the duration of the test: a machine doing other work."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch):
    """Pytest runs that a selftest starts (subprocesses, forked children) are their own
    sessions: under ``-n auto`` they would inherit this worker's PYTEST_XDIST_* variables, and
    pytest-benchmark would then think it runs under xdist and switch itself off."""
    for var in [v for v in os.environ if v.startswith("PYTEST_XDIST_")]:
        monkeypatch.delenv(var)
