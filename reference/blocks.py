"""Composite blocks built from the layer references: ResNet basic block, MobileNet
depthwise-separable block, GoogLeNet Inception block. Forward and backward chain the parts'
own forward/backward, so each block is exactly as verified as its parts, and its gradient is
the chain rule written out.

Weights are positional inputs (differentiable); batch-norm running statistics are inputs and
their updates are returned after the output, never written in place::

    (y, *new_running_stats), ctx = basic_block(x, ...weights..., stride=1, training=True)
    grads = basic_block_backward(ctx, dy)    # one per weight, in argument order

Running statistics are not differentiable, so ``grads`` skips them.

Each block's backward refuses any context but its own block's (TypeError naming ``ctx``);
``grad_out`` is checked by the first part it reaches. The parts keep private copies of the
caller's arrays they read in backward (see reference.conv and reference.norm), so editing x
or a weight in place between forward and backward does not change the gradients.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from reference import _validate as v
from reference.activations import relu, relu_backward
from reference.conv import conv2d, conv2d_backward
from reference.norm import batch_norm, batch_norm_backward
from reference.pool import max_pool2d, max_pool2d_backward

__all__ = [
    "basic_block", "basic_block_backward", "mobilenet_block", "mobilenet_block_backward",
    "inception_block", "inception_block_backward",
]


def _conv_bn_relu(x, w, bn, *, stride, padding, groups, training, momentum, eps, act=True):
    """conv (no bias) -> batch norm -> ReLU (optional). Returns (y, (new_rm, new_rv), ctxs)."""
    gamma, beta, rm, rv = bn
    h, c_conv = conv2d(x, w, None, stride=stride, padding=padding, groups=groups)
    (z, nrm, nrv), c_bn = batch_norm(h, rm, rv, gamma, beta, training, momentum, eps)
    if not act:
        return z, (nrm, nrv), (c_conv, c_bn, None)
    y, c_relu = relu(z)
    return y, (nrm, nrv), (c_conv, c_bn, c_relu)


def _conv_bn_relu_backward(ctxs, g):
    """Returns (dx, dW, dgamma, dbeta) of a _conv_bn_relu part."""
    c_conv, c_bn, c_relu = ctxs
    if c_relu is not None:
        (g,) = relu_backward(c_relu, g)
    dh, dgamma, dbeta = batch_norm_backward(c_bn, g)
    dx, dw, _ = conv2d_backward(c_conv, dh)
    return dx, dw, dgamma, dbeta


def _check_inputs(x, named: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every weight a float array of x's dtype and of its expected shape, named as the block
    names it (the parts would call it "weight" or "running_mean")."""
    for name, a in named.items():
        a = v.float_array(a, name, dtype=x.dtype)
        if name in shapes and a.shape != shapes[name]:
            raise ValueError(f"{name} must have shape {shapes[name]}, got {a.shape}")


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}_{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")}


def _mode(training, momentum, eps) -> dict[str, Any]:
    return dict(training=v.boolean(training, "training"),
                momentum=v.real(momentum, "momentum", lo=0.0, hi=1.0),
                eps=v.real(eps, "eps", lo=0.0))


# ---------------------------------------------------------------------------------------------
# ResNet basic block


class BasicBlockCtx(NamedTuple):
    part1: tuple
    part2: tuple
    shortcut: tuple | None  # the projection's ctxs, None for the identity
    c_out: tuple            # the final ReLU's ctx


def basic_block(x, conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var,
                conv2_weight, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var,
                shortcut_weight=None, shortcut_bn_weight=None, shortcut_bn_bias=None,
                shortcut_bn_running_mean=None, shortcut_bn_running_var=None, *, stride=1,
                training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    r"""ResNet's basic block (He et al. 2016), NCHW:

    .. math:: y = \mathrm{relu}\big(\mathrm{BN_2}(W_2 * \mathrm{relu}(\mathrm{BN_1}(W_1 *_s x)))
              + S(x)\big)

    ``W_1`` is 3x3 with stride s and padding 1, ``W_2`` 3x3 with stride 1 and padding 1, no
    conv biases. The shortcut ``S`` is the identity, or, when the ``shortcut_*`` inputs are
    given (all five), the projection ``BN_s(W_s *_s x)`` with a 1x1 ``W_s`` of stride s; the
    identity needs s = 1 and as many output as input channels.

    Backward is the chain rule through the parts; the gradient reaching the sum goes to both
    branches, so ``dx = dx_{main} + dx_{shortcut}``. Returns ``((y, rm1, rv1, rm2, rv2[, rms,
    rvs]), ctx)``; backward returns the gradients of (x, conv1_weight, bn1_weight, bn1_bias,
    conv2_weight, bn2_weight, bn2_bias, shortcut_weight, shortcut_bn_weight,
    shortcut_bn_bias), None for the last three with the identity shortcut.
    """
    mode = _mode(training, momentum, eps)
    sc = (shortcut_weight, shortcut_bn_weight, shortcut_bn_bias, shortcut_bn_running_mean,
          shortcut_bn_running_var)
    given = [a is not None for a in sc]
    if any(given) and not all(given):
        raise ValueError("shortcut_weight, shortcut_bn_weight, shortcut_bn_bias, "
                         "shortcut_bn_running_mean and shortcut_bn_running_var go together: "
                         "give all five (projection) or none (identity)")
    s = v.int_tuple(stride, "stride", 2, lo=1)
    x = v.float_array(x, "x", ndim=4)
    c_in = x.shape[1]
    w1 = v.float_array(conv1_weight, "conv1_weight", ndim=4, dtype=x.dtype)
    c = w1.shape[0]
    shapes = {"conv1_weight": (c, c_in, 3, 3), "conv2_weight": (c, c, 3, 3),
              "shortcut_weight": (c, c_in, 1, 1), **_bn_shapes("bn1", c), **_bn_shapes("bn2", c),
              **_bn_shapes("shortcut_bn", c)}
    names = ("conv1_weight", "bn1_weight", "bn1_bias", "bn1_running_mean", "bn1_running_var",
             "conv2_weight", "bn2_weight", "bn2_bias", "bn2_running_mean", "bn2_running_var",
             "shortcut_weight", "shortcut_bn_weight", "shortcut_bn_bias",
             "shortcut_bn_running_mean", "shortcut_bn_running_var")
    args = (conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight,
            bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var) + sc
    for n, a in zip(names[:10], args[:10], strict=True):
        if a is None:
            raise TypeError(f"{n} must be a numpy.ndarray of float32 or float64, got None")
    _check_inputs(x, {n: a for n, a in zip(names, args, strict=True) if a is not None}, shapes)
    a1, st1, p1 = _conv_bn_relu(x, conv1_weight, (bn1_weight, bn1_bias, bn1_running_mean,
                                bn1_running_var), stride=s, padding=1, groups=1, **mode)
    z2, st2, p2 = _conv_bn_relu(a1, conv2_weight, (bn2_weight, bn2_bias, bn2_running_mean,
                                bn2_running_var), stride=1, padding=1, groups=1, act=False,
                                **mode)
    stats = st1 + st2
    if all(given):
        short, sts, ps = _conv_bn_relu(x, shortcut_weight, sc[1:], stride=s, padding=0,
                                       groups=1, act=False, **mode)
        stats += sts
    else:
        if s != (1, 1) or z2.shape != x.shape:
            raise ValueError(f"the identity shortcut needs stride 1 and as many output as input "
                             f"channels (got stride {s}, x {x.shape} -> {z2.shape}): give "
                             f"shortcut_weight and the shortcut_bn_* inputs for a projection")
        short, ps = x, None
    y, c_out = relu(z2 + short)
    return (y,) + stats, BasicBlockCtx(p1, p2, ps, c_out)


def basic_block_backward(ctx: BasicBlockCtx, grad_out):
    """The chain rule through the parts (see ``basic_block``); dx sums both branches."""
    v.ctx_of(ctx, BasicBlockCtx, "basic_block")
    (g,) = relu_backward(ctx.c_out, grad_out)            # d(z2 + shortcut)
    da1, dw2, dg2, db2 = _conv_bn_relu_backward(ctx.part2, g)
    dx, dw1, dg1, db1 = _conv_bn_relu_backward(ctx.part1, da1)
    if ctx.shortcut is None:
        return (dx + g, dw1, dg1, db1, dw2, dg2, db2, None, None, None)
    dxs, dws, dgs, dbs = _conv_bn_relu_backward(ctx.shortcut, g)
    return (dx + dxs, dw1, dg1, db1, dw2, dg2, db2, dws, dgs, dbs)


# ---------------------------------------------------------------------------------------------
# MobileNet depthwise-separable block


class MobileNetCtx(NamedTuple):
    depthwise: tuple
    pointwise: tuple


def mobilenet_block(x, dw_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var,
                    pw_weight, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var, *,
                    stride=1, training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    r"""MobileNet's depthwise-separable block (Howard et al. 2017, fig. 3), NCHW:

    .. math:: y = \mathrm{relu}(\mathrm{BN_2}(W_{pw} * \mathrm{relu}(\mathrm{BN_1}(W_{dw}
              \circledast_s x))))

    ``W_dw`` (C, 1, 3, 3) is a depthwise 3x3 conv (groups = C) with stride s and padding 1,
    ``W_pw`` (C_out, C, 1, 1) the pointwise conv; no conv biases. Returns ``((y, rm1, rv1,
    rm2, rv2), ctx)``; backward returns the gradients of (x, dw_weight, bn1_weight, bn1_bias,
    pw_weight, bn2_weight, bn2_bias).
    """
    mode = _mode(training, momentum, eps)
    x = v.float_array(x, "x", ndim=4)
    c = x.shape[1]
    pw = v.float_array(pw_weight, "pw_weight", ndim=4, dtype=x.dtype)
    c_out = pw.shape[0]
    _check_inputs(x, dict(dw_weight=dw_weight, bn1_weight=bn1_weight, bn1_bias=bn1_bias,
                          bn1_running_mean=bn1_running_mean, bn1_running_var=bn1_running_var,
                          pw_weight=pw_weight, bn2_weight=bn2_weight, bn2_bias=bn2_bias,
                          bn2_running_mean=bn2_running_mean, bn2_running_var=bn2_running_var),
                  {"dw_weight": (c, 1, 3, 3), "pw_weight": (c_out, c, 1, 1),
                   **_bn_shapes("bn1", c), **_bn_shapes("bn2", c_out)})
    dw = dw_weight
    s = v.int_tuple(stride, "stride", 2, lo=1)
    a1, st1, p1 = _conv_bn_relu(x, dw, (bn1_weight, bn1_bias, bn1_running_mean,
                                bn1_running_var), stride=s, padding=1, groups=x.shape[1],
                                **mode)
    y, st2, p2 = _conv_bn_relu(a1, pw, (bn2_weight, bn2_bias, bn2_running_mean,
                               bn2_running_var), stride=1, padding=0, groups=1, **mode)
    return (y,) + st1 + st2, MobileNetCtx(p1, p2)


def mobilenet_block_backward(ctx: MobileNetCtx, grad_out):
    """The chain rule through the pointwise and depthwise parts (see ``mobilenet_block``)."""
    v.ctx_of(ctx, MobileNetCtx, "mobilenet_block")
    da1, dpw, dg2, db2 = _conv_bn_relu_backward(ctx.pointwise, grad_out)
    dx, ddw, dg1, db1 = _conv_bn_relu_backward(ctx.depthwise, da1)
    return (dx, ddw, dg1, db1, dpw, dg2, db2)


# ---------------------------------------------------------------------------------------------
# Inception block


class InceptionCtx(NamedTuple):
    branches: tuple  # per branch, the list of (conv ctx, relu ctx) in order; branch 4 first pools
    pool: Any
    splits: tuple[int, ...]


def _conv_relu(x, w, b, padding):
    h, c_conv = conv2d(x, w, b, padding=padding)
    y, c_relu = relu(h)
    return y, (c_conv, c_relu)


def _conv_relu_backward(ctxs, g):
    c_conv, c_relu = ctxs
    (g,) = relu_backward(c_relu, g)
    dx, dw, db = conv2d_backward(c_conv, g)
    return dx, dw, db


def inception_block(x, b1_weight, b1_bias, b2_reduce_weight, b2_reduce_bias, b2_weight,
                    b2_bias, b3_reduce_weight, b3_reduce_bias, b3_weight, b3_bias, b4_weight,
                    b4_bias):
    r"""GoogLeNet's Inception module (Szegedy et al. 2015, fig. 2b), NCHW, stride 1:

    .. math:: y = \big[\,r(W_1 * x),\ r(W_3 * r(W_{3r} * x)),\ r(W_5 * r(W_{5r} * x)),\
              r(W_p * \mathrm{maxpool}_{3 \times 3}(x))\,\big]

    concatenated on channels, with ``r`` = ReLU, every conv with its bias (as in the paper),
    1x1 convs unpadded, the 3x3 conv padded by 1, the 5x5 by 2, and the max-pool 3x3 with
    stride 1 and padding 1, so every branch keeps H x W. Backward splits ``dy`` by channels
    into the branches and adds the four gradients of x. It returns the gradients of every
    input, in argument order.
    """
    x = v.float_array(x, "x", ndim=4)
    c = x.shape[1]
    named = dict(b1_weight=b1_weight, b1_bias=b1_bias, b2_reduce_weight=b2_reduce_weight,
                 b2_reduce_bias=b2_reduce_bias, b2_weight=b2_weight, b2_bias=b2_bias,
                 b3_reduce_weight=b3_reduce_weight, b3_reduce_bias=b3_reduce_bias,
                 b3_weight=b3_weight, b3_bias=b3_bias, b4_weight=b4_weight, b4_bias=b4_bias)
    out = {n: v.float_array(a, n, ndim=4, dtype=x.dtype).shape[0]
           for n, a in named.items() if n.endswith("weight")}
    shapes = {"b1_weight": (out["b1_weight"], c, 1, 1),
              "b2_reduce_weight": (out["b2_reduce_weight"], c, 1, 1),
              "b2_weight": (out["b2_weight"], out["b2_reduce_weight"], 3, 3),
              "b3_reduce_weight": (out["b3_reduce_weight"], c, 1, 1),
              "b3_weight": (out["b3_weight"], out["b3_reduce_weight"], 5, 5),
              "b4_weight": (out["b4_weight"], c, 1, 1)}
    shapes |= {n.replace("weight", "bias"): (k,) for n, k in out.items()}
    _check_inputs(x, named, shapes)
    y1, c1 = _conv_relu(x, b1_weight, b1_bias, 0)
    r2, c2r = _conv_relu(x, b2_reduce_weight, b2_reduce_bias, 0)
    y2, c2 = _conv_relu(r2, b2_weight, b2_bias, 1)
    r3, c3r = _conv_relu(x, b3_reduce_weight, b3_reduce_bias, 0)
    y3, c3 = _conv_relu(r3, b3_weight, b3_bias, 2)
    pooled, c_pool = max_pool2d(x, 3, stride=1, padding=1)
    y4, c4 = _conv_relu(pooled, b4_weight, b4_bias, 0)
    outs = (y1, y2, y3, y4)
    splits = tuple(int(s) for s in np.cumsum([o.shape[1] for o in outs])[:-1])
    ctx = InceptionCtx(((c1,), (c2r, c2), (c3r, c3), (c4,)), c_pool, splits)
    return np.concatenate(outs, axis=1), ctx


def inception_block_backward(ctx: InceptionCtx, grad_out):
    """Each branch's backward on its slice of ``grad_out``; dx sums the four branches."""
    v.ctx_of(ctx, InceptionCtx, "inception_block")
    g = v.float_array(grad_out, "grad_out", ndim=4)
    g1, g2, g3, g4 = (np.ascontiguousarray(p) for p in np.split(g, ctx.splits, axis=1))
    (c1,), (c2r, c2), (c3r, c3), (c4,) = ctx.branches
    dx, dw1, db1 = _conv_relu_backward(c1, g1)
    dr2, dw2, db2 = _conv_relu_backward(c2, g2)
    dx2, dw2r, db2r = _conv_relu_backward(c2r, dr2)
    dr3, dw3, db3 = _conv_relu_backward(c3, g3)
    dx3, dw3r, db3r = _conv_relu_backward(c3r, dr3)
    dpool, dw4, db4 = _conv_relu_backward(c4, g4)
    (dx4,) = max_pool2d_backward(ctx.pool, dpool)
    return (dx + dx2 + dx3 + dx4, dw1, db1, dw2r, db2r, dw2, db2, dw3r, db3r, dw3, db3, dw4, db4)
