"""Recurrent networks over whole sequences: Elman RNN, GRU, LSTM, with backpropagation through time.

Conventions follow ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` exactly (equations, gate order, weight
shapes, the layout of ``h_n``), so a module's parameters can be passed in as they are::

    (out, h_n), ctx = rnn(x, h0, weights, nonlinearity="tanh", num_layers=2, bidirectional=True)
    dx, dh0, *dweights = rnn_backward(ctx, (d_out, d_h_n))
    (out, h_n, c_n), ctx = lstm(x, h0, c0, weights)
    dx, dh0, dc0, *dweights = lstm_backward(ctx, (d_out, d_h_n, d_c_n))

Shapes (``D = 2`` if bidirectional else 1; ``L = num_layers``; ``G`` gates: 1 RNN, 3 GRU, 4 LSTM)::

    x      (T, B, I), or (B, T, I) with batch_first
    h0, c0 (L*D, B, H); None means zeros (its gradient is then None)
    out    (T, B, D*H), or (B, T, D*H) with batch_first; h_n, c_n (L*D, B, H), index l*D + d
    weights, in torch's parameter order (``weight_names(L, bidirectional)``): for each layer l
      and direction (forward, then "_reverse"): weight_ih_l{l} (G*H, I_l), weight_hh_l{l}
      (G*H, H), bias_ih_l{l} (G*H,), bias_hh_l{l} (G*H,); I_0 = I, I_l = D*H for l >= 1.

Not supported (torch options that change nothing here when left at their defaults): unbatched
2-d input, packed sequences, ``bias=False``, dropout between layers, LSTM ``proj_size``.

Implementation. Every array is held feature-major, ``(features, T*B)`` with column ``t*B + b``,
so that per layer and direction the input projection is one matrix product ``W_ih @ X`` for all
steps, the recurrence per step is ``W_hh @ h`` (h of shape ``(H, B)``), and backward's weight
gradients are each one product over all steps. Matrix products go through ``np.dot`` (SciPy's
BLAS) in the input's dtype, as torch's do; gate arithmetic is float64 with the vectorised
functions of ``reference/_vmath.py`` (for float32 results accurate to well under a float32
ulp), rounded once per stored value. The time loop of a layer runs inside one kernel, so there
is no per-step dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reference import _validate as v
from reference import _vmath as Vm
from reference._jit import inline, kernel

__all__ = [
    "rnn", "rnn_backward", "gru", "gru_backward", "lstm", "lstm_backward", "weight_names",
]

_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


def weight_names(num_layers: int = 1, bidirectional: bool = False) -> list[str]:
    """torch's parameter names in the order ``weights`` takes them (``_flat_weights_names``)."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            names += [f"{kind}_l{layer}{suffix}"
                      for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return names


# ---------------------------------------------------------------------------------------------
# kernels: one layer, one direction, all time steps. Arrays are feature-major (see above):
# inp (I, T*B), ys (D*H, T*B) with this direction's rows at row0, state (H, B).


@inline()
def _step_columns(s, n_steps, reverse):
    return n_steps - 1 - s if reverse else s


@kernel()
def _rnn_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, relu, reverse, ys, row0):
    dt = h.dtype  # the precision of the gate functions follows the stored values
    hidden, batch = h.shape
    n_steps = inp.shape[1] // batch
    xw = np.dot(w_ih, inp)                       # (H, T*B)
    hw = np.empty((hidden, batch), h.dtype)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, reverse)
        np.dot(w_hh, h, hw)                       # (H, B)
        for u in range(hidden):
            bias = np.float64(b_ih[u]) + np.float64(b_hh[u])
            for b in range(batch):
                pre = np.float64(xw[u, t * batch + b]) + np.float64(hw[u, b]) + bias
                if relu:
                    out = pre if pre > 0 else 0.0 * pre + 0.0  # relu; NaN stays NaN
                else:
                    out = Vm.tanh(pre, dt)
                h[u, b] = out
                ys[row0 + u, t * batch + b] = out
    return h


