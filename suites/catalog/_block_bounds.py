"""First-order bounds on the float32 rounding error of the composite blocks, element by element.

The blocks' float32 tolerance is derived, not chosen: a block is a chain of convolutions,
batch norms, ReLUs, sums and max-pools, and each link's error is bounded from the errors of
its inputs and its own rounding, evaluated on the case in float64 with the reference's parts:

- conv (a sum of K products, then stored): E_out = conv(E_in, |W|) + gamma_K conv(|x|, |W|)
  (+ |b|) + u |out|; backward the same with the transposed sums, plus, for dW, the forward
  error of the saved input: corr(|g|, E_x);
- batch norm: x_hat = (h - mean) invstd moves by at most invstd e + |x_hat| invstd^2
  mean(|h - mean| e) with e = E_h + mean(E_h) (first order in the mean and the variance);
  torch's own float32 evaluation adds 4 u (|gamma| invstd (|h| + |mean|) + |beta|)
  (see norm._bn_tol); backward: the same for the upstream error, the saved x_hat's error, the
  relative error of invstd, and 4 u of its terms; dgamma, dbeta: sums of M terms (gamma_M);
- ReLU is 1-Lipschitz forward (and exact where z < -E); backward, an input within E of 0
  may take the other branch
  in a float32 evaluation, so its gradient may differ by the whole |g| there;
- max-pool is 1-Lipschitz forward (max over the window of E); its input is the block's exact
  input x in Inception, so both sides pick the same argmax;
- a sum adds the errors and one rounding.

This bounds one float32 evaluation against the exact value; the reference and torch are two
such evaluations (each op takes the larger of the two implementations' bounds), so they differ
by at most twice the bound. First order: products of two rounding errors (u^2) are dropped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from reference.conv import conv2d, conv2d_backward
from reference.pool import max_pool2d, max_pool2d_backward
from suites.catalog._layer_tools import U32, gamma

U = U32


def _a(x):
    return np.abs(np.asarray(x, dtype=np.float64))


class ConvNode(NamedTuple):
    ctx: Any      # the float64 conv's ctx
    abs_ctx: Any  # conv(|x|, |W|)'s ctx
    err_ctx: Any  # conv(E_x, |W|)'s ctx
    k_x: int      # longest sums of the backward: into dx, into dW and db
    k_w: int


def conv(x, ex, w, b=None, **p):
    """Float64 conv and its error bound; returns (h, E_h, node)."""
    h, ctx = conv2d(x, w, b, **p)
    s, abs_ctx = conv2d(_a(x), _a(w), None if b is None else _a(b), **p)
    prop, err_ctx = conv2d(ex, _a(w), None, **p)
    geo = ctx.geo
    c_g, o_g = geo.c // geo.groups, geo.c_out // geo.groups
    k = c_g * geo.kh * geo.kw + (b is not None)
    e = prop + gamma(k) * s + U * np.abs(h)
    node = ConvNode(ctx, abs_ctx, err_ctx, o_g * geo.kh * geo.kw, geo.n * geo.oh * geo.ow)
    return h, e, node


def conv_back(node: ConvNode, g, eg):
    """Returns (dx, E_dx, E_dW, E_db or None)."""
    dx, dw, db = conv2d_backward(node.ctx, g)
    s_dx, s_dw, s_db = conv2d_backward(node.abs_ctx, np.abs(g))
    p_dx, p_dw, p_db = conv2d_backward(node.abs_ctx, eg)
    _, c_dw, _ = conv2d_backward(node.err_ctx, np.abs(g))
    e_dx = p_dx + gamma(node.k_x) * s_dx + U * np.abs(dx)
    e_dw = p_dw + c_dw + gamma(node.k_w) * s_dw + U * np.abs(dw)
    e_db = None if db is None else p_db + gamma(node.k_w) * s_db + U * np.abs(db)
    return dx, e_dx, e_dw, e_db


class BnNode(NamedTuple):
    h: np.ndarray
    xh: np.ndarray     # x_hat
    exh: np.ndarray    # its error bound
    k: np.ndarray      # gamma * invstd, broadcastable
    inv: np.ndarray
    mu: np.ndarray
    rel_inv: np.ndarray  # relative error bound of invstd
    training: bool


_AX = (0, 2, 3)


def _c(v):
    return v.reshape(1, -1, 1, 1)


def bn(h, eh, weight, bias, running_mean, running_var, training, momentum, eps):
    """Float64 batch norm of (N, C, H, W) and its error bound; returns (z, E_z, E_stats, node).

    ``E_stats`` bounds the new running statistics' errors (a scalar)."""
    gam, beta = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    if training:
        mu, var = h.mean(axis=_AX), h.var(axis=_AX)
        m = h.size // h.shape[1]
    else:
        mu, var = (np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64))
    inv = 1 / np.sqrt(var + eps)
    d = h - _c(mu)
    xh = d * _c(inv)
    if training:
        e1 = eh + _c(eh.mean(axis=_AX))
        dvar = 2 * (np.abs(d) * e1).mean(axis=_AX)  # |d var| first order
        rel_inv = dvar * inv**2 / 2
        exh = _c(inv) * e1 + np.abs(xh) * _c(rel_inv)  # |h - mean| d(invstd)
        new_rm = (1 - momentum) * np.asarray(running_mean) + momentum * mu
        new_rv = (1 - momentum) * np.asarray(running_var) + momentum * var * m / (m - 1)
        e_stats = max(float(np.max(momentum * eh.mean(axis=_AX) + 2 * U * np.abs(new_rm))),
                      float(np.max(momentum * m / (m - 1) * dvar + 2 * U * np.abs(new_rv))))
    else:
        rel_inv = np.zeros_like(inv)
        exh = _c(inv) * eh
        e_stats = 0.0
    k = _c(np.abs(gam) * inv)
    z = xh * _c(gam) + _c(beta)
    ez = _c(np.abs(gam)) * exh + 4 * U * (k * (np.abs(h) + _c(np.abs(mu))) + _c(np.abs(beta)))
    return z, ez, e_stats, BnNode(h, xh, exh, _c(gam * inv), _c(inv), _c(mu), _c(rel_inv),
                                  training)


