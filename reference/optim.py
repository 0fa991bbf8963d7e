r"""Optimizer steps as pure, differentiable functions: SGD, Adagrad, RMSprop, Adam, AdamW.

Convention (the same for every optimizer)::

    state = adam_init_state(params)                        # explicit state, one entry per buffer
    (new_params, new_state), ctx = adam(params, grads, state, step, lr=1e-3)
    d_params, d_grads, d_state = adam_backward(ctx, (d_new_params, d_new_state))

- ``params`` and ``grads`` are one float32/float64 array (any shape, 0-d included) or a list of
  them; ``new_params``, ``d_params`` and ``d_grads`` have the same structure, shapes and dtypes.
- ``state`` is a dict ``buffer name -> array or list of arrays`` shaped like ``params``, with
  torch's buffer names (``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
  ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``). ``*_init_state`` builds the first one; the
  keys a call needs depend on its flags (``momentum > 0``, ``centered``, ``amsgrad``).
- ``step`` is the 1-based number of this step (torch's ``state['step']`` after its increment).
- Nothing is mutated: every output is a new array. As in torch, a step is differentiable only
  when asked (``differentiable=True``): it then keeps private copies of its inputs in ``ctx``
  (the caller may overwrite its arrays before backward); otherwise ``ctx`` is None and the
  step moves no more memory than it must.
- Backward is the vector-Jacobian product of ``(new_params, new_state)`` with respect to
  ``(params, grads, state)``. ``grad_out`` mirrors the output; ``None`` in place of
  ``d_new_state`` or of one of its buffers means a zero upstream gradient. Hyper-parameters and
  ``step`` are constants.

Every element is computed in float64 and rounded once to the input's dtype (torch's float32
steps round after each operation). The in-place steps (``adam_`` ...) do the same by default;
with ``opmath="dtype"`` they step float32 tensors in float32 arithmetic instead, as torch's
fused CPU step does (twice the vector lanes; see their docstrings for the error bound).
Hyper-parameters are checked as ``torch.optim`` checks them; bad input raises
``TypeError``/``ValueError`` naming the argument, e.g. ``state['exp_avg'][3]``.

Conventions taken from torch where textbooks differ (each is restated where it applies):

- ``maximize`` negates the gradient first; L2 ``weight_decay`` is then added to it (coupled);
  AdamW instead scales the parameter by ``1 - lr * weight_decay`` before the Adam update.
- SGD's first momentum buffer is the gradient itself (no dampening on step 1); Nesterov moves
  along ``g + momentum * b``. Torch detaches that first buffer (``grad.detach().clone()``), so
  its ``differentiable=True`` step-1 has no derivative through it; ours gives the true one
  (``d b_1 / d g = 1``), which the float64 finite-difference gradcheck confirms.
- Adagrad's learning rate is ``lr / (1 + (step - 1) lr_decay)`` and its eps is added after the
  square root; RMSprop's eps is outside the root too, its centred variance is
  ``v - g_avg^2`` and its first momentum buffer starts from zero.
- Adam's bias corrections divide the step size and the root of the second moment; AMSGrad
  keeps the maximum of the raw (uncorrected) second moment. At a tie of ``max`` the gradient
  is split half and half (torch's ``maximum``); at a zero second moment the derivative of the
  square root is infinite and the gradient is inf or NaN exactly where torch's is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import carray, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from reference import _validate as v
from reference._jit import PARALLEL_MIN, inline, kernel

__all__ = [
    "sgd", "sgd_backward", "sgd_init_state",
    "adagrad", "adagrad_backward", "adagrad_init_state",
    "rmsprop", "rmsprop_backward", "rmsprop_init_state",
    "adam", "adam_backward", "adam_init_state", "adamw", "adamw_backward",
    "sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_",
]


class StepCtx(NamedTuple):
    """What a step keeps for backward: the inputs (by reference) and the resolved scalars."""

    kind: str
    single: bool
    params: list[np.ndarray]
    grads: list[np.ndarray]
    state: dict[str, list[np.ndarray]]
    scalars: tuple


# ---------------------------------------------------------------------------------------------
# validation and structure


def _tensor_list(x, name: str) -> tuple[list[np.ndarray], bool]:
    if isinstance(x, (np.ndarray, np.generic)):
        return [v.float_array(x, name)], True
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a numpy.ndarray or a list of them, got "
                        f"{type(x).__name__}")
    if not x:
        raise ValueError(f"{name} must hold at least one array, got an empty {type(x).__name__}")
    return [v.float_array(a, f"{name}[{i}]") for i, a in enumerate(x)], False


def _inputs(params, grads, state, buffers: tuple[str, ...]):
    """Check params, grads and the state's buffers; all flat, C-contiguous, one dtype each."""
    ps, single = _tensor_list(params, "params")
    gs, g_single = _tensor_list(grads, "grads")
    if g_single != single or len(gs) != len(ps):
        raise ValueError(f"grads must have the structure of params ({_structure(ps, single)}), "
                         f"got {_structure(gs, g_single)}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of buffers {list(buffers)}, got "
                        f"{type(state).__name__}")
    missing = [b for b in buffers if b not in state]
    extra = [k for k in state if k not in buffers]
    if missing or extra:
        raise ValueError(f"state must have exactly the buffers {list(buffers)} for these "
                         f"hyper-parameters, got {list(state)}")
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        where = "" if single else f"[{i}]"
        _like(g, f"grads{where}", p, f"params{where}")
    st = {}
    for b in buffers:
        arrs, s_single = _tensor_list(state[b], f"state[{b!r}]")
        if s_single != single or len(arrs) != len(ps):
            raise ValueError(f"state[{b!r}] must have the structure of params "
                             f"({_structure(ps, single)}), got {_structure(arrs, s_single)}")
        for i, (a, p) in enumerate(zip(arrs, ps, strict=True)):
            where = "" if single else f"[{i}]"
            _like(a, f"state[{b!r}]{where}", p, f"params{where}")
        st[b] = arrs
    return ps, gs, st, single


def _like(a: np.ndarray, a_name: str, p: np.ndarray, p_name: str) -> None:
    if a.dtype != p.dtype:
        raise TypeError(f"{a_name} must have the dtype of {p_name} ({p.dtype}), got {a.dtype}")
    if a.shape != p.shape:
        raise ValueError(f"{a_name} must have the shape of {p_name} {p.shape}, got {a.shape}")


def _structure(arrs, single: bool) -> str:
    return "one array" if single else f"a list of {len(arrs)} arrays"


def _step(step) -> int:
    return v.integer(step, "step", lo=1, hi=2**31 - 1)


def _ctx(kind, differentiable, single, ps, gs, st, scal):
    if not v.boolean(differentiable, "differentiable"):
        return None
    copy = lambda arrs: [a.copy() for a in arrs]  # noqa: E731
    return StepCtx(kind, single, copy(ps), copy(gs), {b: copy(a) for b, a in st.items()}, scal)


def _check_ctx(ctx, kinds: tuple[str, ...]) -> None:
    if ctx is None:
        raise ValueError(f"ctx is None: call {kinds[0]}(..., differentiable=True) to get a ctx "
                         f"for backward")
    if not isinstance(ctx, StepCtx) or ctx.kind not in kinds:
        got = ctx.kind if isinstance(ctx, StepCtx) else type(ctx).__name__
        raise TypeError(f"ctx must be the ctx returned by {' or '.join(kinds)}, got {got}")


def _out(arrs: list[np.ndarray], single: bool):
    return arrs[0] if single else list(arrs)


def _empty_like(ps):
    return [np.empty_like(p) for p in ps]


_NONE = np.empty(0)  # stands in for a buffer the flags leave out (never indexed)


def _none(dtype):
    return _NONE.astype(dtype, copy=False)


def _flat(a):
    return a.reshape(-1)


def _upstream(ctx: StepCtx, grad_out, buffers: tuple[str, ...]):
    """Split grad_out = (d_new_params, d_new_state) into per-tensor lists; None -> zeros."""
    if not isinstance(grad_out, tuple) or len(grad_out) != 2:
        raise TypeError("grad_out must be a tuple (d_new_params, d_new_state), got "
                        f"{type(grad_out).__name__}")
    d_params, d_state = grad_out
    dps = _upstream_list(d_params, "grad_out[0]", ctx)
    if d_state is None:
        d_state = {}
    if not isinstance(d_state, dict):
        raise TypeError(f"grad_out[1] must be a dict of the new state's buffers or None, got "
                        f"{type(d_state).__name__}")
    extra = [k for k in d_state if k not in buffers]
    if extra:
        raise ValueError(f"grad_out[1] has buffers {extra} the step's state does not have "
                         f"({list(buffers)})")
    dst = {}
    for b in buffers:
        got = d_state.get(b)
        dst[b] = (None if got is None else _upstream_list(got, f"grad_out[1][{b!r}]", ctx))
    return dps, dst