@kernel()
def _rnn_bwd(inp, w_ih, w_hh, h0, relu, reverse, ys, row0, dys, dh, dinp, dw_ih, dw_hh, db):
    # dh (H, B): on entry d h_n, on exit d h0. dinp (I, T*B) accumulates; dw_*, db are written.
    hidden, batch = dh.shape
    n_steps = inp.shape[1] // batch
    dg = np.empty((hidden, n_steps * batch), dh.dtype)    # d pre-activation, all steps
    dgt = np.empty((hidden, batch), dh.dtype)
    hprev = np.empty((hidden, n_steps * batch), dh.dtype)  # h_{t-1} at column t (as seen by t)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, not reverse)  # backward visits steps in reverse order
        tp = t + 1 if reverse else t - 1
        for u in range(hidden):
            for b in range(batch):
                c = t * batch + b
                y = np.float64(ys[row0 + u, c])
                g = np.float64(dh[u, b]) + np.float64(dys[row0 + u, c])
                if relu:
                    d = g if y > 0 else 0.0
                else:
                    d = g * (1.0 - y * y)
                dgt[u, b] = d
                dg[u, c] = d
                hprev[u, c] = h0[u, b] if tp < 0 or tp >= n_steps else ys[row0 + u, tp * batch + b]
        np.dot(w_hh.T, dgt, dh)                   # d h_{t-1} = W_hh^T dg_t
    dinp += np.dot(w_ih.T, dg)
    dw_ih[:] = np.dot(dg, inp.T)
    dw_hh[:] = np.dot(dg, hprev.T)
    for u in range(hidden):
        acc = 0.0
        for c in range(n_steps * batch):
            acc += np.float64(dg[u, c])
        db[u] = acc


@kernel()
def _gru_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, reverse, ys, row0, gates):
    # gates (4H, T*B): r, z, n and hn = W_hn h + b_hn, per step.
    dt = h.dtype  # the precision of the gate functions follows the stored values
    hidden, batch = h.shape
    n_steps = inp.shape[1] // batch
    xw = np.dot(w_ih, inp)                       # (3H, T*B)
    hw = np.empty((3 * hidden, batch), h.dtype)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, reverse)
        np.dot(w_hh, h, hw)
        for u in range(hidden):
            for b in range(batch):
                c = t * batch + b
                k = hidden + u
                r = Vm.sigmoid(np.float64(xw[u, c]) + b_ih[u] + np.float64(hw[u, b]) + b_hh[u], dt)
                z = Vm.sigmoid(np.float64(xw[k, c]) + b_ih[k] + np.float64(hw[k, b]) + b_hh[k], dt)
                k = 2 * hidden + u
                hn = np.float64(hw[k, b]) + b_hh[k]
                n = Vm.tanh(np.float64(xw[k, c]) + b_ih[k] + r * hn, dt)
                out = (1.0 - z) * n + z * np.float64(h[u, b])
                gates[u, c] = r
                gates[hidden + u, c] = z
                gates[2 * hidden + u, c] = n
                gates[3 * hidden + u, c] = hn
                h[u, b] = out
                ys[row0 + u, c] = out
    return h


@kernel()
def _gru_bwd(inp, w_ih, w_hh, h0, reverse, ys, row0, gates, dys, dh, dinp, dw_ih, dw_hh,
             db_ih, db_hh):
    hidden, batch = dh.shape
    n_steps = inp.shape[1] // batch
    cols = n_steps * batch
    dgx = np.empty((3 * hidden, cols), dh.dtype)   # d of the input pre-activations
    dgh = np.empty((3 * hidden, cols), dh.dtype)   # d of W_hh h + b_hh
    dght = np.empty((3 * hidden, batch), dh.dtype)
    back = np.empty((hidden, batch), dh.dtype)
    hprev = np.empty((hidden, cols), dh.dtype)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, not reverse)
        tp = t + 1 if reverse else t - 1
        for u in range(hidden):
            for b in range(batch):
                c = t * batch + b
                hp = h0[u, b] if tp < 0 or tp >= n_steps else ys[row0 + u, tp * batch + b]
                hprev[u, c] = hp
                r = np.float64(gates[u, c])
                z = np.float64(gates[hidden + u, c])
                n = np.float64(gates[2 * hidden + u, c])
                hn = np.float64(gates[3 * hidden + u, c])
                g = np.float64(dh[u, b]) + np.float64(dys[row0 + u, c])
                dn = g * (1.0 - z) * (1.0 - n * n)       # d pre_n
                dz = g * (np.float64(hp) - n) * z * (1.0 - z)
                dr = dn * hn * r * (1.0 - r)
                dgx[u, c] = dr
                dgx[hidden + u, c] = dz
                dgx[2 * hidden + u, c] = dn
                dgh[u, c] = dr
                dgh[hidden + u, c] = dz
                dgh[2 * hidden + u, c] = dn * r
                dght[u, b] = dr
                dght[hidden + u, b] = dz
                dght[2 * hidden + u, b] = dn * r
                dh[u, b] = g * z                          # the direct path z * h_{t-1}
        np.dot(w_hh.T, dght, back)
        dh += back
    dinp += np.dot(w_ih.T, dgx)
    dw_ih[:] = np.dot(dgx, inp.T)
    dw_hh[:] = np.dot(dgh, hprev.T)
    for j in range(3 * hidden):
        ax = 0.0
        ah = 0.0
        for c in range(cols):
            ax += np.float64(dgx[j, c])
            ah += np.float64(dgh[j, c])
        db_ih[j] = ax
        db_hh[j] = ah


