"""Specs of the optimizer steps (SGD, Adagrad, RMSprop, Adam, AdamW).

A case is one parameter tensor, its gradient and the state buffers its flags need, in torch's
order (``params, grads, <buffers>``), with ``step`` and the hyper-parameters as keyword
parameters. The reference is called through a thin adapter (the library takes a dict of
buffers); the twin is ``torch.optim.<Optimizer>`` stepping clones of those tensors, with
``differentiable=True`` when autograd is on (gradient parity) and torch's default path
otherwise (forward parity). Every output is compared: the new parameter and each new buffer,
all differentiable (``n_diff_outputs`` counts the most buffers a case can have).

Peers for the benchmark: ``torch-fused`` (``fused=True``) and ``torch-foreach`` (torch's
default for a list of CPU tensors is its per-tensor loop; ``foreach=True`` forces the
multi-tensor kernels), each one in-place step over the same tensors (forward only), and
``numba-inplace``: the library's in-place step (``adam_`` ...) over copies of the case's arrays
made when the peer is built, the like-for-like partner of the torch peers (the ``numba`` row
times the pure, differentiable step, which writes new arrays): with ``opmath="dtype"``, so a
float32 case is stepped in float32 arithmetic as torch's fused and foreach steps are (its
error bound against the float64 step is checked in suites/correctness/test_optim.py). Like
the torch peers it steps the same arrays on at every call, with the same gradient. Measured
over 20000 repeated steps of the small size: SGD, Adagrad, Adam and AdamW stay finite with no
subnormal (SGD drifts linearly, to |p| ~ 6e3); centred RMSprop's variance v - g_avg^2 decays
to 0 under a constant gradient and rounds below it within 1000 steps, after which its
parameters are NaN, for every peer alike (a property of the repeated step, not of an
implementation).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st

from reference import optim as O
from suites import twin
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import DEFAULT_TOL, Case, Cost, Invalid, Invariant, Spec, Tol

FAMILY = "optim"


# ---------------------------------------------------------------------------------------------
# adapters: the library's (params, grads, state dict) <-> the spec's positional arrays


def _positive(value) -> bool:
    """``value > 0`` for a number; anything else counts as 0 here (the library then names it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _sgd_buffers(p):
    return ("momentum_buffer",) if _positive(p.get("momentum", 0.0)) else ()


def _rms_buffers(p):
    return (("square_avg",) + (("momentum_buffer",) if _positive(p.get("momentum", 0.0)) else ())
            + (("grad_avg",) if p.get("centered", False) is True else ()))


def _adam_buffers(p):
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if p.get("amsgrad") is True else ())


_BUFFERS = {"sgd": _sgd_buffers, "adagrad": lambda p: ("sum",), "rmsprop": _rms_buffers,
            "adam": _adam_buffers, "adamw": _adam_buffers}
