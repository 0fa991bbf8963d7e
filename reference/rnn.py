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

Contexts: ``rnn_backward``, ``gru_backward`` and ``lstm_backward`` each refuse any context but
their own forward's (a TypeError naming ``ctx``) and check ``grad_out``'s entries against the
outputs' shapes and dtype. The context keeps private copies of the weights and of x when they
are the caller's arrays, so editing them in place before backward does not change the
gradients (one pass over the inputs; the recurrence costs T matrix products per layer).

Implementation. A layer's input and output sequences are matrices with one row per step and
batch element (row ``t*B + b``: a time-major tensor as it is, no copy); inside a layer the
states and gates are feature-major, ``(features, T*B)``, so that per layer and direction the
input projection is one matrix product ``W_ih @ X^T`` for all steps, the recurrence per step
is ``W_hh @ h`` (h of shape ``(H, B)``, on one BLAS thread: see ``reference/_blas.py``), and
backward's weight gradients are each one product over all steps. Matrix products run in the
input's dtype (SciPy's BLAS), as torch's do; gate arithmetic is float64 with the vectorised
functions of ``reference/_vmath.py`` (for float32 results accurate to well under a float32
ulp), rounded once per stored value. The time loop of a layer runs inside one kernel, so
there is no per-step dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reference import _validate as v
from reference import _vmath as Vm
from reference._blas import dot_serial
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
# kernels: one layer, one direction, all time steps. inp (T*B, I) and ys (T*B, D*H) are the
# layer's input and output, row t*B + b, this direction's columns of ys at row0; the state h
# (H, B), the states of all steps hs (H, T*B) and the gates are feature-major (see above).


@inline()
def _step_columns(s, n_steps, reverse):
    return n_steps - 1 - s if reverse else s


@kernel()
def _rnn_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, relu, reverse, hs, ys, row0):
    dt = h.dtype  # the precision of the gate functions follows the stored values
    hidden, batch = h.shape
    n_steps = inp.shape[0] // batch
    xw = np.dot(w_ih, inp.T)                     # (H, T*B)
    hw = np.empty((hidden, batch), dt)
    for s in range(n_steps):
        c0 = _step_columns(s, n_steps, reverse) * batch
        dot_serial(w_hh, h, hw)                   # (H, B), one BLAS thread
        # One row (unit) at a time over the batch: short contiguous loops that vectorise.
        for u in range(hidden):
            bias = np.float64(b_ih[u]) + np.float64(b_hh[u])
            xr, hr, yr = xw[u, c0:c0 + batch], hw[u], hs[u, c0:c0 + batch]
            for b in range(batch):
                pre = np.float64(xr[b]) + np.float64(hr[b]) + bias
                if relu:
                    yr[b] = pre if pre > 0 else 0.0 * pre + 0.0  # NaN stays NaN
                else:
                    yr[b] = Vm.tanh(pre, dt)
            h[u] = yr
        ys[c0:c0 + batch, row0:row0 + hidden] = h.T
    return h


@kernel()
def _shifted(hs, h0, reverse, batch):
    """The state each step starts from, (H, T*B): h_{t-1} at column block t (h_{t+1} for the
    reverse direction), h0 at the first step."""
    hidden, cols = hs.shape
    prev = np.empty((hidden, cols), h0.dtype)
    for u in range(hidden):
        src, dst = hs[u], prev[u]
        if reverse:
            dst[:cols - batch] = src[batch:]
            dst[cols - batch:] = h0[u]
        else:
            dst[batch:] = src[:cols - batch]
            dst[:batch] = h0[u]
    return prev


@kernel()
def _row_sums(a, out):
    for j in range(a.shape[0]):
        row = a[j]
        acc = 0.0
        for c in range(row.size):
            acc += np.float64(row[c])
        out[j] = acc


@kernel()
def _weight_grads(dg_x, dg_h, inp, w_ih, hprev, dinp, dw_ih, dw_hh):
    # One product over all steps each: d inp += dG_x^T W_ih, dW_ih = dG_x inp,
    # dW_hh = dG_h hprev^T.
    dinp += np.dot(dg_x.T, w_ih)
    np.dot(dg_x, inp, dw_ih)
    np.dot(dg_h, hprev.T, dw_hh)


