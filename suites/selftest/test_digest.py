"""suites/digest.py: the digest of a twin's code changes with the code it runs, and only then."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

from suites.digest import twin_digest

ROOT = Path(__file__).resolve().parents[2]

TWIN = """
import torch

SCALE = {scale}


def _helper(x):
    return x * SCALE{helper_extra}


def twin(x, k=2):
    return _helper(torch.relu(x)) + k


def _factory(n):
    def inner(x):
        return _helper(x) ** n
    return inner


made = _factory({power})
"""


def _load(tmp_path: Path, tag: str, **kw) -> object:
    values = {"scale": 2.0, "helper_extra": "", "power": 2} | kw
    path = tmp_path / f"digestmod_{tag}.py"
    path.write_text(textwrap.dedent(TWIN.format(**values)))
    spec = importlib.util.spec_from_file_location(f"digestmod_{tag}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_digest_follows_the_code_the_twin_runs(tmp_path):
    def d(module, name="twin"):
        return twin_digest(getattr(module, name), project="digestmod")

    # The source text is part of the digest, so one module name's text is compared with the
    # same name's: each variant is written under the base's name in its own folder.
    def variant(tag, **kw):
        folder = tmp_path / tag
        folder.mkdir()
        return _load(folder, "base", **kw)

    base = variant("base")
    assert d(base) == d(variant("again"))  # same code, same digest
    assert d(base) == d(variant("comment", helper_extra="  # same program"))  # a comment
    assert d(base) != d(variant("helper", helper_extra=" + 0"))  # a helper it calls
    assert d(base) != d(variant("constant", scale=3.0))  # a constant it reads
    assert d(base, "made") != d(variant("closure", power=3), "made")  # a factory's value
    assert d(base).startswith("v1:")


def test_the_digest_is_the_same_in_another_process():
    # A baseline and a run are different processes: nothing of the digest may depend on
    # addresses or hash seeds.
    code = ("from suites.catalog import all_specs; from suites.digest import twin_digest; "
            "print(sorted((s.name, twin_digest(s.torch)) for s in all_specs() if s.torch))")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
                           check=True).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and runs[0].count("v1:") > 50