_ALL_BUFFERS = {"sgd": ("momentum_buffer",), "adagrad": ("sum",),
                "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
                "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}


class _Adapted:
    """Forward/backward with positional buffers (the library takes a dict of them); the spec's
    step is the differentiable one."""

    def __init__(self, name: str):
        self.name = name
        self.step = getattr(O, name)
        self.vjp = getattr(O, f"{name}_backward")

    def forward(self, params, grads, *buffers, step, **hyper):
        hyper.pop("initial_accumulator_value", None)  # an argument of adagrad_init_state
        names = _BUFFERS[self.name](hyper)
        state = dict(zip(names, buffers, strict=False))
        if len(buffers) != len(names):  # let the library name what is missing or extra
            state = dict(zip(_ALL_BUFFERS[self.name], buffers, strict=False))
        (p1, s1), ctx = self.step(params, grads, state, step, differentiable=True, **hyper)
        return (p1, *(s1[b] for b in names)), ctx

    def backward(self, ctx, grad_out):
        if not isinstance(ctx, O.StepCtx) or ctx.kind != self.name:
            return self.vjp(ctx, grad_out)  # the library refuses it, naming ctx
        names = tuple(ctx.state)
        if not isinstance(grad_out, tuple) or len(grad_out) != 1 + len(names):
            raise ValueError(f"grad_out must be a tuple of {1 + len(names)} arrays (params, "
                             f"{', '.join(names)}), got {type(grad_out).__name__}"
                             + (f" of {len(grad_out)}" if isinstance(grad_out, tuple) else ""))
        d_p, d_g, d_s = self.vjp(ctx, (grad_out[0], dict(zip(names, grad_out[1:], strict=True))))
        return (d_p, d_g) + tuple(d_s.get(b) for b in _ALL_BUFFERS[self.name])


# ---------------------------------------------------------------------------------------------
# the torch twin


_TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
          "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _twin(name: str):
    def run(params, grads, *buffers, step, **hyper):
        names = _BUFFERS[name](hyper)
        diff = torch.is_grad_enabled()
        p = params.clone()
        p.grad = grads.clone()
        opt = _TORCH[name]([p], differentiable=diff, **hyper)
        state = opt.state[p]
        state.clear()
        for b, t in zip(names, buffers, strict=True):
            state[b] = t.clone()
        if name == "sgd" and step == 1:
            state.pop("momentum_buffer", None)  # torch's first step: the buffer is the gradient
        elif name != "sgd":
            # float64 step counter: the differentiable Adam computes 1 - beta^step in the
            # counter's dtype; float64 matches the default path's Python floats.
            state["step"] = torch.tensor(float(step - 1), dtype=torch.float64)
        opt.step()
        outs = [p] + [state[b] for b in names]
        if name == "sgd" and step == 1 and names and diff:
            outs = _sgd_first_buffer_derivative(params, grads, outs, hyper)
        return tuple(outs)

    return run


def _sgd_first_buffer_derivative(params, grads, outs, hyper):
    """Torch's step 1 clones the buffer with ``grad.detach()``, cutting its derivative. Add it
    back with a zero-valued term whose gradient is the true one (values stay torch's exactly):
    ``b_1 = g_hat`` and ``p_1 = p - lr (1 + [nesterov] mu) g_hat`` (the nesterov ``g_hat`` term
    itself is not detached)."""
    sign = -1.0 if hyper.get("maximize") else 1.0
    g_hat = sign * grads + hyper.get("weight_decay", 0.0) * params
    zero = g_hat - g_hat.detach()
    mu = hyper["momentum"] if hyper.get("nesterov") else 1.0
    return [outs[0] - hyper["lr"] * mu * zero, outs[1] + zero]


# ---------------------------------------------------------------------------------------------
# cases


def _values(dtype, lo=-10.0, hi=10.0):
    """Ordinary values with exact zeros mixed in (a zero gradient, an empty accumulator)."""
    return st.one_of(S.floats(dtype, lo, hi), st.just(0.0))


def _nonneg(dtype, hi=10.0):
    return st.one_of(S.floats(dtype, 0.0, hi), st.just(0.0))


_LR = st.one_of(st.sampled_from([1e-3, 0.01, 0.1, 1.0]), st.floats(1e-4, 1.0))
_STEP = st.one_of(st.just(1), st.integers(2, 5), st.integers(6, 1000))
_DECAY = st.sampled_from([0.0, 0.0, 1e-4, 0.01, 0.1])
_EPS = st.sampled_from([1e-8, 1e-10, 1e-6, 1e-3, 0.1])


@st.composite
def _tensors(draw, dtype, buffers: dict):
    """params, grads and the named buffers (each ``name -> element strategy``), one shape.
    A whole-tensor zero gradient comes up too (a frozen layer, an unused embedding)."""
    shape = draw(S.shapes(min_dims=0, max_dims=3, min_side=1, max_side=5))
    out = {"params": draw(S.arrays(dtype, shape, elements=_values(dtype)))}
    zero_grad = draw(st.booleans()) and draw(st.booleans())
    out["grads"] = (np.zeros(shape, dtype) if zero_grad
                    else draw(S.arrays(dtype, shape, elements=_values(dtype))))
    if np.dtype(dtype) == np.float32:
        # Convention, not narrowing: the reference squares g in float64 (one rounding per
        # element), torch's float32 step in float32, where g*g underflows to 0 for
        # 0 < |g| < ~1e-19 and the derivative of sqrt(v) at v = 0 is inf. There the twin says
        # inf where the reference is (correctly) finite. Such gradients move to +-1e-18, whose
        # square stays normal in float32; float64 cases keep every value.
        g = out["grads"]
        tiny = (g != 0) & (np.abs(g) < 1e-18)
        out["grads"] = np.where(tiny, np.copysign(np.float32(1e-18), g), g).astype(dtype)
    for name, elements in buffers.items():
        out[name] = draw(S.arrays(dtype, shape, elements=elements))
        if np.dtype(dtype) == np.float32:
            # The same convention for a state value: with a zero second moment the derivative
            # of sqrt is inf, and torch's float32 backward multiplies it by lr * exp_avg /
            # eps^2, which underflows to 0 for exp_avg ~ 1e-45 (0 * inf: NaN) where the
            # float64 reference's product is tiny but not 0 (inf). Buffer values below 1e-18
            # in magnitude move to +-1e-18 too.
            b = out[name]
            tiny = (b != 0) & (np.abs(b) < 1e-18)
            out[name] = np.where(tiny, np.copysign(np.float32(1e-18), b), b).astype(dtype)
    return out


@st.composite
def _sgd_cases(draw, dtype):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    dampening = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])) if momentum else 0.0
    nesterov = momentum > 0 and dampening == 0 and draw(st.booleans())
    hyper = dict(lr=draw(st.one_of(st.just(0.0), _LR)), momentum=momentum, dampening=dampening,
                 weight_decay=draw(_DECAY), nesterov=nesterov, maximize=draw(st.booleans()))
    buffers = {"momentum_buffer": _values(dtype)} if momentum else {}
    return Case(draw(_tensors(dtype, buffers)), dict(step=draw(_STEP), **hyper))


