"""Kernels of ``reference/rnn.py``: one layer, all time steps, forward and back.

Layout (see ``reference/rnn.py``'s docstring): a layer's input and output sequences are
matrices with one row per step and batch element (row ``t*B + b``); inside a layer the states
and gates are feature-major, ``(features, T*B)``, step ``t`` at columns ``t*B .. t*B + B``,
stacked over the layer's directions (a leading axis ``D``). The input product of all steps,
``xw = W_ih @ inp^T`` (G*H, T*B) per direction, is made by the caller; a step makes one
recurrent product for all its gates (``W_hh @ h``, G*H rows) and then one fused pass over the
units computes every gate, the cell and the new state (the LSTM's five transcendentals in one
loop over the batch).

Tasks: the recurrences of different batch elements, and of the two directions, are
independent, so a layer's work splits into tasks, one per direction and block of batch
columns (``*_chunk`` kernels: the block's state lives in a private contiguous array for the
whole sequence). The ``*_tasks`` drivers run a layer's tasks in one Numba parallel region:
one launch per layer and pass, no synchronisation per step (a per-step barrier would cost a
thread wake-up each step, and a stall when the other core is busy). Inside a task, products
run on the calling thread (``dot_one_thread``); a single task called from Python may use
OpenBLAS's threads for a large step (``dot_serial``). ``reference/rnn.py`` (``_chunk``) picks
the blocks from the shapes alone, never from the thread count, so a result does not depend on
the machine's cores; at present a block is a whole batch (why: see there), so the parallel
tasks are the two directions of a bidirectional layer.

Variable lengths: ``lens[b]`` is element b's length; step t is *active* for b when
``t < lens[b]``. An inactive step leaves b's state as it is (so the forward direction stops
at b's last step and the reverse direction starts there, from h0), writes zeros to the
output, and in backward passes the state's gradient through unchanged with zero gate
gradients. The stored states of an inactive step are the carried ones, so the previous
state of every active step reads correctly from them (``shifted``).

Gate arithmetic is float64 (``reference/_vmath.py``), each stored value rounded once to the
state's dtype and read back from there, so backward sees exactly the values forward used.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from reference import _vmath as Vm
from reference._blas import dot_one_thread, dot_serial
from reference._jit import inline, kernel
from reference._rows import copy_row


@inline()
def step_of(s, n_steps, reverse):
    """The time index of the s-th step a direction takes."""
    return n_steps - 1 - s if reverse else s


@inline()
def product(a, b, out, threaded):
    """``out = a @ b``: OpenBLAS's threads allowed for a large product when ``threaded``
    (a lone task), else on the calling thread (a task among others in a parallel region)."""
    if threaded:
        dot_serial(a, b, out)
    else:
        dot_one_thread(a, b, out)


@kernel()
def put_outputs(h, lens, t, ys, r0, row0):
    """ys[r0 + j, row0:row0 + P] = h[:, j] where step t is active for column j, else zeros."""
    hout, nb = h.shape
    for j in range(nb):
        row = ys[r0 + j, row0:row0 + hout]
        if t < lens[j]:
            for p in range(hout):
                row[p] = h[p, j]
        else:
            row[:] = 0.0


@kernel()
def upstream_block(dys, r0, row0, out):
    """This step's upstream gradient, feature-major: out (P, nb) = dys[r0:r0+nb, row0:row0+P]^T."""
    hout, nb = out.shape
    out[:, :] = dys[r0:r0 + nb, row0:row0 + hout].T


