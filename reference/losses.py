"""Loss functions: forward and hand-written backward.

Convention (the same in every family)::

    loss, ctx = mse_loss(input, target, reduction="mean")     # forward
    d_input, d_target = mse_loss_backward(ctx, grad_out)      # vector-Jacobian product

``reduction`` is ``'none'`` (one loss per element or per sample, float of the input's dtype),
``'mean'`` or ``'sum'`` (a 0-d array of the input's dtype). Sums accumulate in float64 and are
rounded once. ``'mean'`` of an empty batch is 0/0 and raises ``ValueError`` instead of
returning NaN (PyTorch returns NaN, or for ``multi_margin_loss`` uninitialised memory).
Label arrays are integer (int64) inputs and class weights are float inputs; neither is
differentiated. Each backward returns its gradients in the order its docstring lists.

Speed: the elementwise loops vectorise. exp and the logs (``log_double``, ``log1m_double``,
``log1p_unit_double``) come from ``reference._vmath``, branch-free. Kernels that call those
must not carry ``reduce=True`` (``reassoc`` would also be free to regroup the
cancellation-free forms ``(m - x_y) + log s`` and ``(margin - x_y) + x_j`` used below), so
their sums go through a float64 scratch block and ``_vmath.fsum``; only MSE, L1 and the hinge
sum under ``reduce=True`` directly.

Contents: ``mse_loss``, ``l1_loss``, ``binary_cross_entropy``,
``binary_cross_entropy_with_logits``, ``hinge_loss`` here; the classification losses
``cross_entropy`` (integer labels or class probabilities), ``nll_loss`` and
``multi_margin_loss`` live in ``reference.losses_class`` and are importable from here too;
the plumbing both share (reductions, upstream gradients, class weights) in
``reference._loss_common``. Each has its ``*_backward``.

Contexts: each forward returns a context of its own type (``MSECtx``, ``CrossEntropyCtx``,
...); each backward refuses any other with a TypeError naming ``ctx``, and a ``grad_out``
without the forward output's shape and dtype with one naming ``grad_out``.

Mutation after forward: the context keeps private copies of the caller's arrays that backward
reads (input, target, weights; ``nll_loss``'s backward needs labels and weights only), so an
in-place edit between forward and backward does not change the gradients. The copies are
one more read and write of input and target, which is dear beside a reduction that only
reads them: measured within one run (interleaved, 1M float32 elements, loaded 2-core
machine) MSE's forward with 'mean' takes ~5x the time of its kernel alone. Saving ``x - t``
instead (one array) or a cheap mutation check would halve or remove that; not done yet.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange, types
from numba.extending import overload

from reference import _validate as v
from reference import _vmath as vm
from reference._jit import PARALLEL_MIN, inline, kernel
from reference._loss_common import REDUCTIONS, _own, _reduced, _reduction, _upstream  # noqa: F401
from reference.losses_class import (  # noqa: F401 - re-exported: the public names stay here
    ClassCtx,
    CrossEntropyCtx,
    CrossEntropyProbsCtx,
    MultiMarginCtx,
    NLLCtx,
    cross_entropy,
    cross_entropy_backward,
    multi_margin_loss,
    multi_margin_loss_backward,
    nll_loss,
    nll_loss_backward,
)

__all__ = [
    "mse_loss", "mse_loss_backward", "l1_loss", "l1_loss_backward",
    "binary_cross_entropy", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "cross_entropy", "cross_entropy_backward", "nll_loss", "nll_loss_backward",
    "hinge_loss", "hinge_loss_backward", "multi_margin_loss", "multi_margin_loss_backward",
]


# ---------------------------------------------------------------------------------------------
# shared by the elementwise losses


def _elementwise_weight(weight, name: str, like: np.ndarray) -> np.ndarray | None:
    """An optional per-element weight broadcastable to ``like``'s shape, flat (or None)."""
    if weight is None:
        return None
    w = v.float_array(weight, name, dtype=like.dtype)
    if w.shape != like.shape:
        try:
            ok = np.broadcast_shapes(w.shape, like.shape) == like.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must broadcast to the input's shape {like.shape}, "
                             f"got shape {w.shape}")
        w = v.broadcast(w, like.shape)
    return w.reshape(-1)