@st.composite
def _adagrad_cases(draw, dtype):
    step = draw(_STEP)
    a0 = draw(st.sampled_from([0.0, 0.1, 1.0]))
    hyper = dict(lr=draw(_LR), lr_decay=draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
                 weight_decay=draw(_DECAY), eps=draw(_EPS), maximize=draw(st.booleans()),
                 initial_accumulator_value=a0)
    # Step 1 starts from the initial accumulator; later steps from any sum >= it.
    inputs = draw(_tensors(dtype, {"sum": st.just(0.0) if step == 1 else _nonneg(dtype, 100.0)}))
    inputs["sum"] = (inputs["sum"] + dtype.type(a0)).astype(dtype)
    return Case(inputs, dict(step=step, **hyper))


@st.composite
def _rmsprop_cases(draw, dtype):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    centered = draw(st.booleans())
    # alpha = 0 with centered makes the variance g^2 - g^2, zero in exact arithmetic: its
    # rounded sign (torch's fused multiply-add) decides between a finite step and NaN.
    alphas = [0.5, 0.9, 0.99] if centered else [0.0, 0.5, 0.9, 0.99]
    hyper = dict(lr=draw(_LR), alpha=draw(st.sampled_from(alphas)),
                 eps=draw(_EPS), weight_decay=draw(_DECAY), momentum=momentum,
                 centered=centered, maximize=draw(st.booleans()))
    step = draw(_STEP)
    buffers = {"square_avg": _nonneg(dtype, 100.0)}
    if momentum:
        buffers["momentum_buffer"] = _values(dtype)
    if centered:
        buffers["grad_avg"] = _values(dtype)
    inputs = draw(_tensors(dtype, buffers))
    if centered:
        # A reachable state has square_avg >= grad_avg^2 (a mean of squares is at least the
        # square of the mean): raise square_avg where it is not.
        ga = inputs["grad_avg"].astype(np.float64)
        sq = np.maximum(inputs["square_avg"], ga * ga * 1.5 + 1e-3)
        inputs["square_avg"] = np.asarray(sq, dtype=dtype)
    return Case(inputs, dict(step=step, **hyper))


@st.composite
def _adam_cases(draw, dtype, decoupled: bool):
    amsgrad = draw(st.booleans())
    betas = (draw(st.sampled_from([0.0, 0.5, 0.9, 0.95])),
             draw(st.sampled_from([0.0, 0.9, 0.99, 0.999])))
    wd = draw(st.sampled_from([0.0, 1e-2, 0.1])) if decoupled else draw(_DECAY)
    hyper = dict(lr=draw(_LR), betas=betas, eps=draw(_EPS), weight_decay=wd, amsgrad=amsgrad,
                 maximize=draw(st.booleans()))
    buffers = {"exp_avg": _values(dtype), "exp_avg_sq": _nonneg(dtype, 100.0)}
    if amsgrad:
        buffers["max_exp_avg_sq"] = _nonneg(dtype, 100.0)
    return Case(draw(_tensors(dtype, buffers)), dict(step=draw(_STEP), **hyper))


# ---------------------------------------------------------------------------------------------
# benchmark sizes: one tensor, and a model's worth of mixed tensors (in a list)


_SIZES = {"small": 1 << 10, "medium": 1 << 20, "large": 1 << 24}  # 1K, 1M, 16.7M parameters


def _size_case(name: str, n: int, dtype) -> Case:
    rng = np.random.default_rng(0)
    # Flags that use every buffer: the benchmark differentiates with respect to all inputs.
    hyper = {"sgd": dict(lr=0.01, momentum=0.9), "adagrad": dict(lr=0.01),
             "rmsprop": dict(lr=0.01, momentum=0.9, centered=True),
             "adam": dict(lr=1e-3, amsgrad=True), "adamw": dict(lr=1e-3, amsgrad=True)}[name]
    names = _BUFFERS[name](hyper)
    inputs = {"params": S.normal(rng, (n,), dtype), "grads": S.normal(rng, (n,), dtype)}
    for b in names:
        a = S.normal(rng, (n,), dtype)
        inputs[b] = np.abs(a) if b in ("sum", "square_avg", "exp_avg_sq") else a
    if "grad_avg" in inputs:  # a reachable centred state: square_avg >= grad_avg^2
        ga = inputs["grad_avg"].astype(np.float64)
        inputs["square_avg"] = np.maximum(inputs["square_avg"], ga * ga + 0.1).astype(dtype)
    return Case(inputs, dict(step=10, **hyper))


