r"""Optimizer steps on the GPU, in place: ``sgd_``, ``adagrad_``, ``rmsprop_``, ``adam_``,
``adamw_``.

Same contract as the CPU in-place steps of ``reference.optim`` (same arguments, defaults,
hyper-parameter checks and messages; ``step`` is 1-based; the call returns None), with every
tensor a CUDA device array: ``params`` and the buffers of ``state`` are overwritten with the
new values where they lie (a torch CUDA tensor given through ``__cuda_array_interface__`` is
updated in place), ``grads`` is only read. Formulas and conventions are those of
``reference.optim``'s pure steps (each docstring there has the math; ``maximize`` negates the
gradient, L2 decay is coupled except in AdamW, SGD's first buffer is the gradient, eps after
the root, AMSGrad's maximum of the raw second moment).

Each element is one thread's work in a grid-stride loop: it reads p, g and the buffers once,
computes in float64 and rounds once to the tensor's dtype, and writes p and the buffers once;
a memory-bound kernel. One launch per tensor (no multi-tensor launch: a list of many small
tensors pays one launch latency each; torch's ``foreach``/``fused`` steps batch them).

Under numba's simulator the arithmetic is numpy's float64 and the results equal the CPU
references' bit for bit. On a GPU, NVVM contracts ``a * b + c`` into fused multiply-adds
(the sm_90 PTX of these kernels has ``fma.rn.f64``; numba-cuda has no switch for it short of
fastmath, which also flushes subnormals and relaxes division and square root), so a float64
intermediate can differ from the CPU's in its last bits, and the result by a rounding of the
output dtype.

Stricter than the CPU steps in one respect: a gradient must be C-contiguous too (the CPU step
copies a strided gradient; here make the contiguous copy on the device first).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from reference import optim as _cpu
from reference.cuda import _launch as L

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_"]

_F64 = np.float64


# ---------------------------------------------------------------------------------------------
# kernels: one grid-stride loop each; an absent buffer is a one-element placeholder that its
# flag keeps unread and unwritten


@cuda.jit(device=True, cache=True)
def _hat_g(p, g, wd, maximize):
    # ±g + wd p; torch adds no 0 * p (p may be inf)
    gi = -_F64(g) if maximize else _F64(g)
    if wd != 0.0:
        gi += wd * p
    return gi


@cuda.jit(device=True, cache=True)
def _sqrt(x):
    # np.sqrt's values (NaN below 0 and at NaN, -0.0 at -0.0) with math.sqrt, the CUDA one
    # (np.sqrt is not a CUDA function; the simulator's math.sqrt raises below 0)
    return _F64(math.sqrt(x)) if x >= 0.0 else _F64(math.nan)


@cuda.jit(cache=True)
def _sgd_k(p, g, b, first, lr, mu, damp, wd, nesterov, maximize):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi = _F64(p[i])
        gi = _hat_g(pi, g[i], wd, maximize)
        u = gi
        if mu != 0.0:
            bn = gi if first else mu * _F64(b[i]) + (1.0 - damp) * gi
            b[i] = bn
            u = gi + mu * bn if nesterov else bn
        p[i] = pi - lr * u


@cuda.jit(cache=True)
def _adagrad_k(p, g, s, clr, eps, wd, maximize):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi = _F64(p[i])
        gi = _hat_g(pi, g[i], wd, maximize)
        sn = _F64(s[i]) + gi * gi
        s[i] = sn
        p[i] = pi - clr * (gi / (_sqrt(sn) + eps))


@cuda.jit(cache=True)
def _rmsprop_k(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered, maximize):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi = _F64(p[i])
        gi = _hat_g(pi, g[i], wd, maximize)
        sqn = alpha * _F64(sq[i]) + (1.0 - alpha) * gi * gi
        sq[i] = sqn
        var = sqn
        if centered:
            gan = alpha * _F64(ga[i]) + (1.0 - alpha) * gi
            ga[i] = gan
            var = sqn - gan * gan
        den = _sqrt(var) + eps
        if mu > 0.0:
            bn = mu * _F64(buf[i]) + gi / den
            buf[i] = bn
            p[i] = pi - lr * bn
        else:
            p[i] = pi - lr * (gi / den)


@cuda.jit(cache=True)
def _adam_k(p, g, m, vv, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize, c, k):
    # c = lr / (1 - b1^t), k = sqrt(1 - b2^t)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        pi = _F64(p[i])
        if decoupled:
            pi *= 1.0 - lr * wd
            gi = _hat_g(pi, g[i], 0.0, maximize)
        else:
            gi = _hat_g(pi, g[i], wd, maximize)
        mn = b1 * _F64(m[i]) + (1.0 - b1) * gi
        vn = b2 * _F64(vv[i]) + (1.0 - b2) * gi * gi
        m[i] = mn
        vv[i] = vn
        vm = vn
        if amsgrad:
            old = _F64(vmax[i])
            vm = vn if vn > old else old     # the CPU's max(old, vn), NaN included
            vmax[i] = vm
        p[i] = pi - c * (mn / (_sqrt(vm) / k + eps))


# ---------------------------------------------------------------------------------------------
# checks: the CPU in-place steps' structure and messages, device arrays instead of ndarrays


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))


def _same_structure(x, name: str, single: bool, n: int) -> list:
    if single:
        if _is_list(x) or isinstance(x, dict):
            raise ValueError(f"{name} must have the structure of params (one array), got "
                             f"{type(x).__name__}")
        return [x]
    return list(_cpu._list_like_params(x, name, n))


def _address(a) -> int:
    """The first byte of a device array (under the simulator, of its host buffer)."""
    if L.simulated():
        return a.__array_interface__["data"][0]
    return a.device_ctypes_pointer.value or 0


def _tensors(params, grads, state, buffers: tuple[str, ...]):
    """Check an in-place step's device arrays; return one ``(p, g, {buffer: a})`` of flat
    views per non-empty tensor."""
    single = not _is_list(params)
    if not single and not params:
        raise ValueError(f"params must hold at least one array, got an empty "
                         f"{type(params).__name__}")
    ps = [params] if single else list(params)
    n = len(ps)
    gs = _same_structure(grads, "grads", single, n)
    _cpu._check_state_keys(state, buffers)
    bls = {b: _same_structure(state[b], f"state[{b!r}]", single, n) for b in buffers}
    out, written = [], []
    for i in range(n):
        where = "" if single else f"[{i}]"
        p = L.float_array(ps[i], f"params{where}")
        g = L.float_array(gs[i], f"grads{where}")
        _cpu._like(g, f"grads{where}", p, f"params{where}")
        bufs = {}
        for b in buffers:
            a = L.float_array(bls[b][i], f"state[{b!r}]{where}")
            _cpu._like(a, f"state[{b!r}]{where}", p, f"params{where}")
            bufs[b] = L.flat(a)
        if p.size:
            written += [_address(p)] + [_address(a) for a in bufs.values()]
            out.append((L.flat(p), L.flat(g), bufs))
    if len(set(written)) != len(written):
        raise ValueError("params and the state's buffers must be distinct arrays (each is "
                         "updated in place), got the same array twice")
    return out


def _launch(kernel, p, *args) -> None:
    n = L.threads()
    kernel[L.grid(p.size, n), n](p, *args)


def _buffer(bufs: dict, name: str, like):
    return bufs[name] if name in bufs else L.placeholder(like.dtype)


# ---------------------------------------------------------------------------------------------
# the steps


def sgd_(params, grads, state, step, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False) -> None:
    r"""One SGD step in place on the GPU (``reference.optim.sgd``'s update). With
    :math:`\hat g = \pm g + \lambda p`:

    .. math:: b_t = \hat g\ (t = 1), \quad b_t = \mu b_{t-1} + (1 - \tau) \hat g\ (t > 1),
              \quad p_t = p_{t-1} - \eta\,(\hat g + \mu b_t \text{ if nesterov else } b_t)

    (no momentum: :math:`p_t = p_{t-1} - \eta \hat g`, no buffer). At step 1 the buffer's old
    values are not read.
    """
    buffers, (first, lr, mu, damp, wd, nesterov, maximize) = _cpu._sgd_scalars(
        step, lr, momentum, dampening, weight_decay, nesterov, maximize)
    for p, g, bufs in _tensors(params, grads, state, buffers):
        _launch(_sgd_k, p, g, _buffer(bufs, "momentum_buffer", p), first, lr, mu, damp, wd,
                nesterov, maximize)


def adagrad_(params, grads, state, step, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False) -> None:
    r"""One Adagrad step in place on the GPU (``reference.optim.adagrad``'s update):

    .. math:: s_t = s_{t-1} + \hat g^2, \quad
              p_t = p_{t-1} - \frac{\eta}{1 + (t - 1) \delta} \frac{\hat g}{\sqrt{s_t} + \epsilon}
    """
    clr, eps, wd, maximize = _cpu._adagrad_scalars(step, lr, lr_decay, weight_decay, eps,
                                                   maximize)
    for p, g, bufs in _tensors(params, grads, state, ("sum",)):
        _launch(_adagrad_k, p, g, bufs["sum"], clr, eps, wd, maximize)


def rmsprop_(params, grads, state, step, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
             momentum=0.0, centered=False, maximize=False) -> None:
    r"""One RMSprop step in place on the GPU (``reference.optim.rmsprop``'s update):

    .. math:: v_t = \alpha v_{t-1} + (1 - \alpha) \hat g^2, \quad
              \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) \hat g, \quad
              d = \sqrt{v_t - [\text{centered}]\, \bar g_t^2} + \epsilon

    .. math:: b_t = \mu b_{t-1} + \hat g / d, \quad p_t = p_{t-1} - \eta b_t
              \quad (\mu = 0:\ p_t = p_{t-1} - \eta \hat g / d)
    """
    buffers, scal = _cpu._rms_scalars(step, lr, alpha, eps, weight_decay, momentum, centered,
                                      maximize)
    for p, g, bufs in _tensors(params, grads, state, buffers):
        _launch(_rmsprop_k, p, g, bufs["square_avg"], _buffer(bufs, "momentum_buffer", p),
                _buffer(bufs, "grad_avg", p), *scal)


def adam_(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=0.0, amsgrad=False, maximize=False) -> None:
    r"""One Adam step in place on the GPU (``reference.optim.adam``'s update):

    .. math:: m_t = \beta_1 m_{t-1} + (1 - \beta_1) \hat g, \quad
              v_t = \beta_2 v_{t-1} + (1 - \beta_2) \hat g^2, \quad
              \hat v = \max(\hat v_{t-1}, v_t) \text{ (amsgrad) else } v_t

    .. math:: p_t = p_{t-1} - \frac{\eta}{1 - \beta_1^t}
              \frac{m_t}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}
    """
    _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize, False)


def adamw_(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=1e-2, amsgrad=False, maximize=False) -> None:
    r"""One AdamW step in place on the GPU (``reference.optim.adamw``'s update): the
    parameter is first scaled, :math:`p' = (1 - \eta \lambda) p_{t-1}`, then :func:`adam_`'s
    update with :math:`\hat g = \pm g` (decoupled decay)."""
    _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize, True)


def _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize,
           decoupled: bool) -> None:
    buffers, scal = _cpu._adam_scalars(step, lr, betas, eps, weight_decay, amsgrad, maximize,
                                       decoupled)
    for p, g, bufs in _tensors(params, grads, state, buffers):
        _launch(_adam_k, p, g, bufs["exp_avg"], bufs["exp_avg_sq"],
                _buffer(bufs, "max_exp_avg_sq", p), *scal)


_NOTE = """
    Same arguments, checks and semantics as the CPU in-place step; every tensor is a CUDA
    device array (``params`` and the state's buffers C-contiguous, of their parameter's dtype
    and shape, each given once; ``grads`` C-contiguous and only read). Returns None."""

for _f in (sgd_, adagrad_, rmsprop_, adam_, adamw_):
    _f.__doc__ += "\n" + _NOTE
