"""Specs of the recurrent networks: Elman RNN (tanh, relu), GRU, LSTM; one layer, and two
bidirectional layers; every option torch's modules take: ``bias=False``, the LSTM's
``proj_size``, dropout between layers (two-layer specs) and packed variable-length sequences.

Inputs, in this order: ``x``, the weights under torch's parameter names for the case's options
(``weight_ih_l0``, ..., ``bias_hh_l1_reverse``, ``weight_hr_l1_reverse``: without biases when
``bias=False``, with ``weight_hr`` when ``proj_size > 0``), then the optional initial states
``h0`` (and ``c0``), which a case may leave out (the reference then starts from zeros and
returns None for their gradients, torch gets no ``hx``). ``grad_inputs`` names every weight
any case can have; a case's backward gives None for the ones its options leave out (the
biases of ``bias=False``, ``weight_hr`` without a projection), as for any optional input.

Parameters: ``batch_first``, ``bias``, ``proj_size`` (LSTM), ``nonlinearity`` (RNN),
``lengths`` (None or an int array (B,) in [1, T]), and for the two-layer specs ``dropout`` with
``dropout_mask`` (None or a bool keep-mask (1, *out)). The masks and lengths are parameters,
not inputs: they are not differentiable, and the weights' count (which the calling convention
reads from ``bias``/``proj_size``) must not depend on them.

The twin is the torch module itself, its parameters replaced by the case's tensors with
``torch.func.functional_call``, so autograd reaches them; with ``lengths`` it runs on
``pack_padded_sequence(..., enforce_sorted=False)`` and unpacks with ``pad_packed_sequence(...,
total_length=T)``. torch draws its dropout masks itself, so with a ``dropout_mask`` the twin
runs the stack layer by layer (one-layer modules with that layer's weights, packed the same
way) and multiplies each layer's output but the last by ``mask / (1 - p)`` as torch's dropout
does (``noise = bernoulli / (1 - p)``, ``input * noise``; ``input * 0`` when ``p = 1``). That
this layered twin is torch's own multi-layer module in training mode, given the masks torch
draws, is checked in ``suites/correctness/test_rnn.py``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from hypothesis import strategies as st
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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


def _options(cell, bias, proj_size):
    """(bias, proj) as the weights' count reads them; a malformed value counts as the default
    (the reference then refuses it by name)."""
    has_bias = bias if isinstance(bias, bool | np.bool_) else True
    proj = (proj_size if cell == "lstm" and isinstance(proj_size, int)
            and not isinstance(proj_size, bool) and proj_size > 0 else 0)
    return bool(has_bias), proj


def _split(cell, layers, dirs, arrays, bias=True, proj_size=0):
    has_bias, proj = _options(cell, bias, proj_size)
    n = len(R.weight_names(layers, dirs == 2, has_bias, proj))
    return list(arrays[:n]), list(arrays[n:])


def _forward(cell, layers, dirs):
    def forward(x, *arrays, batch_first=False, nonlinearity="tanh", bias=True, proj_size=0,
                dropout=0.0, dropout_mask=None, lengths=None):
        weights, states = _split(cell, layers, dirs, arrays, bias, proj_size)
        kw = dict(num_layers=layers, bidirectional=dirs == 2, batch_first=batch_first,
                  bias=bias, proj_size=proj_size, dropout=dropout, dropout_mask=dropout_mask,
                  lengths=lengths)
        h0 = states[0] if states else None
        if cell == "lstm":
            c0 = states[1] if len(states) > 1 else None
            return R.lstm(x, h0, c0, weights, **kw)
        if cell == "gru":
            return R.gru(x, h0, weights, **kw)
        return R.rnn(x, h0, weights, nonlinearity=nonlinearity, **kw)

    return forward


def _all_weight_names(cell, layers, dirs):
    return R.weight_names(layers, dirs == 2, True, 1 if cell == "lstm" else 0)


def _backward(cell, layers, dirs):
    k = _N_STATES[cell]
    every = _all_weight_names(cell, layers, dirs)

    def backward(ctx, grad_out):
        back = {"lstm": R.lstm_backward, "gru": R.gru_backward}.get(cell, R.rnn_backward)
        grads = back(ctx, grad_out)
        dx, states, dweights = grads[0], grads[1: 1 + k], grads[1 + k:]
        proj = 1 if cell == "lstm" and ctx.ms[0] is not None else 0
        have = dict(zip(R.weight_names(layers, dirs == 2, ctx.shape.bias, proj), dweights,
                        strict=True))
        return (dx, *(have.get(n) for n in every), *states)

    return backward


@functools.lru_cache(maxsize=64)
def _module(cell, in_size, hidden, layers, dirs, batch_first, nonlinearity, bias, proj,
            dtype, device):
    """One torch module per configuration, reused: building one initialises weights (slow)."""
    kw = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
    if proj:
        kw["proj_size"] = proj
    return _TORCH[cell](in_size, hidden, num_layers=layers, bidirectional=dirs == 2,
                        batch_first=batch_first, bias=bias, dtype=dtype, device=device, **kw)


def _run_module(cell, layers, dirs, x, weights, states, *, batch_first, nonlinearity, bias,
                proj, lengths):
    """torch's module on x (packed by ``lengths`` when given): (out, h_n[, c_n])."""
    hidden = weights[1].shape[0] // _CELLS[cell]
    module = _module(cell, x.shape[-1], hidden, layers, dirs, batch_first, nonlinearity, bias,
                     proj, x.dtype, x.device)
    names = R.weight_names(layers, dirs == 2, bias, proj)
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                                   batch_first=batch_first, enforce_sorted=False)
    args = (inp,)
    if states:
        args = (inp, tuple(states) if cell == "lstm" else states[0])
    out, hx = functional_call(module, dict(zip(names, weights, strict=True)), args)
    if lengths is not None:
        steps = x.shape[1] if batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=steps)
    return (out, *hx) if cell == "lstm" else (out, hx)


