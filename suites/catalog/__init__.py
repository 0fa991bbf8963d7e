"""The registry of specs. Each module of this package registers its family's specs on import.

``all_specs()`` imports every module here once and returns the specs sorted by family and
name; ``get(name)`` finds one. A new family is a new module: nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from suites.catalog.spec import Spec

_REGISTRY: dict[str, Spec] = {}
_loaded = False


def register(spec: Spec) -> Spec:
    if spec.name in _REGISTRY:
        raise ValueError(f"a spec named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in ("spec", "strategies"):
            importlib.import_module(f"{__name__}.{mod.name}")


def all_specs() -> list[Spec]:
    _load()
    return sorted(_REGISTRY.values(), key=lambda s: (s.family, s.name))


def get(name: str) -> Spec:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no spec named {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