def _upstream_list(x, name: str, ctx: StepCtx):
    arrs, single = _tensor_list(x, name)
    if single != ctx.single or len(arrs) != len(ctx.params):
        raise ValueError(f"{name} must have the structure of params "
                         f"({_structure(ctx.params, ctx.single)}), got {_structure(arrs, single)}")
    for i, (a, p) in enumerate(zip(arrs, ctx.params, strict=True)):
        where = "" if ctx.single else f"[{i}]"
        _like(a, f"{name}{where}", p, f"params{where}")
    return arrs


def _or_zeros(lst, i, like):
    return np.zeros_like(like) if lst is None else lst[i]


def _hyper(value, name: str, *, lo: float = 0.0, hi: float = np.inf, hi_open: bool = False):
    return v.real(value, name, lo=lo, hi=hi, hi_open=hi_open)


def _betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (v.real(betas[0], "betas[0]", lo=0.0, hi=1.0, hi_open=True),
            v.real(betas[1], "betas[1]", lo=0.0, hi=1.0, hi_open=True))


# ---------------------------------------------------------------------------------------------
# SGD


@inline()
def _sgd1(p, g, b, first, lr, mu, damp, wd, nesterov, maximize):
    gi = -np.float64(g) if maximize else np.float64(g)
    pi = np.float64(p)
    if wd != 0.0:                           # torch adds no 0 * p (p may be inf)
        gi += wd * pi
    bn = 0.0
    u = gi
    if mu != 0.0:
        bn = gi if first else mu * np.float64(b) + (1.0 - damp) * gi
        u = gi + mu * bn if nesterov else bn
    return pi - lr * u, bn


@kernel(parallel=True)
def _sgd_fwd(p, g, b, p1, b1, first, lr, mu, damp, wd, nesterov, maximize):
    n = p.size
    has_b = b1.size > 0
    if n < PARALLEL_MIN:
        for i in range(n):
            p1[i], bn = _sgd1(p[i], g[i], b[i] if has_b else 0.0, first, lr, mu, damp, wd,
                              nesterov, maximize)
            if has_b:
                b1[i] = bn
    else:
        for i in prange(n):
            p1[i], bn = _sgd1(p[i], g[i], b[i] if has_b else 0.0, first, lr, mu, damp, wd,
                              nesterov, maximize)
            if has_b:
                b1[i] = bn


@inline()
def _sgd_vjp1(dp1, db1, first, lr, mu, damp, wd, nesterov, maximize):
    du = -lr * np.float64(dp1)
    db_old = 0.0
    dgi = du
    if mu != 0.0:
        dbt = np.float64(db1) + (mu * du if nesterov else du)
        dgi = du if nesterov else 0.0
        if first:
            dgi += dbt
        else:
            dgi += (1.0 - damp) * dbt
            db_old = mu * dbt
    dp = np.float64(dp1) + wd * dgi if wd != 0.0 else np.float64(dp1)
    return dp, (-dgi if maximize else dgi), db_old


@kernel(parallel=True)
def _sgd_bwd(dp1, db1, dp, dg, db, first, lr, mu, damp, wd, nesterov, maximize):
    n = dp1.size
    has_b = db.size > 0
    if n < PARALLEL_MIN:
        for i in range(n):
            dp[i], dg[i], dbo = _sgd_vjp1(dp1[i], db1[i] if has_b else 0.0, first, lr, mu, damp,
                                          wd, nesterov, maximize)
            if has_b:
                db[i] = dbo
    else:
        for i in prange(n):
            dp[i], dg[i], dbo = _sgd_vjp1(dp1[i], db1[i] if has_b else 0.0, first, lr, mu, damp,
                                          wd, nesterov, maximize)
            if has_b:
                db[i] = dbo


def sgd_init_state(params, *, momentum: float = 0.0) -> dict:
    """SGD's state: ``{'momentum_buffer': zeros}`` when ``momentum > 0``, else ``{}``.
    (Step 1 ignores the buffer's values: its new buffer is the gradient.)"""
    ps, single = _tensor_list(params, "params")
    mu = _hyper(momentum, "momentum")
    return {"momentum_buffer": _out([np.zeros_like(p) for p in ps], single)} if mu else {}