def _twin(cell, layers, dirs):
    def twin(x, *tensors, batch_first=False, nonlinearity="tanh", bias=True, proj_size=0,
             dropout=0.0, dropout_mask=None, lengths=None):
        weights, states = _split(cell, layers, dirs, tensors, bias, proj_size)
        opts = dict(batch_first=batch_first, nonlinearity=nonlinearity, bias=bias,
                    proj=proj_size if cell == "lstm" else 0, lengths=lengths)
        if dropout_mask is None or layers == 1:
            return _run_module(cell, layers, dirs, x, weights, states, **opts)
        # Layer by layer, with the case's masks between layers (see the module docstring).
        per = len(weights) // (layers * dirs)
        inp, finals = x, []
        for layer in range(layers):
            ws = weights[per * dirs * layer: per * dirs * (layer + 1)]
            sts = [s[dirs * layer: dirs * (layer + 1)] for s in states]
            outs = _run_module(cell, 1, dirs, inp, ws, sts, **opts)
            finals.append(outs[1:])
            inp = outs[0]
            if layer < layers - 1:
                keep = torch.as_tensor(np.asarray(dropout_mask[layer])).to(inp.device)
                inp = inp * 0 if dropout == 1 else inp * (keep.to(inp.dtype) / (1 - dropout))
        return (inp, *(torch.cat(parts) for parts in zip(*finals, strict=True)))

    return twin


# ---------------------------------------------------------------------------------------------
# cases


def _weights(rng, cell, in_size, hidden, layers, dirs, dtype, *, rho, saturate, bias=True,
             proj=0):
    """torch's initialisation U(-1/sqrt(H), 1/sqrt(H)), with W_hh rescaled to spectral norm
    ``rho`` (the error amplification per step, see ``_tol``) and W_hr to norm 1; ``saturate``
    adds biases of magnitude 3..8 that pin the gates near 0 or 1."""
    gh = _CELLS[cell] * hidden
    hout = proj or hidden
    k = 1.0 / math.sqrt(hidden)
    out = []
    for layer in range(layers):
        for _ in range(dirs):
            i_l = in_size if layer == 0 else dirs * hout
            w_ih = rng.uniform(-k, k, (gh, i_l))
            w_hh = rng.uniform(-k, k, (gh, hout))
            norm = np.linalg.norm(w_hh, 2)
            w_hh = w_hh * (rho / norm) if norm > 0 else w_hh
            b_ih, b_hh = rng.uniform(-k, k, gh), rng.uniform(-k, k, gh)
            if saturate:
                b_ih = b_ih + rng.choice([-1.0, 1.0], gh) * rng.uniform(3.0, 8.0, gh)
            out += [w_ih, w_hh] + ([b_ih, b_hh] if bias else [])
            if proj:
                w_hr = rng.uniform(-k, k, (proj, hidden))
                out.append(w_hr / max(1.0, np.linalg.norm(w_hr, 2)))
    return [np.asarray(a, dtype) for a in out]