@kernel()
def _upstream_block(dys, c0, row0, out):
    # this step's upstream gradient, feature-major: out (H, B) = dys[c0:c0+B, row0:row0+H]^T
    hidden, batch = out.shape
    out[:, :] = dys[c0:c0 + batch, row0:row0 + hidden].T


@kernel()
def _rnn_bwd(w_hh, relu, reverse, hs, dys, row0, dh, dg):
    # dh (H, B): on entry d h_n, on exit d h0. dg (H, T*B): d pre-activation, all steps.
    hidden, batch = dh.shape
    n_steps = dg.shape[1] // batch
    dgt = np.empty((hidden, batch), dh.dtype)
    dyt = np.empty((hidden, batch), dh.dtype)
    w_t = w_hh.T.copy()
    for s in range(n_steps):
        c0 = _step_columns(s, n_steps, not reverse) * batch  # backward runs time backwards
        _upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            yr, gr, hr, out = hs[u, c0:c0 + batch], dyt[u], dh[u], dgt[u]
            for b in range(batch):
                g = np.float64(hr[b]) + np.float64(gr[b])
                y = np.float64(yr[b])
                if relu:
                    out[b] = g if y > 0 else 0.0
                else:
                    out[b] = g * (1.0 - y * y)
            dg[u, c0:c0 + batch] = out
        dot_serial(w_t, dgt, dh)                  # d h_{t-1} = W_hh^T dg_t


@kernel()
def _gru_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, reverse, hs, ys, row0, gates):
    # gates (4H, T*B): r, z, n and q = W_hn h + b_hn, per step.
    dt = h.dtype
    hidden, batch = h.shape
    n_steps = inp.shape[0] // batch
    xw = np.dot(w_ih, inp.T)                     # (3H, T*B)
    hw = np.empty((3 * hidden, batch), dt)
    for s in range(n_steps):
        c0 = _step_columns(s, n_steps, reverse) * batch
        dot_serial(w_hh, h, hw)
        # Three passes, one transcendental each, so that every inner loop vectorises.
        for j in range(2 * hidden):              # r and z
            bias = np.float64(b_ih[j]) + np.float64(b_hh[j])
            xr, hr, gr = xw[j, c0:c0 + batch], hw[j], gates[j, c0:c0 + batch]
            for b in range(batch):
                gr[b] = Vm.sigmoid(np.float64(xr[b]) + np.float64(hr[b]) + bias, dt)
        for u in range(hidden):                  # n = tanh(W_in x + b_in + r (W_hn h + b_hn))
            k = 2 * hidden + u
            xr, hr = xw[k, c0:c0 + batch], hw[k]
            rr, nr = gates[u, c0:c0 + batch], gates[k, c0:c0 + batch]
            qr = gates[3 * hidden + u, c0:c0 + batch]
            bx, bh = np.float64(b_ih[k]), np.float64(b_hh[k])
            for b in range(batch):
                q = np.float64(hr[b]) + bh
                qr[b] = q
                nr[b] = Vm.tanh(np.float64(xr[b]) + bx + np.float64(rr[b]) * q, dt)
        for u in range(hidden):                  # h' = (1 - z) n + z h
            zr = gates[hidden + u, c0:c0 + batch]
            nr = gates[2 * hidden + u, c0:c0 + batch]
            yr, hh = hs[u, c0:c0 + batch], h[u]
            for b in range(batch):
                z = np.float64(zr[b])
                yr[b] = (1.0 - z) * np.float64(nr[b]) + z * np.float64(hh[b])
            hh[:] = yr
        ys[c0:c0 + batch, row0:row0 + hidden] = h.T
    return h


