"""Recurrent networks over whole sequences: Elman RNN, GRU, LSTM, with backpropagation through time.

Conventions follow ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` exactly (equations, gate order, weight
shapes, the layout of ``h_n``), so a module's parameters can be passed in as they are::

    (out, h_n), ctx = rnn(x, h0, weights, nonlinearity="tanh", num_layers=2, bidirectional=True)
    dx, dh0, *dweights = rnn_backward(ctx, (d_out, d_h_n))
    (out, h_n, c_n), ctx = lstm(x, h0, c0, weights, proj_size=4, lengths=lengths)
    dx, dh0, dc0, *dweights = lstm_backward(ctx, (d_out, d_h_n, d_c_n))

Shapes (``D = 2`` if bidirectional else 1; ``L = num_layers``; ``G`` gates: 1 RNN, 3 GRU, 4 LSTM;
``P = proj_size`` for an LSTM with a projection, else ``P = H``)::

    x      (T, B, I), or (B, T, I) with batch_first
    h0     (L*D, B, P); c0 (L*D, B, H); None means zeros (its gradient is then None)
    out    (T, B, D*P), or (B, T, D*P) with batch_first; h_n (L*D, B, P), c_n (L*D, B, H),
           index l*D + d
    weights, in torch's parameter order (``weight_names(L, bidirectional, bias, proj_size)``):
      for each layer l and direction (forward, then "_reverse"): weight_ih_l{l} (G*H, I_l),
      weight_hh_l{l} (G*H, P), then with ``bias`` bias_ih_l{l} (G*H,), bias_hh_l{l} (G*H,),
      then with ``proj_size`` weight_hr_l{l} (P, H); I_0 = I, I_l = D*P for l >= 1.

Options, as torch's modules take them:

- ``bias=False``: no bias vectors (the weights list leaves them out; so do the gradients).
- ``proj_size`` (LSTM only, ``0 < P < H``): ``h_t = W_hr (o_t \\odot \\tanh c_t)``.
- ``dropout`` with ``dropout_mask``: in training, torch multiplies the output of every layer but
  the last by a keep-mask over ``1 - dropout``. Here the mask is an explicit input, a bool
  array of shape ``(L-1, *out_l)`` (``out_l`` each layer's output shape, the layout of
  ``out``; True = keep), scaled by ``1/(1 - dropout)`` (``dropout = 1``: ``0 * y``, as torch).
  ``dropout > 0`` with more than one layer needs the mask; without dropout (``dropout = 0``,
  torch's evaluation mode) the mask may be None. One layer takes no dropout, as in torch.
- ``lengths`` (B,) integers in [1, T]: packed variable-length sequences, the result of
  ``pack_padded_sequence(x, lengths, enforce_sorted=False)``, the module and
  ``pad_packed_sequence(..., total_length=T)``. Element b's steps ``t >= lengths[b]`` are
  padding: its output there is zero, its input there is never read (its gradient is zero),
  ``h_n``/``c_n`` hold the state after its own last step, and the reverse direction starts
  at step ``lengths[b] - 1`` from h0.

Not supported: unbatched 2-d input.

Contexts: ``rnn_backward``, ``gru_backward`` and ``lstm_backward`` each refuse any context but
their own forward's (a TypeError naming ``ctx``) and check ``grad_out``'s entries against the
outputs' shapes and dtype. The context keeps private copies of the weights, x, the masks and
the lengths when they are the caller's arrays, so editing them in place before backward does
not change the gradients (one pass over the inputs; the recurrence costs T matrix products
per layer). The gradient of an output at a padded step is ignored (that output is the
constant 0).

Implementation (kernels in ``reference/_rnn_kernels.py``). A layer's input and output
sequences are matrices with one row per step and batch element (row ``t*B + b``: a
time-major tensor as it is, no copy); inside a layer the states and gates are feature-major,
``(features, T*B)``, so that per layer and direction the input projection is one matrix
product ``W_ih @ X^T`` for all steps, the recurrence per step is one product ``W_hh @ h`` for
all gates (h of shape ``(P, B)``, on one BLAS thread: see ``reference/_blas.py``), the gates,
the cell and the state of a step are one fused pass, and backward's weight gradients are
each one product over all steps. Matrix products run in the input's dtype (``reference/_blas.py``),
as torch's do; gate arithmetic is float64 with the vectorised functions of
``reference/_vmath.py`` (for float32 results accurate to well under a float32 ulp), rounded
once per stored value. The time loop of a layer runs inside one kernel, so there is no
per-step dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reference import _rnn_kernels as K
from reference import _validate as v
from reference._blas import SERIAL_MNK, dot_serial
from reference.layers import _scale_by_mask

__all__ = [
    "rnn", "rnn_backward", "gru", "gru_backward", "lstm", "lstm_backward", "weight_names",
]

_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


def weight_names(num_layers: int = 1, bidirectional: bool = False, bias: bool = True,
                 proj_size: int = 0) -> list[str]:
    """torch's parameter names in the order ``weights`` takes them (``_flat_weights_names``)."""
    kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    kinds += ["weight_hr"] if proj_size else []
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            names += [f"{kind}_l{layer}{suffix}" for kind in kinds]
    return names