def _sgd_scalars(step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """Checked hyper-parameters -> (the state's buffers, the kernels' scalars)."""
    lr = _hyper(lr, "lr")
    mu = _hyper(momentum, "momentum")
    damp = v.real(dampening, "dampening")
    wd = _hyper(weight_decay, "weight_decay")
    nesterov, maximize = v.boolean(nesterov, "nesterov"), v.boolean(maximize, "maximize")
    if nesterov and (mu <= 0 or damp != 0):
        raise ValueError(f"nesterov requires momentum > 0 and dampening = 0, got momentum={mu}, "
                         f"dampening={damp}")
    t = _step(step)
    return ("momentum_buffer",) if mu else (), (t == 1, lr, mu, damp, wd, nesterov, maximize)


def sgd(params, grads, state, step, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False, differentiable=False):
    r"""One SGD step (torch.optim.SGD). With :math:`\hat g = \pm g + \lambda p`:

    .. math:: b_t = \begin{cases} \hat g & t = 1 \\ \mu b_{t-1} + (1 - \tau) \hat g & t > 1
              \end{cases}, \quad u = \begin{cases} \hat g + \mu b_t & \text{nesterov} \\ b_t
              \end{cases}, \quad p_t = p_{t-1} - \eta u

    (``momentum`` :math:`\mu = 0`: :math:`u = \hat g` and no buffer). Step 1 takes the gradient
    itself as the buffer, without dampening (torch). State: ``momentum_buffer`` when
    ``momentum > 0``. Returns ``((new_params, new_state), ctx)``.
    """
    buffers, scal = _sgd_scalars(step, lr, momentum, dampening, weight_decay, nesterov,
                                 maximize)
    mu = bool(buffers)
    ps, gs, st, single = _inputs(params, grads, state, buffers)
    p1s, b1s = _empty_like(ps), (_empty_like(ps) if mu else None)
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        b = st["momentum_buffer"][i] if mu else _none(p.dtype)
        b1 = b1s[i] if mu else _none(p.dtype)
        _sgd_fwd(_flat(p), _flat(g), _flat(b), _flat(p1s[i]), _flat(b1), *scal)
    new_state = {"momentum_buffer": _out(b1s, single)} if mu else {}
    return (_out(p1s, single), new_state), _ctx("sgd", differentiable, single, ps, gs, st, scal)


def sgd_backward(ctx: StepCtx, grad_out):
    r"""VJP of :func:`sgd`. With :math:`\bar u = -\eta \bar p_t` and
    :math:`\bar b = \bar b_t + (\mu \bar u` if nesterov else :math:`\bar u)`:

    .. math:: \bar{\hat g} = [\text{nesterov}] \bar u + \begin{cases} \bar b & t = 1 \\
              (1 - \tau) \bar b & t > 1 \end{cases}, \quad \bar b_{t-1} = [t > 1] \mu \bar b,
              \quad \bar p_{t-1} = \bar p_t + \lambda \bar{\hat g}, \quad \bar g = \pm \bar{\hat g}

    (no momentum: :math:`\bar{\hat g} = \bar u`). Returns ``(d_params, d_grads, d_state)``.
    """
    _check_ctx(ctx, ("sgd",))
    buffers = tuple(ctx.state)
    dps, dst = _upstream(ctx, grad_out, buffers)
    mu = bool(buffers)
    d_p, d_g, d_b = _empty_like(ctx.params), _empty_like(ctx.params), _empty_like(ctx.params)
    for i, p in enumerate(ctx.params):
        db1 = _or_zeros(dst.get("momentum_buffer"), i, p) if mu else _none(p.dtype)
        db = d_b[i] if mu else _none(p.dtype)
        _sgd_bwd(_flat(dps[i]), _flat(db1), _flat(d_p[i]), _flat(d_g[i]), _flat(db), *ctx.scalars)
    d_state = {"momentum_buffer": _out(d_b, ctx.single)} if mu else {}
    return _out(d_p, ctx.single), _out(d_g, ctx.single), d_state


# ---------------------------------------------------------------------------------------------
# Adagrad


@inline()
def _adagrad1(p, g, s, clr, eps, wd, maximize):
    gi = -np.float64(g) if maximize else np.float64(g)
    pi = np.float64(p)
    if wd != 0.0:                           # torch adds no 0 * p (p may be inf)
        gi += wd * pi
    sn = np.float64(s) + gi * gi
    return pi - clr * (gi / (np.sqrt(sn) + eps)), sn


@kernel(parallel=True)
def _adagrad_fwd(p, g, s, p1, s1, clr, eps, wd, maximize):
    n = p.size
    if n < PARALLEL_MIN:
        for i in range(n):
            p1[i], s1[i] = _adagrad1(p[i], g[i], s[i], clr, eps, wd, maximize)
    else:
        for i in prange(n):
            p1[i], s1[i] = _adagrad1(p[i], g[i], s[i], clr, eps, wd, maximize)


@inline()
def _adagrad_vjp1(p, g, s, dp1, ds1, clr, eps, wd, maximize):
    gi = -np.float64(g) if maximize else np.float64(g)
    if wd != 0.0:
        gi += wd * np.float64(p)
    sn = np.float64(s) + gi * gi
    r = np.sqrt(sn)
    den = r + eps
    dpn = np.float64(dp1)
    q = clr * dpn / den
    d_den = q * (gi / den)  # (gi / den) / den as torch's division backward: clr dpn gi first
    # would underflow for a subnormal gi (0, then 0 / 0 = NaN below, where torch has +-inf)
    dst = np.float64(ds1) + d_den / (2.0 * r)  # sqrt'(0) = inf: inf or NaN, as torch's
    dgi = -q + 2.0 * gi * dst
    return dpn + wd * dgi if wd != 0.0 else dpn, (-dgi if maximize else dgi), dst


@kernel(parallel=True)
def _adagrad_bwd(p, g, s, dp1, ds1, dp, dg, ds, clr, eps, wd, maximize):
    n = p.size
    if n < PARALLEL_MIN:
        for i in range(n):
            dp[i], dg[i], ds[i] = _adagrad_vjp1(p[i], g[i], s[i], dp1[i], ds1[i], clr, eps, wd,
                                                maximize)
    else:
        for i in prange(n):
            dp[i], dg[i], ds[i] = _adagrad_vjp1(p[i], g[i], s[i], dp1[i], ds1[i], clr, eps, wd,
                                                maximize)


def adagrad_init_state(params, *, initial_accumulator_value: float = 0.0) -> dict:
    """Adagrad's state: ``{'sum': initial_accumulator_value everywhere}``."""
    ps, single = _tensor_list(params, "params")
    a0 = _hyper(initial_accumulator_value, "initial_accumulator_value")
    return {"sum": _out([np.full_like(p, a0) for p in ps], single)}


def _adagrad_scalars(step, lr, lr_decay, weight_decay, eps, maximize):
    """Checked hyper-parameters -> the kernels' scalars (the effective lr first)."""
    lr, lr_decay = _hyper(lr, "lr"), _hyper(lr_decay, "lr_decay")
    wd, eps = _hyper(weight_decay, "weight_decay"), _hyper(eps, "eps")
    maximize = v.boolean(maximize, "maximize")
    t = _step(step)
    return lr / (1.0 + (t - 1) * lr_decay), eps, wd, maximize


def adagrad(params, grads, state, step, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, differentiable=False):
    r"""One Adagrad step (torch.optim.Adagrad). With :math:`\hat g = \pm g + \lambda p`:

    .. math:: s_t = s_{t-1} + \hat g^2, \quad
              p_t = p_{t-1} - \frac{\eta}{1 + (t - 1) \delta} \frac{\hat g}{\sqrt{s_t} + \epsilon}

    (``lr_decay`` :math:`\delta`; eps after the root, as torch). State: ``sum``, which starts at
    ``initial_accumulator_value`` (see :func:`adagrad_init_state`).
    """
    scal = _adagrad_scalars(step, lr, lr_decay, weight_decay, eps, maximize)
    ps, gs, st, single = _inputs(params, grads, state, ("sum",))
    p1s, s1s = _empty_like(ps), _empty_like(ps)
    for i, (p, g, s) in enumerate(zip(ps, gs, st["sum"], strict=True)):
        _adagrad_fwd(_flat(p), _flat(g), _flat(s), _flat(p1s[i]), _flat(s1s[i]), *scal)
    return ((_out(p1s, single), {"sum": _out(s1s, single)}),
            _ctx("adagrad", differentiable, single, ps, gs, st, scal))


def adagrad_backward(ctx: StepCtx, grad_out):
    r"""VJP of :func:`adagrad`, with :math:`c = \eta / (1 + (t-1)\delta)`, :math:`d = \sqrt{s_t}
    + \epsilon`:

    .. math:: \bar s_{t-1} = \bar s_t + \frac{c \bar p_t \hat g}{2 d^2 \sqrt{s_t}}, \quad
              \bar{\hat g} = -\frac{c \bar p_t}{d} + 2 \hat g \bar s_{t-1}, \quad
              \bar p_{t-1} = \bar p_t + \lambda \bar{\hat g}, \quad \bar g = \pm \bar{\hat g}
    """
    _check_ctx(ctx, ("adagrad",))
    dps, dst = _upstream(ctx, grad_out, ("sum",))
    d_p, d_g, d_s = (_empty_like(ctx.params) for _ in range(3))
    for i, (p, g, s) in enumerate(zip(ctx.params, ctx.grads, ctx.state["sum"], strict=True)):
        _adagrad_bwd(_flat(p), _flat(g), _flat(s), _flat(dps[i]),
                     _flat(_or_zeros(dst["sum"], i, p)), _flat(d_p[i]), _flat(d_g[i]),
                     _flat(d_s[i]), *ctx.scalars)
    return _out(d_p, ctx.single), _out(d_g, ctx.single), {"sum": _out(d_s, ctx.single)}


# ---------------------------------------------------------------------------------------------
# RMSprop


@inline()
def _rms1(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered, maximize):
    """New (param, square_avg, momentum_buffer, grad_avg) and the pieces backward reuses."""
    gi = -np.float64(g) if maximize else np.float64(g)
    pi = np.float64(p)
    if wd != 0.0:                           # torch adds no 0 * p (p may be inf)
        gi += wd * pi
    sqn = alpha * np.float64(sq) + (1.0 - alpha) * gi * gi
    gan = alpha * np.float64(ga) + (1.0 - alpha) * gi if centered else 0.0
    var = sqn - gan * gan if centered else sqn
    r = np.sqrt(var)
    den = r + eps
    bn = mu * np.float64(buf) + gi / den if mu > 0.0 else 0.0
    pn = pi - lr * bn if mu > 0.0 else pi - lr * (gi / den)
    return pn, sqn, bn, gan, gi, r, den


@kernel(parallel=True)
def _rms_fwd(p, g, sq, buf, ga, p1, sq1, buf1, ga1, lr, alpha, eps, wd, mu, centered, maximize):
    n = p.size
    has_b, has_a = buf.size > 0, ga.size > 0
    if n < PARALLEL_MIN:
        for i in range(n):
            p1[i], sq1[i], bn, gan, _, _, _ = _rms1(
                p[i], g[i], sq[i], buf[i] if has_b else 0.0, ga[i] if has_a else 0.0,
                lr, alpha, eps, wd, mu, centered, maximize)
            if has_b:
                buf1[i] = bn
            if has_a:
                ga1[i] = gan
    else:
        for i in prange(n):
            p1[i], sq1[i], bn, gan, _, _, _ = _rms1(
                p[i], g[i], sq[i], buf[i] if has_b else 0.0, ga[i] if has_a else 0.0,
                lr, alpha, eps, wd, mu, centered, maximize)
            if has_b:
                buf1[i] = bn
            if has_a:
                ga1[i] = gan


@inline()
def _rms_vjp1(p, g, sq, buf, ga, dp1, dsq1, db1, dga1, lr, alpha, eps, wd, mu, centered,
              maximize):
    _, _, _, gan, gi, r, den = _rms1(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered,
                                     maximize)
    dpn = np.float64(dp1)
    if mu > 0.0:
        dbt = np.float64(db1) - lr * dpn    # d new buffer
        dgi = dbt / den
        db_old = mu * dbt
    else:
        dgi = -lr * dpn / den
        db_old = 0.0
    d_den = -dgi * (gi / den)               # the order of _adagrad_vjp1's (a subnormal gi)
    dvar = d_den / (2.0 * r)                # sqrt'(0) = inf: inf or NaN, as torch's
    dsqt = np.float64(dsq1) + dvar
    dgi += 2.0 * (1.0 - alpha) * gi * dsqt
    dga_old = 0.0
    if centered:
        dgat = np.float64(dga1) - 2.0 * gan * dvar
        dgi += (1.0 - alpha) * dgat
        dga_old = alpha * dgat
    dp = dpn + wd * dgi if wd != 0.0 else dpn
    return dp, (-dgi if maximize else dgi), alpha * dsqt, db_old, dga_old


@kernel(parallel=True)
def _rms_bwd(p, g, sq, buf, ga, dp1, dsq1, db1, dga1, dp, dg, dsq, db, dga, lr, alpha, eps, wd,
             mu, centered, maximize):
    n = p.size
    has_b, has_a = buf.size > 0, ga.size > 0
    if n < PARALLEL_MIN:
        for i in range(n):
            dp[i], dg[i], dsq[i], dbo, dgao = _rms_vjp1(
                p[i], g[i], sq[i], buf[i] if has_b else 0.0, ga[i] if has_a else 0.0, dp1[i],
                dsq1[i], db1[i] if has_b else 0.0, dga1[i] if has_a else 0.0,
                lr, alpha, eps, wd, mu, centered, maximize)
            if has_b:
                db[i] = dbo
            if has_a:
                dga[i] = dgao
    else:
        for i in prange(n):
            dp[i], dg[i], dsq[i], dbo, dgao = _rms_vjp1(
                p[i], g[i], sq[i], buf[i] if has_b else 0.0, ga[i] if has_a else 0.0, dp1[i],
                dsq1[i], db1[i] if has_b else 0.0, dga1[i] if has_a else 0.0,
                lr, alpha, eps, wd, mu, centered, maximize)
            if has_b:
                db[i] = dbo
            if has_a:
                dga[i] = dgao


def _rms_buffers(momentum: float, centered: bool) -> tuple[str, ...]:
    return (("square_avg",) + (("momentum_buffer",) if momentum > 0 else ())
            + (("grad_avg",) if centered else ()))


def rmsprop_init_state(params, *, momentum: float = 0.0, centered: bool = False) -> dict:
    """RMSprop's state, all zeros: ``square_avg``, plus ``momentum_buffer`` when
    ``momentum > 0`` and ``grad_avg`` when ``centered``."""
    ps, single = _tensor_list(params, "params")
    bufs = _rms_buffers(_hyper(momentum, "momentum"), v.boolean(centered, "centered"))
    return {b: _out([np.zeros_like(p) for p in ps], single) for b in bufs}


def _rms_scalars(step, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    """Checked hyper-parameters -> (the state's buffers, the kernels' scalars)."""
    lr, alpha = _hyper(lr, "lr"), _hyper(alpha, "alpha")
    eps, wd = _hyper(eps, "eps"), _hyper(weight_decay, "weight_decay")
    mu = _hyper(momentum, "momentum")
    centered, maximize = v.boolean(centered, "centered"), v.boolean(maximize, "maximize")
    _step(step)
    return _rms_buffers(mu, centered), (lr, alpha, eps, wd, mu, centered, maximize)


def rmsprop(params, grads, state, step, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
            momentum=0.0, centered=False, maximize=False, differentiable=False):
    r"""One RMSprop step (torch.optim.RMSprop). With :math:`\hat g = \pm g + \lambda p`:

    .. math:: v_t = \alpha v_{t-1} + (1 - \alpha) \hat g^2, \quad
              \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) \hat g, \quad
              d = \sqrt{v_t - [\text{centered}]\, \bar g_t^2} + \epsilon

    .. math:: b_t = \mu b_{t-1} + \hat g / d, \quad p_t = p_{t-1} - \eta b_t
              \quad (\mu = 0:\ p_t = p_{t-1} - \eta \hat g / d)

    eps outside the root and the centred variance :math:`v - \bar g^2`, as torch; the buffers
    start at zero. ``step`` does not enter the update (accepted for a uniform call).
    """
    buffers, scal = _rms_scalars(step, lr, alpha, eps, weight_decay, momentum, centered,
                                 maximize)
    ps, gs, st, single = _inputs(params, grads, state, buffers)
    outs = {b: _empty_like(ps) for b in buffers}
    p1s = _empty_like(ps)
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        arrs = [st[b][i] if b in st else _none(p.dtype)
                for b in ("square_avg", "momentum_buffer", "grad_avg")]
        new = [outs[b][i] if b in outs else _none(p.dtype)
               for b in ("square_avg", "momentum_buffer", "grad_avg")]
        _rms_fwd(_flat(p), _flat(g), *map(_flat, arrs), _flat(p1s[i]), *map(_flat, new), *scal)
    return ((_out(p1s, single), {b: _out(outs[b], single) for b in buffers}),
            _ctx("rmsprop", differentiable, single, ps, gs, st, scal))


def rmsprop_backward(ctx: StepCtx, grad_out):
    r"""VJP of :func:`rmsprop`. With :math:`\bar b = \bar b_t - \eta \bar p_t` (momentum) and
    :math:`\bar d = -\bar b \hat g / d^2`, :math:`\bar{\hat g} = \bar b / d` (no momentum:
    :math:`\bar b := -\eta \bar p_t`), :math:`\bar\sigma = \bar d / (2 \sqrt{\cdot})`:

    .. math:: \bar v = \bar v_t + \bar\sigma, \quad \bar a = \bar{\bar g}_t - 2 \bar g_t
              \bar\sigma, \quad \bar{\hat g} \mathrel{+}= 2 (1 - \alpha) \hat g \bar v +
              (1 - \alpha) \bar a

    .. math:: \bar v_{t-1} = \alpha \bar v, \quad \bar{\bar g}_{t-1} = \alpha \bar a, \quad
              \bar b_{t-1} = \mu \bar b, \quad \bar p_{t-1} = \bar p_t + \lambda \bar{\hat g},
              \quad \bar g = \pm \bar{\hat g}
    """
    _check_ctx(ctx, ("rmsprop",))
    return _buffered_backward(ctx, grad_out, ("square_avg", "momentum_buffer", "grad_avg"),
                              _rms_bwd)


# ---------------------------------------------------------------------------------------------
# Adam and AdamW


@inline()
def _adam1(p, g, m, vv, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize, c, k):
    """New (param, exp_avg, exp_avg_sq, max_exp_avg_sq) and pieces backward reuses;
    ``c = lr / (1 - b1^t)``, ``k = sqrt(1 - b2^t)``."""
    gi = -np.float64(g) if maximize else np.float64(g)
    pi = np.float64(p)
    if decoupled:
        pi *= 1.0 - lr * wd
    elif wd != 0.0:                             # torch adds no 0 * p (p may be inf)
        gi += wd * pi
    mn = b1 * np.float64(m) + (1.0 - b1) * gi
    vn = b2 * np.float64(vv) + (1.0 - b2) * gi * gi
    vm = max(np.float64(vmax), vn) if amsgrad else vn
    r = np.sqrt(vm)
    den = r / k + eps
    return pi - c * (mn / den), mn, vn, vm, gi, r, den


@kernel(parallel=True)
def _adam_fwd(p, g, m, vv, vmax, p1, m1, v1, vmax1, lr, b1, b2, eps, wd, decoupled, amsgrad,
              maximize, c, k):
    n = p.size
    if n < PARALLEL_MIN:
        for i in range(n):
            p1[i], m1[i], v1[i], vm, _, _, _ = _adam1(
                p[i], g[i], m[i], vv[i], vmax[i] if amsgrad else 0.0, lr, b1, b2, eps, wd,
                decoupled, amsgrad, maximize, c, k)
            if amsgrad:
                vmax1[i] = vm
    else:
        for i in prange(n):
            p1[i], m1[i], v1[i], vm, _, _, _ = _adam1(
                p[i], g[i], m[i], vv[i], vmax[i] if amsgrad else 0.0, lr, b1, b2, eps, wd,
                decoupled, amsgrad, maximize, c, k)
            if amsgrad:
                vmax1[i] = vm


@inline()
def _adam_vjp1(p, g, m, vv, vmax, dp1, dm1, dv1, dvm1, lr, b1, b2, eps, wd, decoupled, amsgrad,
               maximize, c, k):
    _, mn, vn, vm, gi, r, den = _adam1(p, g, m, vv, vmax, lr, b1, b2, eps, wd, decoupled,
                                       amsgrad, maximize, c, k)
    dpn = np.float64(dp1)
    q = c * dpn / den
    dmt = np.float64(dm1) - q
    d_den = q * (mn / den)                  # the order of _adagrad_vjp1's (a subnormal mn)
    dr = d_den / k / (2.0 * r)              # sqrt'(0) = inf: inf or NaN, as torch's
    dvt = np.float64(dv1)
    dvmax_old = 0.0
    if amsgrad:                             # torch.maximum: a tie splits the gradient
        dvmt = np.float64(dvm1) + dr
        old = np.float64(vmax)
        if old > vn:
            dvmax_old = dvmt
        elif old < vn:
            dvt += dvmt
        else:
            dvmax_old = 0.5 * dvmt
            dvt += 0.5 * dvmt
    else:
        dvt += dr
    dgi = (1.0 - b1) * dmt + 2.0 * (1.0 - b2) * gi * dvt
    if decoupled:
        dpo = dpn * (1.0 - lr * wd)
    else:
        dpo = dpn + wd * dgi if wd != 0.0 else dpn
    return dpo, (-dgi if maximize else dgi), b1 * dmt, b2 * dvt, dvmax_old


@kernel(parallel=True)
def _adam_bwd(p, g, m, vv, vmax, dp1, dm1, dv1, dvm1, dp, dg, dm, dv, dvm, lr, b1, b2, eps, wd,
              decoupled, amsgrad, maximize, c, k):
    n = p.size
    if n < PARALLEL_MIN:
        for i in range(n):
            dp[i], dg[i], dm[i], dv[i], dvmo = _adam_vjp1(
                p[i], g[i], m[i], vv[i], vmax[i] if amsgrad else 0.0, dp1[i], dm1[i], dv1[i],
                dvm1[i] if amsgrad else 0.0, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize,
                c, k)
            if amsgrad:
                dvm[i] = dvmo
    else:
        for i in prange(n):
            dp[i], dg[i], dm[i], dv[i], dvmo = _adam_vjp1(
                p[i], g[i], m[i], vv[i], vmax[i] if amsgrad else 0.0, dp1[i], dm1[i], dv1[i],
                dvm1[i] if amsgrad else 0.0, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize,
                c, k)
            if amsgrad:
                dvm[i] = dvmo


_ADAM = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def adam_init_state(params, *, amsgrad: bool = False) -> dict:
    """Adam's (and AdamW's) state, all zeros: ``exp_avg``, ``exp_avg_sq`` and, with
    ``amsgrad``, ``max_exp_avg_sq``."""
    ps, single = _tensor_list(params, "params")
    n = 3 if v.boolean(amsgrad, "amsgrad") else 2
    return {b: _out([np.zeros_like(p) for p in ps], single) for b in _ADAM[:n]}


def _adam_scalars(step, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled: bool):
    """Checked hyper-parameters -> (the state's buffers, the kernels' scalars); the last two
    are the bias-corrected step size ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)``."""
    lr, (b1, b2) = _hyper(lr, "lr"), _betas(betas)
    eps, wd = _hyper(eps, "eps"), _hyper(weight_decay, "weight_decay")
    amsgrad, maximize = v.boolean(amsgrad, "amsgrad"), v.boolean(maximize, "maximize")
    t = _step(step)
    return _ADAM[: 3 if amsgrad else 2], (lr, b1, b2, eps, wd, decoupled, amsgrad, maximize,
                                          lr / (1.0 - b1 ** t), np.sqrt(1.0 - b2 ** t))


def _adam(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize,
          differentiable, decoupled: bool):
    buffers, scal = _adam_scalars(step, lr, betas, eps, weight_decay, amsgrad, maximize,
                                  decoupled)
    ps, gs, st, single = _inputs(params, grads, state, buffers)
    outs = {b: _empty_like(ps) for b in buffers}
    p1s = _empty_like(ps)
    for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
        arrs = [st[b][i] if b in st else _none(p.dtype) for b in _ADAM]
        new = [outs[b][i] if b in outs else _none(p.dtype) for b in _ADAM]
        _adam_fwd(_flat(p), _flat(g), *map(_flat, arrs), _flat(p1s[i]), *map(_flat, new), *scal)
    kind = "adamw" if decoupled else "adam"
    return ((_out(p1s, single), {b: _out(outs[b], single) for b in buffers}),
            _ctx(kind, differentiable, single, ps, gs, st, scal))


def adam(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, differentiable=False):
    r"""One Adam step (torch.optim.Adam). With :math:`\hat g = \pm g + \lambda p` (coupled decay):

    .. math:: m_t = \beta_1 m_{t-1} + (1 - \beta_1) \hat g, \quad
              v_t = \beta_2 v_{t-1} + (1 - \beta_2) \hat g^2, \quad
              \hat v = [\text{amsgrad}] \max(\hat v_{t-1}, v_t) \text{ else } v_t

    .. math:: p_t = p_{t-1} - \frac{\eta}{1 - \beta_1^t}
              \frac{m_t}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}

    The bias corrections scale the step size and the root (eps is not corrected), and AMSGrad's
    maximum is of the raw second moment (``max_exp_avg_sq``), as torch.
    """
    return _adam(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize,
                 differentiable, decoupled=False)


def adamw(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=1e-2, amsgrad=False, maximize=False, differentiable=False):
    r"""One AdamW step (torch.optim.AdamW): decoupled weight decay, then :func:`adam`'s update
    with :math:`\lambda = 0`:

    .. math:: p' = (1 - \eta \lambda) p_{t-1}, \quad p_t = p' - \frac{\eta}{1 - \beta_1^t}
              \frac{m_t}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}

    (``m_t``, ``v_t`` from ``±g`` alone). Default ``weight_decay = 0.01``, as torch.
    """
    return _adam(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize,
                 differentiable, decoupled=True)


def adam_backward(ctx: StepCtx, grad_out):
    r"""VJP of :func:`adam` (and :func:`adamw`). With :math:`c = \eta / (1 - \beta_1^t)`,
    :math:`k = \sqrt{1 - \beta_2^t}`, :math:`d = \sqrt{\hat v} / k + \epsilon`:

    .. math:: \bar m = \bar m_t - \frac{c \bar p_t}{d}, \quad
              \bar{\hat v} = [\text{amsgrad}]\, \bar{\hat v}_t + \frac{c \bar p_t m_t}
              {2 k d^2 \sqrt{\hat v}}, \quad \bar v = \bar v_t + (\text{share of }
              \bar{\hat v}\text{ from the max; all of it without amsgrad})

    .. math:: \bar{\hat g} = (1 - \beta_1) \bar m + 2 (1 - \beta_2) \hat g \bar v, \quad
              \bar m_{t-1} = \beta_1 \bar m, \quad \bar v_{t-1} = \beta_2 \bar v, \quad
              \bar g = \pm \bar{\hat g}

    and :math:`\bar p_{t-1} = \bar p_t + \lambda \bar{\hat g}` (Adam) or
    :math:`(1 - \eta\lambda) \bar p_t` (AdamW). Returns ``(d_params, d_grads, d_state)``.
    """
    _check_ctx(ctx, ("adam",))
    return _adam_backward(ctx, grad_out)


def adamw_backward(ctx: StepCtx, grad_out):
    """VJP of :func:`adamw`: see :func:`adam_backward`."""
    _check_ctx(ctx, ("adamw",))
    return _adam_backward(ctx, grad_out)


def _adam_backward(ctx: StepCtx, grad_out):
    return _buffered_backward(ctx, grad_out, _ADAM, _adam_bwd)


def _buffered_backward(ctx: StepCtx, grad_out, names: tuple[str, ...], kernel):
    """The per-tensor driver of a backward kernel over the optimizer's buffers ``names`` (in
    the kernel's order; a buffer this step does not use is passed as an empty placeholder)."""
    buffers = tuple(ctx.state)
    dps, dst = _upstream(ctx, grad_out, buffers)
    d_p, d_g = _empty_like(ctx.params), _empty_like(ctx.params)
    d_st = {b: _empty_like(ctx.params) for b in buffers}
    for i, (p, g) in enumerate(zip(ctx.params, ctx.grads, strict=True)):
        arrs = [ctx.state[b][i] if b in ctx.state else _none(p.dtype) for b in names]
        ups = [_or_zeros(dst[b], i, p) if b in dst else _none(p.dtype) for b in names]
        outs = [d_st[b][i] if b in d_st else _none(p.dtype) for b in names]
        kernel(_flat(p), _flat(g), *map(_flat, arrs), _flat(dps[i]), *map(_flat, ups),
               _flat(d_p[i]), _flat(d_g[i]), *map(_flat, outs), *ctx.scalars)
    return (_out(d_p, ctx.single), _out(d_g, ctx.single),
            {b: _out(d_st[b], ctx.single) for b in buffers})


# ---------------------------------------------------------------------------------------------
# In-place steps: sgd_, adagrad_, rmsprop_, adam_, adamw_
#
# The same update as the pure step, element for element (the same inlined float64 helper,
# rounded once), written over ``params`` and the state's buffers: one pass that reads p, g and
# the buffers once and writes p and the buffers once, with no new arrays.
#
# All the tensors of a call go to one kernel launch. Python passes flat views of them as tuples
# (numba unboxes a tuple of arrays at C speed); _table writes each one's address and size
# into an int64 table (_addresses: straight-line code, where indexing a tuple at run time
# compiles to a switch per use: minutes of compilation for 64 tensors). The kernel's parallel
# loop then runs over work items of at most _CHUNK elements of every tensor, viewed through
# the table, so a model's many small tensors share the threads and a large one is split.

_CHUNK = 1 << 14  # elements per work item (5 float32 arrays x 16K elements: 320 KB, in L2)
_PAD = {dt: np.empty(0, dt) for dt in v.FLOAT_DTYPES}  # stands in for an absent buffer
# Tensors per call of _table (a list goes in groups of this many, the last one padded): its
# compilation grows fast with the tuples' length (2 s at 8, 24 s at 64), its call costs
# ~0.1 us per array.
_GROUP = 8


@intrinsic
def _addresses(typingctx, arrays, addr, size):
    """``addr[i], size[i] = arrays[i]``'s data address and element count, for a tuple of arrays
    (straight-line code, one block per element)."""
    if not (isinstance(arrays, types.BaseTuple)
            and all(isinstance(a, types.Array) for a in arrays)):
        return None

    def codegen(context, builder, sig, args):
        tup_t, addr_t, size_t = sig.args
        addr_a = context.make_array(addr_t)(context, builder, args[1])
        size_a = context.make_array(size_t)(context, builder, args[2])
        i64 = ir.IntType(64)
        for i, (ty, item) in enumerate(zip(tup_t, cgutils.unpack_tuple(builder, args[0]),
                                           strict=True)):
            a = context.make_array(ty)(context, builder, item)
            builder.store(builder.ptrtoint(a.data, i64),
                          cgutils.gep_inbounds(builder, addr_a.data, i))
            builder.store(builder.sext(a.nitems, i64) if a.nitems.type != i64 else a.nitems,
                          cgutils.gep_inbounds(builder, size_a.data, i))
        return context.get_dummy_value()

    return types.none(arrays, addr, size), codegen


@intrinsic
def _pointer(typingctx, address, like):
    """The integer ``address`` as a pointer to ``like``'s dtype (for ``numba.carray``)."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return ptr(address, like), codegen


@kernel()
def _table(ps, gs, a, b, c):
    """Addresses and sizes of the arrays of five equally long tuples (params, grads and three
    buffer slots), as rows of two (5, n) int64 tables."""
    addr, size = np.empty((5, len(ps)), np.int64), np.empty((5, len(ps)), np.int64)
    _addresses(ps, addr[0], size[0])
    _addresses(gs, addr[1], size[1])
    _addresses(a, addr[2], size[2])
    _addresses(b, addr[3], size[3])
    _addresses(c, addr[4], size[4])
    return addr, size


@inline()
def _view(addr, size, r, t, like):
    """Row ``r`` of the tables' tensor ``t`` as a flat array (of ``like``'s dtype)."""
    return carray(_pointer(addr[r, t], like), size[r, t])


@kernel()
def _work_items(sizes):
    """(tensor, first element) of each work item of at most _CHUNK elements, over tensors of
    ``sizes`` elements, in order; and the total size."""
    count = 0
    for n in sizes:
        count += (n + _CHUNK - 1) // _CHUNK
    tid, lo = np.empty(count, np.int64), np.empty(count, np.int64)
    j = 0
    for t in range(sizes.size):
        for s in range(0, sizes[t], _CHUNK):
            tid[j], lo[j] = t, s
            j += 1
    return tid, lo, sizes.sum()


# One span kernel per optimizer updates elements [lo, hi) of one tensor in place (compiled on
# its own, once per dtype, and vectorised); _span picks it by ``kind`` and unpacks its scalars
# from ``sc`` (a float64 array, flags as 0/1), so that ONE parallel driver, _inplace, serves
# every optimizer (a parallel loop costs ~3.5 s to compile here, a serial one ~1 s).

_SGD, _ADAGRAD, _RMSPROP, _ADAM_KIND = 0, 1, 2, 3
_AS_F32 = 4  # kind + _AS_F32: the same optimizer in float32 arithmetic


@kernel()
def _sgd_span(p, g, b, first, lr, mu, damp, wd, nesterov, maximize):
    has_b = mu != 0.0
    for i in range(p.size):
        p[i], bn = _sgd1(p[i], g[i], b[i] if has_b else 0.0, first, lr, mu, damp, wd, nesterov,
                         maximize)
        if has_b:
            b[i] = bn


@kernel()
def _adagrad_span(p, g, s, clr, eps, wd, maximize):
    for i in range(p.size):
        p[i], s[i] = _adagrad1(p[i], g[i], s[i], clr, eps, wd, maximize)


@kernel()
def _rms_span(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered, maximize):
    has_b = mu > 0.0
    for i in range(p.size):
        p[i], sq[i], bn, gan, _, _, _ = _rms1(p[i], g[i], sq[i], buf[i] if has_b else 0.0,
                                              ga[i] if centered else 0.0, lr, alpha, eps, wd,
                                              mu, centered, maximize)
        if has_b:
            buf[i] = bn
        if centered:
            ga[i] = gan


@kernel()
def _adam_span(p, g, m, vv, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize, c, k):
    for i in range(p.size):
        p[i], m[i], vv[i], vm, _, _, _ = _adam1(p[i], g[i], m[i], vv[i],
                                                vmax[i] if amsgrad else 0.0, lr, b1, b2, eps, wd,
                                                decoupled, amsgrad, maximize, c, k)
        if amsgrad:
            vmax[i] = vm


# float32 arithmetic (``opmath="dtype"`` on float32 tensors): every operation in float32
# lanes, the hyper-parameters rounded once to float32, in torch's fused CPU order (its opmath
# type for float is float). A flag that changes the arithmetic either multiplies by an exact
# +-1 / 1 (maximize, AdamW's shrink when not decoupled) or selects (coupled decay), and
# AMSGrad gets its own loop, so every loop vectorises with no masked loads.

_F32 = np.float32


@kernel()
def _sgd_span32(p, g, b, first, lr, mu, damp, wd, nesterov, maximize):
    sg, wdf, lrf = _F32(-1.0 if maximize else 1.0), _F32(wd), _F32(lr)
    muf, keep = _F32(mu), _F32(1.0 - damp)
    decay = wd != 0.0                       # torch adds no 0 * p (p may be inf)
    if mu == 0.0:
        for i in range(p.size):
            gi = sg * g[i]
            gi = gi + wdf * p[i] if decay else gi
            p[i] = p[i] - lrf * gi
    elif first:                             # step 1: the buffer is the gradient
        for i in range(p.size):
            gi = sg * g[i]
            gi = gi + wdf * p[i] if decay else gi
            u = gi + muf * gi if nesterov else gi
            b[i] = gi
            p[i] = p[i] - lrf * u
    else:
        for i in range(p.size):
            gi = sg * g[i]
            gi = gi + wdf * p[i] if decay else gi
            bn = muf * b[i] + keep * gi
            u = gi + muf * bn if nesterov else bn
            b[i] = bn
            p[i] = p[i] - lrf * u


@kernel()
def _adagrad_span32(p, g, s, clr, eps, wd, maximize):
    sg, wdf, cf, ef = _F32(-1.0 if maximize else 1.0), _F32(wd), _F32(clr), _F32(eps)
    decay = wd != 0.0
    for i in range(p.size):
        gi = sg * g[i]
        gi = gi + wdf * p[i] if decay else gi
        sn = s[i] + gi * gi
        s[i] = sn
        p[i] = p[i] - cf * (gi / (np.sqrt(sn) + ef))


@kernel()
def _rms_span32(p, g, sq, buf, ga, lr, alpha, eps, wd, mu, centered, maximize):
    sg, wdf, lrf, ef = _F32(-1.0 if maximize else 1.0), _F32(wd), _F32(lr), _F32(eps)
    af, bf, muf = _F32(alpha), _F32(1.0 - alpha), _F32(mu)
    decay, has_b = wd != 0.0, mu > 0.0
    for i in range(p.size):
        gi = sg * g[i]
        gi = gi + wdf * p[i] if decay else gi
        sqn = af * sq[i] + bf * gi * gi
        sq[i] = sqn
        var = sqn
        if centered:
            gan = af * ga[i] + bf * gi
            ga[i] = gan
            var = sqn - gan * gan
        den = np.sqrt(var) + ef
        if has_b:
            bn = muf * buf[i] + gi / den
            buf[i] = bn
            p[i] = p[i] - lrf * bn
        else:
            p[i] = p[i] - lrf * (gi / den)


@inline()
def _adam_moments32(p, g, m, vv, sg, wdf, coupled, shrink, b1f, a1, b2f, a2):
    gi = sg * g
    pi = shrink * p                         # AdamW: 1 - lr wd; Adam: exactly 1
    gi = gi + wdf * pi if coupled else gi
    return pi, b1f * m + a1 * gi, b2f * vv + a2 * gi * gi


@kernel()
def _adam_span32(p, g, m, vv, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, maximize, c, k):
    sg, wdf = _F32(-1.0 if maximize else 1.0), _F32(wd)
    coupled = wd != 0.0 and not decoupled
    shrink = _F32(1.0 - lr * wd) if decoupled else _F32(1.0)
    b1f, a1, b2f, a2 = _F32(b1), _F32(1.0 - b1), _F32(b2), _F32(1.0 - b2)
    cf, kf, ef = _F32(c), _F32(k), _F32(eps)
    if amsgrad:
        for i in range(p.size):
            pi, mn, vn = _adam_moments32(p[i], g[i], m[i], vv[i], sg, wdf, coupled, shrink,
                                         b1f, a1, b2f, a2)
            vm = max(vmax[i], vn)
            m[i], vv[i], vmax[i] = mn, vn, vm
            p[i] = pi - cf * mn / (np.sqrt(vm) / kf + ef)
    else:
        for i in range(p.size):
            pi, mn, vn = _adam_moments32(p[i], g[i], m[i], vv[i], sg, wdf, coupled, shrink,
                                         b1f, a1, b2f, a2)
            m[i], vv[i] = mn, vn
            p[i] = pi - cf * mn / (np.sqrt(vn) / kf + ef)


def _span32(kind, p, g, a, b, c, sc):
    """:func:`_span`'s float32-arithmetic spans: compiled for float32 tensors only (on float64
    ones a no-op, never reached: _run picks them for float32 tables), which keeps the float64
    driver's compilation as it was."""