@kernel()
def _gru_bwd(w_hh, reverse, gates, hprev, dys, row0, dh, dgx, dgh):
    # dgx: d of the input pre-activations (3H, T*B); dgh: d of W_hh h + b_hh.
    hidden, batch = dh.shape
    n_steps = dgx.shape[1] // batch
    dght = np.empty((3 * hidden, batch), dh.dtype)
    back = np.empty((hidden, batch), dh.dtype)
    dyt = np.empty((hidden, batch), dh.dtype)
    w_t = w_hh.T.copy()
    for s in range(n_steps):
        c0 = _step_columns(s, n_steps, not reverse) * batch
        _upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            r, z = gates[u, c0:c0 + batch], gates[hidden + u, c0:c0 + batch]
            n, q = gates[2 * hidden + u, c0:c0 + batch], gates[3 * hidden + u, c0:c0 + batch]
            hp, gy, hr = hprev[u, c0:c0 + batch], dyt[u], dh[u]
            dr, dz, dn = dght[u], dght[hidden + u], dght[2 * hidden + u]
            for b in range(batch):
                g = np.float64(hr[b]) + np.float64(gy[b])
                rb, zb, nb = np.float64(r[b]), np.float64(z[b]), np.float64(n[b])
                an = g * (1.0 - zb) * (1.0 - nb * nb)           # d pre_n
                dz[b] = g * (np.float64(hp[b]) - nb) * zb * (1.0 - zb)
                dr[b] = an * np.float64(q[b]) * rb * (1.0 - rb)
                dn[b] = an
                hr[b] = g * zb                                    # the direct path z h_{t-1}
            dgx[u, c0:c0 + batch] = dr
            dgx[hidden + u, c0:c0 + batch] = dz
            dgx[2 * hidden + u, c0:c0 + batch] = dn
            for b in range(batch):
                dn[b] = np.float64(dn[b]) * np.float64(r[b])  # r * d pre_n feeds W_hn, b_hn
        dgh[:, c0:c0 + batch] = dght
        dot_serial(w_t, dght, back)
        dh += back


@kernel()
def _lstm_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, cell, reverse, hs, ys, row0, gates, cs):
    # gates (5H, T*B): i, f, g, o and tanh(c_t); cs (H, T*B): c_t.
    dt = h.dtype
    hidden, batch = h.shape
    n_steps = inp.shape[0] // batch
    xw = np.dot(w_ih, inp.T)                     # (4H, T*B)
    hw = np.empty((4 * hidden, batch), dt)
    for s in range(n_steps):
        c0 = _step_columns(s, n_steps, reverse) * batch
        dot_serial(w_hh, h, hw)
        # Passes with one transcendental each, so that every inner loop vectorises.
        for j in range(4 * hidden):              # i, f, g, o
            bias = np.float64(b_ih[j]) + np.float64(b_hh[j])
            xr, hr, gr = xw[j, c0:c0 + batch], hw[j], gates[j, c0:c0 + batch]
            if 2 * hidden <= j < 3 * hidden:
                for b in range(batch):
                    gr[b] = Vm.tanh(np.float64(xr[b]) + np.float64(hr[b]) + bias, dt)
            else:
                for b in range(batch):
                    gr[b] = Vm.sigmoid(np.float64(xr[b]) + np.float64(hr[b]) + bias, dt)
        for u in range(hidden):                  # c' = f c + i g, h' = o tanh(c')
            ir, fr = gates[u, c0:c0 + batch], gates[hidden + u, c0:c0 + batch]
            gr, orow = gates[2 * hidden + u, c0:c0 + batch], gates[3 * hidden + u, c0:c0 + batch]
            tr, cr = gates[4 * hidden + u, c0:c0 + batch], cs[u, c0:c0 + batch]
            cc, yr = cell[u], hs[u, c0:c0 + batch]
            for b in range(batch):
                cr[b] = (np.float64(fr[b]) * np.float64(cc[b])
                         + np.float64(ir[b]) * np.float64(gr[b]))
            for b in range(batch):
                tr[b] = Vm.tanh(np.float64(cr[b]), dt)       # of the stored (rounded) c_t
            for b in range(batch):
                yr[b] = np.float64(orow[b]) * np.float64(tr[b])
            cc[:] = cr
            h[u] = yr
        ys[c0:c0 + batch, row0:row0 + hidden] = h.T
    return h, cell