# ---------------------------------------------------------------------------------------------
# validation and layout


class _Shape(NamedTuple):
    steps: int
    batch: int
    features: int
    hidden: int      # H: the cell's size
    out: int         # P: the state's size (proj_size, else H)
    layers: int
    directions: int
    dtype: np.dtype
    bias: bool
    per: int         # weights per layer and direction


def _check(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first, bias, proj_size):
    x = v.float_array(x, "x", ndim=3)
    layers = v.integer(num_layers, "num_layers", lo=1)
    dirs = 2 if v.boolean(bidirectional, "bidirectional") else 1
    batch_first = v.boolean(batch_first, "batch_first")
    bias = v.boolean(bias, "bias")
    proj = v.integer(proj_size, "proj_size", lo=0)
    if proj and mode != "lstm":
        raise ValueError(f"proj_size is supported for the LSTM only (as in torch), got "
                         f"proj_size={proj}")
    steps, batch = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    feat = x.shape[2]
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if steps == 0:
        raise ValueError(f"x must hold a sequence of length >= 1 {layout}, got shape {x.shape}")
    if batch == 0 or feat == 0:
        raise ValueError(f"x must have batch and feature sizes >= 1 {layout}, got {x.shape}")
    per = 2 + 2 * bias + (proj > 0)
    what = f"weight_names(num_layers, bidirectional, bias={bias}, proj_size={proj})"
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a sequence of {per} * num_layers * D arrays ({what}), "
                        f"got {type(weights).__name__}")
    if len(weights) != per * layers * dirs:  # checked before naming them: num_layers may be huge
        raise ValueError(f"weights must hold {per} * num_layers * D = {per * layers * dirs} "
                         f"arrays for num_layers={layers}, bidirectional={dirs == 2}, "
                         f"bias={bias}, proj_size={proj} ({what}), got {len(weights)}")
    names = weight_names(layers, dirs == 2, bias, proj)
    gates = _GATES[mode]
    w = [v.float_array(a, n, dtype=x.dtype) for a, n in zip(weights, names, strict=True)]
    whh0 = w[1]
    if whh0.ndim != 2 or whh0.shape[0] == 0 or whh0.shape[0] % gates or whh0.shape[1] == 0:
        raise ValueError(f"weight_hh_l0 must have shape ({gates}*H, P) with H, P >= 1 "
                         f"(P = proj_size, else H), got {whh0.shape}")
    hidden = whh0.shape[0] // gates
    hout = proj or hidden
    if proj and proj >= hidden:
        raise ValueError(f"proj_size must be smaller than the hidden size H = {hidden} "
                         f"(from weight_hh_l0 {whh0.shape}), got {proj}")
    gh = gates * hidden
    for k, (a, n) in enumerate(zip(w, names, strict=True)):
        layer, j = k // (per * dirs), k % per
        expect = ((gh, feat if layer == 0 else dirs * hout) if j == 0 else
                  (gh, hout) if j == 1 else
                  (hout, hidden) if proj and j == per - 1 else (gh,))
        if a.shape != expect:
            raise ValueError(f"{n} must have shape {expect} (hidden size {hidden} from "
                             f"weight_hh_l0, proj_size {proj}, input size {feat}), got {a.shape}")
    shape = _Shape(steps, batch, feat, hidden, hout, layers, dirs, x.dtype, bias, per)
    states = []
    for s, n, size in ((h0, "h0", hout), (c0, "c0", hidden)):
        if s is None:
            states.append(None)
            continue
        s = v.float_array(s, n, ndim=3, dtype=x.dtype)
        want = (layers * dirs, batch, size)
        if s.shape != want:
            raise ValueError(f"{n} must have shape (num_layers*D, B, {'P' if n == 'h0' else 'H'})"
                             f" = {want}, got {s.shape}")
        states.append(s)
    return x, w, states[0], states[1], shape