@kernel()
def _lstm_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, cell, reverse, ys, row0, gates, cs):
    # gates (5H, T*B): i, f, g, o and tanh(c_t); cs (H, T*B): c_t.
    dt = h.dtype  # the precision of the gate functions follows the stored values
    hidden, batch = h.shape
    n_steps = inp.shape[1] // batch
    xw = np.dot(w_ih, inp)                       # (4H, T*B)
    hw = np.empty((4 * hidden, batch), h.dtype)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, reverse)
        np.dot(w_hh, h, hw)
        for u in range(hidden):
            for b in range(batch):
                c = t * batch + b
                i = Vm.sigmoid(np.float64(xw[u, c]) + b_ih[u] + np.float64(hw[u, b]) + b_hh[u], dt)
                k = hidden + u
                f = Vm.sigmoid(np.float64(xw[k, c]) + b_ih[k] + np.float64(hw[k, b]) + b_hh[k], dt)
                k = 2 * hidden + u
                g = Vm.tanh(np.float64(xw[k, c]) + b_ih[k] + np.float64(hw[k, b]) + b_hh[k], dt)
                k = 3 * hidden + u
                o = Vm.sigmoid(np.float64(xw[k, c]) + b_ih[k] + np.float64(hw[k, b]) + b_hh[k], dt)
                cn = f * np.float64(cell[u, b]) + i * g
                cell[u, b] = cn
                tc = Vm.tanh(np.float64(cell[u, b]), dt)    # of the stored (rounded) c_t
                out = o * tc
                gates[u, c] = i
                gates[hidden + u, c] = f
                gates[2 * hidden + u, c] = g
                gates[3 * hidden + u, c] = o
                gates[4 * hidden + u, c] = tc
                cs[u, c] = cn
                h[u, b] = out
                ys[row0 + u, c] = out
    return h, cell


@kernel()
def _lstm_bwd(inp, w_ih, w_hh, h0, c0, reverse, ys, row0, gates, cs, dys, dh, dc, dinp,
              dw_ih, dw_hh, db):
    # dh, dc (H, B): on entry d h_n, d c_n; on exit d h0, d c0.
    hidden, batch = dh.shape
    n_steps = inp.shape[1] // batch
    cols = n_steps * batch
    dg = np.empty((4 * hidden, cols), dh.dtype)
    dgt = np.empty((4 * hidden, batch), dh.dtype)
    hprev = np.empty((hidden, cols), dh.dtype)
    for s in range(n_steps):
        t = _step_columns(s, n_steps, not reverse)
        tp = t + 1 if reverse else t - 1
        first = tp < 0 or tp >= n_steps
        for u in range(hidden):
            for b in range(batch):
                c = t * batch + b
                hprev[u, c] = h0[u, b] if first else ys[row0 + u, tp * batch + b]
                cp = np.float64(c0[u, b] if first else cs[u, tp * batch + b])
                i = np.float64(gates[u, c])
                f = np.float64(gates[hidden + u, c])
                g = np.float64(gates[2 * hidden + u, c])
                o = np.float64(gates[3 * hidden + u, c])
                tc = np.float64(gates[4 * hidden + u, c])
                gh = np.float64(dh[u, b]) + np.float64(dys[row0 + u, c])
                gc = np.float64(dc[u, b]) + gh * o * (1.0 - tc * tc)
                di = gc * g * i * (1.0 - i)
                df = gc * cp * f * (1.0 - f)
                dgg = gc * i * (1.0 - g * g)
                do = gh * tc * o * (1.0 - o)
                dg[u, c] = di
                dg[hidden + u, c] = df
                dg[2 * hidden + u, c] = dgg
                dg[3 * hidden + u, c] = do
                dgt[u, b] = di
                dgt[hidden + u, b] = df
                dgt[2 * hidden + u, b] = dgg
                dgt[3 * hidden + u, b] = do
                dc[u, b] = gc * f
        np.dot(w_hh.T, dgt, dh)
    dinp += np.dot(w_ih.T, dg)
    dw_ih[:] = np.dot(dg, inp.T)
    dw_hh[:] = np.dot(dg, hprev.T)
    for j in range(4 * hidden):
        acc = 0.0
        for c in range(cols):
            acc += np.float64(dg[j, c])
        db[j] = acc