def bn_back(node: BnNode, g, eg):
    """Returns (dh, E_dh, E_dgamma, E_dbeta)."""
    xh, exh, k = node.xh, node.exh, node.k
    m = g.size // g.shape[1]
    s_gx = (np.abs(g * xh)).sum(axis=_AX)
    e_dgamma = (eg * np.abs(xh) + np.abs(g) * exh).sum(axis=_AX) + gamma(m) * s_gx
    e_dbeta = eg.sum(axis=_AX) + gamma(m) * np.abs(g).sum(axis=_AX)
    if node.training:
        mg = _c(g.mean(axis=_AX))
        mgx = _c((g * xh).mean(axis=_AX))
        dh = k * (g - mg - xh * mgx)
        mean = lambda a: _c(a.mean(axis=_AX))  # noqa: E731
        e_dh = (np.abs(k) * (eg + mean(eg) + np.abs(xh) * mean(np.abs(xh) * eg))
                + np.abs(k) * (exh * np.abs(mgx) + np.abs(xh) * mean(np.abs(g) * exh))
                + np.abs(dh) * node.rel_inv
                + 4 * U * np.abs(k) * (np.abs(g) + np.abs(mg) + (np.abs(node.h) + np.abs(node.mu))
                                       * node.inv * np.abs(mgx)))
    else:
        dh = k * g
        e_dh = np.abs(k) * eg + 2 * U * np.abs(dh)
    return dh, e_dh, e_dgamma, e_dbeta


def relu(z, ez):
    """Returns (a, E_a, node); node = (z, E_z) for the backward's branch flips. Where
    z < -E_z every evaluation gives exactly 0."""
    return np.maximum(z, 0), np.where(z < -ez, 0.0, ez), (z, ez)


def relu_back(node, g, eg):
    z, ez = node
    flip = np.abs(z) < ez  # a float32 evaluation may take the other branch here (not if exact)
    return g * (z > 0), eg * ((z > 0) | flip) + np.abs(g) * flip


def maxpool(x, ex, **p):
    """Max-pool of the exact input x (ex must be 0: both sides then pick the same argmax)."""
    y, ctx = max_pool2d(x, **p)
    ey, _ = max_pool2d(ex, **p)
    return y, ey, ctx


def maxpool_back(ctx, g, eg):
    (dx,) = max_pool2d_backward(ctx, g)
    (edx,) = max_pool2d_backward(ctx, eg)
    return dx, edx


def worst(*arrays) -> float:
    return max((float(np.max(a, initial=0.0)) for a in arrays if a is not None), default=0.0)
