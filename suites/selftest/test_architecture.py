"""The directions of dependency hold: reference/ never needs torch; reports/ needs neither
torch nor numba. Checked by importing every module in a fresh interpreter where those
packages are made unimportable."""

from __future__ import annotations

import json
import os
import shutil
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


_SIGMOID_AT_0 = """
import numpy as np
from reference import activations
print(float(activations.sigmoid(np.zeros(4, np.float32))[0][0]))
"""


def test_an_edit_to_an_inlined_helper_reaches_the_cached_kernels(tmp_path):
    # Numba keys a cached kernel on its own file, but activations' sigmoid kernel inlines
    # _vmath.sigmoid_f32: after an edit to _vmath alone, a cache keyed on activations.py would
    # serve the old kernel. On a copy of the package: compile and cache, edit the helper, and
    # the next process must run the edited code.
    shutil.copytree(ROOT / "reference", tmp_path / "reference",
                    ignore=shutil.ignore_patterns("__pycache__", "cuda"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)

    def sigmoid_at_0() -> float:
        run = subprocess.run([sys.executable, "-c", _SIGMOID_AT_0], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return float(run.stdout.split()[-1])

    assert sigmoid_at_0() == 0.5
    vmath = tmp_path / "reference" / "_vmath.py"
    src = vmath.read_text()
    head, sep, tail = src.partition("def sigmoid_f32(x):")
    body, _, rest = tail.partition("\n\n\n")
    assert sep and "return " in body
    vmath.write_text(head + sep + body[:body.rindex("return ")] + "return _F(0.25)\n\n\n" + rest)
    assert sigmoid_at_0() == 0.25
    assert len(list((tmp_path / "reference" / "__pycache__" / "numba").glob(
        "reference.activations-*"))) == 2


_LINEAR_FIRST = """
import numpy as np
from reference import layers
y, _ = layers.linear(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32))
print(sum(layers._linear_fwd.stats.cache_hits.values()), float(y.sum()))
"""


def test_a_cached_serial_kernel_that_calls_a_parallel_one_runs_first_in_a_process(tmp_path):
    # linear's kernel is serial and calls dot_serial's parallel row blocks, so its machine code
    # calls the thread pool's scheduling functions, which Numba registers with LLVM only when
    # it launches the pool. A cached kernel carries "launch the pool" among its reload steps
    # only if its parallel callees were compiled in the same process: compiled against callees
    # loaded from the cache it carries none, and loaded as the first kernel of a later process
    # it called address 0 (numba/numba#8578). reference._jit now launches the pool before a
    # kernel loads from the cache.
    # Here: cache everything, drop linear's own entries, compile linear again against the
    # cached callees, then load that in a fresh process.
    shutil.copytree(ROOT / "reference", tmp_path / "reference",
                    ignore=shutil.ignore_patterns("__pycache__", "cuda"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    results = []
    for step in range(3):
        if step == 1:
            entries = list((tmp_path / "reference" / "__pycache__" / "numba").glob(
                "reference.layers-*/*/layers._linear_fwd-*"))
            assert entries
            for f in entries:
                f.unlink()
        run = subprocess.run([sys.executable, "-c", _LINEAR_FIRST], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (f"step {step}: exit status {run.returncode}\n"
                                     f"{run.stderr[-2000:]}")
        results.append(run.stdout.split()[-2:])
    assert results == [["0", "24.0"], ["0", "24.0"], ["1", "24.0"]]


_LOOP_ASM = """
import json, numpy as np, reference, numba
from reference import _jit
@numba.njit
def scale(x, y):
    for i in range(x.size):
        y[i] = x[i] * np.float32(3.0)
x = np.ones(1024, np.float32)
scale(x, np.empty_like(x))
asm = scale.inspect_asm(scale.signatures[0])
print(json.dumps({"target": _jit.target(), "zmm": "zmm" in asm, "ymm": "ymm" in asm,
                  "wide": _jit._wide_host()}))
"""


@pytest.mark.parametrize("user_features", [False, True])
def test_numba_uses_the_whole_vector_width(user_features):
    # On an AVX-512 part that does not throttle, loops compiled after `import reference` use
    # 512-bit registers (LLVM's default tuning would keep them to 256 bits); a user's
    # NUMBA_CPU_FEATURES is left as given; target() tells what is in force.
    env = {k: val for k, val in os.environ.items() if not k.startswith("NUMBA_CPU")}
    if user_features:
        env["NUMBA_CPU_FEATURES"] = "+64bit,+sse,+sse2,+avx,+avx2,+fma"
    run = subprocess.run([sys.executable, "-c", _LOOP_ASM], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.splitlines()[-1])
    if got["wide"] and not user_features:
        assert got["zmm"] and got["target"]["vector_bits"] == 512
    else:
        assert not got["zmm"] and got["target"]["vector_bits"] == 256
        assert got["ymm"] or not user_features


# Products made in Python code between kernels go through reference._blas.dot_serial (SciPy's
# OpenBLAS, the kernels' own), not NumPy's np.dot / @ (NumPy's wheel bundles a second OpenBLAS
# whose spinning thread pool fights the first: see reference/_blas.py). The classical fits' one-off
# solves and vector dots are allowed by name.
_NUMPY_BLAS_ALLOWED = {
    ("linear_models.py", "_min_norm_solve"), ("linear_models.py", "linear_regression_fit"),
    ("linear_models.py", "ridge_fit"), ("linear_models.py", "lasso_fit"),
    ("linear_models.py", "ridge_objective"), ("logistic_svm.py", "_objective"),
    ("logistic_svm.py", "_lbfgs"), ("logistic_svm.py", "fun"),
}


def _python_products(path: Path) -> set[tuple[str, str, int]]:
    import ast

    found = set()
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or any(
                name in ast.unparse(d) for d in fn.decorator_list
                for name in ("kernel", "njit", "inline", "_scalar")):
            continue
        for node in ast.walk(fn):
            matmul = isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult)
            call = isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "np.dot", "np.matmul", "np.tensordot", "np.einsum", "np.inner")
            if matmul or call:
                found.add((path.name, fn.name, node.lineno))
    return found


def test_python_level_products_use_the_kernels_blas():
    paths = [p for p in (ROOT / "reference").rglob("*.py") if "cuda" not in p.parts]
    found = set().union(*(_python_products(p) for p in paths))
    assert any(name == "ridge_objective" for _, name, _ in found)  # the scan sees them
    stray = sorted(f for f in found if f[:2] not in _NUMPY_BLAS_ALLOWED)
    assert not stray, f"NumPy BLAS products outside kernels (use _blas.dot_serial): {stray}"
