"""Kernels of ``reference/rnn.py``: one layer, one direction, all time steps, forward and back.

Layout (see ``reference/rnn.py``'s docstring): a layer's input and output sequences are
matrices with one row per step and batch element (row ``t*B + b``); inside a layer the states
and gates are feature-major, ``(features, T*B)``, step ``t`` at columns ``t*B .. t*B + B``.
The input product of all steps, ``xw = W_ih @ inp^T`` (G*H, T*B), is made by the caller, one
product per layer and direction; a step makes one recurrent product for all its gates
(``W_hh @ h``, G*H rows) and then one fused pass over the units computes every gate, the
cell and the new state (the LSTM's five transcendentals in one loop over the batch).

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

import numpy as np

from reference import _vmath as Vm
from reference._blas import dot_serial
from reference._jit import inline, kernel


@inline()
def step_of(s, n_steps, reverse):
    """The time index of the s-th step a direction takes."""
    return n_steps - 1 - s if reverse else s


@kernel()
def put_outputs(h, lens, t, ys, row0):
    """ys[t*B + b, row0:row0 + P] = h[:, b] for the active b, zeros for the others."""
    hout, batch = h.shape
    for b in range(batch):
        row = ys[t * batch + b, row0:row0 + hout]
        if t < lens[b]:
            for p in range(hout):
                row[p] = h[p, b]
        else:
            row[:] = 0.0


@kernel()
def upstream_block(dys, c0, row0, out):
    """This step's upstream gradient, feature-major: out (P, B) = dys[c0:c0+B, row0:row0+P]^T."""
    hout, batch = out.shape
    out[:, :] = dys[c0:c0 + batch, row0:row0 + hout].T


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


@kernel()
def row_sums(a, out):
    """out[j] = sum_c a[j, c], accumulated in float64."""
    for j in range(a.shape[0]):
        row = a[j]
        acc = 0.0
        for c in range(row.size):
            acc += np.float64(row[c])
        out[j] = acc


@kernel()
def weight_grads(dg_x, dg_h, inp, w_ih, hprev, dinp, dw_ih, dw_hh):
    """One product over all steps each: d inp += dG_x^T W_ih, dW_ih = dG_x inp,
    dW_hh = dG_h hprev^T."""
    dinp += np.dot(dg_x.T, w_ih)
    np.dot(dg_x, inp, dw_ih)
    np.dot(dg_h, hprev.T, dw_hh)


@kernel()
def carry(new, lens, t, state):
    """state[:, b] = new[:, b] where step t is active for b (else b keeps its state)."""
    rows, batch = state.shape
    for u in range(rows):
        nr, sr = new[u], state[u]
        for b in range(batch):
            sr[b] = nr[b] if t < lens[b] else sr[b]  # a select: the loop vectorises


# ---------------------------------------------------------------------------------------------
# Elman RNN


@kernel()
def rnn_fwd(xw, w_hh, bias, h, lens, relu, reverse, hs, ys, row0):
    """h (H, B) in: h0, out: h_n; bias (H,) float64 = b_ih + b_hh; hs (H, T*B): every step's
    state."""
    dt = h.dtype
    hidden, batch = h.shape
    n_steps = xw.shape[1] // batch
    hw = np.empty((hidden, batch), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch
        dot_serial(w_hh, h, hw)
        for u in range(hidden):
            xr, hr, hh, yr = xw[u, c0:c0 + batch], hw[u], h[u], hs[u, c0:c0 + batch]
            bu = bias[u]
            for b in range(batch):
                pre = np.float64(xr[b]) + np.float64(hr[b]) + bu
                if relu:
                    new = pre if pre > 0 else 0.0 * pre + 0.0  # NaN stays NaN
                else:
                    new = Vm.tanh(pre, dt)
                yr[b] = new if t < lens[b] else hh[b]
            hh[:] = yr
        put_outputs(h, lens, t, ys, row0)
    return h


@kernel()
def rnn_bwd(w_hh, relu, lens, reverse, hs, dys, row0, dh, dg):
    """dh (H, B): on entry d h_n, on exit d h0. dg (H, T*B): d pre-activation, all steps."""
    hidden, batch = dh.shape
    n_steps = dg.shape[1] // batch
    dgt = np.empty((hidden, batch), dh.dtype)
    dyt = np.empty((hidden, batch), dh.dtype)
    back = np.empty((hidden, batch), dh.dtype)
    w_t = w_hh.T.copy()
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)  # backward runs time backwards
        c0 = t * batch
        upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            yr, gr, hr, out = hs[u, c0:c0 + batch], dyt[u], dh[u], dgt[u]
            for b in range(batch):
                g = np.float64(hr[b]) + np.float64(gr[b])
                y = np.float64(yr[b])
                if relu:
                    d = g if y > 0 else 0.0
                else:
                    d = g * (1.0 - y * y)
                out[b] = d if t < lens[b] else 0.0
            dg[u, c0:c0 + batch] = out
        dot_serial(w_t, dgt, back)                # d h_{t-1} = W_hh^T dg_t
        carry(back, lens, t, dh)


