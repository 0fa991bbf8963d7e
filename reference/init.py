r"""Weight initialisation (torch.nn.init): fans, gains and samplers with an explicit generator.

Fans of a weight of shape ``(out, in, *kernel)`` (linear: ``(out, in)``; grouped conv:
``(out, in / groups, *kernel)``, so groups need no argument):

.. math:: r = \prod \text{kernel}, \quad \text{fan\_in} = \text{in} \cdot r, \quad
          \text{fan\_out} = \text{out} \cdot r

Gains: 1 for linear, conv and sigmoid; 5/3 for tanh; :math:`\sqrt 2` for relu;
:math:`\sqrt{2 / (1 + a^2)}` for leaky_relu (slope ``a``, default 0.01); 3/4 for selu.

.. math:: \text{xavier: } \sigma = g \sqrt{2 / (\text{fan\_in} + \text{fan\_out})}, \qquad
          \text{kaiming: } \sigma = g / \sqrt{\text{fan}}

and the uniform variants draw from :math:`U(-\sqrt3 \sigma, \sqrt3 \sigma)` (the same
variance). Kaiming's defaults are torch's: ``a = 0``, ``mode = 'fan_in'``,
``nonlinearity = 'leaky_relu'`` (gain :math:`\sqrt 2`). Samples are drawn in float64 from the
numpy ``Generator`` given (randomness is an explicit input) and rounded to ``dtype``.
"""

from __future__ import annotations

import math

import numpy as np

from reference import _validate as v

__all__ = ["calculate_fan_in_and_fan_out", "calculate_gain", "zeros", "normal", "uniform",
           "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "sigmoid")
_NONLINEARITIES = _LINEAR + ("tanh", "relu", "leaky_relu", "selu")


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of integers, got {type(shape).__name__}")
    return tuple(v.integer(s, f"shape[{i}]", lo=0) for i, s in enumerate(shape))


def calculate_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape (at least 2-d), as torch computes them."""
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dimensions for fan in and fan out, got "
                         f"{shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain of a nonlinearity (``param``: leaky_relu's negative slope)."""
    nonlinearity = v.choice(nonlinearity, "nonlinearity", _NONLINEARITIES)
    if nonlinearity in _LINEAR:
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    slope = 0.01 if param is None else v.real(param, "param")
    return math.sqrt(2.0 / (1 + slope**2))


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in v.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def zeros(shape, dtype=np.float32) -> np.ndarray:
    return np.zeros(_shape(shape), _dtype(dtype))


def normal(rng, shape, mean: float = 0.0, std: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Draws from N(mean, std^2)."""
    rng, shape, dt = _rng(rng), _shape(shape), _dtype(dtype)
    mean, std = v.real(mean, "mean"), v.real(std, "std", lo=0.0)
    return (mean + std * rng.standard_normal(shape)).astype(dt)


def uniform(rng, shape, a: float = 0.0, b: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Draws from U(a, b)."""
    rng, shape, dt = _rng(rng), _shape(shape), _dtype(dtype)
    a, b = v.real(a, "a"), v.real(b, "b")
    if b < a:
        raise ValueError(f"b must be >= a, got a={a}, b={b}")
    return (a + (b - a) * rng.random(shape)).astype(dt)


def _std_xavier(shape, gain):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return v.real(gain, "gain", lo=0.0) * math.sqrt(2.0 / float(fan_in + fan_out))


def _std_kaiming(shape, a, mode, nonlinearity):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    fan = fan_in if v.choice(mode, "mode", ("fan_in", "fan_out")) == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"shape {tuple(shape)} has a zero fan ({mode}): kaiming is undefined")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def xavier_uniform(rng, shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    s = math.sqrt(3.0) * _std_xavier(shape, gain)
    return uniform(rng, shape, -s, s, dtype)


def xavier_normal(rng, shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    return normal(rng, shape, 0.0, _std_xavier(shape, gain), dtype)


def kaiming_uniform(rng, shape, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", dtype=np.float32) -> np.ndarray:
    s = math.sqrt(3.0) * _std_kaiming(shape, a, mode, nonlinearity)
    return uniform(rng, shape, -s, s, dtype)


def kaiming_normal(rng, shape, a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", dtype=np.float32) -> np.ndarray:
    return normal(rng, shape, 0.0, _std_kaiming(shape, a, mode, nonlinearity), dtype)