@kernel()
def _lstm_bwd(w_hh, c0, reverse, gates, cs, dys, row0, dh, dc, dg):
    # dh, dc (H, B): on entry d h_n, d c_n; on exit d h0, d c0. dg (4H, T*B).
    hidden, batch = dh.shape
    n_steps = dg.shape[1] // batch
    dgt = np.empty((4 * hidden, batch), dh.dtype)
    dyt = np.empty((hidden, batch), dh.dtype)
    w_t = w_hh.T.copy()
    for s in range(n_steps):
        t = _step_columns(s, n_steps, not reverse)
        c0_ = t * batch
        _upstream_block(dys, c0_, row0, dyt)
        tp = t + 1 if reverse else t - 1
        first = tp < 0 or tp >= n_steps
        for u in range(hidden):
            i, f = gates[u, c0_:c0_ + batch], gates[hidden + u, c0_:c0_ + batch]
            g, o = gates[2 * hidden + u, c0_:c0_ + batch], gates[3 * hidden + u, c0_:c0_ + batch]
            tc, gy = gates[4 * hidden + u, c0_:c0_ + batch], dyt[u]
            cp = c0[u] if first else cs[u, tp * batch:tp * batch + batch]
            hr, cr = dh[u], dc[u]
            di, df = dgt[u], dgt[hidden + u]
            dgg, do = dgt[2 * hidden + u], dgt[3 * hidden + u]
            for b in range(batch):
                gh = np.float64(hr[b]) + np.float64(gy[b])
                ib, fb, gb = np.float64(i[b]), np.float64(f[b]), np.float64(g[b])
                ob, tb = np.float64(o[b]), np.float64(tc[b])
                gc = np.float64(cr[b]) + gh * ob * (1.0 - tb * tb)
                di[b] = gc * gb * ib * (1.0 - ib)
                df[b] = gc * np.float64(cp[b]) * fb * (1.0 - fb)
                dgg[b] = gc * ib * (1.0 - gb * gb)
                do[b] = gh * tb * ob * (1.0 - ob)
                cr[b] = gc * fb
        dg[:, c0_:c0_ + batch] = dgt
        dot_serial(w_t, dgt, dh)


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
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a sequence of 4 * num_layers * D arrays "
                        f"(weight_names(num_layers, bidirectional)), got {type(weights).__name__}")
    if len(weights) != 4 * layers * dirs:  # checked before naming them: num_layers may be huge
        raise ValueError(f"weights must hold 4 * num_layers * D = {4 * layers * dirs} arrays "
                         f"for num_layers={layers}, bidirectional={dirs == 2} "
                         f"(weight_names(num_layers, bidirectional)), got {len(weights)}")
    names = weight_names(layers, dirs == 2)
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


def _rows(x, batch_first):
    """(T, B, F) or (B, T, F) -> (T*B, F), row t*B + b (a view when time-major)."""
    if batch_first:
        x = x.transpose(1, 0, 2).copy()  # whole rows of F move: a cheap copy
    return x.reshape(-1, x.shape[2])


def _unrows(a, steps, batch, batch_first):
    """(T*B, F) -> (T, B, F) (a view), or a (B, T, F) copy."""
    a3 = a.reshape(steps, batch, a.shape[1])
    return a3.transpose(1, 0, 2).copy() if batch_first else a3


def _state(s, k, shape):
    if s is None:
        return np.zeros((shape.hidden, shape.batch), shape.dtype)
    return s[k].T.copy()  # kernels update the state in place: never a view of the input


class RNNCtx(NamedTuple):
    mode: str
    shape: _Shape
    batch_first: bool
    weights: list[np.ndarray]
    layer_inputs: list[np.ndarray]   # per layer, (T*B, I_l)
    states: list[np.ndarray]         # per layer and direction, h_t at columns t*B.., (H, T*B)
    h0: list[np.ndarray]             # per layer and direction, (H, B)
    c0: list[np.ndarray] | None
    gates: list[np.ndarray | None]   # per layer and direction
    cells: list[np.ndarray | None]   # LSTM cell states, per layer and direction
    h0_given: bool
    c0_given: bool