def _make(rng, cell, layers, dirs, dtype, *, steps, batch, in_size, hidden, batch_first,
          states, rho=0.9, saturate=False, x_scale=1.0, params=None, bias=True, proj=0,
          lengths=None, dropout=None) -> Case:
    """A case; ``lengths`` "random" draws them, ``dropout`` p draws a keep-mask over 1 - p."""
    names = R.weight_names(layers, dirs == 2, bias, proj)
    ws = _weights(rng, cell, in_size, hidden, layers, dirs, dtype, rho=rho, saturate=saturate,
                  bias=bias, proj=proj)
    x_shape = (batch, steps, in_size) if batch_first else (steps, batch, in_size)
    inputs = {"x": S.normal(rng, x_shape, dtype, x_scale)}
    inputs.update(zip(names, ws, strict=True))
    hout = proj or hidden
    for name, size in (("h0", hout), ("c0", hidden))[: _N_STATES[cell] if states else 0]:
        inputs[name] = S.normal(rng, (layers * dirs, batch, size), dtype, 0.5)
    params = {"batch_first": batch_first, "bias": bias, **(params or {})}
    if cell == "lstm":
        params["proj_size"] = proj
    if isinstance(lengths, str):
        lengths = rng.integers(1, steps + 1, batch)
    params["lengths"] = lengths
    if layers > 1:
        params["dropout"] = float(dropout or 0.0)
        mask = None
        if dropout is not None:
            out_shape = (batch, steps) if batch_first else (steps, batch)
            mask = rng.random((layers - 1, *out_shape, dirs * hout)) >= dropout
        params["dropout_mask"] = mask
    return Case(inputs, params)


@st.composite
def _cases(draw, dtype, cell, layers, dirs):
    # Mostly short sequences (fast, and where shrinking lands), a quarter long ones: up to 128
    # steps for one layer, 33 for the two-layer specs (four recurrences, and with a mask the
    # twin runs layer by layer: the cost of their ci run; the tolerance's growth with T is
    # checked at 128 by the one-layer specs).
    long = [33] if layers > 1 else [33, 128]
    steps = draw(st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6),
                           st.sampled_from(long)))
    regime = draw(st.sampled_from(["init", "saturating", "expanding"]))
    if regime == "expanding" and steps > 8:
        regime = "init"  # rho = 2 amplifies errors 2^T: meaningful for short sequences only
    rho = {"init": draw(st.sampled_from([0.5, 0.9, 1.0])), "saturating": 0.9,
           "expanding": 2.0}[regime]
    params = {}
    if cell == "rnn":
        params["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    hidden = draw(st.integers(1, 7))
    proj = 0
    if cell == "lstm" and hidden > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, hidden - 1))
    # dropout: None (no mask: evaluation mode), or p with a mask drawn over 1 - p (p = 0 with
    # a mask is plain masking, p = 1 drops everything)
    dropout = draw(st.sampled_from([None, 0.0, 0.3, 0.5, 1.0])) if layers > 1 else None
    return _make(
        draw(S.seeds()), cell, layers, dirs, dtype,
        steps=steps, batch=draw(st.integers(1, 4)), in_size=draw(st.integers(1, 6)),
        hidden=hidden, batch_first=draw(st.booleans()),
        states=draw(st.booleans()), rho=rho, saturate=regime == "saturating",
        x_scale=10.0 if regime == "saturating" else 1.0, params=params,
        bias=draw(st.booleans()), proj=proj,
        lengths=draw(st.sampled_from([None, "random"])), dropout=dropout)