def _pair(input, target):
    x = v.float_array(input, "input")
    t = v.float_array(target, "target", dtype=x.dtype)
    v.same_shape(x, "input", t, "target")
    return x, t


class PointwiseCtx(NamedTuple):
    """What an elementwise loss keeps: its inputs, weights, reduction and output."""

    x: np.ndarray  # input, flat
    t: np.ndarray  # target, flat
    shape: tuple[int, ...]
    reduction: str
    out: np.ndarray
    w: np.ndarray | None = None  # per-element weight broadcast to the input, flat
    pw: np.ndarray | None = None  # pos_weight broadcast to the input, flat


MSECtx = v.ctx_type(PointwiseCtx, "MSECtx", "mse_loss")
L1Ctx = v.ctx_type(PointwiseCtx, "L1Ctx", "l1_loss")
BCECtx = v.ctx_type(PointwiseCtx, "BCECtx", "binary_cross_entropy")
BCELogitsCtx = v.ctx_type(PointwiseCtx, "BCELogitsCtx", "binary_cross_entropy_with_logits")
HingeCtx = v.ctx_type(PointwiseCtx, "HingeCtx", "hinge_loss")



def _pointwise_out(e: np.ndarray, total: float, x: np.ndarray, shape, reduction: str):
    if reduction == "none":
        return e.reshape(shape)
    return _reduced(total, x.size, reduction, x.dtype)


# ---------------------------------------------------------------------------------------------
# mean squared error and mean absolute error


@inline()
def _reg1(x, t, l1):
    d = np.float64(x) - np.float64(t)
    return abs(d) if l1 else d * d


@inline()
def _reg_grad1(x, t, l1):
    d = np.float64(x) - np.float64(t)
    return np.sign(d) if l1 else 2.0 * d


@kernel(parallel=True, reduce=True)
def _reg_fwd(x, t, e, l1, write):
    n = x.size
    s = 0.0
    if n < PARALLEL_MIN:
        for i in range(n):
            li = _reg1(x[i], t[i], l1)
            s += li
            if write:
                e[i] = li
    else:
        for i in prange(n):
            li = _reg1(x[i], t[i], l1)
            s += li
            if write:
                e[i] = li
    return s


@kernel(parallel=True)
def _reg_bwd(x, t, g, c, each, dx, dt, l1):
    # dx = g_i c f'(x - t), dt = -dx; g_i is the per-element upstream ('none') or 1.
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            gi = np.float64(g[i]) * c if each else c
            d = gi * _reg_grad1(x[i], t[i], l1)
            dx[i] = d
            dt[i] = -d
    else:
        for i in prange(n):
            gi = np.float64(g[i]) * c if each else c
            d = gi * _reg_grad1(x[i], t[i], l1)
            dx[i] = d
            dt[i] = -d


def _regression(input, target, reduction, l1: bool):
    x, t = _pair(input, target)
    r = _reduction(reduction, x.size)
    e = np.empty(x.shape if r == "none" else (0,), x.dtype)
    total = _reg_fwd(x.reshape(-1), t.reshape(-1), e.reshape(-1), l1, r == "none")
    out = _pointwise_out(e, total, x, x.shape, r)
    return out, (L1Ctx if l1 else MSECtx)(_own(x.reshape(-1), input), _own(t.reshape(-1), target),
                                          x.shape, r, out)


def _regression_backward(ctx: PointwiseCtx, grad_out, l1: bool):
    if l1:
        v.ctx_of(ctx, L1Ctx, "l1_loss")
    else:
        v.ctx_of(ctx, MSECtx, "mse_loss")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.x.size)
    dx = np.empty_like(ctx.x)
    dt = np.empty_like(ctx.x)
    _reg_bwd(ctx.x, ctx.t, g, c, each, dx, dt, l1)
    return dx.reshape(ctx.shape), dt.reshape(ctx.shape)