@kernel()
def shifted(hs, h0, reverse, batch):
    """The state each step starts from, (P, T*B): h_{t-1} at column block t (h_{t+1} for the
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


@kernel(reduce=True)
def row_sums(a, out):
    """out[j] = sum_c a[j, c], accumulated in float64 (reassociated: the sum vectorises; in
    order it was a chain of dependent adds, 0.35 ms of the medium LSTM's 4.4 ms backward)."""
    for j in range(a.shape[0]):
        row = a[j]
        acc = 0.0
        for c in range(row.size):
            acc += np.float64(row[c])
        out[j] = acc


@kernel()
def weight_grads(dg_x, dg_h, inp, w_ih, hprev, dinp, first, dw_ih, dw_hh):
    """One product over all steps each: d inp = dG_x^T W_ih (the layer's first direction,
    ``first``; each other adds its own), dW_ih = dG_x inp, dW_hh = dG_h hprev^T."""
    if first:
        dot_serial(dg_x.T, w_ih, dinp)
    else:
        tmp = np.empty_like(dinp)
        dot_serial(dg_x.T, w_ih, tmp)
        dinp += tmp
    dot_serial(dg_x, inp, dw_ih)
    dot_serial(dg_h, hprev.T, dw_hh)


@kernel(parallel=True)
def input_steps(w, inp, xw):
    """Every step's input product, step-major: xw[t] = w @ inp[t*B:(t+1)*B]^T, (T, G, B), one
    MKL call a step, the steps shared among Numba's threads. The same products as one
    (G, T*B) product (bit-equal, MKL: measured) in as little time (medium LSTM, 2 cores: 0.60
    against 0.63 ms), and a step's block is contiguous for the recurrence that reads it (the
    (G, T*B) layout put each of its G rows of B elements on another page)."""
    n_steps, _, batch = xw.shape
    for t in prange(n_steps):
        dot_one_thread(w, inp[t * batch:(t + 1) * batch].T, xw[t])


@kernel()
def carry(new, lens, t, state):
    """state[:, j] = new[:, j] where step t is active for column j (else j keeps its state)."""
    rows, nb = state.shape
    for u in range(rows):
        nr, sr = new[u], state[u]
        for j in range(nb):
            sr[j] = nr[j] if t < lens[j] else sr[j]  # a select: the loop vectorises


# ---------------------------------------------------------------------------------------------
# Elman RNN


@kernel()
def rnn_fwd_chunk(xw, w_hh, bias, h_all, lens, relu, reverse, hs, ys, row0, b0, nb, threaded):
    """Columns b0 .. b0+nb of one direction. h_all (H, B): in h0, out h_n; bias (H,) float64 =
    b_ih + b_hh; hs (H, T*B): every step's state."""
    dt = h_all.dtype
    hidden, batch = h_all.shape
    n_steps = xw.shape[1] // batch
    ln = lens[b0:b0 + nb]
    h = h_all[:, b0:b0 + nb].copy()
    hw = np.empty((hidden, nb), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch + b0
        product(w_hh, h, hw, threaded)
        for u in range(hidden):
            xr, hr, hh, yr = xw[u, c0:c0 + nb], hw[u], h[u], hs[u, c0:c0 + nb]
            bu = bias[u]
            for b in range(nb):
                pre = np.float64(xr[b]) + np.float64(hr[b]) + bu
                if relu:
                    new = pre if pre > 0 else 0.0 * pre + 0.0  # NaN stays NaN
                else:
                    new = Vm.tanh(pre, dt)
                yr[b] = new if t < ln[b] else hh[b]
            hh[:] = yr
        put_outputs(h, ln, t, ys, c0, row0)
    h_all[:, b0:b0 + nb] = h


@kernel()
def rnn_bwd_chunk(w_t, relu, lens, reverse, hs, dys, row0, dh_all, dg, b0, nb, threaded):
    """w_t = W_hh^T. dh_all (H, B): on entry d h_n, on exit d h0. dg (H, T*B): d
    pre-activation, all steps."""
    dt = dh_all.dtype
    hidden, batch = dh_all.shape
    n_steps = dg.shape[1] // batch
    ln = lens[b0:b0 + nb]
    dh = dh_all[:, b0:b0 + nb].copy()
    dgt = np.empty((hidden, nb), dt)
    dyt = np.empty((hidden, nb), dt)
    back = np.empty((hidden, nb), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)  # backward runs time backwards
        c0 = t * batch + b0
        upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            yr, gr, hr, out = hs[u, c0:c0 + nb], dyt[u], dh[u], dgt[u]
            for b in range(nb):
                g = np.float64(hr[b]) + np.float64(gr[b])
                y = np.float64(yr[b])
                if relu:
                    d = g if y > 0 else 0.0
                else:
                    d = g * (1.0 - y * y)
                out[b] = d if t < ln[b] else 0.0
            dg[u, c0:c0 + nb] = out
        product(w_t, dgt, back, threaded)           # d h_{t-1} = W_hh^T dg_t
        carry(back, ln, t, dh)
    dh_all[:, b0:b0 + nb] = dh


@kernel(parallel=True)
def rnn_fwd_tasks(xw, w_hh, bias, h, lens, relu, hs, ys, chunk):
    """Every direction (leading axis) and block of ``chunk`` batch columns, in parallel."""
    dirs, hout, batch = h.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        rnn_fwd_chunk(xw[d], w_hh[d], bias[d], h[d], lens, relu, d == 1, hs[d], ys, d * hout,
                      b0, min(chunk, batch - b0), False)


@kernel(parallel=True)
def rnn_bwd_tasks(w_t, relu, lens, hs, dys, dh, dg, chunk):
    """Every direction and block of batch columns of ``rnn_bwd_chunk``, in parallel."""
    dirs, hout, batch = dh.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        rnn_bwd_chunk(w_t[d], relu, lens, d == 1, hs[d], dys, d * hout, dh[d], dg[d], b0,
                      min(chunk, batch - b0), False)


# ---------------------------------------------------------------------------------------------
# GRU


@kernel()
def _gru_step(xw, hw, b_ih, b_hh, c0, ln, t, pre, act, h):
    """One GRU step's gates and state on contiguous (rows, nb) buffers, as ``_lstm_step``
    (each transcendental one long loop): r, z = sigmoid(x + W h + b), q = W_hn h + b_hn,
    n = tanh(x_n + b_in + r q), h' = (1 - z) n + z h where active. The same expressions and
    roundings as the per-unit loop it replaces (each gate rounded to the state's dtype and read
    back from there)."""
    dt = act.dtype
    hidden, nb = h.shape
    for r in range(2 * hidden):
        xr, hr, pr = xw[r, c0:c0 + nb], hw[r], pre[r]
        br = np.float64(b_ih[r]) + np.float64(b_hh[r])
        for b in range(nb):
            pr[b] = np.float64(xr[b]) + np.float64(hr[b]) + br
    n2 = 2 * hidden * nb
    pf, af = pre.reshape(3 * hidden * nb), act.reshape(4 * hidden * nb)
    for k in range(n2):                      # r and z
        af[k] = Vm.sigmoid(pf[k], dt)
    for u in range(hidden):
        nu = 2 * hidden + u
        bx, bh = np.float64(b_ih[nu]), np.float64(b_hh[nu])
        xr, hr, pr = xw[nu, c0:c0 + nb], hw[nu], pre[nu]
        rr, qr = act[u], act[3 * hidden + u]
        for b in range(nb):
            qr[b] = np.float64(hr[b]) + bh
            pr[b] = np.float64(xr[b]) + bx + np.float64(rr[b]) * np.float64(qr[b])
    for k in range(n2, 3 * hidden * nb):     # n
        af[k] = Vm.tanh(pf[k], dt)
    for u in range(hidden):
        zr, nr, hh = act[hidden + u], act[2 * hidden + u], h[u]
        for b in range(nb):
            z = np.float64(zr[b])
            new = (1.0 - z) * np.float64(nr[b]) + z * np.float64(hh[b])
            hh[b] = new if t < ln[b] else hh[b]


@kernel()
def gru_fwd_chunk(xw, w_hh, b_ih, b_hh, h_all, lens, reverse, hs, ys, row0, gates, b0, nb,
                  threaded):
    """gates (4H, T*B): r, z, n and q = W_hn h + b_hn, per step."""
    dt = h_all.dtype
    hidden, batch = h_all.shape
    n_steps = xw.shape[1] // batch
    ln = lens[b0:b0 + nb]
    h = h_all[:, b0:b0 + nb].copy()
    hw = np.empty((3 * hidden, nb), dt)
    pre = np.empty((3 * hidden, nb))          # float64 pre-activations of r, z, n
    act = np.empty((4 * hidden, nb), dt)      # r, z, n, q of one step
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch + b0
        product(w_hh, h, hw, threaded)
        _gru_step(xw, hw, b_ih, b_hh, c0, ln, t, pre, act, h)
        for r in range(4 * hidden):
            copy_row(gates[r, c0:c0 + nb], act[r])
        for u in range(hidden):
            copy_row(hs[u, c0:c0 + nb], h[u])
        put_outputs(h, ln, t, ys, c0, row0)
    h_all[:, b0:b0 + nb] = h


@kernel()
def gru_bwd_chunk(w_t, lens, reverse, gates, hprev, dys, row0, dh_all, dgx, dgh, b0, nb,
                  threaded):
    """w_t = W_hh^T. dgx: d of the input pre-activations (3H, T*B); dgh: d of W_hh h + b_hh."""
    dt = dh_all.dtype
    hidden, batch = dh_all.shape
    n_steps = dgx.shape[1] // batch
    ln = lens[b0:b0 + nb]
    dh = dh_all[:, b0:b0 + nb].copy()
    dght = np.empty((3 * hidden, nb), dt)
    back = np.empty((hidden, nb), dt)
    dyt = np.empty((hidden, nb), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)
        c0 = t * batch + b0
        upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            r, z = gates[u, c0:c0 + nb], gates[hidden + u, c0:c0 + nb]
            n, q = gates[2 * hidden + u, c0:c0 + nb], gates[3 * hidden + u, c0:c0 + nb]
            hp, gy, hr = hprev[u, c0:c0 + nb], dyt[u], dh[u]
            dr, dz, dn = dght[u], dght[hidden + u], dght[2 * hidden + u]
            xr, xz, xn = (dgx[u, c0:c0 + nb], dgx[hidden + u, c0:c0 + nb],
                          dgx[2 * hidden + u, c0:c0 + nb])
            # Computed for every b, kept by selects (no branches: the loop vectorises).
            for b in range(nb):
                on = t < ln[b]
                hb = np.float64(hr[b])
                g = hb + np.float64(gy[b])
                rb, zb, nb_ = np.float64(r[b]), np.float64(z[b]), np.float64(n[b])
                an = g * (1.0 - zb) * (1.0 - nb_ * nb_) if on else 0.0  # d pre_n
                az = g * (np.float64(hp[b]) - nb_) * zb * (1.0 - zb) if on else 0.0
                ar = an * np.float64(q[b]) * rb * (1.0 - rb) if on else 0.0
                xr[b], xz[b], xn[b] = ar, az, an
                dr[b], dz[b], dn[b] = ar, az, an * rb         # r * d pre_n feeds W_hn
                hr[b] = g * zb if on else hb                  # the direct path z h_{t-1}
        dgh[:, c0:c0 + nb] = dght
        product(w_t, dght, back, threaded)
        dh += back
    dh_all[:, b0:b0 + nb] = dh


@kernel(parallel=True)
def gru_fwd_tasks(xw, w_hh, b_ih, b_hh, h, lens, hs, ys, gates, chunk):
    """Every direction and block of batch columns of ``gru_fwd_chunk``, in parallel."""
    dirs, hout, batch = h.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        gru_fwd_chunk(xw[d], w_hh[d], b_ih[d], b_hh[d], h[d], lens, d == 1, hs[d], ys, d * hout,
                      gates[d], b0, min(chunk, batch - b0), False)


@kernel(parallel=True)
def gru_bwd_tasks(w_t, lens, gates, hprev, dys, dh, dgx, dgh, chunk):
    """Every direction and block of batch columns of ``gru_bwd_chunk``, in parallel."""
    dirs, hout, batch = dh.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        gru_bwd_chunk(w_t[d], lens, d == 1, gates[d], hprev[d], dys, d * hout, dh[d], dgx[d],
                      dgh[d], b0, min(chunk, batch - b0), False)


# ---------------------------------------------------------------------------------------------
# LSTM (with an optional projection h = W_hr (o tanh c))


@kernel()
def _lstm_step(xw, hw, bias, c0, ln, t, pre, act, cell, m):
    """One LSTM step's gates, cell and output on contiguous (rows, nb) buffers.

    Each transcendental runs in one long loop over a contiguous buffer (a gate's (H, nb)
    block), not in a loop over the batch per unit: a unit's loop of nb = 32 elements over 14
    row views spent more in its setup and runtime overlap checks than in the arithmetic
    (medium LSTM forward: 9.4 ns a unit in that form against ~3 for the same functions in flat
    loops). The arithmetic and its roundings are the same: pre-activations in float64, each
    gate rounded once to the state's dtype and read back from there, c_t rounded and its tanh
    taken of the rounded value, m = o tanh c_t.
    """
    dt = act.dtype
    rows, nb = pre.shape
    hidden = rows // 4
    for r in range(rows):
        xr, hr, pr, br = xw[r, c0:c0 + nb], hw[r], pre[r], bias[r]
        for b in range(nb):
            pr[b] = np.float64(xr[b]) + np.float64(hr[b]) + br
    pf, af = pre.reshape(rows * nb), act.reshape(5 * hidden * nb)
    n1, n2, n3 = 2 * hidden * nb, 3 * hidden * nb, 4 * hidden * nb
    for k in range(n1):                      # i and f
        af[k] = Vm.sigmoid(pf[k], dt)
    for k in range(n1, n2):                  # g
        af[k] = Vm.tanh(pf[k], dt)
    for k in range(n2, n3):                  # o
        af[k] = Vm.sigmoid(pf[k], dt)
    for u in range(hidden):
        ir, fr, gr = act[u], act[hidden + u], act[2 * hidden + u]
        cc = cell[u]
        for b in range(nb):
            cnew = np.float64(fr[b]) * np.float64(cc[b]) + np.float64(ir[b]) * np.float64(gr[b])
            cc[b] = cnew if t < ln[b] else cc[b]
    cf, mf = cell.reshape(hidden * nb), m.reshape(hidden * nb)
    of, tf = af[n2:n3], af[n3:]
    for k in range(hidden * nb):             # tanh of the stored (rounded) c_t, and m
        tf[k] = Vm.tanh(np.float64(cf[k]), dt)
        mf[k] = np.float64(of[k]) * np.float64(tf[k])


@kernel()
def lstm_fwd_chunk(xw, w_hh, w_hr, bias, h_all, cell_all, lens, reverse, hs, ms, ys, row0,
                   gates, cs, b0, nb, threaded):
    """h_all (P, B) and cell_all (H, B): in h0, c0, out h_n, c_n; bias (4H,) float64 = b_ih +
    b_hh. gates (5H, T*B): i, f, g, o and tanh(c_t); cs (H, T*B): c_t; hs (P, T*B): h_t. With
    a projection (``w_hr`` (P, H), P >= 1), ms (H, T*B) keeps m_t = o tanh c_t and h = W_hr m;
    without (``w_hr`` of shape (0, H)) h = m and ms is not written."""
    dt = h_all.dtype
    hout, batch = h_all.shape
    hidden = cell_all.shape[0]
    n_steps = xw.shape[1] // batch
    proj = w_hr.shape[0] > 0
    ln = lens[b0:b0 + nb]
    h = h_all[:, b0:b0 + nb].copy()
    cell = cell_all[:, b0:b0 + nb].copy()
    hw = np.empty((4 * hidden, nb), dt)
    m = np.empty((hidden, nb), dt)
    hp = np.empty((hout, nb), dt)
    pre = np.empty((4 * hidden, nb))          # float64 pre-activations of one step
    act = np.empty((5 * hidden, nb), dt)      # i, f, g, o and tanh(c_t) of one step
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch + b0
        product(w_hh, h, hw, threaded)
        _lstm_step(xw, hw, bias, c0, ln, t, pre, act, cell, m)
        for r in range(5 * hidden):
            copy_row(gates[r, c0:c0 + nb], act[r])
        for u in range(hidden):
            copy_row(cs[u, c0:c0 + nb], cell[u])
        if proj:
            ms[:, c0:c0 + nb] = m
            product(w_hr, m, hp, threaded)
            carry(hp, ln, t, h)
        else:
            carry(m, ln, t, h)
        hs[:, c0:c0 + nb] = h
        put_outputs(h, ln, t, ys, c0, row0)
    h_all[:, b0:b0 + nb] = h
    cell_all[:, b0:b0 + nb] = cell


@kernel(parallel=True)
def lstm_fwd_halves(xwp, whp, biasp, h_all, cell_all, lens, hs, ys, gates, cs):
    """``lstm_fwd_chunk`` for a lone (forward) direction without a projection, every batch
    column, ys (T*B, H) its whole output, each step shared by two threads: thread p takes the
    units of half p (``H`` even). xwp (T, 2, 4Hh, B) (step-major: ``input_steps``), whp (2,
    4Hh, H) and biasp (2, 4Hh) are the input products, W_hh and the bias with the rows of half
    p's units in gate order (i, f, g, o; ``split_rows``). A step needs all of h_{t-1}, so h is
    double-buffered and each step is one parallel region; the split is fixed (two halves), so
    results do not depend on the number of threads.

    What backward reads is stored step-major, in the blocks a thread computes: gates (T, 2,
    5Hh, B) (half p's i, f, g, o, tanh c_t at step t) and cs (T, 2, Hh, B) (c_t): the step's
    gates are computed in place there and c_t copied in one contiguous block. (Feature-major
    (5H, T*B) rows took a copy of 32 elements for each of 384 rows a step and thread: 19% of
    the medium forward.)"""
    dt = h_all.dtype
    hidden, batch = h_all.shape
    hh = hidden // 2
    n_steps = xwp.shape[0]
    hbuf = np.empty((2, hidden, batch), dt)
    hbuf[0] = h_all
    cellp = np.empty((2, hh, batch), dt)
    for p in range(2):
        cellp[p] = cell_all[p * hh:(p + 1) * hh]
    hw = np.empty((2, 4 * hh, batch), dt)
    m = np.empty((2, hh, batch), dt)
    pre = np.empty((2, 4 * hh, batch))
    for t in range(n_steps):
        c0 = t * batch
        cur = t % 2
        for p in prange(2):
            u0 = p * hh
            dot_one_thread(whp[p], hbuf[cur], hw[p])
            _lstm_step(xwp[t, p], hw[p], biasp[p], 0, lens, t, pre[p], gates[t, p], cellp[p],
                       m[p])
            copy_row(cs[t, p].reshape(hh * batch), cellp[p].reshape(hh * batch))
            for u in range(hh):
                hn, hc, mu = hbuf[1 - cur, u0 + u], hbuf[cur, u0 + u], m[p, u]
                for b in range(batch):
                    hn[b] = mu[b] if t < lens[b] else hc[b]
                copy_row(hs[u0 + u, c0:c0 + batch], hn)
            put_outputs(hbuf[1 - cur, u0:u0 + hh], lens, t, ys, c0, u0)
    h_all[:] = hbuf[n_steps % 2]
    for p in range(2):
        cell_all[p * hh:(p + 1) * hh] = cellp[p]


@kernel()
def _lstm_bwd_half(gp, cpp, lens, t, dht, dc, dgt):
    """``lstm_bwd_chunk``'s gate gradients of one step for half p's units, from the blocks
    ``lstm_fwd_halves`` stored: gp (5Hh, B) the step's i, f, g, o, tanh c_t, cpp (Hh, B)
    c_{t-1}; dht, dc: (Hh, B); dgt: (4Hh, B) in gate order. The same expressions in the same
    order as there."""
    hh, batch = dc.shape
    all_on = True
    for b in range(batch):
        all_on = all_on and t < lens[b]
    if all_on:
        _lstm_bwd_flat(gp, cpp, dht, dc, dgt)
        return
    for u in range(hh):
        i, f, g, o, tc = gp[u], gp[hh + u], gp[2 * hh + u], gp[3 * hh + u], gp[4 * hh + u]
        gm, cp, cr = dht[u], cpp[u], dc[u]
        di, df, dgg, do = dgt[u], dgt[hh + u], dgt[2 * hh + u], dgt[3 * hh + u]
        _lstm_bwd_unit(i, f, g, o, tc, gm, cp, cr, di, df, dgg, do, lens, t)


@kernel(parallel=True)
def lstm_bwd_halves(wtp, c_init, lens, gates, cs, dys, dh_all, dc_all, dg):
    """``lstm_bwd_chunk`` for a lone (forward) direction without a projection, every batch
    column, dys (T*B, H) its whole upstream gradient, each step shared by two threads as in
    ``lstm_fwd_halves``: thread p makes d h_t of half p's units
    (rows p of W_hh^T d g_{t+1}), then their gate gradients. wtp (2, Hh, 4H): W_hh^T's rows of
    half p, its columns in ``split_rows`` order; gates (T, 2, 5Hh, B) and cs (T, 2, Hh, B) as
    ``lstm_fwd_halves`` stored them. The gate gradients are kept step-major, dgs (T, 2, 4Hh,
    B), as the steps make them (a thread writes step t's while the other may still read step
    t+1's), and moved into dg (4H, T*B) at the end, a row of dg at a time. Medium LSTM, float32:
    written a step at a time, dg's 256 rows of 32 elements a step and thread took 23% of this
    kernel (2.68 ms with them, 2.05 without); the move at the end takes 0.12 ms alone, and the
    kernel went from 2.97 to 2.60 ms (one run)."""
    dt = dh_all.dtype
    hidden, batch = dh_all.shape
    hh = hidden // 2
    n_steps = dg.shape[1] // batch
    dgs = np.empty((n_steps, 2, 4 * hh, batch), dt)  # rows of half p in gate order
    dcp = np.empty((2, hh, batch), dt)
    dhp = np.empty((2, hh, batch), dt)
    dht = np.empty((2, hh, batch), dt)
    back = np.empty((2, hh, batch), dt)
    cinit = np.empty((2, hh, batch), dt)
    for p in range(2):
        dcp[p] = dc_all[p * hh:(p + 1) * hh]
        dhp[p] = dh_all[p * hh:(p + 1) * hh]
        cinit[p] = c_init[p * hh:(p + 1) * hh]
    for s in range(n_steps + 1):
        t = n_steps - 1 - s
        for p in prange(2):
            u0 = p * hh
            if s > 0:  # d h_t (rows p) = W_hh^T d g_{t+1}, kept where step t + 1 was active
                dot_one_thread(wtp[p], dgs[t + 1].reshape(8 * hh, batch), back[p])
                carry(back[p], lens, t + 1, dhp[p])
            if t >= 0:
                c0 = t * batch
                tot, dhb = dht[p], dhp[p]
                for b in range(batch):             # the total gradient of h_t, by rows of dys
                    dyr = dys[c0 + b, u0:u0 + hh]
                    on = t < lens[b]
                    for u in range(hh):
                        tot[u, b] = np.float64(dhb[u, b]) + np.float64(dyr[u]) if on else 0.0
                cpp = cinit[p] if t == 0 else cs[t - 1, p]
                _lstm_bwd_half(gates[t, p], cpp, lens, t, dht[p], dcp[p], dgs[t, p])
    for q in prange(8 * hh):                       # dg's rows in split_rows order
        p, r = q // (4 * hh), q % (4 * hh)
        dst = dg[(r // hh) * hidden + p * hh + r % hh]
        for t in range(n_steps):
            src = dgs[t, p, r]
            for b in range(batch):
                dst[t * batch + b] = src[b]
    for p in range(2):
        dh_all[p * hh:(p + 1) * hh] = dhp[p]
        dc_all[p * hh:(p + 1) * hh] = dcp[p]


@functools.lru_cache(maxsize=64)
def split_rows(hidden: int) -> np.ndarray:
    """The order of the 4H gate rows for ``lstm_fwd_halves``: half 0's units (i, f, g, o
    blocks of H/2 rows each), then half 1's. Read-only, made once per size (building it took
    ~70 us, twice a forward and backward)."""
    hh = hidden // 2
    rows = np.concatenate([g * hidden + p * hh + np.arange(hh) for p in range(2)
                           for g in range(4)])
    rows.flags.writeable = False
    return rows


@kernel()
def _lstm_bwd_unit(i, f, g, o, tc, gm, cp, cr, di, df, dgg, do, lens, t):
    """One unit's gate gradients at step t over the batch columns, where some column may be
    inactive: gates i, f, g, o and tanh c_t; gm = d m_t; cp = c_{t-1}; cr = d c_t in, d c_{t-1}
    out; di, df, dgg, do out. Computed for every column, kept by selects (no branches: the loop
    vectorises); an inactive column's gradients are 0 and its d c passes through."""
    for b in range(cr.size):
        on = t < lens[b]
        gh = np.float64(gm[b])
        ib, fb, gb = np.float64(i[b]), np.float64(f[b]), np.float64(g[b])
        ob, tb, dcb = np.float64(o[b]), np.float64(tc[b]), np.float64(cr[b])
        gc = dcb + gh * ob * (1.0 - tb * tb)
        di[b] = gc * gb * ib * (1.0 - ib) if on else 0.0
        df[b] = gc * np.float64(cp[b]) * fb * (1.0 - fb) if on else 0.0
        dgg[b] = gc * ib * (1.0 - gb * gb) if on else 0.0
        do[b] = gh * tb * ob * (1.0 - ob) if on else 0.0
        cr[b] = gc * fb if on else dcb


@kernel()
def _lstm_bwd_flat(gbuf, cpbuf, dm, dc, dgt):
    """One step's gate gradients when every column is active, as the per-unit loop of
    ``lstm_bwd_chunk`` computes them (the same expressions in the same order: the same bits),
    in one loop over the contiguous (H, nb) blocks: gbuf (5H, nb) holds i, f, g, o, tanh c_t;
    cpbuf c_{t-1}; dm d m_t; dc d c_t in, d c_{t-1} out; dgt (4H, nb) out. (The per-unit loop
    of nb = 32 over 13 row views spent most of its time in setup and overlap checks.)"""
    n = dc.size
    gf, cpf, dmf = gbuf.reshape(gbuf.size), cpbuf.reshape(n), dm.reshape(n)
    dcf, dgf = dc.reshape(n), dgt.reshape(dgt.size)
    for k in range(n):
        gh = np.float64(dmf[k])
        ib, fb, gb = np.float64(gf[k]), np.float64(gf[n + k]), np.float64(gf[2 * n + k])
        ob, tb, dcb = np.float64(gf[3 * n + k]), np.float64(gf[4 * n + k]), np.float64(dcf[k])
        gc = dcb + gh * ob * (1.0 - tb * tb)
        dgf[k] = gc * gb * ib * (1.0 - ib)
        dgf[n + k] = gc * np.float64(cpf[k]) * fb * (1.0 - fb)
        dgf[2 * n + k] = gc * ib * (1.0 - gb * gb)
        dgf[3 * n + k] = gh * tb * ob * (1.0 - ob)
        dcf[k] = gc * fb


@kernel()
def lstm_bwd_chunk(w_t, w_hr_t, c_init, lens, reverse, gates, cs, dys, row0, dh_all, dc_all,
                   dg, dhs, b0, nb, threaded):
    """w_t = W_hh^T (P, 4H); w_hr_t = W_hr^T (H, P), or (0, P) without a projection.
    dh_all (P, B), dc_all (H, B): on entry d h_n, d c_n; on exit d h0, d c0. dg (4H, T*B): d of
    the gate pre-activations. With a projection, dhs (P, T*B) receives each step's total d h_t
    (zero where inactive), for d W_hr."""
    dt = dh_all.dtype
    hout, batch = dh_all.shape
    hidden = dc_all.shape[0]
    n_steps = dg.shape[1] // batch
    proj = w_hr_t.shape[0] > 0
    ln = lens[b0:b0 + nb]
    dh = dh_all[:, b0:b0 + nb].copy()
    dc = dc_all[:, b0:b0 + nb].copy()
    dgt = np.empty((4 * hidden, nb), dt)
    dyt = np.empty((hout, nb), dt)
    dht = np.empty((hout, nb), dt)
    dm = np.empty((hidden, nb), dt) if proj else dht
    back = np.empty((hout, nb), dt)
    gbuf = np.empty((5 * hidden, nb), dt)     # a step's gates and c_{t-1}, contiguous
    cpbuf = np.empty((hidden, nb), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)
        c0 = t * batch + b0
        upstream_block(dys, c0, row0, dyt)
        tp = t + 1 if reverse else t - 1
        first = tp < 0 or tp >= n_steps
        cp0 = tp * batch + b0
        for p in range(hout):                      # the total gradient of h_t
            for b in range(nb):
                dht[p, b] = (np.float64(dh[p, b]) + np.float64(dyt[p, b])
                             if t < ln[b] else 0.0)
        if proj:
            dhs[:, c0:c0 + nb] = dht
            product(w_hr_t, dht, dm, threaded)     # d m_t = W_hr^T d h_t
        all_on = True
        for b in range(nb):
            all_on = all_on and t < ln[b]
        if all_on:  # the common case: every column active, one flat loop (see _lstm_bwd_flat)
            for r in range(5 * hidden):
                copy_row(gbuf[r], gates[r, c0:c0 + nb])
            for u in range(hidden):
                copy_row(cpbuf[u], c_init[u, b0:b0 + nb] if first else cs[u, cp0:cp0 + nb])
            _lstm_bwd_flat(gbuf, cpbuf, dm, dc, dgt)
        else:  # some column inactive: per unit, with selects
            for u in range(hidden):
                fu, gu, ou = hidden + u, 2 * hidden + u, 3 * hidden + u
                i, f = gates[u, c0:c0 + nb], gates[fu, c0:c0 + nb]
                g, o = gates[gu, c0:c0 + nb], gates[ou, c0:c0 + nb]
                tc, gm = gates[4 * hidden + u, c0:c0 + nb], dm[u]
                cp = c_init[u, b0:b0 + nb] if first else cs[u, cp0:cp0 + nb]
                cr = dc[u]
                di, df, dgg, do = dgt[u], dgt[fu], dgt[gu], dgt[ou]
                _lstm_bwd_unit(i, f, g, o, tc, gm, cp, cr, di, df, dgg, do, ln, t)
        dg[:, c0:c0 + nb] = dgt
        product(w_t, dgt, back, threaded)          # d h_{t-1} = W_hh^T dg_t
        carry(back, ln, t, dh)
    dh_all[:, b0:b0 + nb] = dh
    dc_all[:, b0:b0 + nb] = dc


@kernel(parallel=True)
def lstm_fwd_tasks(xw, w_hh, w_hr, bias, h, cell, lens, hs, ms, ys, gates, cs, chunk):
    """Every direction and block of batch columns of ``lstm_fwd_chunk``, in parallel."""
    dirs, hout, batch = h.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        lstm_fwd_chunk(xw[d], w_hh[d], w_hr[d], bias[d], h[d], cell[d], lens, d == 1, hs[d],
                       ms[d], ys, d * hout, gates[d], cs[d], b0, min(chunk, batch - b0), False)


@kernel(parallel=True)
def lstm_bwd_tasks(w_t, w_hr_t, c_init, lens, gates, cs, dys, dh, dc, dg, dhs, chunk):
    """Every direction and block of batch columns of ``lstm_bwd_chunk``, in parallel."""
    dirs, hout, batch = dh.shape
    per = (batch + chunk - 1) // chunk
    for task in prange(dirs * per):
        d, b0 = task // per, (task % per) * chunk
        lstm_bwd_chunk(w_t[d], w_hr_t[d], c_init[d], lens, d == 1, gates[d], cs[d], dys,
                       d * hout, dh[d], dc[d], dg[d], dhs[d], b0, min(chunk, batch - b0), False)
