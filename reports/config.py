"""Gate thresholds from ``pyproject.toml``, ``[tool.refbench.gate]``.

```toml
[tool.refbench.gate]
max_slowdown = 1.25      # a within-run ratio may grow by this factor before it is a regression
alpha = 0.01             # significance level of the test on raw timings
max_replicate_spread = 1.2   # a pair whose ratio spreads wider across the baseline's runs
                             # (separate processes) is not gated
baseline = "reports/baseline/cpu.json"   # default --baseline, relative to pyproject.toml

[tool.refbench.gate.overrides]
activations = { max_slowdown = 1.5 }     # a family ...
softmax = { max_slowdown = 1.4, alpha = 0.05 }   # ... or an algorithm (wins over its family)
```
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from reports.loading import InputError

DEFAULT_MAX_SLOWDOWN = 1.25
DEFAULT_ALPHA = 0.01
DEFAULT_MAX_REPLICATE_SPREAD = 1.2


@dataclass(frozen=True)
class Threshold:
    max_slowdown: float
    alpha: float


@dataclass
class GateConfig:
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    alpha: float = DEFAULT_ALPHA
    max_replicate_spread: float = DEFAULT_MAX_REPLICATE_SPREAD
    baseline: Path | None = None
    overrides: dict[str, Threshold] = field(default_factory=dict)
    source: Path | None = None

    def threshold(self, family: str, algorithm: str) -> Threshold:
        """The algorithm's override, else its family's, else the defaults."""
        default = Threshold(self.max_slowdown, self.alpha)
        return self.overrides.get(algorithm) or self.overrides.get(family) or default


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.refbench] table, from ``start`` upwards, else
    the one of the tree this package sits in."""
    here = (start or Path.cwd()).resolve()
    candidates = [d / "pyproject.toml" for d in (here, *here.parents)]
    candidates.append(Path(__file__).resolve().parents[1] / "pyproject.toml")
    for p in candidates:
        if p.is_file():
            try:
                if "refbench" in tomllib.loads(p.read_text()).get("tool", {}):
                    return p
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue
    return None


def _number(table: dict, key: str, where: str, default: float, lo: float, hi: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: {key} should be a number, got {value!r}")
    if not lo < value < hi:
        raise InputError(f"{where}: {key} = {value!r} is out of range ({lo} < {key} < {hi})")
    return float(value)


def load_config(path: str | Path | None = None) -> GateConfig:
    """Read the gate settings; without a pyproject.toml the defaults apply."""
    p = Path(path) if path else find_pyproject()
    if p is None:
        return GateConfig()
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML ({exc})") from None
    gate = doc.get("tool", {}).get("refbench", {}).get("gate", {})
    where = f"{p} [tool.refbench.gate]"
    if not isinstance(gate, dict):
        raise InputError(f"{where} should be a table")
    max_slowdown = _number(gate, "max_slowdown", where, DEFAULT_MAX_SLOWDOWN, 1.0, math.inf)
    alpha = _number(gate, "alpha", where, DEFAULT_ALPHA, 0.0, 0.5)
    spread = _number(gate, "max_replicate_spread", where, DEFAULT_MAX_REPLICATE_SPREAD, 1.0,
                     math.inf)
    overrides = {}
    raw = gate.get("overrides", {})
    if not isinstance(raw, dict):
        raise InputError(f"{where}: overrides should be a table")
    for name, table in raw.items():
        w = f"{p} [tool.refbench.gate.overrides] {name}"
        if not isinstance(table, dict):
            raise InputError(f"{w}: should be a table like {{ max_slowdown = 1.5 }}")
        unknown = set(table) - {"max_slowdown", "alpha"}
        if unknown:
            raise InputError(f"{w}: unknown keys {sorted(unknown)} (known: max_slowdown, alpha)")
        overrides[name] = Threshold(_number(table, "max_slowdown", w, max_slowdown, 1.0, math.inf),
                                    _number(table, "alpha", w, alpha, 0.0, 0.5))
    baseline = gate.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise InputError(f"{where}: baseline should be a path (string), got {baseline!r}")
    return GateConfig(max_slowdown=max_slowdown, alpha=alpha, overrides=overrides, source=p,
                      max_replicate_spread=spread,
                      baseline=(p.parent / baseline) if baseline else None)
