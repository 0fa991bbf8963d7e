"""Specs of the recurrent networks: Elman RNN (tanh, relu), GRU, LSTM; one layer, and two
bidirectional layers.

Inputs, in this order: ``x``, the weights under torch's parameter names (``weight_ih_l0``, ...,
``bias_hh_l1_reverse``), then the optional initial states ``h0`` (and ``c0``), which a case may
leave out (the contract's trailing optional inputs: the reference then starts from zeros and
returns None for their gradients, torch gets no ``hx``). The twin is the torch module itself,
its parameters replaced by the case's tensors with ``torch.func.functional_call``, so autograd
reaches them.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from hypothesis import strategies as st
from torch.func import functional_call

from reference import rnn as R
from suites.catalog import register
from suites.catalog import strategies as S
from suites.catalog.spec import DEFAULT_TOL, FLOAT32, Case, Cost, Invalid, Invariant, Spec, Tol

FAMILY = "sequence"
_CELLS = {"rnn": 1, "gru": 3, "lstm": 4}  # gates per cell
_TORCH = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
_N_STATES = {"rnn": 1, "gru": 1, "lstm": 2}


# ---------------------------------------------------------------------------------------------
# calling conventions: spec inputs (x, *weights, [h0, [c0]]) <-> the reference and torch


def _split(cell, layers, dirs, arrays):
    n = 4 * layers * dirs
    weights, states = list(arrays[:n]), list(arrays[n:])
    return weights, states


def _forward(cell, layers, dirs):
    def forward(x, *arrays, batch_first=False, nonlinearity="tanh"):
        weights, states = _split(cell, layers, dirs, arrays)
        kw = dict(num_layers=layers, bidirectional=dirs == 2, batch_first=batch_first)
        h0 = states[0] if states else None
        if cell == "lstm":
            c0 = states[1] if len(states) > 1 else None
            return R.lstm(x, h0, c0, weights, **kw)
        if cell == "gru":
            return R.gru(x, h0, weights, **kw)
        return R.rnn(x, h0, weights, nonlinearity=nonlinearity, **kw)

    return forward


def _backward(cell):
    k = _N_STATES[cell]

    def backward(ctx, grad_out):
        back = {"lstm": R.lstm_backward, "gru": R.gru_backward}.get(cell, R.rnn_backward)
        grads = back(ctx, grad_out)
        dx, states, dweights = grads[0], grads[1: 1 + k], grads[1 + k:]
        return (dx, *dweights, *states)

    return backward


@functools.lru_cache(maxsize=64)
def _module(cell, in_size, hidden, layers, dirs, batch_first, nonlinearity, dtype, device):
    """One torch module per configuration, reused: building one initialises weights (slow)."""
    kw = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
    return _TORCH[cell](in_size, hidden, num_layers=layers, bidirectional=dirs == 2,
                        batch_first=batch_first, dtype=dtype, device=device, **kw)


def _twin(cell, layers, dirs):
    names = R.weight_names(layers, dirs == 2)

    def twin(x, *tensors, batch_first=False, nonlinearity="tanh"):
        weights, states = _split(cell, layers, dirs, tensors)
        hidden = weights[1].shape[1]
        module = _module(cell, x.shape[-1], hidden, layers, dirs, batch_first, nonlinearity,
                         x.dtype, x.device)
        args = (x,)
        if states:
            args = (x, tuple(states) if cell == "lstm" else states[0])
        out, hx = functional_call(module, dict(zip(names, weights, strict=True)), args)
        return (out, *hx) if cell == "lstm" else (out, hx)

    return twin


# ---------------------------------------------------------------------------------------------
# cases


def _weights(rng, cell, in_size, hidden, layers, dirs, dtype, *, rho, saturate):
    """torch's initialisation U(-1/sqrt(H), 1/sqrt(H)), with W_hh rescaled to spectral norm
    ``rho`` (the error amplification per step, see ``_tol``); ``saturate`` adds biases of
    magnitude 3..8 that pin the gates near 0 or 1."""
    gh = _CELLS[cell] * hidden
    k = 1.0 / math.sqrt(hidden)
    out = []
    for layer in range(layers):
        for _ in range(dirs):
            i_l = in_size if layer == 0 else dirs * hidden
            w_ih = rng.uniform(-k, k, (gh, i_l))
            w_hh = rng.uniform(-k, k, (gh, hidden))
            norm = np.linalg.norm(w_hh, 2)
            w_hh = w_hh * (rho / norm) if norm > 0 else w_hh
            b_ih, b_hh = rng.uniform(-k, k, gh), rng.uniform(-k, k, gh)
            if saturate:
                b_ih = b_ih + rng.choice([-1.0, 1.0], gh) * rng.uniform(3.0, 8.0, gh)
            out += [w_ih, w_hh, b_ih, b_hh]
    return [np.asarray(a, dtype) for a in out]


def _make(rng, cell, layers, dirs, dtype, *, steps, batch, in_size, hidden, batch_first,
          states, rho=0.9, saturate=False, x_scale=1.0, params=None) -> Case:
    names = R.weight_names(layers, dirs == 2)
    ws = _weights(rng, cell, in_size, hidden, layers, dirs, dtype, rho=rho, saturate=saturate)
    x_shape = (batch, steps, in_size) if batch_first else (steps, batch, in_size)
    inputs = {"x": S.normal(rng, x_shape, dtype, x_scale)}
    inputs.update(zip(names, ws, strict=True))
    for name in ("h0", "c0")[: _N_STATES[cell] if states else 0]:
        inputs[name] = S.normal(rng, (layers * dirs, batch, hidden), dtype, 0.5)
    return Case(inputs, {"batch_first": batch_first, **(params or {})})


@st.composite
def _cases(draw, dtype, cell, layers, dirs):
    # Mostly short sequences (fast, and where shrinking lands), a quarter long ones up to 128.
    steps = draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6),
                           st.sampled_from([33, 128])))
    regime = draw(st.sampled_from(["init", "saturating", "expanding"]))
    if regime == "expanding" and steps > 8:
        regime = "init"  # rho = 2 amplifies errors 2^T: meaningful for short sequences only
    rho = {"init": draw(st.sampled_from([0.5, 0.9, 1.0])), "saturating": 0.9,
           "expanding": 2.0}[regime]
    params = {}
    if cell == "rnn":
        params["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    return _make(
        draw(S.seeds()), cell, layers, dirs, dtype,
        steps=steps, batch=draw(st.integers(1, 4)), in_size=draw(st.integers(1, 6)),
        hidden=draw(st.integers(1, 7)), batch_first=draw(st.booleans()),
        states=draw(st.booleans()), rho=rho, saturate=regime == "saturating",
        x_scale=10.0 if regime == "saturating" else 1.0, params=params)


def _sizes(cell, layers, dirs):
    # The sizes: (batch, hidden, seq) = (8, 16, 32), (32, 128, 32), (64, 512, 32);
    # input size = hidden.
    def build(batch, hidden, steps):
        def make(dtype):
            params = {"nonlinearity": "tanh"} if cell == "rnn" else {}
            return _make(np.random.default_rng(0), cell, layers, dirs, dtype, steps=steps,
                         batch=batch, in_size=hidden, hidden=hidden, batch_first=False,
                         states=True, params=params)
        return make

    return {"small": build(8, 16, 32), "medium": build(32, 128, 32),
            "large": build(64, 512, 32)}


def _steps(case: Case) -> int:
    x = case.inputs["x"]
    return x.shape[1] if case.params.get("batch_first") else x.shape[0]


def _cost(cell, layers, dirs):
    g = _CELLS[cell]
    # Elementwise work per gate unit and step (activations, products, the state update).
    per_unit = {"rnn": 4, "gru": 20, "lstm": 25}[cell]

    def cost(case: Case) -> Cost:
        x = case.inputs["x"]
        steps, batch = _steps(case), x.size // (_steps(case) * x.shape[-1])
        hidden = case.inputs["weight_hh_l0"].shape[1]
        flops = 0.0
        for layer in range(layers):
            i_l = x.shape[-1] if layer == 0 else dirs * hidden
            flops += dirs * steps * batch * (2 * g * hidden * (i_l + hidden) + per_unit * hidden)
        n_in = sum(a.size for a in case.inputs.values())
        out = steps * batch * dirs * hidden + layers * dirs * batch * hidden * _N_STATES[cell]
        return Cost(flops=flops, bytes=(n_in + out) * x.itemsize)

    return cost


# ---------------------------------------------------------------------------------------------
# tolerances
#
# float32, derived from the sequence length T. One step computes a = W_ih x + W_hh h + b with
# float32 dot products of I and H terms, then the cell's elementwise update, so each side's
# state carries a fresh rounding error e <= c u S per step (u = 2^-24, S the size of the
# products, c a few units for the sqrt(I + H)-term sums). An earlier error is carried to
# step t through the step Jacobians, whose norm is at most rho * max|phi'| (rho = ||W_hh||_2
# <= 1 in the cases that run long; tanh' <= 1, sigma' <= 1/4; the LSTM cell path f <= 1).
# So after T steps the state errs by at most sum_{k<T} 1 * e = T e: linear growth, which
# the forward tolerance follows with T/4 (torch.testing's float32 defaults cover about four
# steps' worth of the rounding above: atol 1e-5 is 168 u). Backpropagation through time runs
# the same contraction backwards (the transposed Jacobians have the same norms), and its
# weight gradients sum T*B per-step products whose own errors are bounded as above, so a
# gradient accumulates T step errors each carried at most T steps: T^2/2 in the worst case,
# T in the typical (errors of random sign: sqrt(T) steps, each sqrt(T)); we allow T and check
# it holds with margin on the long cases (T = 128, ratio to the tolerance recorded).
# In the "expanding" cases (rho = 2, T <= 8) errors grow by up to 2^T, which the same sum
# bounds by sum_{k<T} 2^k < 2^T <= 256 = 2 * 128: those cases get the T = 128 tolerance.
# float64 keeps torch.testing's defaults: even 2^8 amplification of 1e-16 is far inside 1e-7.


def _tol(case: Case, upstream) -> Tol | None:
    if case.inputs["x"].dtype != FLOAT32:
        return None
    steps = _steps(case)
    rho = max(np.linalg.norm(case.inputs[n].astype(np.float64), 2)
              for n in case.inputs if n.startswith("weight_hh"))
    # sum_{k<T} rho^k: T when rho <= 1 (within rounding), (rho^T - 1) / (rho - 1) above
    growth = steps if rho <= 1.0 + 1e-6 else (rho ** steps - 1.0) / (rho - 1.0)
    factor = max(1.0, growth / 4.0)
    base = DEFAULT_TOL[FLOAT32]
    return Tol(rtol=base.rtol * factor, atol=base.atol * factor)


# ---------------------------------------------------------------------------------------------
# relu kinks, for the float64 central differences


_STEP = 1e-4  # the gradcheck's finite-difference step (suites/correctness/checks.py)


def _kink_gaps(case: Case) -> float:
    """min over all relu pre-activations a of |a| - margin(a), in float64 (numpy only).

    The stencil moves every input by up to h = 1e-4 along v ~ N(0, 1) per element, so
    a = W_ih z + b_ih + W_hh h + b_hh moves by about h * sqrt(|z|^2 + |W_ih[j]|^2 + |h|^2 +
    |W_hh[j]|^2 + 2) (one term per moving factor); the margin is four times that.
    """
    x = case.inputs["x"].astype(np.float64)
    if case.params.get("batch_first"):
        x = x.transpose(1, 0, 2)
    names = [n for n in case.inputs if n.startswith(("weight", "bias"))]
    dirs = 2 if any(n.endswith("_reverse") for n in names) else 1
    ws = [case.inputs[n].astype(np.float64) for n in names]
    steps, batch = x.shape[:2]
    hidden = ws[1].shape[1]
    h0 = case.inputs.get("h0")
    gap, inp = np.inf, x
    for layer in range(len(names) // (4 * dirs)):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, b_ih, b_hh = ws[4 * k: 4 * k + 4]
            rows = (w_ih ** 2).sum(1) + (w_hh ** 2).sum(1) + 2.0          # (H,)
            h = np.zeros((batch, hidden)) if h0 is None else h0[k].astype(np.float64)
            ys = np.empty((steps, batch, hidden))
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                a = inp[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh              # (B, H)
                moving = (inp[t] ** 2).sum(1)[:, None] + (h ** 2).sum(1)[:, None] + rows
                gap = min(gap, float(np.min(np.abs(a) - 4 * _STEP * np.sqrt(moving))))
                h = np.maximum(a, 0.0)
                ys[t] = h
            outs.append(ys)
        inp = np.concatenate(outs, axis=-1)
    return gap


def _off_kinks(case: Case) -> Case:
    """Move every relu pre-activation out of the finite-difference stencil's reach.

    Biases are redrawn (seeded perturbations of growing size, up to 400 tries) until every
    pre-activation clears its margin (``_kink_gaps``); the other inputs stay. Measure-zero in
    theory, but with thousands of pre-activations in a long sequence some land within 1e-3 of
    the kink; larger bias offsets spread the pre-activations and make a clear draw likelier.
    """
    if case.params.get("nonlinearity") != "relu":
        return case
    rng = np.random.default_rng(0)
    best, best_gap, current = case, -np.inf, case
    for attempt in range(400):
        gap = _kink_gaps(current)
        if gap > 0:
            return current
        if gap > best_gap:
            best, best_gap = current, gap
        inputs = dict(case.inputs)
        for n in inputs:
            if n.startswith("bias_ih"):
                b = inputs[n]
                spread = 0.3 * (1.0 + attempt / 40.0)
                inputs[n] = (b + rng.normal(0.0, spread, b.shape)).astype(b.dtype)
        current = Case(inputs, case.params)
    return best


# ---------------------------------------------------------------------------------------------
# invariants (no oracle)


def _single_layer_relations(cell):
    """Bidirectional = forward on x, and forward on x reversed in time; two stacked layers =
    one layer applied twice. Both from one-layer calls of the reference on this case's weights,
    so the stacked and bidirectional paths are checked against the plain one."""

    def check(case: Case, outs) -> None:
        fwd = _forward(cell, 1, 1)
        params = dict(case.params)
        bf = params.get("batch_first", False)
        time_axis = 1 if bf else 0
        x = case.inputs["x"]
        ws = [case.inputs[n] for n in R.weight_names(1, False)]
        states = [case.inputs[n] for n in ("h0", "c0") if n in case.inputs]
        eps = float(np.finfo(x.dtype).eps)
        tol = 64 * eps * max(1, _steps(case))
        # reversal: the reverse direction of a bidirectional layer whose both directions
        # share these weights equals the forward layer run on the reversed sequence
        bi = _forward(cell, 1, 2)
        st2 = [np.concatenate([s, s]) for s in states]
        (out2, *_), _ = bi(x, *(ws + ws), *st2, **params)
        (rev, *_), _ = fwd(np.flip(x, time_axis).copy(), *ws, *states, **params)
        hidden = ws[1].shape[1]
        np.testing.assert_allclose(out2[..., :hidden], outs[0], rtol=tol, atol=tol,
                                   err_msg="bidirectional, forward half != one-layer output")
        np.testing.assert_allclose(out2[..., hidden:], np.flip(rev, time_axis), rtol=tol,
                                   atol=tol, err_msg="bidirectional, reverse half != one-layer "
                                   "output on the reversed sequence")
        # stacking: layer 2 takes layer 1's output; weights for it from a seeded draw
        rng = np.random.default_rng(x.size)
        g = _CELLS[cell]
        w2 = [S.normal(rng, s, x.dtype, 1 / math.sqrt(hidden))
              for s in ((g * hidden, hidden), (g * hidden, hidden), (g * hidden,), (g * hidden,))]
        st_two = [np.concatenate([s, s]) for s in states]
        (out_two, *_), _ = _forward(cell, 2, 1)(x, *ws, *w2, *st_two, **params)
        (again, *_), _ = fwd(outs[0], *w2, *states, **params)
        np.testing.assert_allclose(out_two, again, rtol=tol, atol=tol,
                                   err_msg="two stacked layers != one layer applied twice")

    return Invariant("bidirectional = forward + reversed; two layers = one layer twice", check)


def _state_is_last_output(cell, dirs):
    def check(case: Case, outs) -> None:
        out, h_n = outs[0], outs[1]
        bf = case.params.get("batch_first", False)
        hidden = case.inputs["weight_hh_l0"].shape[1]
        seq = out if bf else out.transpose(1, 0, 2)  # (B, T, D*H)
        k = h_n.shape[0] - dirs  # the last layer's states
        np.testing.assert_array_equal(h_n[k], seq[:, -1, :hidden])
        if dirs == 2:
            np.testing.assert_array_equal(h_n[k + 1], seq[:, 0, hidden:])

    return Invariant("h_n is the last layer's output at the last step of each direction", check)


# ---------------------------------------------------------------------------------------------
# invalid inputs


def _small(cell, layers=1, dirs=1, **kw):
    def make():
        args = dict(steps=3, batch=2, in_size=4, hidden=5, batch_first=False, states=True)
        args.update(kw)
        params = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        return _make(np.random.default_rng(0), cell, layers, dirs, np.dtype(np.float64),
                     params=params, **args)
    return make


def _edit(make, **changes):
    def build():
        case = make()
        inputs = dict(case.inputs)
        params = dict(case.params)
        for k, val in changes.items():
            if k in inputs:
                inputs[k] = val(inputs[k]) if callable(val) else val
            else:
                params[k] = val
        return Case(inputs, params)
    return build


def _invalid(cell, layers, dirs):
    base = _small(cell, layers, dirs)
    empty = _small(cell, layers, dirs, steps=1)
    out = [
        Invalid("a sequence of length 0", _edit(empty, x=lambda x: x[:0]), ValueError,
                r"\bx\b.*length"),
        Invalid("hidden size of h0 differs from the weights' (5)",
                _edit(base, h0=lambda h: h[..., :4]), ValueError, r"\bh0\b"),
        Invalid("weight_hh_l0 not (G*H, H)",
                _edit(base, weight_hh_l0=lambda w: w[:, :4]), ValueError, "weight_hh_l0"),
        Invalid("weight_ih_l0 for another input size",
                _edit(base, weight_ih_l0=lambda w: w[:, :3]), ValueError, "weight_ih_l0"),
        Invalid("x 2-dimensional (unbatched)", _edit(base, x=lambda x: x[:, 0]), ValueError,
                r"\bx\b"),
        Invalid("batch_first not a bool", _edit(base, batch_first="yes"), TypeError,
                "batch_first"),
    ]
    if cell == "lstm":
        out.append(Invalid("c0 of another batch size", _edit(base, c0=lambda c: c[:, :1]),
                           ValueError, r"\bc0\b"))
    if cell == "rnn":
        out.append(Invalid("an unknown nonlinearity", _edit(base, nonlinearity="sigmoid"),
                           ValueError, "nonlinearity"))
    if layers > 1:
        out.append(Invalid("layer 1's input size is not D*H",
                           _edit(base, weight_ih_l1=lambda w: w[:, :3]), ValueError,
                           "weight_ih_l1"))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# registration

_SUMMARY = {
    "rnn": "Elman RNN (tanh or relu) over a sequence, as torch.nn.RNN",
    "gru": "GRU over a sequence, as torch.nn.GRU (reset gate on W_hn h + b_hn)",
    "lstm": "LSTM over a sequence, as torch.nn.LSTM",
}

for _cell in _CELLS:
    for _layers, _dirs in ((1, 1), (2, 2)):
        _names = R.weight_names(_layers, _dirs == 2)
        _states = ("h0", "c0")[: _N_STATES[_cell]]
        _stacked = _layers > 1
        register(Spec(
            name=f"{_cell}_2layer_bidirectional" if _stacked else _cell,
            family=FAMILY,
            summary=_SUMMARY[_cell] + ("; two layers, bidirectional" if _stacked else ""),
            forward=_forward(_cell, _layers, _dirs),
            backward=_backward(_cell),
            grad_inputs=("x", *_names, *_states),
            n_diff_outputs=2 + (_cell == "lstm"),
            torch=_twin(_cell, _layers, _dirs),
            cases=functools.partial(_cases, cell=_cell, layers=_layers, dirs=_dirs),
            sizes=_sizes(_cell, _layers, _dirs),
            cost=_cost(_cell, _layers, _dirs),
            case_tol=_tol,
            smooth=_off_kinks if _cell == "rnn" else None,
            invariants=(_state_is_last_output(_cell, _dirs),)
            + (() if _stacked else (_single_layer_relations(_cell),)),
            invalid=_invalid(_cell, _layers, _dirs),
        ))