def mse_loss(input: np.ndarray, target: np.ndarray, *, reduction: str = "mean"):
    r"""Mean squared error.

    .. math:: \ell_i = (x_i - t_i)^2, \qquad
              \partial x_i = g_i\, 2 (x_i - t_i), \quad \partial t_i = -\partial x_i

    with :math:`g_i` the upstream gradient (divided by the element count for 'mean').
    ``input`` and ``target`` have the same shape and dtype. Backward returns
    ``(d_input, d_target)``.
    """
    return _regression(input, target, reduction, False)


def mse_loss_backward(ctx: PointwiseCtx, grad_out: np.ndarray):
    r"""``(d_input, d_target)`` of ``mse_loss``:

    .. math:: \partial x_i = 2 g_i (x_i - t_i), \qquad \partial t_i = -\partial x_i

    :math:`g_i` is ``grad_out`` per element ('none'), or ``grad_out`` divided by the element
    count ('mean') or as it is ('sum') for every element.
    """
    return _regression_backward(ctx, grad_out, False)


def l1_loss(input: np.ndarray, target: np.ndarray, *, reduction: str = "mean"):
    r"""Mean absolute error.

    .. math:: \ell_i = |x_i - t_i|, \qquad
              \partial x_i = g_i \operatorname{sign}(x_i - t_i), \quad \partial t_i = -\partial x_i

    At the kink :math:`x_i = t_i` the derivative is 0 (PyTorch's ``sign(0) = 0``).
    Backward returns ``(d_input, d_target)``.
    """
    return _regression(input, target, reduction, True)


def l1_loss_backward(ctx: PointwiseCtx, grad_out: np.ndarray):
    r"""``(d_input, d_target)`` of ``l1_loss``:

    .. math:: \partial x_i = g_i \operatorname{sign}(x_i - t_i), \qquad
              \partial t_i = -\partial x_i

    with :math:`\operatorname{sign}(0) = 0` (PyTorch's); :math:`g_i` as in
    ``mse_loss_backward``.
    """
    return _regression_backward(ctx, grad_out, True)


# ---------------------------------------------------------------------------------------------
# blocks of a vectorised reduction

_CHUNK = 2048  # elements per block of a vectorised reduction (its float64 scratch stays in L1)


def _part(a, i0, i1):
    """``a[i0:i1]``, or None for an absent optional array.

    Blocks get slices and index them from 0: an index Numba knows is >= 0 needs no wraparound
    test, which keeps the loop vectorised. Resolved by type at compile time (an ``if a is
    None`` in a jitted helper would type the result as Optional and slow every access)."""
    return None if a is None else a[i0:i1]


@overload(_part, inline="always", jit_options={"cache": True})
def _part_jit(a, i0, i1):
    if isinstance(a, types.NoneType):
        return lambda a, i0, i1: None
    return lambda a, i0, i1: a[i0:i1]


# ---------------------------------------------------------------------------------------------
# binary cross-entropy on probabilities

_LOG_FLOOR = -100.0  # torch clamps each log at -100 so that p = 0 or 1 gives a finite loss
_BCE_EPS = 1e-12  # torch's floor on x (1 - x) in the input gradient


@inline()
def _bce1(x, t):
    lx = max(vm.log_double(x), _LOG_FLOOR)
    l1x = max(vm.log1m_double(x), _LOG_FLOOR)
    return (t - 1.0) * l1x - t * lx


@inline()
def _unit(x):
    return 0.0 <= x <= 1.0  # NaN fails


@kernel()
def _bce_block(x, t, w, e, write, buf):
    # Losses of a block into buf (a loop that vectorises), then (their sum, number of x outside
    # [0, 1], number of t outside [0, 1]). w: an array or None. The range checks are a loop of
    # their own: in the loss loop their counters crowd the vector registers (measured 1.5x).
    for i in range(x.size):
        li = _bce1(np.float64(x[i]), np.float64(t[i]))
        if w is not None:
            li *= np.float64(w[i])
        buf[i] = li
        if write:
            e[i] = li
    bad_x = 0
    bad_t = 0
    for i in range(x.size):
        bad_x += 0 if _unit(np.float64(x[i])) else 1
        bad_t += 0 if _unit(np.float64(t[i])) else 1
    return vm.fsum(buf[: x.size]), bad_x, bad_t


