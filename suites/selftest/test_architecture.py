"""The directions of dependency hold: reference/ never needs torch; reports/ needs neither
torch nor numba. Checked by importing every module in a fresh interpreter where those
packages are made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_IMPORT_ALL = """
import importlib, pkgutil, sys
for blocked in {blocked!r}:
    sys.modules[blocked] = None  # any import of it now raises ImportError
pkg = importlib.import_module({package!r})
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
         if ".tests" not in m.name and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names) + 1)
"""


@pytest.mark.parametrize(("package", "blocked"), [
    ("reference", ("torch",)),
    ("reports", ("torch", "numba")),
])
def test_package_imports_without(package, blocked):
    if not (ROOT / package / "__init__.py").exists():
        pytest.fail(f"{package}/ is missing")
    code = _IMPORT_ALL.format(package=package, blocked=blocked)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{package} needs one of {blocked}:\n{run.stderr[-2000:]}"
    assert int(run.stdout.split()[-1]) >= 1