# ---------------------------------------------------------------------------------------------
# validation and layout


class _Shape(NamedTuple):
    steps: int
    batch: int
    features: int
    hidden: int
    layers: int
    directions: int
    dtype: np.dtype


def _check(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first):
    x = v.float_array(x, "x", ndim=3)
    layers = v.integer(num_layers, "num_layers", lo=1)
    dirs = 2 if v.boolean(bidirectional, "bidirectional") else 1
    batch_first = v.boolean(batch_first, "batch_first")
    steps, batch = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    feat = x.shape[2]
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if steps == 0:
        raise ValueError(f"x must hold a sequence of length >= 1 {layout}, got shape {x.shape}")
    if batch == 0 or feat == 0:
        raise ValueError(f"x must have batch and feature sizes >= 1 {layout}, got {x.shape}")
    names = weight_names(layers, dirs == 2)
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a sequence of {len(names)} arrays ({', '.join(names)})"
                        f", got {type(weights).__name__}")
    if len(weights) != len(names):
        raise ValueError(f"weights must hold {len(names)} arrays for num_layers={layers}, "
                         f"bidirectional={bool(bidirectional)} ({', '.join(names)}), "
                         f"got {len(weights)}")
    gates = _GATES[mode]
    w = [v.float_array(a, n, dtype=x.dtype) for a, n in zip(weights, names, strict=True)]
    whh0 = w[1]
    if whh0.ndim != 2 or whh0.shape[1] == 0 or whh0.shape[0] != gates * whh0.shape[1]:
        raise ValueError(f"weight_hh_l0 must have shape ({gates}*H, H) with H >= 1, "
                         f"got {whh0.shape}")
    hidden = whh0.shape[1]
    gh = gates * hidden
    for k, (a, n) in enumerate(zip(w, names, strict=True)):
        layer = k // (4 * dirs)
        expect = {
            0: (gh, feat if layer == 0 else dirs * hidden),
            1: (gh, hidden), 2: (gh,), 3: (gh,),
        }[k % 4]
        if a.shape != expect:
            what = "input size" if k % 4 == 0 else "hidden size"
            raise ValueError(f"{n} must have shape {expect} (hidden size {hidden} from "
                             f"weight_hh_l0, {what} {expect[-1]}), got {a.shape}")
    shape = _Shape(steps, batch, feat, hidden, layers, dirs, x.dtype)
    states = []
    for s, n in ((h0, "h0"), (c0, "c0")):
        if s is None:
            states.append(None)
            continue
        s = v.float_array(s, n, ndim=3, dtype=x.dtype)
        want = (layers * dirs, batch, hidden)
        if s.shape != want:
            raise ValueError(f"{n} must have shape (num_layers*D, B, H) = {want}, got {s.shape}")
        states.append(s)
    return x, w, states[0], states[1], shape


def _feature_major(x, batch_first):
    """(T, B, I) or (B, T, I) -> (I, T*B), column t*B + b."""
    xt = x.transpose(2, 1, 0) if batch_first else x.transpose(2, 0, 1)
    return xt.copy().reshape(x.shape[2], -1)  # a copy even where the transpose is a no-op


def _from_feature_major(a, steps, batch, batch_first):
    """(F, T*B) -> (T, B, F) or (B, T, F)."""
    a3 = a.reshape(a.shape[0], steps, batch)
    return np.ascontiguousarray(a3.transpose(2, 1, 0) if batch_first else a3.transpose(1, 2, 0))


def _state(s, k, shape):
    if s is None:
        return np.zeros((shape.hidden, shape.batch), shape.dtype)
    return s[k].T.copy()  # kernels update the state in place: never a view of the input