@overload(_span32, jit_options={"cache": True, "error_model": "numpy"})
def _span32_typed(kind, p, g, a, b, c, sc):
    if p.dtype != types.float32:
        return lambda kind, p, g, a, b, c, sc: None
    return lambda kind, p, g, a, b, c, sc: _span32_f32(kind, p, g, a, b, c, sc)


@kernel()
def _span32_f32(kind, p, g, a, b, c, sc):
    if kind == _SGD:
        _sgd_span32(p, g, a, sc[0] != 0.0, sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                    sc[6] != 0.0)
    elif kind == _ADAGRAD:
        _adagrad_span32(p, g, a, sc[0], sc[1], sc[2], sc[3] != 0.0)
    elif kind == _RMSPROP:
        _rms_span32(p, g, a, b, c, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                    sc[6] != 0.0)
    else:
        _adam_span32(p, g, a, b, c, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                     sc[6] != 0.0, sc[7] != 0.0, sc[8], sc[9])


@kernel()
def _span(kind, p, g, a, b, c, lo, hi, sc):
    """Elements [lo, hi) of one tensor: optimizer ``kind``'s step, scalars ``sc`` in the order
    of its ``_*_scalars`` function, buffers ``a, b, c`` in its slot order (an absent buffer is
    empty, and so is its slice). The spans loop over slices from 0: a loop from ``lo`` would
    not vectorise (an index not known to be >= 0 goes through numba's wraparound)."""
    p, g, a, b, c = p[lo:hi], g[lo:hi], a[lo:hi], b[lo:hi], c[lo:hi]
    if kind >= _AS_F32:
        _span32(kind - _AS_F32, p, g, a, b, c, sc)
    elif kind == _SGD:
        _sgd_span(p, g, a, sc[0] != 0.0, sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                  sc[6] != 0.0)
    elif kind == _ADAGRAD:
        _adagrad_span(p, g, a, sc[0], sc[1], sc[2], sc[3] != 0.0)
    elif kind == _RMSPROP:
        _rms_span(p, g, a, b, c, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                  sc[6] != 0.0)
    else:
        _adam_span(p, g, a, b, c, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5] != 0.0,
                   sc[6] != 0.0, sc[7] != 0.0, sc[8], sc[9])