# ---------------------------------------------------------------------------------------------
# GRU


@kernel()
def gru_fwd(xw, w_hh, b_ih, b_hh, h, lens, reverse, hs, ys, row0, gates):
    """gates (4H, T*B): r, z, n and q = W_hn h + b_hn, per step."""
    dt = h.dtype
    hidden, batch = h.shape
    n_steps = xw.shape[1] // batch
    hw = np.empty((3 * hidden, batch), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch
        dot_serial(w_hh, h, hw)
        for u in range(hidden):
            zu, nu = hidden + u, 2 * hidden + u
            br = np.float64(b_ih[u]) + np.float64(b_hh[u])
            bz = np.float64(b_ih[zu]) + np.float64(b_hh[zu])
            bx, bh = np.float64(b_ih[nu]), np.float64(b_hh[nu])
            rr, zr = gates[u, c0:c0 + batch], gates[zu, c0:c0 + batch]
            nr, qr = gates[nu, c0:c0 + batch], gates[3 * hidden + u, c0:c0 + batch]
            hh, yr = h[u], hs[u, c0:c0 + batch]
            for b in range(batch):
                rr[b] = Vm.sigmoid(np.float64(xw[u, c0 + b]) + np.float64(hw[u, b]) + br, dt)
                zr[b] = Vm.sigmoid(np.float64(xw[zu, c0 + b]) + np.float64(hw[zu, b]) + bz, dt)
                qr[b] = np.float64(hw[nu, b]) + bh
                nr[b] = Vm.tanh(np.float64(xw[nu, c0 + b]) + bx
                                + np.float64(rr[b]) * np.float64(qr[b]), dt)
                z = np.float64(zr[b])
                new = (1.0 - z) * np.float64(nr[b]) + z * np.float64(hh[b])
                yr[b] = new if t < lens[b] else hh[b]
            hh[:] = yr
        put_outputs(h, lens, t, ys, row0)
    return h


@kernel()
def gru_bwd(w_hh, lens, reverse, gates, hprev, dys, row0, dh, dgx, dgh):
    """dgx: d of the input pre-activations (3H, T*B); dgh: d of W_hh h + b_hh."""
    hidden, batch = dh.shape
    n_steps = dgx.shape[1] // batch
    dght = np.empty((3 * hidden, batch), dh.dtype)
    back = np.empty((hidden, batch), dh.dtype)
    dyt = np.empty((hidden, batch), dh.dtype)
    w_t = w_hh.T.copy()
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)
        c0 = t * batch
        upstream_block(dys, c0, row0, dyt)
        for u in range(hidden):
            r, z = gates[u, c0:c0 + batch], gates[hidden + u, c0:c0 + batch]
            n, q = gates[2 * hidden + u, c0:c0 + batch], gates[3 * hidden + u, c0:c0 + batch]
            hp, gy, hr = hprev[u, c0:c0 + batch], dyt[u], dh[u]
            dr, dz, dn = dght[u], dght[hidden + u], dght[2 * hidden + u]
            xr, xz, xn = (dgx[u, c0:c0 + batch], dgx[hidden + u, c0:c0 + batch],
                          dgx[2 * hidden + u, c0:c0 + batch])
            # Computed for every b, kept by selects (no branches: the loop vectorises).
            for b in range(batch):
                on = t < lens[b]
                hb = np.float64(hr[b])
                g = hb + np.float64(gy[b])
                rb, zb, nb = np.float64(r[b]), np.float64(z[b]), np.float64(n[b])
                an = g * (1.0 - zb) * (1.0 - nb * nb) if on else 0.0  # d pre_n
                az = g * (np.float64(hp[b]) - nb) * zb * (1.0 - zb) if on else 0.0
                ar = an * np.float64(q[b]) * rb * (1.0 - rb) if on else 0.0
                xr[b], xz[b], xn[b] = ar, az, an
                dr[b], dz[b], dn[b] = ar, az, an * rb         # r * d pre_n feeds W_hn
                hr[b] = g * zb if on else hb                  # the direct path z h_{t-1}
        dgh[:, c0:c0 + batch] = dght
        dot_serial(w_t, dght, back)
        dh += back


# ---------------------------------------------------------------------------------------------
# LSTM (with an optional projection h = W_hr (o tanh c))