def _sizes(name: str):
    return {k: (lambda dtype, n=n: _size_case(name, n, dtype)) for k, n in _SIZES.items()}


def _peer(name: str, **flags):
    """One in-place torch step over the case's tensors (forward only)."""

    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        hyper = {k: val for k, val in case.params.items() if k != "step"}
        p = torch.from_numpy(case.inputs["params"].copy())
        p.grad = torch.from_numpy(case.inputs["grads"].copy())
        opt = _TORCH[name]([p], **flags, **hyper)
        for b in _BUFFERS[name](hyper):
            opt.state[p][b] = torch.from_numpy(case.inputs[b].copy())
        if name != "sgd":
            opt.state[p]["step"] = torch.tensor(float(case.params["step"] - 1))
        return opt.step

    return factory


def _inplace_peer(name: str):
    """The library's in-place step over copies of the case's arrays (forward only)."""

    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        hyper = {k: val for k, val in case.params.items()
                 if k not in ("step", "initial_accumulator_value")}
        p, g = case.inputs["params"].copy(), case.inputs["grads"].copy()
        state = {b: case.inputs[b].copy() for b in _BUFFERS[name](hyper)}
        step_, t = getattr(O, f"{name}_"), case.params["step"]
        return lambda: step_(p, g, state, t, **hyper, opmath="dtype")

    return factory


def _cost(flops_per_element: float):
    def cost(case: Case) -> Cost:
        p = case.inputs["params"]
        arrays = len(case.inputs) * 2 - 1  # each input read, the param and buffers written
        return Cost(flops_per_element * p.size, arrays * p.size * p.itemsize)

    return cost


# ---------------------------------------------------------------------------------------------
# invariants and invalid inputs


def _inv_lr_zero(name: str) -> Invariant:
    def check(case: Case, outs) -> None:
        forward = _SPECS[name].forward  # name: the spec's (a model spec's flat arrays too)
        got = forward(*case.inputs.values(), **dict(case.params, lr=0.0))[0][0]
        p = case.inputs["params"]
        same = (got == p) | (np.isnan(got) & np.isnan(p))
        assert same.all(), f"lr = 0 moved the parameter: {got} != {p}"

    return Invariant("lr = 0 is the identity on the parameter", check)


_SECOND_MOMENTS = ("sum", "square_avg", "exp_avg_sq", "max_exp_avg_sq")


def _off_kinks(name: str):
    """Gradcheck only: keep the central differences (steps of 1e-4 on every input) inside the
    region where the step is smooth. A zero gradient on a zero second moment is where
    sqrt(v + g^2) = |g| has its kink (and torch's gradient is NaN), and a second moment near 0
    sits at the edge of its domain (v >= 0), where sqrt's derivatives blow up. So the
    effective gradient g_hat = +-g + weight_decay * p moves to +-0.5 where it is within 0.25
    of 0, every second-moment buffer rises by 1 (keeping square_avg >= grad_avg^2), and
    AMSGrad's running maximum moves 0.5 away from the new second moment where the two tie."""

    def smooth(case: Case) -> Case:
        x, hp = dict(case.inputs), case.params
        sign = -1.0 if hp.get("maximize") else 1.0
        wd = 0.0 if name == "adamw" else hp.get("weight_decay", 0.0)  # AdamW's is decoupled
        p, g = x["params"], x["grads"]
        g_hat = sign * g + wd * p
        near = np.abs(g_hat) < 0.25
        target = np.where(np.signbit(g_hat), -0.5, 0.5)
        x["grads"] = np.asarray(np.where(near, sign * (target - wd * p), g), dtype=g.dtype)
        for b in _SECOND_MOMENTS:
            if b in x:
                x[b] = np.asarray(x[b] + 1.0, dtype=x[b].dtype)
        if "max_exp_avg_sq" in x:
            # AMSGrad's max(max_exp_avg_sq, v_new) has a kink at the tie: keep the two at
            # least 0.25 apart (steps of 1e-4 move v_new by far less), the max on its side.
            b2 = hp.get("betas", (0.9, 0.999))[1]
            g2 = (sign * x["grads"].astype(np.float64) + wd * p) ** 2
            v_new = b2 * x["exp_avg_sq"] + (1.0 - b2) * g2
            m = x["max_exp_avg_sq"].astype(np.float64)
            near = np.abs(m - v_new) < 0.25
            up = (m >= v_new) | (v_new < 0.5)  # moving down must keep the buffer >= 0
            moved = np.where(up, v_new + 0.5, v_new - 0.5)
            x["max_exp_avg_sq"] = np.asarray(np.where(near, moved, m), dtype=m.dtype)
        return Case(x, hp)

    return smooth