@kernel(parallel=True)
def _inplace(kind, addr, size, like, sc):
    """Every work item of the tensors in the tables ``addr, size`` (see :func:`_table`)."""
    tid, lo, total = _work_items(size[0])
    if total < PARALLEL_MIN:
        for j in range(tid.size):
            t = tid[j]
            _span(kind, _view(addr, size, 0, t, like), _view(addr, size, 1, t, like),
                  _view(addr, size, 2, t, like), _view(addr, size, 3, t, like),
                  _view(addr, size, 4, t, like), lo[j], min(lo[j] + _CHUNK, size[0, t]), sc)
    else:
        for j in prange(tid.size):
            t = tid[j]
            _span(kind, _view(addr, size, 0, t, like), _view(addr, size, 1, t, like),
                  _view(addr, size, 2, t, like), _view(addr, size, 3, t, like),
                  _view(addr, size, 4, t, like), lo[j], min(lo[j] + _CHUNK, size[0, t]), sc)


def _opmath(opmath) -> bool:
    """True: float32 tensors are stepped in float32 arithmetic."""
    return v.choice(opmath, "opmath", ("float64", "dtype")) == "dtype"


def _run(kind: int, tables, scal, f32: bool) -> None:
    sc = np.array(scal, dtype=np.float64)
    for addr, size, like in tables:
        _inplace(kind + _AS_F32 if f32 and like.dtype == np.float32 else kind, addr, size,
                 like, sc)