def _sizes(cell, layers, dirs):
    # The sizes: (batch, hidden, seq) = (8, 16, 32), (32, 128, 32), (64, 512, 32);
    # input size = hidden; torch's defaults for every option.
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
        w_hh = case.inputs["weight_hh_l0"]
        hidden, hout = w_hh.shape[0] // g, w_hh.shape[1]
        flops = 0.0
        for layer in range(layers):
            i_l = x.shape[-1] if layer == 0 else dirs * hout
            flops += dirs * steps * batch * (2 * g * hidden * (i_l + hout) + per_unit * hidden
                                             + (2 * hidden * hout if hout != hidden else 0))
        n_in = sum(a.size for a in case.inputs.values())
        out = steps * batch * dirs * hout + layers * dirs * batch * (hout + hidden * (g == 4))
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
    # rho: the recurrence's gain per step, ||W_hh||_2 (times ||W_hr||_2 <= 1 with a projection)
    rho = max(np.linalg.norm(case.inputs[n].astype(np.float64), 2)
              * (np.linalg.norm(case.inputs[n.replace("weight_hh", "weight_hr")]
                                .astype(np.float64), 2)
                 if n.replace("weight_hh", "weight_hr") in case.inputs else 1.0)
              for n in case.inputs if n.startswith("weight_hh"))
    # sum_{k<T} rho^k: T when rho <= 1 (within rounding), (rho^T - 1) / (rho - 1) above
    growth = steps if rho <= 1.0 + 1e-6 else (rho ** steps - 1.0) / (rho - 1.0)
    factor = max(1.0, growth / 4.0)
    base = DEFAULT_TOL[FLOAT32]
    return Tol(rtol=base.rtol * factor, atol=base.atol * factor)


# ---------------------------------------------------------------------------------------------
# relu kinks, for the float64 central differences


_STEP = 1e-4  # the gradcheck's finite-difference step (suites/correctness/checks.py)


def _time_major(a, batch_first):
    return a.transpose(1, 0, 2) if batch_first else a


def _kink_gaps(case: Case) -> float:
    """min over all relu pre-activations a of active steps of |a| - margin(a), in float64.

    The stencil moves every input by up to h = 1e-4 along v ~ N(0, 1) per element, so
    a = W_ih z + b_ih + W_hh h + b_hh moves by about h * sqrt(|z|^2 + |W_ih[j]|^2 + |h|^2 +
    |W_hh[j]|^2 + 2) (one term per moving factor); the margin is four times that.
    """
    p = case.params
    bf, bias = p.get("batch_first", False), p.get("bias", True)
    x = _time_major(case.inputs["x"].astype(np.float64), bf)
    names = [n for n in case.inputs if n.startswith(("weight", "bias"))]
    dirs = 2 if any(n.endswith("_reverse") for n in names) else 1
    per = 4 if bias else 2
    ws = [case.inputs[n].astype(np.float64) for n in names]
    steps, batch = x.shape[:2]
    hidden = ws[1].shape[1]
    lens = p.get("lengths")
    lens = np.full(batch, steps) if lens is None else np.asarray(lens)
    mask, drop = p.get("dropout_mask"), p.get("dropout", 0.0)
    h0 = case.inputs.get("h0")
    gap, inp = np.inf, x
    layers = len(names) // (per * dirs)
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh = ws[per * k], ws[per * k + 1]
            b = ws[per * k + 2] + ws[per * k + 3] if bias else np.zeros(hidden)
            rows = (w_ih ** 2).sum(1) + (w_hh ** 2).sum(1) + 2.0          # (H,)
            h = np.zeros((batch, hidden)) if h0 is None else h0[k].astype(np.float64)
            ys = np.zeros((steps, batch, hidden))
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                act = t < lens
                a = inp[t] @ w_ih.T + h @ w_hh.T + b                      # (B, H)
                moving = (inp[t] ** 2).sum(1)[:, None] + (h ** 2).sum(1)[:, None] + rows
                margin = np.abs(a) - 4 * _STEP * np.sqrt(moving)
                if act.any():
                    gap = min(gap, float(np.min(margin[act])))
                h = np.where(act[:, None], np.maximum(a, 0.0), h)
                ys[t] = np.where(act[:, None], h, 0.0)
            outs.append(ys)
        inp = np.concatenate(outs, axis=-1)
        if mask is not None and layer < layers - 1:
            keep = _time_major(np.asarray(mask[layer]), bf)
            inp = inp * 0.0 if drop == 1 else inp * keep / (1.0 - drop)
    return gap