@kernel(parallel=True)
def _bce_fwd(x, t, w, e, write):
    n = x.size
    blocks = (n + _CHUNK - 1) // _CHUNK
    s = 0.0
    bad_x = 0
    bad_t = 0
    if n < PARALLEL_MIN:
        buf = np.empty(min(n, _CHUNK))
        for b in range(blocks):
            i0, i1 = b * _CHUNK, min(n, (b + 1) * _CHUNK)
            sb, bx, bt = _bce_block(x[i0:i1], t[i0:i1], _part(w, i0, i1), e[i0:i1],
                                    write, buf)
            s += sb
            bad_x += bx
            bad_t += bt
    else:
        for b in prange(blocks):
            buf = np.empty(_CHUNK)
            i0, i1 = b * _CHUNK, min(n, (b + 1) * _CHUNK)
            sb, bx, bt = _bce_block(x[i0:i1], t[i0:i1], _part(w, i0, i1), e[i0:i1],
                                    write, buf)
            s += sb
            bad_x += bx
            bad_t += bt
    return s, bad_x, bad_t


@inline()
def _bce_grad1(x, t, w, g, c, each, dx, dt, i):
    # d/dx = (x - t) / max(x (1 - x), 1e-12);  d/dt = log(1 - x) - log x, unclamped (torch's
    # -logit(x)): +inf at x = 0, -inf at x = 1.
    gi = np.float64(g[i]) * c if each else c
    if w is not None:
        gi *= np.float64(w[i])
    xi = np.float64(x[i])
    dx[i] = gi * ((xi - np.float64(t[i])) / max((1.0 - xi) * xi, _BCE_EPS))
    dt[i] = gi * (vm.log1m_double(xi) - vm.log_double(xi))


@kernel(parallel=True)
def _bce_bwd(x, t, w, g, c, each, dx, dt):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            _bce_grad1(x, t, w, g, c, each, dx, dt, i)
    else:
        for i in prange(n):
            _bce_grad1(x, t, w, g, c, each, dx, dt, i)


def _first_outside_unit(a: np.ndarray) -> float:
    return float(a[~((a >= 0) & (a <= 1))].flat[0])


def binary_cross_entropy(input: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None,
                         *, reduction: str = "mean"):
    r"""Binary cross-entropy of probabilities ``input`` against targets in [0, 1].

    .. math::
        \ell_i = -w_i \left(t_i \max(\log x_i, -100) + (1 - t_i) \max(\log(1 - x_i), -100)\right)

        \partial x_i = g_i w_i \frac{x_i - t_i}{\max(x_i (1 - x_i), 10^{-12})}, \qquad
        \partial t_i = g_i w_i \left(\log(1 - x_i) - \log x_i\right)

    PyTorch's conventions: each log is clamped at -100, so probabilities of exactly 0 or 1
    give finite losses (100 per element at worst); the input gradient's denominator is floored
    at 1e-12; the target gradient is not clamped (``+inf`` at ``x = 0``, ``-inf`` at ``x = 1``,
    as ``torch.autograd`` gives). ``input`` and ``target`` outside [0, 1] (or NaN) raise.
    ``weight`` (optional, not differentiated) broadcasts to the input's shape.
    Backward returns ``(d_input, d_target)``.
    """
    x, t = _pair(input, target)
    w = _elementwise_weight(weight, "weight", x)
    r = _reduction(reduction, x.size)
    xf, tf = x.reshape(-1), t.reshape(-1)
    e = np.empty(x.shape if r == "none" else (0,), x.dtype)
    total, bad_x, bad_t = _bce_fwd(xf, tf, w, e.reshape(-1), r == "none")
    if bad_x:
        raise ValueError(f"input must hold probabilities in [0, 1], got {_first_outside_unit(x)}"
                         f" ({bad_x} element(s) outside)")
    if bad_t:
        raise ValueError(f"target must lie in [0, 1], got {_first_outside_unit(t)}"
                         f" ({bad_t} element(s) outside)")
    out = _pointwise_out(e, total, x, x.shape, r)
    return out, BCECtx(_own(xf, input), _own(tf, target), x.shape, r, out, _own(w, weight))


