r"""Early stopping as a pure function of the monitored values (Keras' EarlyStopping rule).

State is explicit: ``state = early_stopping_init(baseline)``, then once per epoch
``state, stop = early_stopping_update(state, value, ...)``; ``early_stopping(values, ...)`` runs
the rule over a whole sequence. An epoch *improves* when its value beats the best so far by
more than ``min_delta``:

.. math:: \text{min: } x_e < b - \delta, \qquad \text{max: } x_e > b + \delta

On an improvement ``b = x_e``, the best epoch becomes ``e`` and the wait count restarts at 0;
otherwise the wait grows by 1, and training stops after the epoch where it reaches
``patience``. ``b`` starts at ``baseline`` (an epoch must beat it to count) or at +-inf.
Restore-best: the caller restores the weights saved at ``best_epoch`` (None while no epoch
has improved, as Keras keeps the last weights then). NaN never improves.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from reference import _validate as v

__all__ = ["EarlyStoppingState", "early_stopping_init", "early_stopping_update",
           "early_stopping"]


class EarlyStoppingState(NamedTuple):
    best: float
    best_epoch: int | None
    wait: int
    epoch: int      # epochs seen so far


def early_stopping_init(baseline: float | None = None, mode: str = "min") -> EarlyStoppingState:
    mode = v.choice(mode, "mode", ("min", "max"))
    if baseline is None:
        best = math.inf if mode == "min" else -math.inf
    else:
        best = v.real(baseline, "baseline")
    return EarlyStoppingState(best, None, 0, 0)


def early_stopping_update(state: EarlyStoppingState, value: float, *, mode: str = "min",
                          min_delta: float = 0.0, patience: int = 0):
    """One epoch's value -> (new state, stop?)."""
    if not isinstance(state, EarlyStoppingState):
        raise TypeError(f"state must be an EarlyStoppingState, got {type(state).__name__}")
    mode = v.choice(mode, "mode", ("min", "max"))
    delta = v.real(min_delta, "min_delta", lo=0.0)
    patience = v.integer(patience, "patience", lo=0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(
            value, "__float__"):
        raise TypeError(f"value must be a real number, got {type(value).__name__}")
    x = float(value)
    better = x < state.best - delta if mode == "min" else x > state.best + delta
    e = state.epoch
    if better:
        new = EarlyStoppingState(x, e, 0, e + 1)
    else:
        new = EarlyStoppingState(state.best, state.best_epoch, state.wait + 1, e + 1)
    return new, (not better) and new.wait >= patience


def early_stopping(values, *, mode: str = "min", min_delta: float = 0.0, patience: int = 0,
                   baseline: float | None = None):
    """Run the rule over ``values`` -> ``(stop_epoch, best_epoch)``: the 0-based epoch after
    which training stops (None: it never stops) and the epoch whose weights to restore."""
    state = early_stopping_init(baseline, mode)
    for value in values:
        state, stop = early_stopping_update(state, value, mode=mode, min_delta=min_delta,
                                            patience=patience)
        if stop:
            return state.epoch - 1, state.best_epoch
    return None, state.best_epoch