def _twin_error_tol(name: str):
    """float32: the twin rounds after every operation, and some outputs are small differences
    of large terms (RMSprop's d/dg of g / sqrt(g^2) nearly cancels), so its own error can
    exceed torch.testing's float32 atol. It is measured rather than modelled: the twin is run
    again with the inputs (exactly) in float64, and the tolerance is the default plus twice
    the float32 twin's largest deviation from that run. A reference within it is as close to
    the float64 truth as the float32 twin is, give or take the default. float64 keeps the
    default tolerance."""

    def case_tol(case: Case, upstream):
        p = case.inputs["params"]
        if p.dtype != np.float32:
            return None
        spec = _SPECS[name]
        wide = Case({k: a.astype(np.float64) for k, a in case.inputs.items()}, case.params)
        if upstream is None:
            lo, hi = twin.forward(spec, case, "cpu"), twin.forward(spec, wide, "cpu")
        else:
            present = dataclasses.replace(spec, grad_inputs=spec.grad_names(case))
            lo = twin.gradients(present, case, "cpu", upstream)
            hi = twin.gradients(present, wide, "cpu", tuple(u.astype(np.float64) for u in upstream))
        with np.errstate(invalid="ignore", over="ignore"):
            dev = [np.abs(a.astype(np.float64) - b)[np.isfinite(a) & np.isfinite(b)]
                   for a, b in zip(lo, hi, strict=True)]
        err = max((float(d.max()) for d in dev if d.size), default=0.0)
        base = DEFAULT_TOL[np.dtype(np.float32)]
        return Tol(rtol=base.rtol, atol=base.atol + 2.0 * err)

    return case_tol


def _invalid(name: str, base: dict) -> tuple[Invalid, ...]:
    def case(**over):
        def build():
            p = {"params": np.ones(3), "grads": np.ones(3)}
            bufs = {b: np.ones(3) for b in _BUFFERS[name](base)}
            inputs = dict(p, **bufs)
            params = dict(base, step=1)
            for k, val in over.items():
                (inputs if k in inputs else params)[k] = val
            return Case(inputs, params)

        return build

    out = [
        Invalid("a negative lr", case(lr=-0.1), ValueError, r"\blr\b"),
        Invalid("a NaN lr", case(lr=float("nan")), ValueError, r"\blr\b"),
        Invalid("step 0", case(step=0), ValueError, r"\bstep\b"),
        Invalid("a float step", case(step=1.5), TypeError, r"\bstep\b"),
        Invalid("grads of another shape", case(grads=np.ones(4)), ValueError, r"\bgrads\b"),
        Invalid("grads of another dtype", case(grads=np.ones(3, np.float32)), TypeError,
                r"\bgrads\b"),
        Invalid("a list as params", case(params=[[1.0, 2.0, 3.0]]), TypeError, r"params"),
        Invalid("a negative weight_decay", case(weight_decay=-1.0), ValueError, "weight_decay"),
    ]
    for b in _BUFFERS[name](base):
        out.append(Invalid(f"{b} of another shape", case(**{b: np.ones((3, 1))}), ValueError,
                           rf"\b{b}\b"))
    if "eps" in _TORCH_DEFAULT_ARGS[name]:
        out.append(Invalid("a negative eps", case(eps=-1e-8), ValueError, r"\beps\b"))
    return tuple(out)


_TORCH_DEFAULT_ARGS = {"sgd": (), "adagrad": ("eps",), "rmsprop": ("eps",), "adam": ("eps",),
                       "adamw": ("eps",)}
_ADAPTED = {name: _Adapted(name) for name in _TORCH}
_SPECS: dict[str, Spec] = {}

_SGD_INVALID = _invalid("sgd", dict(lr=0.1, momentum=0.9)) + (
    Invalid("nesterov with dampening", lambda: Case(
        {"params": np.ones(3), "grads": np.ones(3), "momentum_buffer": np.ones(3)},
        dict(step=2, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)), ValueError,
        "nesterov"),
    Invalid("nesterov without momentum", lambda: Case(
        {"params": np.ones(3), "grads": np.ones(3)},
        dict(step=2, lr=0.1, nesterov=True)), ValueError, "nesterov"),
    Invalid("a negative momentum", lambda: Case(
        {"params": np.ones(3), "grads": np.ones(3)},
        dict(step=2, lr=0.1, momentum=-0.5)), ValueError, "momentum"),
)