def binary_cross_entropy_backward(ctx: PointwiseCtx, grad_out: np.ndarray):
    r"""``(d_input, d_target)`` of ``binary_cross_entropy``:

    .. math::
        \partial x_i = g_i w_i \frac{x_i - t_i}{\max(x_i (1 - x_i), 10^{-12})}, \qquad
        \partial t_i = g_i w_i \left(\log(1 - x_i) - \log x_i\right)

    (the denominator's floor is PyTorch's; the target's gradient is not clamped: ``+inf`` at
    ``x = 0``, ``-inf`` at ``x = 1``); :math:`g_i` as in ``mse_loss_backward``.
    """
    v.ctx_of(ctx, BCECtx, "binary_cross_entropy")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.x.size)
    dx = np.empty_like(ctx.x)
    dt = np.empty_like(ctx.x)
    _bce_bwd(ctx.x, ctx.t, ctx.w, g, c, each, dx, dt)
    return dx.reshape(ctx.shape), dt.reshape(ctx.shape)


# ---------------------------------------------------------------------------------------------
# binary cross-entropy with logits


@inline()
def _bcel1(x, t, pw, dtype):
    # -(pw t log sigma(x) + (1 - t) log sigma(-x)), with log sigma(+-x) = min(+-x, 0) - u and
    # u = log(1 + e^{-|x|}): no overflow for any finite x. For t in [0, 1] and pw >= 0 both
    # terms are >= 0, so unlike torch's equal (1 - t) x - (1 + (pw - 1) t) log sigma(x)
    # nothing cancels.
    u = vm.log1p_unit_double(vm.exp(-abs(x), dtype))
    return pw * t * (u - min(x, 0.0)) + (1.0 - t) * (u - min(-x, 0.0))


@kernel()
def _bcel_block(x, t, w, pw, e, write, buf):
    # Losses of a block into buf (a loop that vectorises), then their float64 sum.
    # w, pw: arrays or None (Numba compiles the None case without the branch).
    for i in range(x.size):
        li = _bcel1(np.float64(x[i]), np.float64(t[i]),
                    1.0 if pw is None else np.float64(pw[i]), x.dtype)
        if w is not None:
            li *= np.float64(w[i])
        buf[i] = li
        if write:
            e[i] = li
    return vm.fsum(buf[: x.size])


@kernel(parallel=True)
def _bcel_fwd(x, t, w, pw, e, write):
    n = x.size
    blocks = (n + _CHUNK - 1) // _CHUNK
    s = 0.0
    if n < PARALLEL_MIN:
        buf = np.empty(min(n, _CHUNK))
        for b in range(blocks):
            i0, i1 = b * _CHUNK, min(n, (b + 1) * _CHUNK)
            s += _bcel_block(x[i0:i1], t[i0:i1], _part(w, i0, i1), _part(pw, i0, i1),
                             e[i0:i1], write, buf)
    else:
        for b in prange(blocks):
            buf = np.empty(_CHUNK)
            i0, i1 = b * _CHUNK, min(n, (b + 1) * _CHUNK)
            s += _bcel_block(x[i0:i1], t[i0:i1], _part(w, i0, i1), _part(pw, i0, i1),
                             e[i0:i1], write, buf)
    return s


@inline()
def _bcel_grad1(x, t, pw, gi, dx, dt, i, dtype, has_pw):
    # d/dx = (1 + (pw - 1) t) sigma(x) - pw t = (1 - t) sigma(x) - pw t sigma(-x): the second
    # form has no cancellation of sigma(x) - 1 at large x. With e = e^{-|x|}, sigma(|x|) =
    # 1 / (1 + e) and sigma(-|x|) = e / (1 + e): one exp.
    # d/dt = log sigma(-x) - pw log sigma(x); exactly -x when pw = 1 (the general form would
    # round a tiny x away in log(1/2 -+ x/4)).
    e = vm.exp(-abs(x), dtype)
    big = 1.0 / (1.0 + e)
    small = e * big
    pos = x >= 0.0
    sig_pos = big if pos else small
    sig_neg = small if pos else big
    dx[i] = gi * ((1.0 - t) * sig_pos - pw * t * sig_neg)
    if has_pw:  # a constant after inlining
        u = vm.log1p_unit_double(e)
        general = (min(-x, 0.0) - u) - pw * (min(x, 0.0) - u)
        dt[i] = gi * (-x if pw == 1.0 else general)
    else:
        dt[i] = gi * -x