class RNNCtx(NamedTuple):
    mode: str
    shape: _Shape
    batch_first: bool
    weights: list[np.ndarray]
    layer_inputs: list[np.ndarray]   # per layer, (I_l, T*B)
    layer_outputs: list[np.ndarray]  # per layer, (D*H, T*B)
    h0: list[np.ndarray]             # per layer and direction, (H, B)
    c0: list[np.ndarray] | None
    gates: list[np.ndarray | None]   # per layer and direction
    cells: list[np.ndarray | None]   # LSTM cell states, per layer and direction
    h0_given: bool
    c0_given: bool


def _forward(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first):
    x, w, h0, c0, sh = _check(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first)
    batch_first = bool(batch_first)
    cols = sh.steps * sh.batch
    inp = _feature_major(x, batch_first)
    ins, outs, h0s, c0s, gates, cells, hn, cn = [], [], [], [], [], [], [], []
    for layer in range(sh.layers):
        ys = np.empty((sh.directions * sh.hidden, cols), sh.dtype)
        for d in range(sh.directions):
            k = layer * sh.directions + d
            w_ih, w_hh, b_ih, b_hh = w[4 * k: 4 * k + 4]
            h = _state(h0, k, sh)
            h0s.append(h.copy())
            rev, row0 = d == 1, d * sh.hidden
            g = cs = None
            if mode == "lstm":
                cell = _state(c0, k, sh)
                c0s.append(cell.copy())
                g = np.empty((5 * sh.hidden, cols), sh.dtype)
                cs = np.empty((sh.hidden, cols), sh.dtype)
                h, cell = _lstm_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, cell, rev, ys, row0, g, cs)
                cn.append(cell.T)
            elif mode == "gru":
                g = np.empty((4 * sh.hidden, cols), sh.dtype)
                h = _gru_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, rev, ys, row0, g)
            else:
                h = _rnn_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, mode == "rnn_relu", rev, ys, row0)
            hn.append(h.T)
            gates.append(g)
            cells.append(cs)
        ins.append(inp)
        outs.append(ys)
        inp = ys
    out = _from_feature_major(inp, sh.steps, sh.batch, batch_first)
    results = [out, np.ascontiguousarray(np.stack(hn))]
    if mode == "lstm":
        results.append(np.ascontiguousarray(np.stack(cn)))
    ctx = RNNCtx(mode, sh, bool(batch_first), w, ins, outs, h0s, c0s if mode == "lstm" else None,
                 gates, cells, h0 is not None, c0 is not None)
    return tuple(results), ctx


def _backward(ctx: RNNCtx, grad_out):
    sh = ctx.shape
    n_out = 3 if ctx.mode == "lstm" else 2
    if not isinstance(grad_out, tuple | list) or len(grad_out) != n_out:
        names = "(d_output, d_h_n, d_c_n)" if n_out == 3 else "(d_output, d_h_n)"
        raise TypeError(f"grad_out must be a tuple {names}; an entry may be None for zeros")
    out_shape = ((sh.batch, sh.steps) if ctx.batch_first else (sh.steps, sh.batch)) + (
        sh.directions * sh.hidden,)
    state_shape = (sh.layers * sh.directions, sh.batch, sh.hidden)
    grads = []
    for g, name, shape in zip(grad_out, ("d_output", "d_h_n", "d_c_n"),
                              (out_shape, state_shape, state_shape), strict=False):
        if g is None:
            grads.append(np.zeros(shape, sh.dtype))
            continue
        g = v.float_array(g, f"grad_out {name}", dtype=sh.dtype)
        if g.shape != shape:
            raise ValueError(f"grad_out {name} must have the forward output's shape {shape}, "
                             f"got {g.shape}")
        grads.append(g)
    dys = _feature_major(grads[0], ctx.batch_first)
    dweights = [None] * len(ctx.weights)
    dh0 = np.empty(state_shape, sh.dtype)
    dc0 = np.empty(state_shape, sh.dtype)
    for layer in reversed(range(sh.layers)):
        inp = ctx.layer_inputs[layer]
        dinp = np.zeros_like(inp)
        for d in range(sh.directions):
            k = layer * sh.directions + d
            w_ih, w_hh = ctx.weights[4 * k], ctx.weights[4 * k + 1]
            dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
            db_ih = np.empty(w_ih.shape[0], sh.dtype)
            dh = grads[1][k].T.copy()
            rev, row0, ys = d == 1, d * sh.hidden, ctx.layer_outputs[layer]
            if ctx.mode == "lstm":
                dc = grads[2][k].T.copy()
                _lstm_bwd(inp, w_ih, w_hh, ctx.h0[k], ctx.c0[k], rev, ys, row0, ctx.gates[k],
                          ctx.cells[k], dys, dh, dc, dinp, dw_ih, dw_hh, db_ih)
                db_hh = db_ih.copy()
                dc0[k] = dc.T
            elif ctx.mode == "gru":
                db_hh = np.empty_like(db_ih)
                _gru_bwd(inp, w_ih, w_hh, ctx.h0[k], rev, ys, row0, ctx.gates[k], dys, dh, dinp,
                         dw_ih, dw_hh, db_ih, db_hh)
            else:
                _rnn_bwd(inp, w_ih, w_hh, ctx.h0[k], ctx.mode == "rnn_relu", rev, ys, row0, dys,
                         dh, dinp, dw_ih, dw_hh, db_ih)
                db_hh = db_ih.copy()
            dh0[k] = dh.T
            dweights[4 * k: 4 * k + 4] = [dw_ih, dw_hh, db_ih, db_hh]
        dys = dinp
    dx = _from_feature_major(dys, sh.steps, sh.batch, ctx.batch_first)
    result = [dx, dh0 if ctx.h0_given else None]
    if ctx.mode == "lstm":
        result.append(dc0 if ctx.c0_given else None)
    return tuple(result + dweights)