def _betas_invalid(name: str) -> tuple[Invalid, ...]:
    def case(betas):
        return lambda: Case({"params": np.ones(3), "grads": np.ones(3), "exp_avg": np.ones(3),
                             "exp_avg_sq": np.ones(3)}, dict(step=1, lr=0.1, betas=betas))

    return (Invalid("beta1 = 1", case((1.0, 0.999)), ValueError, r"betas\[0\]"),
            Invalid("beta2 < 0", case((0.9, -0.1)), ValueError, r"betas\[1\]"),
            Invalid("beta2 = 1.5", case((0.9, 1.5)), ValueError, r"betas\[1\]"),
            Invalid("a missing buffer", lambda: Case(
                {"params": np.ones(3), "grads": np.ones(3), "exp_avg": np.ones(3)},
                dict(step=1, lr=0.1)), ValueError, "exp_avg_sq"))


# ---------------------------------------------------------------------------------------------
# registration


def _register(name: str, summary: str, cases, flops: float, invalid, invariants=()):
    adapted = _ADAPTED[name]
    peers = {"torch-foreach": _peer(name, foreach=True), "numba-inplace": _inplace_peer(name)}
    if name in ("sgd", "adagrad", "adam", "adamw"):
        peers["torch-fused"] = _peer(name, fused=True)
    _SPECS[name] = register(Spec(
        name=name, family=FAMILY, summary=summary,
        forward=adapted.forward, backward=adapted.backward,
        grad_inputs=("params", "grads") + _ALL_BUFFERS[name],
        n_diff_outputs=1 + len(_ALL_BUFFERS[name]),
        torch=_twin(name), cases=cases, sizes=_sizes(name),
        cost=_cost(flops), invariants=(_inv_lr_zero(name),) + tuple(invariants),
        invalid=invalid, peers=peers, smooth=None if name == "sgd" else _off_kinks(name),
        case_tol=_twin_error_tol(name),
    ))


_register("sgd", "SGD step: momentum, dampening, nesterov, weight decay, maximize",
          _sgd_cases, 6, _SGD_INVALID)
_register("adagrad", "Adagrad step: lr_decay, initial accumulator, eps after the root",
          _adagrad_cases, 8, _invalid("adagrad", dict(lr=0.1)))
_register("rmsprop", "RMSprop step: alpha, eps outside the root, centred, momentum",
          _rmsprop_cases, 12, _invalid("rmsprop", dict(lr=0.1)))
_register("adam", "Adam step: bias corrections, amsgrad (max of the raw second moment)",
          lambda dtype: _adam_cases(dtype, False), 14,
          _invalid("adam", dict(lr=0.1)) + _betas_invalid("adam"))
_register("adamw", "AdamW step: decay by lr * weight_decay before the Adam update",
          lambda dtype: _adam_cases(dtype, True), 15,
          _invalid("adamw", dict(lr=0.1)) + _betas_invalid("adamw"))


# ---------------------------------------------------------------------------------------------
# a model's worth of tensors: sgd_model, adam_model, adamw_model
#
# The same optimizers over a LIST of tensors, as a model is stepped: torch's steps (default,
# foreach, fused) and the library's take the list in one call. A case holds each input as ONE
# flat array, the concatenation of the tensors (the generic checks and benchmarks see arrays),
# and ``sizes`` (a keyword parameter) splits it: the reference, the twin and the peers step
# the list of pieces (views for the pure step, which only reads them; separate copies for the
# torch optimizers and the in-place peer, as a model's parameters are separate tensors) and
# the outputs are concatenated back. Hypothesis cases: 2-4 tensors of the catalog's shapes
# (0-d included), one hyper-parameter set. Benchmark sizes: 50 tensors of mixed sizes, 25
# weight matrices in relative sizes 4:1:2:8:1 (repeating) and 25 small vectors (biases, norm
# scales) of n / 4096 elements each, n = 1K, 1M, 16.7M parameters in all.

MODEL_TENSORS = 50
_MODELS = ("sgd", "adam", "adamw")