@inline()
def _bcel_bwd_range(x, t, w, pw, g, c, each, dx, dt, i):
    gi = np.float64(g[i]) * c if each else c
    if w is not None:
        gi *= np.float64(w[i])
    if pw is None:
        _bcel_grad1(np.float64(x[i]), np.float64(t[i]), 1.0, gi, dx, dt, i, x.dtype, False)
    else:
        _bcel_grad1(np.float64(x[i]), np.float64(t[i]), np.float64(pw[i]), gi, dx, dt, i,
                    x.dtype, True)


@kernel(parallel=True)
def _bcel_bwd(x, t, w, pw, g, c, each, dx, dt):
    n = x.size
    if n < PARALLEL_MIN:
        for i in range(n):
            _bcel_bwd_range(x, t, w, pw, g, c, each, dx, dt, i)
    else:
        for i in prange(n):
            _bcel_bwd_range(x, t, w, pw, g, c, each, dx, dt, i)


def binary_cross_entropy_with_logits(input: np.ndarray, target: np.ndarray,
                                     weight: np.ndarray | None = None,
                                     pos_weight: np.ndarray | None = None,
                                     *, reduction: str = "mean"):
    r"""Binary cross-entropy of logits, numerically stable.

    .. math::
        \ell_i = -w_i \left(p_i t_i \log\sigma(x_i) + (1 - t_i) \log\sigma(-x_i)\right), \quad
        \log\sigma(x) = \min(x, 0) - \log(1 + e^{-|x|})

        \partial x_i = g_i w_i \left((1 - t_i)\, \sigma(x_i) - p_i t_i\, \sigma(-x_i)\right),
        \qquad \partial t_i = g_i w_i \left(\log\sigma(-x_i) - p_i \log\sigma(x_i)\right)

    Logits of any finite magnitude give finite results, and no term cancels another (PyTorch
    computes the equal :math:`(1 - t) x - (1 + (p - 1) t) \log\sigma(x)`, which loses digits
    when both terms are large). ``weight`` (``w``) and ``pos_weight`` (``p``, the weight of
    positive examples, usually one per class along the last axis) broadcast to the input's
    shape and are not differentiated (PyTorch does not differentiate them either). Targets
    may be any real (soft labels), as in PyTorch. Backward returns ``(d_input, d_target)``.
    """
    x, t = _pair(input, target)
    w = _elementwise_weight(weight, "weight", x)
    pw = _elementwise_weight(pos_weight, "pos_weight", x)
    r = _reduction(reduction, x.size)
    xf, tf = x.reshape(-1), t.reshape(-1)
    e = np.empty(x.shape if r == "none" else (0,), x.dtype)
    total = _bcel_fwd(xf, tf, w, pw, e.reshape(-1), r == "none")
    out = _pointwise_out(e, total, x, x.shape, r)
    return out, BCELogitsCtx(_own(xf, input), _own(tf, target), x.shape, r, out,
                             _own(w, weight), _own(pw, pos_weight))


def binary_cross_entropy_with_logits_backward(ctx: PointwiseCtx, grad_out: np.ndarray):
    r"""``(d_input, d_target)`` of ``binary_cross_entropy_with_logits``:

    .. math::
        \partial x_i = g_i w_i \left((1 - t_i)\, \sigma(x_i) - p_i t_i\, \sigma(-x_i)\right),
        \qquad \partial t_i = g_i w_i \left(\log\sigma(-x_i) - p_i \log\sigma(x_i)\right)

    (no cancellation of :math:`\sigma(x) - 1` at large x; :math:`\partial t_i = -g_i w_i x_i`
    exactly when :math:`p_i = 1`); :math:`g_i` as in ``mse_loss_backward``.
    """
    v.ctx_of(ctx, BCELogitsCtx, "binary_cross_entropy_with_logits")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.x.size)
    dx = np.empty_like(ctx.x)
    dt = np.empty_like(ctx.x)
    _bcel_bwd(ctx.x, ctx.t, ctx.w, ctx.pw, g, c, each, dx, dt)
    return dx.reshape(ctx.shape), dt.reshape(ctx.shape)