# ---- checks


def _written(a, name: str, p=None, p_name: str = ""):
    """The checks of an array the step writes (a parameter or a state buffer), in detail: run
    only when the fast check in :func:`_inplace_tables` failed, to say why."""
    if not isinstance(a, np.ndarray):
        extra = " (a numpy scalar cannot be updated in place)" if isinstance(a, np.generic) else ""
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64{extra}, got "
                        f"{type(a).__name__}")
    if p is None:
        if a.dtype not in v.FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64 in the machine's byte "
                            f"order, got {a.dtype}")
    else:
        _like(a, name, p, p_name)
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writeable: an in-place step updates it, got a "
                         f"read-only array")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous: an in-place step updates it where it "
                         f"lies, got strides {a.strides} for shape {a.shape}")
    if not a.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype, got an unaligned view")
    return a.view(np.ndarray)  # a subclass (np.memmap) as a plain array over the same memory


def _read(g, name: str, p, p_name: str):
    """A gradient that failed the fast check: checked as the pure step checks it, and given to
    the kernel as an aligned C-contiguous copy when it is not one (it is only read)."""
    g = v.float_array(g, name)
    _like(g, name, p, p_name)
    return np.require(g, requirements=("C", "A")).view(np.ndarray)


def _list_like_params(x, name: str, n: int):
    """``x`` when it is a list or tuple of ``n`` (the list form of params), else ValueError.
    Shared with the numba-cuda steps (``reference.cuda.optim``)."""
    if not isinstance(x, (list, tuple)) or len(x) != n:
        got = (f"a {type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple))
               else type(x).__name__)
        raise ValueError(f"{name} must have the structure of params (a list of {n} arrays), "
                         f"got {got}")
    return x


