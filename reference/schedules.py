r"""Learning-rate schedules as closed-form functions of the step (torch.optim.lr_scheduler).

``t`` is torch's ``last_epoch``: 0 before the first ``scheduler.step()``, then 1, 2, ...; an
int or an integer array (one rate per entry). Every schedule returns the rate in float64.
Schedules that multiply the rate compose by multiplication (torch's ``ChainedScheduler``), e.g.
``step_lr(t, 0.1, 30) * exponential_lr(t, 1.0, 0.99)``.

.. math:: \text{step: } \eta_0 \gamma^{\lfloor t / s \rfloor}, \quad
          \text{exponential: } \eta_0 \gamma^t, \quad
          \text{cosine: } \eta_{min} + (\eta_0 - \eta_{min}) \frac{1 + \cos(\pi t / T)}{2}

.. math:: \text{linear warmup: } \eta_0 \big(f_0 + (1 - f_0) \min(t, W) / W\big)

Cosine is torch's closed form, periodic past ``T_max`` (torch's recursive form follows the
same curve); warmup then cosine is torch's ``SequentialLR([LinearLR, CosineAnnealingLR],
milestones=[W])``: the cosine restarts its count at the milestone.
"""

from __future__ import annotations

import math

import numpy as np

from reference import _validate as v

__all__ = ["step_lr", "exponential_lr", "cosine_annealing_lr", "linear_warmup",
           "warmup_cosine_lr"]


def _t(t):
    if isinstance(t, np.ndarray):
        if t.dtype.kind not in "iu":
            raise TypeError(f"t must be an integer or an integer array, got dtype {t.dtype}")
        if t.size and t.min() < 0:
            raise ValueError(f"t must be >= 0, got {t.min()}")
        return t.astype(np.int64)
    return v.integer(t, "t", lo=0)


def _rate(x, name):
    return v.real(x, name, lo=0.0)


def _result(x):
    return np.float64(x) if np.ndim(x) == 0 else np.asarray(x, np.float64)


def step_lr(t, base_lr: float, step_size: int, gamma: float = 0.1):
    """``base_lr * gamma ** (t // step_size)`` (StepLR)."""
    t, base_lr = _t(t), _rate(base_lr, "base_lr")
    s, gamma = v.integer(step_size, "step_size", lo=1), _rate(gamma, "gamma")
    return _result(base_lr * np.power(gamma, np.floor_divide(t, s), dtype=np.float64))


def exponential_lr(t, base_lr: float, gamma: float):
    """``base_lr * gamma ** t`` (ExponentialLR)."""
    t, base_lr, gamma = _t(t), _rate(base_lr, "base_lr"), _rate(gamma, "gamma")
    return _result(base_lr * np.power(gamma, t, dtype=np.float64))


def cosine_annealing_lr(t, base_lr: float, T_max: int, eta_min: float = 0.0):  # noqa: N803
    """``eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2`` (CosineAnnealingLR)."""
    t, base_lr = _t(t), _rate(base_lr, "base_lr")
    T, eta_min = v.integer(T_max, "T_max", lo=1), _rate(eta_min, "eta_min")
    return _result(eta_min + (base_lr - eta_min) * (1.0 + np.cos(math.pi * t / T)) / 2.0)


def linear_warmup(t, base_lr: float, warmup_steps: int, start_factor: float = 1.0 / 3):
    """``base_lr * (f0 + (1 - f0) min(t, W) / W)`` (LinearLR with end_factor 1)."""
    t, base_lr = _t(t), _rate(base_lr, "base_lr")
    w = v.integer(warmup_steps, "warmup_steps", lo=1)
    f0 = v.real(start_factor, "start_factor", lo=0.0, hi=1.0, lo_open=True)
    return _result(base_lr * (f0 + (1.0 - f0) * np.minimum(t, w) / w))


def warmup_cosine_lr(t, base_lr: float, warmup_steps: int, T_max: int,  # noqa: N803
                     start_factor: float = 1.0 / 3, eta_min: float = 0.0):
    """Linear warmup for ``warmup_steps`` steps, then cosine annealing over ``T_max`` steps
    counted from the milestone (SequentialLR of LinearLR and CosineAnnealingLR)."""
    t = _t(t)
    w = v.integer(warmup_steps, "warmup_steps", lo=1)
    warm = linear_warmup(np.minimum(t, w), base_lr, w, start_factor)
    cos = cosine_annealing_lr(np.maximum(t - w, 0), base_lr, T_max, eta_min)
    return _result(np.where(t < w, warm, cos))
