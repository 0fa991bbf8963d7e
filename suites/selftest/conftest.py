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