def _check_state_keys(state, buffers) -> None:
    """``state`` is a dict with exactly ``buffers`` (shared with ``reference.cuda.optim``)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of buffers {list(buffers)}, got "
                        f"{type(state).__name__}")
    if len(state) != len(buffers) or any(b not in state for b in buffers):
        raise ValueError(f"state must have exactly the buffers {list(buffers)} for these "
                         f"hyper-parameters, got {list(state)}")


def _same_structure(x, name: str, single: bool, n: int):
    if single:
        if not isinstance(x, (np.ndarray, np.generic)):
            raise ValueError(f"{name} must have the structure of params (one array), got "
                             f"{type(x).__name__}")
        return [x]
    return _list_like_params(x, name, n)


def _inplace_tables(params, grads, state, buffers: tuple[str, ...], slots: tuple[str, ...]):
    """Check an in-place step's arrays; return, per dtype among the params (almost always
    one), the kernel's ``(addr, size, like)``: the tables of :func:`_table` with rows params,
    grads and the buffers in ``slots`` order (an absent one: empty arrays), and an empty array
    of the dtype.

    Every array must be a float32/float64 ndarray of its parameter's dtype and shape; params
    and buffers must also be C-contiguous, aligned and writeable, and no array may be given
    twice among them (a gradient may be anything the pure step takes). The fast checks are a
    few attribute reads per array; the detailed ones run only on a failure, to name it."""
    single = isinstance(params, (np.ndarray, np.generic))
    if single:
        ps = [params]
    elif isinstance(params, (list, tuple)):
        if not params:
            raise ValueError(f"params must hold at least one array, got an empty "
                             f"{type(params).__name__}")
        ps = params
    else:
        raise TypeError(f"params must be a numpy.ndarray or a list of them, got "
                        f"{type(params).__name__}")
    n = len(ps)
    gs = _same_structure(grads, "grads", single, n)
    _check_state_keys(state, buffers)
    bls = [_same_structure(state[b], f"state[{b!r}]", single, n) for b in buffers]
    flat_p, flat_g, flat_b = [], [], [[] for _ in buffers]
    for i in range(n):
        where = "" if single else f"[{i}]"
        p = ps[i]
        if type(p) is not np.ndarray or p.dtype not in v.FLOAT_DTYPES or not p.flags.carray:
            p = _written(p, f"params{where}")
        dt, shape = p.dtype, p.shape
        flat_p.append(p if p.ndim == 1 else p.reshape(-1))  # reshape: ~0.3 us an array
        g = gs[i]
        if (type(g) is not np.ndarray or g.dtype != dt or g.shape != shape
                or not (g.flags.carray or g.flags.c_contiguous and g.flags.aligned)):
            g = _read(g, f"grads{where}", p, f"params{where}")
        flat_g.append(g if g.ndim == 1 else g.reshape(-1))
        for bl, fb, b in zip(bls, flat_b, buffers, strict=True):
            a = bl[i]
            if (type(a) is not np.ndarray or a.dtype != dt or a.shape != shape
                    or not a.flags.carray):
                a = _written(a, f"state[{b!r}]{where}", p, f"params{where}")
            fb.append(a if a.ndim == 1 else a.reshape(-1))
    if len({id(a) for arrs in [ps, *bls] for a in arrs}) != n * (1 + len(bls)):
        raise ValueError("params and the state's buffers must be distinct arrays (each is "
                         "updated in place), got the same array twice")
    by_name = dict(zip(buffers, flat_b, strict=True))
    rows = [flat_p, flat_g] + [by_name.get(b) for b in slots] + [None] * (3 - len(slots))
    dtypes = {p.dtype for p in flat_p}
    out = []
    for dt in dtypes:
        idx = list(range(n)) if len(dtypes) == 1 else [i for i in range(n)
                                                       if flat_p[i].dtype == dt]
        width = 1 if len(idx) == 1 else _GROUP
        parts = []
        for s in range(0, len(idx), width):
            part = idx[s:s + width]
            pad = (_PAD[dt],) * (width - len(part))
            parts.append(_table(*(tuple(r[i] for i in part) + pad if r is not None
                                  else (_PAD[dt],) * width for r in rows)))
        if len(parts) == 1:
            out.append((*parts[0], _PAD[dt]))
        else:
            out.append((np.concatenate([a for a, _ in parts], axis=1),
                        np.concatenate([z for _, z in parts], axis=1), _PAD[dt]))
    return out


_INPLACE_NOTE = """
    In place: ``params`` and the state's buffers (the arrays ``state`` holds) are overwritten
    with the new values; the call returns None and allocates nothing of the tensors' size. Not
    differentiable (no ctx): use the pure step for that. params and the buffers must be
    writeable, aligned, C-contiguous arrays of their parameter's dtype and shape, each given
    once (overlapping views of one array are not detected); ``grads`` is only read. Checking
    costs a few attribute reads per array, and all the tensors of a call share one kernel
    launch.

    ``opmath``: the arithmetic of float32 tensors (float64 ones are always stepped in float64).

    - ``"float64"`` (default): every element in float64, rounded once to float32, as the pure
      step: the new values equal the pure step's bit for bit.
    - ``"dtype"``: float32 tensors in float32 arithmetic (16 lanes per vector instead of 8),
      the hyper-parameters rounded once to float32, operations in the order of torch's fused
      CPU step (whose opmath type for float is float): about as close to the float64 step as
      torch's float32 step is. Each output then differs from the ``"float64"`` one by at most
      the forward error bound of that order of float32 operations, accumulated from unit
      roundoff ``u = 2^-24`` per operation (``|fl(a op b) - a op b| <= u |a op b|``) and
      propagated through the later ones (sums add absolute errors, products and quotients add
      relative ones, ``sqrt`` halves a relative error, ``max`` keeps the larger), plus the
      ``"float64"`` result's own final rounding (``u |x|``);
      suites/correctness/test_optim.py evaluates that bound element by element and checks it,
      and checks the result against torch's float32 step with the forward-parity tolerance."""