def _off_kinks(case: Case) -> Case:
    """Move every relu pre-activation out of the finite-difference stencil's reach.

    Biases (x itself for ``bias=False``) are redrawn (seeded perturbations of growing size,
    up to 400 tries) until every pre-activation clears its margin (``_kink_gaps``); the other
    inputs stay. Measure-zero in theory, but with thousands of pre-activations in a long
    sequence some land within 1e-3 of the kink; larger offsets spread the pre-activations and
    make a clear draw likelier.
    """
    if case.params.get("nonlinearity") != "relu":
        return case
    rng = np.random.default_rng(0)
    best, best_gap, current = case, -np.inf, case
    moved = [n for n in case.inputs if n.startswith("bias_ih")] or ["x"]
    for attempt in range(400):
        gap = _kink_gaps(current)
        if gap > 0:
            return current
        if gap > best_gap:
            best, best_gap = current, gap
        inputs = dict(case.inputs)
        for n in moved:
            b = inputs[n]
            spread = 0.3 * (1.0 + attempt / 40.0)
            inputs[n] = (b + rng.normal(0.0, spread, b.shape)).astype(b.dtype)
        current = Case(inputs, case.params)
    return best


# ---------------------------------------------------------------------------------------------
# invariants (no oracle)


def _reverse_each(a, lens, time_axis):
    """Each sequence reversed within its own length (padding stays where it is)."""
    out = a.copy()
    for b, n in enumerate(lens):
        if time_axis == 0:
            out[:n, b] = a[:n, b][::-1]
        else:
            out[b, :n] = a[b, :n][::-1]
    return out


