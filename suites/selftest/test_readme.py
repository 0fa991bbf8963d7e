"""The README's usage example runs as written and computes the right gradient."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[2] / "README.md"


def test_usage_example_runs():
    text = README.read_text()
    section = text.split("## Using a reference", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    y, dy, dx = scope["y"], scope["dy"], scope["dx"]
    # softmax's vector-Jacobian product, written out independently of the library
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    expected = y64 * (dy64 - (dy64 * y64).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)