def _check_sizes(sizes) -> tuple[int, ...]:
    """``sizes`` as a tuple of non-negative ints, or a TypeError/ValueError naming it."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (tuple, list)):
        raise TypeError(f"sizes must be a tuple of non-negative integers (one per tensor), got "
                        f"{type(sizes).__name__}")
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in sizes):
        raise TypeError(f"sizes must hold integers, got {tuple(type(n).__name__ for n in sizes)}")
    if any(n < 0 for n in sizes):
        raise ValueError(f"sizes must be non-negative, got {tuple(sizes)}")
    return tuple(int(n) for n in sizes)


def _split_flat(a, sizes, name: str):
    """One flat array -> its pieces (views), or a TypeError/ValueError naming the argument."""
    sizes = _check_sizes(sizes)
    total = int(sum(sizes))
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (the {len(sizes)} tensors, flat and "
                        f"concatenated), got {type(a).__name__}")
    if a.ndim != 1 or a.size != total:
        raise ValueError(f"{name} must be one flat array of {total} elements (the {len(sizes)} "
                         f"tensors' sizes {tuple(sizes)}, concatenated), got shape {a.shape}")
    offsets = np.cumsum((0,) + tuple(sizes))
    return [a[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]


def _flat_out(x):
    return None if x is None else np.concatenate([np.reshape(a, -1) for a in x])


class _ModelCtx(NamedTuple):
    """What a model-wide step keeps: the library step's context and the tensors' sizes."""

    inner: object
    sizes: tuple[int, ...]
    name: str


class _Model:
    """The optimizer's step over the pieces of flat arrays; outputs and gradients flat."""

    def __init__(self, name: str):
        self.name = name
        self.inner = _ADAPTED[name]

    def forward(self, params, grads, *buffers, step, sizes, **hyper):
        names = _ALL_BUFFERS[self.name]
        sizes = _check_sizes(sizes)
        # zip stops at the buffers given: the library names a missing one
        pieces = [_split_flat(a, sizes, n) for a, n in zip((params, grads, *buffers),
                                                            ("params", "grads", *names),
                                                            strict=False)]
        outs, ctx = self.inner.forward(*pieces, step=step, **hyper)
        return tuple(_flat_out(o) for o in outs), _ModelCtx(ctx, sizes, self.name)

    def backward(self, ctx, grad_out):
        if type(ctx) is not _ModelCtx or ctx.name != self.name:
            got = type(ctx).__name__ if type(ctx) is not _ModelCtx else f"{ctx.name}_model's"
            raise TypeError(f"ctx must be the context returned by {self.name}_model's forward, "
                            f"got {got}")
        if not isinstance(grad_out, tuple):
            return self.inner.backward(ctx.inner, grad_out)  # the library names it
        names = ("params", *tuple(getattr(ctx.inner, "state", {})))
        ups = tuple(_split_flat(g, ctx.sizes, f"grad_out[{i}] ({n})")
                    for i, (g, n) in enumerate(zip(grad_out, names, strict=False)))
        return tuple(_flat_out(d) for d in self.inner.backward(ctx.inner, ups))


def _model_twin(name: str):
    def run(params, grads, *buffers, step, sizes, **hyper):
        names = _BUFFERS[name](hyper)
        diff = torch.is_grad_enabled()

        def split(t):
            return [x.clone() for x in torch.split(t, list(sizes))]

        ps, gs = split(params), split(grads)
        bufs = [split(t) for t in buffers]
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        opt = _TORCH[name](ps, differentiable=diff, **hyper)
        for i, p in enumerate(ps):
            state = opt.state[p]
            state.clear()
            for b, pieces in zip(names, bufs, strict=True):
                state[b] = pieces[i]
            if name == "sgd" and step == 1:
                state.pop("momentum_buffer", None)  # torch's first step: the gradient
            elif name != "sgd":
                state["step"] = torch.tensor(float(step - 1), dtype=torch.float64)
        opt.step()
        outs = [torch.cat([p.reshape(-1) for p in ps])]
        outs += [torch.cat([opt.state[p][b].reshape(-1) for p in ps]) for b in names]
        if name == "sgd" and step == 1 and names and diff:
            outs = _sgd_first_buffer_derivative(params, grads, outs, hyper)
        return tuple(outs)

    return run


@st.composite
def _model_cases(draw, name: str, dtype):
    first = draw(_CASES[name](dtype))
    hyper = {k: val for k, val in first.params.items() if k != "step"}
    names = _BUFFERS[name](hyper)
    tensors = [first.inputs]
    for _ in range(draw(st.integers(1, 3))):
        elements = {b: _nonneg(dtype, 100.0) if b in _SECOND_MOMENTS else _values(dtype)
                    for b in names}
        tensors.append(draw(_tensors(dtype, elements)))
    flat = {k: np.concatenate([np.reshape(np.asarray(t[k], dtype), -1) for t in tensors])
            for k in first.inputs}
    sizes = tuple(int(np.size(t["params"])) for t in tensors)
    return Case(flat, dict(step=first.params["step"], sizes=sizes, **hyper))