@kernel()
def lstm_fwd(xw, w_hh, w_hr, bias, h, cell, lens, reverse, hs, ms, ys, row0, gates, cs):
    """h (P, B) and cell (H, B): in h0, c0, out h_n, c_n; bias (4H,) float64 = b_ih + b_hh.
    gates (5H, T*B): i, f, g, o and tanh(c_t); cs (H, T*B): c_t; hs (P, T*B): h_t. With a
    projection (``w_hr`` (P, H), P >= 1), ms (H, T*B) keeps m_t = o tanh c_t and h = W_hr m;
    without (``w_hr`` of shape (0, H)) h = m and ms is not written."""
    dt = h.dtype
    hout, batch = h.shape
    hidden = cell.shape[0]
    n_steps = xw.shape[1] // batch
    proj = w_hr.shape[0] > 0
    hw = np.empty((4 * hidden, batch), dt)
    m = np.empty((hidden, batch), dt)
    hp = np.empty((hout, batch), dt)
    for s in range(n_steps):
        t = step_of(s, n_steps, reverse)
        c0 = t * batch
        dot_serial(w_hh, h, hw)
        # One pass per unit: the four gates, the cell, tanh of the cell and the output.
        for u in range(hidden):
            fu, gu, ou = hidden + u, 2 * hidden + u, 3 * hidden + u
            bi, bf, bg, bo = bias[u], bias[fu], bias[gu], bias[ou]
            ir, fr = gates[u, c0:c0 + batch], gates[fu, c0:c0 + batch]
            gr, orow = gates[gu, c0:c0 + batch], gates[ou, c0:c0 + batch]
            tr, cr = gates[4 * hidden + u, c0:c0 + batch], cs[u, c0:c0 + batch]
            xi, xf = xw[u, c0:c0 + batch], xw[fu, c0:c0 + batch]
            xg, xo = xw[gu, c0:c0 + batch], xw[ou, c0:c0 + batch]
            hi, hf, hg, ho = hw[u], hw[fu], hw[gu], hw[ou]
            cc, mr = cell[u], m[u]
            for b in range(batch):
                ir[b] = Vm.sigmoid(np.float64(xi[b]) + np.float64(hi[b]) + bi, dt)
                fr[b] = Vm.sigmoid(np.float64(xf[b]) + np.float64(hf[b]) + bf, dt)
                gr[b] = Vm.tanh(np.float64(xg[b]) + np.float64(hg[b]) + bg, dt)
                orow[b] = Vm.sigmoid(np.float64(xo[b]) + np.float64(ho[b]) + bo, dt)
                cnew = (np.float64(fr[b]) * np.float64(cc[b])
                        + np.float64(ir[b]) * np.float64(gr[b]))
                cr[b] = cnew if t < lens[b] else cc[b]
                cc[b] = cr[b]
                tr[b] = Vm.tanh(np.float64(cr[b]), dt)          # of the stored (rounded) c_t
                mr[b] = np.float64(orow[b]) * np.float64(tr[b])
        if proj:
            ms[:, c0:c0 + batch] = m
            dot_serial(w_hr, m, hp)
            carry(hp, lens, t, h)
        else:
            carry(m, lens, t, h)
        hs[:, c0:c0 + batch] = h
        put_outputs(h, lens, t, ys, row0)
    return h, cell


@kernel()
def lstm_bwd(w_hh, w_hr, c_init, lens, reverse, gates, cs, dys, row0, dh, dc, dg, dhs):
    """dh (P, B), dc (H, B): on entry d h_n, d c_n; on exit d h0, d c0. dg (4H, T*B): d of the
    gate pre-activations. With a projection, dhs (P, T*B) receives each step's total d h_t
    (zero where inactive), for d W_hr."""
    hout, batch = dh.shape
    hidden = dc.shape[0]
    n_steps = dg.shape[1] // batch
    proj = w_hr.shape[0] > 0
    dgt = np.empty((4 * hidden, batch), dh.dtype)
    dyt = np.empty((hout, batch), dh.dtype)
    dht = np.empty((hout, batch), dh.dtype)
    dm = np.empty((hidden, batch), dh.dtype) if proj else dht
    back = np.empty((hout, batch), dh.dtype)
    w_t = w_hh.T.copy()
    w_hr_t = w_hr.T.copy()
    for s in range(n_steps):
        t = step_of(s, n_steps, not reverse)
        c0 = t * batch
        upstream_block(dys, c0, row0, dyt)
        tp = t + 1 if reverse else t - 1
        first = tp < 0 or tp >= n_steps
        for p in range(hout):                      # the total gradient of h_t
            for b in range(batch):
                dht[p, b] = (np.float64(dh[p, b]) + np.float64(dyt[p, b])
                             if t < lens[b] else 0.0)
        if proj:
            dhs[:, c0:c0 + batch] = dht
            dot_serial(w_hr_t, dht, dm)            # d m_t = W_hr^T d h_t
        for u in range(hidden):
            fu, gu, ou = hidden + u, 2 * hidden + u, 3 * hidden + u
            i, f = gates[u, c0:c0 + batch], gates[fu, c0:c0 + batch]
            g, o = gates[gu, c0:c0 + batch], gates[ou, c0:c0 + batch]
            tc, gm = gates[4 * hidden + u, c0:c0 + batch], dm[u]
            cp = c_init[u] if first else cs[u, tp * batch:tp * batch + batch]
            cr = dc[u]
            di, df, dgg, do = dgt[u], dgt[fu], dgt[gu], dgt[ou]
            # Computed for every b, kept by selects (no branches: the loop vectorises).
            for b in range(batch):
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
        dg[:, c0:c0 + batch] = dgt
        dot_serial(w_t, dgt, back)                 # d h_{t-1} = W_hh^T dg_t
        carry(back, lens, t, dh)