def _check_lengths(lengths, sh: _Shape):
    if lengths is None:
        return None
    lens = v.int_array(lengths, "lengths", ndim=1)
    if lens.shape != (sh.batch,):
        raise ValueError(f"lengths must have one entry per batch element, shape ({sh.batch},), "
                         f"got {lens.shape}")
    bad = (lens < 1) | (lens > sh.steps)
    if bad.any():
        raise ValueError(f"lengths must lie in [1, T] = [1, {sh.steps}] (packed sequences "
                         f"have at least one step), got {lens[bad][0]}")
    return lens


def _check_dropout(dropout, dropout_mask, sh: _Shape, batch_first):
    p = v.real(dropout, "dropout", lo=0.0, hi=1.0)
    out_shape = ((sh.batch, sh.steps) if batch_first else (sh.steps, sh.batch)) + (
        sh.directions * sh.out,)
    want = (sh.layers - 1, *out_shape)
    if dropout_mask is None:
        if p > 0 and sh.layers > 1:
            raise ValueError(f"dropout_mask must be given when dropout > 0 with num_layers > 1 "
                             f"(a bool keep-mask of shape (num_layers-1, *out) = {want}), "
                             f"got None")
        return p, None
    mask = v.bool_array(dropout_mask, "dropout_mask", shape=want,
                        like=" (num_layers - 1, then each layer's output shape)")
    return p, mask


def _rows(x, batch_first):
    """(T, B, F) or (B, T, F) -> (T*B, F), row t*B + b (a view when time-major)."""
    if batch_first:
        x = x.transpose(1, 0, 2).copy()  # whole rows of F move: a cheap copy
    return x.reshape(-1, x.shape[2])


def _unrows(a, steps, batch, batch_first):
    """(T*B, F) -> (T, B, F) (a view), or a (B, T, F) copy."""
    a3 = a.reshape(steps, batch, a.shape[1])
    return a3.transpose(1, 0, 2).copy() if batch_first else a3


def _states(s, layer, size, shape):
    """A layer's initial states, (D, size, B), a fresh array: kernels update it in place."""
    d = shape.directions
    if s is None:
        return np.zeros((d, size, shape.batch), shape.dtype)
    return s[layer * d:(layer + 1) * d].transpose(0, 2, 1).copy()