def _single_layer_relations(cell):
    """Bidirectional = forward on x, and forward on x reversed in time (each sequence within
    its own length); two stacked layers = one layer applied twice. Both from one-layer calls
    of the reference on this case's weights, so the stacked and bidirectional paths are
    checked against the plain one."""

    def check(case: Case, outs) -> None:
        fwd = _forward(cell, 1, 1)
        params = dict(case.params)
        bf = params.get("batch_first", False)
        time_axis = 1 if bf else 0
        x = case.inputs["x"]
        lens = params.get("lengths")
        lens = np.full(x.shape[1 - time_axis], _steps(case)) if lens is None else lens
        names = [n for n in case.inputs if n.startswith(("weight", "bias"))]
        ws = [case.inputs[n] for n in names]
        states = [case.inputs[n] for n in ("h0", "c0") if n in case.inputs]
        eps = float(np.finfo(x.dtype).eps)
        tol = 64 * eps * max(1, _steps(case))
        # reversal: the reverse direction of a bidirectional layer whose both directions
        # share these weights equals the forward layer run on the reversed sequences
        bi = _forward(cell, 1, 2)
        st2 = [np.concatenate([s, s]) for s in states]
        (out2, *_), _ = bi(x, *(ws + ws), *st2, **params)
        (rev, *_), _ = fwd(_reverse_each(x, lens, time_axis), *ws, *states, **params)
        hout = outs[0].shape[-1]
        np.testing.assert_allclose(out2[..., :hout], outs[0], rtol=tol, atol=tol,
                                   err_msg="bidirectional, forward half != one-layer output")
        np.testing.assert_allclose(out2[..., hout:], _reverse_each(rev, lens, time_axis),
                                   rtol=tol, atol=tol, err_msg="bidirectional, reverse half != "
                                   "one-layer output on the reversed sequences")
        # stacking: layer 2 takes layer 1's output; weights for it from a seeded draw
        rng = np.random.default_rng(x.size)
        hidden = ws[1].shape[0] // _CELLS[cell]
        w2 = _weights(rng, cell, hout, hidden, 1, 1, x.dtype, rho=0.9, saturate=False,
                      bias=params.get("bias", True), proj=params.get("proj_size", 0))
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
        hout = out.shape[-1] // dirs
        seq = out if bf else out.transpose(1, 0, 2)  # (B, T, D*P)
        lens = case.params.get("lengths")
        lens = np.full(seq.shape[0], seq.shape[1]) if lens is None else lens
        k = h_n.shape[0] - dirs  # the last layer's states
        batch = np.arange(seq.shape[0])
        np.testing.assert_array_equal(h_n[k], seq[batch, lens - 1, :hout])
        if dirs == 2:
            np.testing.assert_array_equal(h_n[k + 1], seq[:, 0, hout:])
        pad = np.arange(seq.shape[1])[None, :] >= lens[:, None]
        assert not np.any(seq[pad]), "outputs past a sequence's length are not zero"

    return Invariant("h_n is the last layer's output at each sequence's last step of each "
                     "direction; outputs past a length are zero", check)


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
                params[k] = val(params[k]) if callable(val) else val
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
        Invalid("a length of 0", _edit(base, lengths=np.array([3, 0])), ValueError,
                r"\blengths\b.*\[1, 3\]"),
        Invalid("a length beyond T", _edit(base, lengths=np.array([4, 1])), ValueError,
                r"\blengths\b.*\[1, 3\]"),
        Invalid("lengths for another batch size", _edit(base, lengths=np.array([3, 2, 1])),
                ValueError, r"\blengths\b"),
        Invalid("lengths of floats", _edit(base, lengths=np.array([3.0, 2.0])), TypeError,
                r"\blengths\b"),
        Invalid("bias not a bool", _edit(base, bias="no"), TypeError, r"\bbias\b"),
    ]
    if cell == "lstm":
        out.append(Invalid("c0 of another batch size", _edit(base, c0=lambda c: c[:, :1]),
                           ValueError, r"\bc0\b"))
        proj = _small(cell, layers, dirs, proj=2)
        out += [
            Invalid("proj_size equal to the hidden size (5)", _edit(proj, proj_size=5),
                    ValueError, r"\bproj_size\b.*smaller"),
            Invalid("proj_size above the hidden size", _edit(proj, proj_size=6), ValueError,
                    r"\bproj_size\b.*smaller"),
            Invalid("h0 of size H instead of proj_size", _edit(
                proj, h0=lambda h: np.zeros(h.shape[:2] + (5,))), ValueError, r"\bh0\b"),
            Invalid("weight_hr_l0 of the wrong shape", _edit(
                proj, weight_hr_l0=lambda w: w[:1]), ValueError, r"\bweight_hr_l0\b"),
            Invalid("proj_size negative", _edit(base, proj_size=-1), ValueError,
                    r"\bproj_size\b"),
        ]
    else:
        out.append(Invalid("proj_size on a non-LSTM cell", _edit(base, proj_size=2),
                           ValueError, r"\bproj_size\b.*LSTM"))
    if cell == "rnn":
        out.append(Invalid("an unknown nonlinearity", _edit(base, nonlinearity="sigmoid"),
                           ValueError, "nonlinearity"))
    if layers > 1:
        masked = _small(cell, layers, dirs, dropout=0.5)
        out += [
            Invalid("layer 1's input size is not D*H",
                    _edit(base, weight_ih_l1=lambda w: w[:, :3]), ValueError, "weight_ih_l1"),
            Invalid("dropout > 0 without a mask", _edit(masked, dropout_mask=None),
                    ValueError, r"\bdropout_mask\b"),
            Invalid("a mask for every layer (one too many)", _edit(
                masked, dropout_mask=lambda m: np.concatenate([m, m])), ValueError,
                r"\bdropout_mask\b.*shape"),
            Invalid("a mask in the batch-first layout of a time-major x", _edit(
                masked, dropout_mask=lambda m: m.transpose(0, 2, 1, 3).copy()), ValueError,
                r"\bdropout_mask\b.*shape"),
            Invalid("a float mask", _edit(masked, dropout_mask=lambda m: m.astype(np.float64)),
                    TypeError, r"\bdropout_mask\b"),
            Invalid("dropout above 1", _edit(masked, dropout=1.5), ValueError,
                    r"\bdropout\b"),
        ]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# registration

_SUMMARY = {
    "rnn": "Elman RNN (tanh or relu) over a sequence, as torch.nn.RNN",
    "gru": "GRU over a sequence, as torch.nn.GRU (reset gate on W_hn h + b_hn)",
    "lstm": "LSTM over a sequence, as torch.nn.LSTM (proj_size too)",
}

for _cell in _CELLS:
    for _layers, _dirs in ((1, 1), (2, 2)):
        _names = _all_weight_names(_cell, _layers, _dirs)
        _states = ("h0", "c0")[: _N_STATES[_cell]]
        _stacked = _layers > 1
        register(Spec(
            name=f"{_cell}_2layer_bidirectional" if _stacked else _cell,
            family=FAMILY,
            summary=_SUMMARY[_cell] + ("; two layers, bidirectional, dropout between them"
                                       if _stacked else "") + "; bias=False, packed lengths",
            forward=_forward(_cell, _layers, _dirs),
            backward=_backward(_cell, _layers, _dirs),
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
