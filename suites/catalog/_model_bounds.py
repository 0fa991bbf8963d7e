"""First-order bounds on the float32 rounding error of a model's training step, elementwise.

A training step is a chain of dense and convolution layers, ReLUs, max-pools, a softmax
cross-entropy and an optimizer update. Each link's error is bounded from its inputs' errors
and its own rounding, evaluated on the case in float64 (dense: the same rules as
``_block_bounds.conv``, whose conv/ReLU/max-pool bounds are reused):

- dense ``h = x W^T + b``, a sum of K + 1 terms: E_h = E_x |W|^T + gamma_{K+1} (|x| |W|^T + |b|)
  + u |h|; backward dx = g W: E_dx = E_g |W| + gamma_N' |g| |W| + u |dx|; dW = g^T x:
  E_dW = E_g^T |x| + |g|^T E_x + gamma_N |g|^T |x| + u |dW|; db the column sums of g;
- mean cross-entropy of logits z (C classes, N rows; exactly 0 with its gradient for C = 1):
  the loss moves by at most
  mean_n 2 max_c E_z (it is 1-Lipschitz in each of lse and z_y), plus its own rounding
  gamma_{C+N+4} mean(|lse| + |z_y| + max|z|); its gradient g (p - onehot) / N moves by
  |g| p (E_z + p . E_z) / N (the softmax's first-order perturbation), plus
  gamma_{C+4} |g| (p + onehot) / N of its own, plus u |dz| for the upstream product;
- the optimizer update: SGD(-momentum) and Adam propagate the gradients' error E_g through
  their elementwise formulas (first order; sqrt by its exact increment sqrt(v + E) - sqrt(v),
  finite at v = 0), plus a few roundings per operation (torch rounds after each one, the
  reference once).

One evaluation errs by at most the bound E; the reference and torch are two evaluations, so
they differ by at most 2 E. Max-pool is 1-Lipschitz and both sides pick the same argmax:
the cases draw continuous random data, where a tie within E (~1e-6 relative) has
probability ~1e-6 per window.
"""

from __future__ import annotations

import numpy as np

from suites.catalog import _block_bounds as B
from suites.catalog._layer_tools import U32, gamma

U = U32


def _a(x):
    return np.abs(np.asarray(x, dtype=np.float64))


def dense(x, ex, w, b):
    """Float64 dense layer of (N, K) and its bound; returns (h, E_h, node)."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    h = x @ w.T + b
    e = ex @ _a(w).T + gamma(x.shape[1] + 1) * (_a(x) @ _a(w).T + _a(b)) + U * np.abs(h)
    return h, e, (x, ex, w)


def dense_back(node, g, eg):
    """Returns (dx, E_dx, dW, E_dW, db, E_db)."""
    x, ex, w = node
    dx, dw, db = g @ w, g.T @ x, g.sum(axis=0)
    n, n_out = x.shape[0], w.shape[0]
    e_dx = eg @ _a(w) + gamma(n_out) * (_a(g) @ _a(w)) + U * np.abs(dx)
    e_dw = eg.T @ _a(x) + _a(g).T @ ex + gamma(n) * (_a(g).T @ _a(x)) + U * np.abs(dw)
    e_db = eg.sum(axis=0) + gamma(n) * _a(g).sum(axis=0) + U * np.abs(db)
    return dx, e_dx, dw, e_dw, db, e_db


def cross_entropy(z, ez, y, g0: float):
    """Mean CE of logits (N, C) and labels; returns (loss, E_loss, dz, E_dz) for upstream g0."""
    n, c = z.shape
    m = z.max(axis=1, keepdims=True)
    ex = np.exp(z - m)
    lse = (m + np.log(ex.sum(axis=1, keepdims=True)))[:, 0]
    p = ex / ex.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(z)
    onehot[np.arange(n), y] = 1.0
    zy = z[np.arange(n), y]
    loss = float(np.mean(lse - zy))
    e_loss = (float(np.mean(2 * ez.max(axis=1)))
              + gamma(c + n + 4) * float(np.mean(np.abs(lse) + np.abs(zy) + np.abs(z).max(axis=1))))
    dz = g0 * (p - onehot) / n
    if c == 1:  # one class: p = exp(0) / 1 = 1 exactly on both sides, so loss and dz are 0
        return loss, 0.0, dz, np.zeros_like(dz)
    e_dz = (abs(g0) * p * (ez + (p * ez).sum(axis=1, keepdims=True)) / n
            + gamma(c + 4) * abs(g0) * (p + onehot) / n + U * np.abs(dz))
    return loss, e_loss, dz, e_dz


def sgd(p, g, eg, buf, step, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False):
    """Bounds of SGD's new parameter and buffer; returns [E_p1] or [E_p1, E_b1]."""
    p, buf = np.asarray(p, np.float64), (None if buf is None else np.asarray(buf, np.float64))
    gh = (-g if maximize else g) + weight_decay * p
    egh = eg + U * (np.abs(weight_decay * p) + np.abs(gh)) * (weight_decay != 0)
    if momentum == 0:
        return [lr * egh + 3 * U * (np.abs(p) + lr * np.abs(gh))]
    if step == 1:
        b1, eb1 = gh, egh
    else:
        b1 = momentum * buf + (1 - dampening) * gh
        eb1 = (1 - dampening) * egh + 3 * U * (np.abs(momentum * buf) + np.abs(gh) + np.abs(b1))
    upd, eupd = (gh + momentum * b1, egh + momentum * eb1 + 2 * U * (np.abs(gh) + np.abs(b1))
                 ) if nesterov else (b1, eb1)
    return [lr * eupd + 3 * U * (np.abs(p) + lr * np.abs(upd)), eb1]


def adam(p, g, eg, m, v, step, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         maximize=False):
    """Bounds of Adam's new parameter and buffers; returns [E_p1, E_m1, E_v1]."""
    b1, b2 = betas
    p, m, v = (np.asarray(a, np.float64) for a in (p, m, v))
    gh = (-g if maximize else g) + weight_decay * p
    egh = eg + U * (np.abs(weight_decay * p) + np.abs(gh)) * (weight_decay != 0)
    m1 = b1 * m + (1 - b1) * gh
    v1 = b2 * v + (1 - b2) * gh * gh
    em = (1 - b1) * egh + 3 * U * (np.abs(b1 * m) + np.abs((1 - b1) * gh) + np.abs(m1))
    ev = (1 - b2) * (2 * np.abs(gh) * egh + egh * egh) + 4 * U * (b2 * v + (1 - b2) * gh * gh + v1)
    c, k = lr / (1 - b1 ** step), np.sqrt(1 - b2 ** step)
    d = np.sqrt(v1) / k + eps
    e_d = (np.sqrt(v1 + ev) - np.sqrt(v1)) / k + 3 * U * d
    upd = c * m1 / d
    e_upd = (c * em / d + c * np.abs(m1) * e_d / (d * np.maximum(d - e_d, d / 2))
             + 4 * U * np.abs(upd))
    return [e_upd + 2 * U * (np.abs(p) + np.abs(upd)), em, ev]


worst = B.worst
conv, conv_back, relu, relu_back, maxpool, maxpool_back = (
    B.conv, B.conv_back, B.relu, B.relu_back, B.maxpool, B.maxpool_back)