def model_sizes(n: int) -> tuple[int, ...]:
    """50 tensor sizes summing to ``n``: 25 small vectors of ``max(1, n // 4096)`` elements,
    25 matrices sharing the rest in relative sizes 4:1:2:8:1 (repeating)."""
    small = max(1, n // 4096)
    rel = [(4, 1, 2, 8, 1)[i % 5] for i in range(MODEL_TENSORS // 2)]
    rest = n - small * len(rel)
    big = [rest * r // sum(rel) for r in rel]
    big[0] += rest - sum(big)
    return tuple(x for pair in zip(big, [small] * len(rel), strict=True) for x in pair)


def _model_size_case(name: str, n: int, dtype) -> Case:
    case = _size_case(name, n, dtype)
    return Case(case.inputs, dict(case.params, sizes=model_sizes(n)))


def _pieces(case: Case, key: str):
    """Separate copies of the case's tensors of input ``key`` (a model's separate tensors)."""
    return [a.copy() for a in _split_flat(case.inputs[key], case.params["sizes"], key)]


def _model_peer(name: str, **flags):
    """One in-place torch step over the model's 50 tensors (forward only)."""

    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        hyper = {k: val for k, val in case.params.items() if k not in ("step", "sizes")}
        ps = [torch.from_numpy(a) for a in _pieces(case, "params")]
        for p, g in zip(ps, _pieces(case, "grads"), strict=True):
            p.grad = torch.from_numpy(g)
        opt = _TORCH[name](ps, **flags, **hyper)
        for b in _BUFFERS[name](hyper):
            for p, a in zip(ps, _pieces(case, b), strict=True):
                opt.state[p][b] = torch.from_numpy(a)
        if name != "sgd":
            for p in ps:
                opt.state[p]["step"] = torch.tensor(float(case.params["step"] - 1))
        return opt.step

    return factory


def _model_inplace_peer(name: str):
    """The library's in-place step over copies of the model's 50 tensors, one call."""

    def factory(case: Case, pass_: str):
        if pass_ != "forward":
            return None
        hyper = {k: val for k, val in case.params.items() if k not in ("step", "sizes")}
        ps, gs = _pieces(case, "params"), _pieces(case, "grads")
        state = {b: _pieces(case, b) for b in _BUFFERS[name](hyper)}
        step_, t = getattr(O, f"{name}_"), case.params["step"]
        return lambda: step_(ps, gs, state, t, **hyper, opmath="dtype")

    return factory


def _model_invalid(name: str, base: dict) -> tuple[Invalid, ...]:
    def case(**over):
        def build():
            inputs = {"params": np.ones(3), "grads": np.ones(3)}
            inputs.update({b: np.ones(3) for b in _BUFFERS[name](base)})
            params = dict(base, step=2, sizes=(1, 2))
            for k, val in over.items():
                (inputs if k in inputs else params)[k] = val
            return Case(inputs, params)

        return build

    out = [Invalid("a negative lr", case(lr=-0.1), ValueError, r"\blr\b"),
           Invalid("grads of another length", case(grads=np.ones(4)), ValueError, r"\bgrads\b"),
           Invalid("params not flat", case(params=np.ones((3, 1))), ValueError, r"\bparams\b"),
           Invalid("grads of another dtype", case(grads=np.ones(3, np.float32)), TypeError,
                   r"\bgrads\b")]
    for b in _BUFFERS[name](base):
        out.append(Invalid(f"{b} of another length", case(**{b: np.ones(2)}), ValueError,
                           rf"\b{b}\b"))
    return tuple(out)


_CASES = {"sgd": _sgd_cases, "adam": lambda dtype: _adam_cases(dtype, False),
          "adamw": lambda dtype: _adam_cases(dtype, True)}
_MODEL_HYPER = {"sgd": dict(lr=0.1, momentum=0.9), "adam": dict(lr=0.1),
                "adamw": dict(lr=0.1)}
_FLOPS = {"sgd": 6, "adam": 14, "adamw": 15}

for _name in _MODELS:
    _key = f"{_name}_model"
    _model = _Model(_name)
    _SPECS[_key] = register(Spec(
        name=_key, family=FAMILY,
        summary=f"{_SPECS[_name].summary.split(':')[0]} over a model's list of tensors "
                f"(benchmarks: {MODEL_TENSORS} tensors of mixed sizes, one call)",
        forward=_model.forward, backward=_model.backward,
        grad_inputs=("params", "grads") + _ALL_BUFFERS[_name],
        n_diff_outputs=1 + len(_ALL_BUFFERS[_name]),
        torch=_model_twin(_name), cases=lambda dtype, n=_name: _model_cases(n, dtype),
        sizes={k: (lambda dtype, n=n, o=_name: _model_size_case(o, n, dtype))
               for k, n in _SIZES.items()},
        cost=_cost(_FLOPS[_name]), invariants=(_inv_lr_zero(_key),),
        invalid=_model_invalid(_name, _MODEL_HYPER[_name]),
        peers={"torch-foreach": _model_peer(_name, foreach=True),
               "torch-fused": _model_peer(_name, fused=True),
               "numba-inplace": _model_inplace_peer(_name)},
        smooth=None if _name == "sgd" else _off_kinks(_name),
        case_tol=_twin_error_tol(_key),
    ))