# ---------------------------------------------------------------------------------------------
# binary hinge loss


@kernel(parallel=True, reduce=True)
def _hinge_fwd(f, y, e, write):
    # z = 1 - y f; y = +-1 makes y f exact, and the sign of z in float64 is the sign of the
    # input-dtype result torch clamps, so the kink is decided exactly as in torch.
    n = f.size
    s = 0.0
    bad = 0
    if n < PARALLEL_MIN:
        for i in range(n):
            yi = np.float64(y[i])
            if yi != 1.0 and yi != -1.0:
                bad += 1
            li = max(1.0 - yi * np.float64(f[i]), 0.0)
            s += li
            if write:
                e[i] = li
    else:
        for i in prange(n):
            yi = np.float64(y[i])
            if yi != 1.0 and yi != -1.0:
                bad += 1
            li = max(1.0 - yi * np.float64(f[i]), 0.0)
            s += li
            if write:
                e[i] = li
    return s, bad


@kernel(parallel=True)
def _hinge_bwd(f, y, g, c, each, df):
    n = f.size
    if n < PARALLEL_MIN:
        for i in range(n):
            gi = np.float64(g[i]) * c if each else c
            yi = np.float64(y[i])
            df[i] = -gi * yi if 1.0 - yi * np.float64(f[i]) >= 0.0 else 0.0
    else:
        for i in prange(n):
            gi = np.float64(g[i]) * c if each else c
            yi = np.float64(y[i])
            df[i] = -gi * yi if 1.0 - yi * np.float64(f[i]) >= 0.0 else 0.0


def hinge_loss(input: np.ndarray, target: np.ndarray, *, reduction: str = "mean"):
    r"""Binary hinge loss of a linear SVM: scores ``input`` = f, labels ``target`` = y in {-1, +1}.

    .. math:: \ell_i = \max(0, 1 - y_i f_i), \qquad
              \partial f_i = -g_i\, y_i\, [1 - y_i f_i \ge 0]

    At the kink :math:`y_i f_i = 1` the derivative is :math:`-y_i` (the twin is
    ``torch.clamp(1 - y * f, min=0)``, whose gradient passes at the boundary). ``target``
    has the input's shape and dtype, every value exactly -1 or +1; it is not differentiated.
    Backward returns ``(d_input,)``.
    """
    f, y = _pair(input, target)
    r = _reduction(reduction, f.size)
    ff, yf = f.reshape(-1), y.reshape(-1)
    e = np.empty(f.shape if r == "none" else (0,), f.dtype)
    total, bad = _hinge_fwd(ff, yf, e.reshape(-1), r == "none")
    if bad:
        first = y[(y != 1) & (y != -1)].flat[0]
        raise ValueError(f"target must be -1 or +1 everywhere, got {first} ({bad} element(s))")
    out = _pointwise_out(e, total, f, f.shape, r)
    return out, HingeCtx(_own(ff, input), _own(yf, target), f.shape, r, out)


def hinge_loss_backward(ctx: PointwiseCtx, grad_out: np.ndarray):
    r"""``(d_input,)`` of ``hinge_loss`` (labels are not differentiated):

    .. math:: \partial f_i = -g_i\, y_i\, [1 - y_i f_i \ge 0]

    (the kink passes the gradient, as ``torch.clamp``'s); :math:`g_i` as in
    ``mse_loss_backward``.
    """
    v.ctx_of(ctx, HingeCtx, "hinge_loss")
    g, c, each = _upstream(grad_out, ctx.reduction, ctx.out, ctx.x.size)
    df = np.empty_like(ctx.x)
    _hinge_bwd(ctx.x, ctx.t, g, c, each, df)
    return (df.reshape(ctx.shape),)