def _forward(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first):
    x_given = x
    x, w, h0, c0, sh = _check(mode, x, h0, c0, weights, num_layers, bidirectional, batch_first)
    batch_first = bool(batch_first)
    cols = sh.steps * sh.batch
    inp = _rows(x, batch_first)
    ins, states, h0s, c0s, gates, cells, hn, cn = [], [], [], [], [], [], [], []
    for layer in range(sh.layers):
        ys = np.empty((cols, sh.directions * sh.hidden), sh.dtype)
        for d in range(sh.directions):
            k = layer * sh.directions + d
            w_ih, w_hh, b_ih, b_hh = w[4 * k: 4 * k + 4]
            h = _state(h0, k, sh)
            h0s.append(h.copy())
            rev, row0 = d == 1, d * sh.hidden
            hs = np.empty((sh.hidden, cols), sh.dtype)
            g = cs = None
            if mode == "lstm":
                cell = _state(c0, k, sh)
                c0s.append(cell.copy())
                g = np.empty((5 * sh.hidden, cols), sh.dtype)
                cs = np.empty((sh.hidden, cols), sh.dtype)
                h, cell = _lstm_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, cell, rev, hs, ys, row0, g,
                                    cs)
                cn.append(cell.T)
            elif mode == "gru":
                g = np.empty((4 * sh.hidden, cols), sh.dtype)
                h = _gru_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, rev, hs, ys, row0, g)
            else:
                h = _rnn_fwd(inp, w_ih, w_hh, b_ih, b_hh, h, mode == "rnn_relu", rev, hs, ys,
                             row0)
            hn.append(h.T)
            states.append(hs)
            gates.append(g)
            cells.append(cs)
        ins.append(inp)
        inp = ys
    out = _unrows(inp, sh.steps, sh.batch, batch_first)
    results = [out, np.ascontiguousarray(np.stack(hn))]
    if mode == "lstm":
        results.append(np.ascontiguousarray(np.stack(cn)))
    # Private copies of what backward reads of the caller's: the weights and the first layer's
    # input (a view of x when time-major); see the module docstring.
    w = [v.keep(a, g) for a, g in zip(w, weights, strict=True)]
    ins[0] = v.keep(ins[0], x_given)
    ctx = RNNCtx(mode, sh, bool(batch_first), w, ins, states, h0s,
                 c0s if mode == "lstm" else None, gates, cells, h0 is not None, c0 is not None)
    return tuple(results), ctx


_FORWARD_OF = {"rnn_tanh": "rnn", "rnn_relu": "rnn", "gru": "gru", "lstm": "lstm"}


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
    dys = _rows(grads[0], ctx.batch_first)
    dweights = [None] * len(ctx.weights)
    dh0 = np.empty(state_shape, sh.dtype)
    dc0 = np.empty(state_shape, sh.dtype)
    cols = sh.steps * sh.batch
    for layer in reversed(range(sh.layers)):
        inp = ctx.layer_inputs[layer]
        dinp = np.zeros_like(inp)
        for d in range(sh.directions):
            k = layer * sh.directions + d
            w_ih, w_hh = ctx.weights[4 * k], ctx.weights[4 * k + 1]
            gh = w_ih.shape[0]
            dh = grads[1][k].T.copy()
            rev, row0, hs = d == 1, d * sh.hidden, ctx.states[k]
            hprev = _shifted(hs, ctx.h0[k], rev, sh.batch)
            dg_x = np.empty((gh, cols), sh.dtype)
            dg_h = dg_x
            if ctx.mode == "lstm":
                dc = grads[2][k].T.copy()
                _lstm_bwd(w_hh, ctx.c0[k], rev, ctx.gates[k], ctx.cells[k], dys, row0, dh, dc,
                          dg_x)
                dc0[k] = dc.T
            elif ctx.mode == "gru":
                dg_h = np.empty((gh, cols), sh.dtype)
                _gru_bwd(w_hh, rev, ctx.gates[k], hprev, dys, row0, dh, dg_x, dg_h)
            else:
                _rnn_bwd(w_hh, ctx.mode == "rnn_relu", rev, hs, dys, row0, dh, dg_x)
            dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
            _weight_grads(dg_x, dg_h, inp, w_ih, hprev, dinp, dw_ih, dw_hh)
            db_ih, db_hh = np.empty(gh, sh.dtype), np.empty(gh, sh.dtype)
            _row_sums(dg_x, db_ih)
            if dg_h is dg_x:
                db_hh[:] = db_ih
            else:
                _row_sums(dg_h, db_hh)
            dh0[k] = dh.T
            dweights[4 * k: 4 * k + 4] = [dw_ih, dw_hh, db_ih, db_hh]
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
    return _backward(ctx, grad_out, "rnn")


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
    return _backward(ctx, grad_out, "gru")


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
    return _backward(ctx, grad_out, "lstm")