def _stack(arrays):
    """(D, ...) from D arrays of one shape: a view for one direction."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def _transposed(arrays):
    """(D, n, m) from D (m, n) matrices: W^T contiguous, per direction."""
    return np.ascontiguousarray(_stack(arrays).transpose(0, 2, 1))


# Blocks of batch columns per task (see reference/_rnn_kernels.py). Measured here (medium
# LSTM, one thread's CPU time): cutting a batch of 32 into two blocks of 16 made the two tasks
# together 1.4x the work of one, because a step touches one row segment of every (rows, T*B)
# array (gates, cells, xw: ~10 H rows, each on its own page) and each block pays that again.
# On a loaded machine that is a loss, so a task is a whole direction: the two directions of a
# bidirectional layer run in parallel, a one-directional layer runs alone (its large products
# on every core: reference/_blas.py), except a lone LSTM direction, whose steps are shared by
# two threads over halves of the units (``HALVES_MIN``). The kernels take any block; a
# step-major layout of those arrays would make the split pay (not done). Fixed by shapes,
# never by cores.
def _chunk(sh: _Shape) -> int:
    return sh.batch


def _parallel(sh: _Shape, chunk: int, gates: int) -> bool:
    """Run a layer's tasks in one parallel region (else one after the other, each allowed
    OpenBLAS's threads): when there are several, and a task's products keep one row under
    OpenBLAS's one-thread limit (``reference/_blas.py``) so they stay on the task's thread."""
    tasks = sh.directions * -(-sh.batch // chunk)
    widest = chunk * max(gates * sh.hidden, sh.out)
    return tasks > 1 and widest <= SERIAL_MNK


def _dropped(a, mask_rows, scale, all_dropped):
    """a * mask / (1 - p), one rounding (``0 * a`` when p = 1), as ``layers.dropout``."""
    out = np.empty_like(a)
    _scale_by_mask(a.reshape(-1), mask_rows.reshape(-1), scale, all_dropped, 1, out.reshape(-1))
    return out


class RNNCtx(NamedTuple):
    mode: str
    shape: _Shape
    batch_first: bool
    weights: list[np.ndarray]
    layer_inputs: list[np.ndarray]   # per layer, (T*B, I_l), after dropout
    states: list[np.ndarray]         # per layer, h_t at columns t*B.., (D, P, T*B)
    h0: list[np.ndarray]             # per layer, (D, P, B)
    c0: list[np.ndarray] | None      # per layer, (D, H, B)
    gates: list[np.ndarray | None]   # per layer, (D, rows, T*B); step-major when halves:
    cells: list[np.ndarray | None]   # LSTM cell states, per layer, (D, H, T*B); see
    #                                  ``_halves``: (1, T, 2, 5H/2 or H/2, B) (lstm_fwd_halves)
    ms: list[np.ndarray | None]      # LSTM with projection: o tanh c per step, (D, H, T*B)
    lens: np.ndarray                 # (B,) int64, T for every element when not packed
    masks: list[np.ndarray]          # per layer but the last, its keep-mask as rows (T*B, D*P)
    scale: float                     # 1 / (1 - dropout)
    all_dropped: bool                # dropout = 1
    h0_given: bool
    c0_given: bool


# A lone LSTM direction shares each step between two threads (two halves of the units) when
# a step is large enough for that to pay: one parallel region a step costs ~1.5 us here, a
# step of the medium LSTM (H = 128, batch 32) ~60 us on one thread. Medium LSTM, float32,
# interleaved with torch in one process: forward 3.07 -> 2.14 ms (torch 1.48), forward +
# backward 7.14 -> 5.50 ms (torch 4.68).
HALVES_MIN = 2048  # hidden * batch


def _halves(sh: _Shape, proj) -> bool:
    return (sh.directions == 1 and not proj and sh.hidden % 2 == 0
            and sh.hidden * sh.batch >= HALVES_MIN)


def _lstm_forward_halves(sh: _Shape, wk, inp, h, cell, lens):
    """``_layer_forward`` for one LSTM direction by ``K.lstm_fwd_halves``."""
    cols, dt, hid = sh.steps * sh.batch, sh.dtype, sh.hidden
    rows = K.split_rows(hid)
    w_ih, w_hh = wk[0][rows], wk[1][rows]                 # row copies, C-contiguous
    bsum = ((wk[2].astype(np.float64) + wk[3].astype(np.float64))[rows] if sh.bias else
            np.zeros(4 * hid))
    xw = np.empty((sh.steps, 4 * hid, sh.batch), dt)
    K.input_steps(w_ih, inp, xw)                           # every step's input product
    ys = np.empty((cols, hid), dt)
    hs = np.empty((1, hid, cols), dt)
    gates = np.empty((1, sh.steps, 2, 5 * hid // 2, sh.batch), dt)  # step-major: see the kernel
    cs = np.empty((1, sh.steps, 2, hid // 2, sh.batch), dt)
    K.lstm_fwd_halves(xw.reshape(sh.steps, 2, 2 * hid, sh.batch),
                      w_hh.reshape(2, 2 * hid, hid), bsum.reshape(2, 2 * hid), h[0], cell[0],
                      lens, hs[0], ys, gates[0], cs[0])
    return ys, hs, gates, cs, None


def _layer_forward(mode, sh: _Shape, wl, inp, h, cell, lens, proj):
    """One layer, every direction: kernels on the stacked (D, ...) arrays. Returns the layer's
    output rows ys (T*B, D*P) and what backward keeps: hs, gates, cs, ms."""
    cols, dirs, dt = sh.steps * sh.batch, sh.directions, sh.dtype
    gh = _GATES[mode] * sh.hidden
    if mode == "lstm" and _halves(sh, proj):
        return _lstm_forward_halves(sh, wl[0], inp, h, cell, lens)
    xw = np.empty((dirs, gh, cols), dt)
    for d in range(dirs):
        dot_serial(wl[d][0], inp.T, xw[d])                 # every step's input product at once
    w_hh = _stack([wk[1] for wk in wl])
    if sh.bias:
        b_ih, b_hh = _stack([wk[2] for wk in wl]), _stack([wk[3] for wk in wl])
    else:
        b_ih = b_hh = np.zeros((dirs, gh), dt)
    ys = np.empty((cols, dirs * sh.out), dt)
    hs = np.empty((dirs, sh.out, cols), dt)
    chunk = _chunk(sh)
    par = _parallel(sh, chunk, _GATES[mode])
    gates = cs = ms = None
    if mode == "lstm":
        bsum = b_ih.astype(np.float64) + b_hh.astype(np.float64)
        w_hr = (_stack([wk[-1] for wk in wl]) if proj else
                np.zeros((dirs, 0, sh.hidden), dt))
        gates = np.empty((dirs, 5 * sh.hidden, cols), dt)
        cs = np.empty((dirs, sh.hidden, cols), dt)
        ms = np.empty((dirs, sh.hidden, cols) if proj else (dirs, 0, 0), dt)
        if par:
            K.lstm_fwd_tasks(xw, w_hh, w_hr, bsum, h, cell, lens, hs, ms, ys, gates, cs, chunk)
        else:
            for d in range(dirs):
                K.lstm_fwd_chunk(xw[d], w_hh[d], w_hr[d], bsum[d], h[d], cell[d], lens, d == 1,
                                 hs[d], ms[d], ys, d * sh.out, gates[d], cs[d], 0, sh.batch,
                                 True)
        ms = ms if proj else None
    elif mode == "gru":
        gates = np.empty((dirs, 4 * sh.hidden, cols), dt)
        if par:
            K.gru_fwd_tasks(xw, w_hh, b_ih, b_hh, h, lens, hs, ys, gates, chunk)
        else:
            for d in range(dirs):
                K.gru_fwd_chunk(xw[d], w_hh[d], b_ih[d], b_hh[d], h[d], lens, d == 1, hs[d], ys,
                                d * sh.out, gates[d], 0, sh.batch, True)
    else:
        bsum = b_ih.astype(np.float64) + b_hh.astype(np.float64)
        relu = mode == "rnn_relu"
        if par:
            K.rnn_fwd_tasks(xw, w_hh, bsum, h, lens, relu, hs, ys, chunk)
        else:
            for d in range(dirs):
                K.rnn_fwd_chunk(xw[d], w_hh[d], bsum[d], h[d], lens, relu, d == 1, hs[d], ys,
                                d * sh.out, 0, sh.batch, True)
    return ys, hs, gates, cs, ms


def _forward(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first, bias=True,
             proj_size=0, dropout=0.0, dropout_mask=None, lengths=None):
    x_given = x
    x, w, h0, c0, sh = _check(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first,
                              bias, proj_size)
    batch_first = bool(batch_first)
    lens = _check_lengths(lengths, sh)
    p, mask = _check_dropout(dropout, dropout_mask, sh, batch_first)
    scale, all_dropped = (0.0, True) if p == 1.0 else (1.0 / (1.0 - p), False)
    packed = lens is not None
    if not packed:
        lens = np.full(sh.batch, sh.steps, np.int64)
    inp = _rows(x, batch_first)
    if packed and (lens < sh.steps).any():
        # padding is never read: zero it, so that no NaN there reaches a weight gradient
        inp = inp.copy()
        inp.reshape(sh.steps, sh.batch, -1)[np.arange(sh.steps)[:, None] >= lens[None, :]] = 0
    masks = [] if mask is None else [_rows(m, batch_first) for m in mask]
    ins, states, h0s, c0s, gates, cells, ms, hn, cn = [], [], [], [], [], [], [], [], []
    for layer in range(sh.layers):
        ks = range(layer * sh.directions, (layer + 1) * sh.directions)
        wl = [w[sh.per * k: sh.per * (k + 1)] for k in ks]
        h = _states(h0, layer, sh.out, sh)
        h0s.append(h.copy())
        cell = None
        if mode == "lstm":
            cell = _states(c0, layer, sh.hidden, sh)
            c0s.append(cell.copy())
        ys, hs, g, cs, m = _layer_forward(mode, sh, wl, inp, h, cell, lens, proj_size > 0)
        hn.append(h.transpose(0, 2, 1))
        if mode == "lstm":
            cn.append(cell.transpose(0, 2, 1))
        states.append(hs)
        gates.append(g)
        cells.append(cs)
        ms.append(m)
        ins.append(inp)
        inp = ys
        if masks and layer < sh.layers - 1:
            inp = _dropped(ys, masks[layer], scale, all_dropped)
    out = _unrows(ys, sh.steps, sh.batch, batch_first)
    results = [out, np.ascontiguousarray(np.concatenate(hn))]
    if mode == "lstm":
        results.append(np.ascontiguousarray(np.concatenate(cn)))
    # Private copies of what backward reads of the caller's: the weights, the first layer's
    # input (a view of x when time-major) and the masks; see the module docstring.
    w = [v.keep(a, g) for a, g in zip(w, weights, strict=True)]
    ins[0] = v.keep(ins[0], x_given)
    masks = [v.keep(m, dropout_mask) for m in masks]
    lens = v.keep(lens, lengths)
    ctx = RNNCtx(mode, sh, batch_first, w, ins, states, h0s, c0s if mode == "lstm" else None,
                 gates, cells, ms, lens, masks, scale, all_dropped, h0 is not None,
                 c0 is not None)
    return tuple(results), ctx


_FORWARD_OF = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "gru": "gru", "lstm": "lstm"}


def _layer_backward(ctx: RNNCtx, layer, wl, dys, dh, dc, proj):
    """The recurrences of one layer backward, every direction: fills dh (D, P, B) and dc with
    d h0, d c0 and returns (dg_x, dg_h, hprev, dhs), each (D, rows, T*B)."""
    sh, dt = ctx.shape, ctx.shape.dtype
    cols, dirs = sh.steps * sh.batch, sh.directions
    gh = _GATES[ctx.mode] * sh.hidden
    hs = ctx.states[layer]
    hprev = np.empty_like(hs)
    for d in range(dirs):
        hprev[d] = K.shifted(hs[d], ctx.h0[layer][d], d == 1, sh.batch)
    halves = ctx.mode == "lstm" and _halves(sh, proj)
    w_t = None if halves else _transposed([wk[1] for wk in wl])  # W_hh^T, (D, P, G*H)
    chunk = _chunk(sh)
    par = _parallel(sh, chunk, _GATES[ctx.mode])
    dg_x = np.empty((dirs, gh, cols), dt)
    dg_h, dhs = dg_x, None
    if ctx.mode == "lstm":
        w_hr_t = (_transposed([wk[-1] for wk in wl]) if proj else
                  np.zeros((dirs, 0, sh.out), dt))
        dhs = np.empty((dirs, sh.out, cols) if proj else (dirs, 0, 0), dt)
        c_init, gates, cs = ctx.c0[layer], ctx.gates[layer], ctx.cells[layer]
        if halves:
            rows = K.split_rows(sh.hidden)
            wtp = wl[0][1][rows].T.copy().reshape(2, sh.hidden // 2, gh)  # 2x np.take's speed
            K.lstm_bwd_halves(wtp, c_init[0], ctx.lens, gates[0], cs[0], dys, dh[0], dc[0],
                              dg_x[0])
        elif par:
            K.lstm_bwd_tasks(w_t, w_hr_t, c_init, ctx.lens, gates, cs, dys, dh, dc, dg_x, dhs,
                             chunk)
        else:
            for d in range(dirs):
                K.lstm_bwd_chunk(w_t[d], w_hr_t[d], c_init[d], ctx.lens, d == 1, gates[d],
                                 cs[d], dys, d * sh.out, dh[d], dc[d], dg_x[d], dhs[d], 0,
                                 sh.batch, True)
    elif ctx.mode == "gru":
        dg_h = np.empty((dirs, gh, cols), dt)
        gates = ctx.gates[layer]
        if par:
            K.gru_bwd_tasks(w_t, ctx.lens, gates, hprev, dys, dh, dg_x, dg_h, chunk)
        else:
            for d in range(dirs):
                K.gru_bwd_chunk(w_t[d], ctx.lens, d == 1, gates[d], hprev[d], dys, d * sh.out,
                                dh[d], dg_x[d], dg_h[d], 0, sh.batch, True)
    else:
        relu = ctx.mode == "rnn_relu"
        if par:
            K.rnn_bwd_tasks(w_t, relu, ctx.lens, hs, dys, dh, dg_x, chunk)
        else:
            for d in range(dirs):
                K.rnn_bwd_chunk(w_t[d], relu, ctx.lens, d == 1, hs[d], dys, d * sh.out, dh[d],
                                dg_x[d], 0, sh.batch, True)
    return dg_x, dg_h, hprev, dhs


def _backward(ctx: RNNCtx, grad_out, forward: str):
    v.ctx_of(ctx, RNNCtx, forward)
    if _FORWARD_OF[ctx.mode] != forward:
        raise TypeError(f"ctx must be the context returned by {forward}(), got one of "
                        f"{_FORWARD_OF[ctx.mode]}()")
    sh = ctx.shape
    n_out = 3 if ctx.mode == "lstm" else 2
    if not isinstance(grad_out, tuple | list) or len(grad_out) != n_out:
        names = "(d_output, d_h_n, d_c_n)" if n_out == 3 else "(d_output, d_h_n)"
        raise TypeError(f"grad_out must be a tuple {names}; an entry may be None for zeros")
    out_shape = ((sh.batch, sh.steps) if ctx.batch_first else (sh.steps, sh.batch)) + (
        sh.directions * sh.out,)
    h_shape = (sh.layers * sh.directions, sh.batch, sh.out)
    c_shape = (sh.layers * sh.directions, sh.batch, sh.hidden)
    grads = []
    for g, name, shape in zip(grad_out, ("d_output", "d_h_n", "d_c_n"),
                              (out_shape, h_shape, c_shape), strict=False):
        if g is None:
            grads.append(np.zeros(shape, sh.dtype))
            continue
        g = v.float_array(g, f"grad_out {name}", dtype=sh.dtype)
        if g.shape != shape:
            raise ValueError(f"grad_out {name} must have the forward output's shape {shape}, "
                             f"got {g.shape}")
        grads.append(g)
    dys = _rows(grads[0], ctx.batch_first)
    proj = ctx.mode == "lstm" and ctx.ms[0] is not None
    dweights = [None] * len(ctx.weights)
    dh0 = np.empty(h_shape, sh.dtype)
    dc0 = np.empty(c_shape, sh.dtype)
    dirs = sh.directions
    for layer in reversed(range(sh.layers)):
        if layer < sh.layers - 1 and ctx.masks:
            dys = _dropped(dys, ctx.masks[layer], ctx.scale, ctx.all_dropped)
        inp = ctx.layer_inputs[layer]
        ks = range(layer * dirs, (layer + 1) * dirs)
        wl = [ctx.weights[sh.per * k: sh.per * (k + 1)] for k in ks]
        dh = _states(grads[1], layer, sh.out, sh)
        dc = _states(grads[2], layer, sh.hidden, sh) if ctx.mode == "lstm" else None
        dg_x, dg_h, hprev, dhs = _layer_backward(ctx, layer, wl, dys, dh, dc, proj)
        dinp = np.empty_like(inp)
        for d, k in enumerate(ks):
            w_ih, w_hh = wl[d][0], wl[d][1]
            dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
            K.weight_grads(dg_x[d], dg_h[d], inp, w_ih, hprev[d], dinp, d == 0, dw_ih, dw_hh)
            dk = [dw_ih, dw_hh]
            if sh.bias:
                gh = w_ih.shape[0]
                db_ih, db_hh = np.empty(gh, sh.dtype), np.empty(gh, sh.dtype)
                K.row_sums(dg_x[d], db_ih)
                if dg_h is dg_x:
                    db_hh[:] = db_ih
                else:
                    K.row_sums(dg_h[d], db_hh)
                dk += [db_ih, db_hh]
            if proj:
                dw_hr = np.empty((dhs[d].shape[0], ctx.ms[layer][d].shape[0]), sh.dtype)
                dot_serial(dhs[d], ctx.ms[layer][d].T, dw_hr)       # sum_t d h_t m_t^T
                dk.append(dw_hr)
            dh0[k] = dh[d].T
            if ctx.mode == "lstm":
                dc0[k] = dc[d].T
            dweights[sh.per * k: sh.per * (k + 1)] = dk
        dys = dinp
    dx = _unrows(dys, sh.steps, sh.batch, ctx.batch_first)
    result = [dx, dh0 if ctx.h0_given else None]
    if ctx.mode == "lstm":
        result.append(dc0 if ctx.c0_given else None)
    return tuple(result + dweights)


# ---------------------------------------------------------------------------------------------
# public API


def rnn(x: np.ndarray, h0: np.ndarray | None, weights: Sequence[np.ndarray], *,
        nonlinearity: str = "tanh", num_layers: int = 1, bidirectional: bool = False,
        batch_first: bool = False, bias: bool = True, dropout: float = 0.0,
        dropout_mask: np.ndarray | None = None, lengths: np.ndarray | None = None,
        proj_size: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], RNNCtx]:
    r"""Elman RNN, as ``torch.nn.RNN``: returns ``((output, h_n), ctx)``.

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),
        \qquad \phi = \tanh \text{ or } \operatorname{relu}

    Backward through time, with :math:`\delta_t = (\bar h_t + W_{hh}^T \delta_{t+1}) \odot
    \phi'(a_t)` (:math:`\bar h_t` the upstream gradient of :math:`h_t`, :math:`a_t` the
    pre-activation; :math:`\tanh' = 1 - h_t^2`, :math:`\operatorname{relu}'(a) = [a > 0]`, so
    0 at the kink as in PyTorch):

    .. math::
        \bar x_t = W_{ih}^T \delta_t,\ \bar h_0 = W_{hh}^T \delta_1,\
        \bar W_{ih} = \sum_t \delta_t x_t^T,\ \bar W_{hh} = \sum_t \delta_t h_{t-1}^T,\
        \bar b_{ih} = \bar b_{hh} = \sum_t \delta_t

    Stacked layers feed each layer's output sequence (both directions concatenated, times
    the dropout mask over ``1 - dropout``) to the next; the reverse direction runs the same
    recurrence from ``t = T`` down to 1. ``bias``, ``dropout``/``dropout_mask`` and
    ``lengths``: see the module docstring; ``proj_size`` must be 0 (torch has it for the LSTM
    only).
    """
    mode = "rnn_" + v.choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
    return _forward(mode, x, h0, None, weights, num_layers, bidirectional, batch_first, bias,
                    proj_size, dropout, dropout_mask, lengths)


def rnn_backward(ctx: RNNCtx, grad_out) -> tuple:
    r"""Gradients ``(dx, dh0, d weight_ih_l0, d weight_hh_l0, d bias_ih_l0, ...)``.

    ``grad_out = (d_output, d_h_n)``; either may be None (zeros). ``dh0`` is None when forward
    had ``h0=None``. Weight gradients follow ``weight_names`` (no bias gradients for
    ``bias=False``). Formulas in ``rnn``'s docstring; between layers
    :math:`\bar y_l = \bar x_{l+1} \odot m_l / (1 - p)`.
    """
    return _backward(ctx, grad_out, "rnn")


def gru(x: np.ndarray, h0: np.ndarray | None, weights: Sequence[np.ndarray], *,
        num_layers: int = 1, bidirectional: bool = False, batch_first: bool = False,
        bias: bool = True, dropout: float = 0.0, dropout_mask: np.ndarray | None = None,
        lengths: np.ndarray | None = None, proj_size: int = 0,
        ) -> tuple[tuple[np.ndarray, np.ndarray], RNNCtx]:
    r"""Gated recurrent unit, as ``torch.nn.GRU`` (gate order r, z, n): ``((output, h_n), ctx)``.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \quad
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    The reset gate multiplies :math:`W_{hn} h + b_{hn}` (PyTorch's and cuDNN's form, not the
    original paper's :math:`W_{hn}(r \odot h)`). Backward, with :math:`\bar h'` the total
    gradient of :math:`h'` and :math:`q = W_{hn} h + b_{hn}`:

    .. math::
        \bar a_n &= \bar h' (1 - z)(1 - n^2), \quad \bar a_z = \bar h' (h - n)\, z (1 - z), \quad
        \bar a_r = \bar a_n\, q\, r (1 - r) \\
        \bar h &= z \bar h' + W_{hr}^T \bar a_r + W_{hz}^T \bar a_z + W_{hn}^T (r \bar a_n)

    :math:`\bar a` feeds :math:`\bar W_{ih}, \bar b_{ih}` as it is, and
    :math:`(\bar a_r, \bar a_z, r \bar a_n)` feeds :math:`\bar W_{hh}, \bar b_{hh}`. Options
    as ``rnn``.
    """
    return _forward("gru", x, h0, None, weights, num_layers, bidirectional, batch_first, bias,
                    proj_size, dropout, dropout_mask, lengths)


def gru_backward(ctx: RNNCtx, grad_out) -> tuple:
    """Gradients ``(dx, dh0, *dweights)``; formulas in ``gru``'s docstring, layout as
    ``rnn_backward``."""
    return _backward(ctx, grad_out, "gru")


def lstm(x: np.ndarray, h0: np.ndarray | None, c0: np.ndarray | None,
         weights: Sequence[np.ndarray], *, num_layers: int = 1, bidirectional: bool = False,
         batch_first: bool = False, bias: bool = True, proj_size: int = 0,
         dropout: float = 0.0, dropout_mask: np.ndarray | None = None,
         lengths: np.ndarray | None = None,
         ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], RNNCtx]:
    r"""Long short-term memory, as ``torch.nn.LSTM`` (gate order i, f, g, o).

    Returns ``((output, h_n, c_n), ctx)``.

    .. math::
        (i, f, g, o) = (\sigma, \sigma, \tanh, \sigma)(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}),
        \quad c' = f \odot c + i \odot g, \quad m = o \odot \tanh c', \quad
        h' = m \text{ or } W_{hr} m \text{ (proj\_size)}

    Backward, with :math:`\bar h'`, :math:`\bar c'` the gradients arriving at a step and
    :math:`\bar m = \bar h'` (:math:`W_{hr}^T \bar h'` with a projection,
    :math:`\bar W_{hr} = \sum_t \bar h'_t m_t^T`):

    .. math::
        \hat c &= \bar c' + \bar m o (1 - \tanh^2 c'), \quad \bar c = f \hat c, \\
        (\bar a_i, \bar a_f, \bar a_g, \bar a_o) &= (\hat c g\, i(1-i),\ \hat c c\, f(1-f),\
        \hat c i (1 - g^2),\ \bar m \tanh c'\, o(1-o)), \quad \bar h = W_{hh}^T \bar a

    Options (``bias``, ``proj_size``, ``dropout``/``dropout_mask``, ``lengths``): see the
    module docstring.
    """
    return _forward("lstm", x, h0, c0, weights, num_layers, bidirectional, batch_first, bias,
                    proj_size, dropout, dropout_mask, lengths)


def lstm_backward(ctx: RNNCtx, grad_out) -> tuple:
    """Gradients ``(dx, dh0, dc0, *dweights)`` for ``grad_out = (d_output, d_h_n, d_c_n)``;
    formulas in ``lstm``'s docstring, layout as ``rnn_backward``."""
    return _backward(ctx, grad_out, "lstm")