# ---------------------------------------------------------------------------------------------
# public API


def rnn(x: np.ndarray, h0: np.ndarray | None, weights: Sequence[np.ndarray], *,
        nonlinearity: str = "tanh", num_layers: int = 1, bidirectional: bool = False,
        batch_first: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], RNNCtx]:
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

    Stacked layers feed each layer's output sequence (both directions concatenated) to the
    next; the reverse direction runs the same recurrence from ``t = T`` down to 1.
    """
    mode = "rnn_" + v.choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
    return _forward(mode, x, h0, None, weights, num_layers, bidirectional, batch_first)


def rnn_backward(ctx: RNNCtx, grad_out) -> tuple:
    """Gradients ``(dx, dh0, d weight_ih_l0, d weight_hh_l0, d bias_ih_l0, ...)``.

    ``grad_out = (d_output, d_h_n)``; either may be None (zeros). ``dh0`` is None when forward
    had ``h0=None``. Weight gradients follow ``weight_names``.
    """
    return _backward(ctx, grad_out)


def gru(x: np.ndarray, h0: np.ndarray | None, weights: Sequence[np.ndarray], *,
        num_layers: int = 1, bidirectional: bool = False, batch_first: bool = False,
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
    :math:`(\bar a_r, \bar a_z, r \bar a_n)` feeds :math:`\bar W_{hh}, \bar b_{hh}`.
    """
    return _forward("gru", x, h0, None, weights, num_layers, bidirectional, batch_first)


def gru_backward(ctx: RNNCtx, grad_out) -> tuple:
    """Gradients ``(dx, dh0, *dweights)``; see ``rnn_backward``."""
    return _backward(ctx, grad_out)


def lstm(x: np.ndarray, h0: np.ndarray | None, c0: np.ndarray | None,
         weights: Sequence[np.ndarray], *, num_layers: int = 1, bidirectional: bool = False,
         batch_first: bool = False) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], RNNCtx]:
    r"""Long short-term memory, as ``torch.nn.LSTM`` (gate order i, f, g, o).

    Returns ``((output, h_n, c_n), ctx)``.

    .. math::
        (i, f, g, o) = (\sigma, \sigma, \tanh, \sigma)(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}),
        \quad c' = f \odot c + i \odot g, \quad h' = o \odot \tanh c'

    Backward, with :math:`\bar h'`, :math:`\bar c'` the gradients arriving at a step:

    .. math::
        \hat c &= \bar c' + \bar h' o (1 - \tanh^2 c'), \quad \bar c = f \hat c, \\
        (\bar a_i, \bar a_f, \bar a_g, \bar a_o) &= (\hat c g\, i(1-i),\ \hat c c\, f(1-f),\
        \hat c i (1 - g^2),\ \bar h' \tanh c'\, o(1-o)), \quad \bar h = W_{hh}^T \bar a
    """
    return _forward("lstm", x, h0, c0, weights, num_layers, bidirectional, batch_first)


def lstm_backward(ctx: RNNCtx, grad_out) -> tuple:
    """Gradients ``(dx, dh0, dc0, *dweights)`` for ``grad_out = (d_output, d_h_n, d_c_n)``."""
    return _backward(ctx, grad_out)
