"""Scaling sweeps: six geometric sizes ``s1``..``s6`` for one representative algorithm per
kind of kernel, so the report can fit how time grows with the problem (``--bench-sizes=sweep``).

Each sweep reuses its spec's own benchmark-case builder and grows one dimension by a constant
factor, so the problem size (elements, or multiply-adds) grows geometrically. The sizes start
where a call is dominated by dispatch (so the report can show where that ends) and stop where
one call takes tens of milliseconds, to keep ``nox -s report`` within its time budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from suites.catalog.spec import Case

NAMES = tuple(f"s{i}" for i in range(1, 7))


def _table() -> dict[str, list[Callable]]:
    from suites.catalog import activations, attention, conv, layers, losses, norm

    def elementwise(spec_params=None):
        def at(n):
            def build(dtype):
                case = activations._x_case((n,), dtype)
                return Case(case.inputs, dict(spec_params or {}))
            return build
        return [at(1024 * 4**i) for i in range(6)]  # 1K .. 1M elements

    def logits(n_cols):
        return lambda dtype: Case({"x": activations._x_case((256, n_cols), dtype).inputs["x"]},
                                  {"axis": -1})

    def ce(n_cols):
        def build(dtype):
            rng = np.random.default_rng(0)
            x = losses.S.normal(rng, (256, n_cols), dtype, 3.0)
            return Case({"input": x, "target": rng.integers(0, n_cols, 256)},
                        {"reduction": "mean"})
        return build

    return {
        "relu": elementwise(),
        "gelu": elementwise({"approximate": "none"}),
        "softmax": [logits(16 * 4**i) for i in range(6)],          # 256 x 16 .. 256 x 16K
        "cross_entropy": [ce(16 * 4**i) for i in range(6)],
        "layer_norm": [norm._ln_size(16 * 4**i, 256) for i in range(6)],  # rows x 256
        "linear": [layers._linear_size(n, n, n) for n in (32, 64, 128, 256, 512, 1024)],
        "conv2d": [conv._conv_size(4, 16, 16, hw) for hw in (4, 8, 16, 32, 64, 128)],
        "scaled_dot_product_attention": [attention._sdpa_size(2, 4, n, 32)
                                         for n in (16, 32, 64, 128, 256, 512)],
    }


_CACHE: dict[str, dict[str, Callable]] = {}


def sizes(name: str) -> dict[str, Callable]:
    """``{"s1": builder, ...}`` for an algorithm with a sweep; empty for the others."""
    if not _CACHE:
        for algo, builders in _table().items():
            _CACHE[algo] = dict(zip(NAMES, builders, strict=True))
    return _CACHE.get(name, {})