def sgd_(params, grads, state, step, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, opmath="float64") -> None:
    r"""One SGD step in place: :func:`sgd`'s update, same arguments (at step 1 the momentum
    buffer's old values are not read: it becomes the gradient)."""
    buffers, scal = _sgd_scalars(step, lr, momentum, dampening, weight_decay, nesterov,
                                 maximize)
    f32 = _opmath(opmath)
    _run(_SGD, _inplace_tables(params, grads, state, buffers, ("momentum_buffer",)), scal, f32)


def adagrad_(params, grads, state, step, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False, opmath="float64") -> None:
    r"""One Adagrad step in place: :func:`adagrad`'s update, same arguments."""
    scal = _adagrad_scalars(step, lr, lr_decay, weight_decay, eps, maximize)
    f32 = _opmath(opmath)
    _run(_ADAGRAD, _inplace_tables(params, grads, state, ("sum",), ("sum",)), scal, f32)


def rmsprop_(params, grads, state, step, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
             momentum=0.0, centered=False, maximize=False, opmath="float64") -> None:
    r"""One RMSprop step in place: :func:`rmsprop`'s update, same arguments."""
    buffers, scal = _rms_scalars(step, lr, alpha, eps, weight_decay, momentum, centered,
                                 maximize)
    f32 = _opmath(opmath)
    slots = ("square_avg", "momentum_buffer", "grad_avg")
    _run(_RMSPROP, _inplace_tables(params, grads, state, buffers, slots), scal, f32)


def adam_(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=0.0, amsgrad=False, maximize=False, opmath="float64") -> None:
    r"""One Adam step in place: :func:`adam`'s update, same arguments."""
    _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize, False,
           opmath)


def adamw_(params, grads, state, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=1e-2, amsgrad=False, maximize=False, opmath="float64") -> None:
    r"""One AdamW step in place: :func:`adamw`'s update, same arguments."""
    _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize, True,
           opmath)


def _adam_(params, grads, state, step, lr, betas, eps, weight_decay, amsgrad, maximize,
           decoupled: bool, opmath) -> None:
    buffers, scal = _adam_scalars(step, lr, betas, eps, weight_decay, amsgrad, maximize,
                                  decoupled)
    f32 = _opmath(opmath)
    _run(_ADAM_KIND, _inplace_tables(params, grads, state, buffers, _ADAM), scal, f32)


for _f in (sgd_, adagrad_, rmsprop_, adam_, adamw_):
    _f.__doc__ += "\n" + _INPLACE_NOTE
