"""The attention core that scaled dot-product attention, multi-head attention and the encoder
layer share: the two kernels over N = batch * heads independent (L, S) problems (their dropout
of probabilities is ``reference._prims.dropout``, ``layers.dropout``'s element op), the dense
row helpers (projections through ``reference.layers.linear``'s own kernels, head split and
merge), and the checks of masks and dropout keep-masks.
Private to ``reference.attention``; the conventions are in its docstring.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from reference import _validate as v
from reference import _vmath as Vm
from reference._blas import SERIAL_MNK
from reference._jit import kernel
from reference._prims import dropout as drop
from reference.layers import _linear_bwd, _linear_fwd

_NO_BIAS = np.zeros((1, 1, 1))
_NO_KEEP = np.ones((1, 1, 1), np.bool_)
_NO_KEEP2 = np.ones((1, 1), np.bool_)
_NO_DPROBS = np.zeros((1, 1, 1))


# ---------------------------------------------------------------------------------------------
# kernels: the attention core over N = batch * heads independent (L, S) problems
#
# Each head runs in blocks of query rows, each product of a block at most SERIAL_MNK
# multiply-adds, so OpenBLAS runs it on the calling thread (reference/_blas.py): the block's
# scores, softmax rows and output in the forward; dP, dS, dQ of the block, and its share of dK
# and dV added in, in the backward, so no (L, S) matrix is copied or transposed: a block's P^T
# and dS^T are transposed views that BLAS reads as they are (the strided (S, L) copies they
# replace took a third of the backward). A call with enough work shares its heads among the
# threads, in contiguous shares, each with its own scratch (``_threads``); a head's arithmetic
# does not depend on the share, so the result is the same bit for bit. Measured paired against
# torch-cpu on 2 cores, medium SDPA ((8, 8, 128, 32), float32), heads serial -> shared: forward
# 1.58 -> 0.97, forward+backward 1.51 -> 0.88. It costs ~8 s more cold compile (SDPA's
# signatures, both dtypes: 5.8 -> 13.7 s).


# Below this many multiply-adds in all heads the heads run on the calling thread: starting the
# pool costs more than a share of such a call saves.
PARALLEL_MACS = 1 << 18


def _threads(q: np.ndarray, v: np.ndarray, probs: np.ndarray) -> int:
    """How many threads share the heads of a call: 1 for small work, else up to one each."""
    n_prob, n_q, n_k = probs.shape
    if n_prob < 2 or n_prob * n_q * n_k * (q.shape[2] + v.shape[2]) < PARALLEL_MACS:
        return 1
    return min(n_prob, numba.get_num_threads())


@kernel()
def _block_rows(n_k, d, dv):
    # query rows per block: each of the block's products within SERIAL_MNK multiply-adds
    return max(1, SERIAL_MNK // max(1, n_k * max(d, dv)))


@kernel()
def _attn_fwd_head(n, q, k, v, bias, bias_div, has_bias, causal, keep, has_keep, keep_scale,
                   scale, probs, kept, out, scores, row):
    # One head n; scores (rows per block, S) and row (S,) float64 are scratch.
    # Each softmax row is a few simple passes (map, max, map, sum, map) so that each vectorises:
    # the max through maxnum, the sum through a reassociating float64 sum (reference/_vmath).
    n_q, n_k = probs.shape[1], probs.shape[2]
    dt = probs.dtype
    rb = scores.shape[0]
    for i0 in range(0, n_q, rb):
        i1 = min(n_q, i0 + rb)
        sc = scores[:i1 - i0]
        np.dot(q[n, i0:i1], k[n].T, sc)                     # s_b = Q_b K^T
        for i in range(i0, i1):
            sr, pr = sc[i - i0], probs[n, i]
            for j in range(n_k):
                row[j] = np.float64(sr[j]) * scale
            if has_bias:
                br = bias[n // bias_div, i]
                for j in range(n_k):
                    row[j] += br[j]
            if causal:
                row[i + 1:] = -np.inf
            m = -np.inf
            for j in range(n_k):
                m = Vm.maxnum(m, row[j])
            if m == -np.inf:  # nothing to attend (torch's convention: zeros), or all NaN
                nan = False
                for j in range(n_k):
                    nan |= row[j] != row[j]
                pr[:] = np.nan if nan else 0.0
            else:
                for j in range(n_k):
                    row[j] = Vm.exp(row[j] - m, dt)
                total = Vm.fsum(row)
                for j in range(n_k):
                    pr[j] = row[j] / total
            if has_keep:
                kr, keep_r = kept[n, i], keep[n, i]
                for j in range(n_k):
                    kr[j] = drop(pr[j], keep_r[j], keep_scale)
        np.dot(kept[n, i0:i1], v[n], out[n, i0:i1])         # O_b = P_b V


@kernel(parallel=True)
def _attn_fwd(q, k, v, bias, bias_div, has_bias, causal, keep, has_keep, keep_scale, scale,
              probs, kept, out, threads):
    # q (N, L, D), k (N, S, D), v (N, S, Dv); bias (N / bias_div, L, S) added to the scores;
    # keep (N, L, S) dropout keep-mask. probs: softmax (N, L, S); kept: probs after dropout
    # (the same array when there is no dropout); out (N, L, Dv) = kept @ v. The heads in
    # ``threads`` contiguous shares (``_threads``), each with its own scratch.
    if threads <= 1:
        _attn_fwd_share(0, 1, q, k, v, bias, bias_div, has_bias, causal, keep, has_keep,
                        keep_scale, scale, probs, kept, out)
    else:
        for t in prange(threads):
            _attn_fwd_share(t, threads, q, k, v, bias, bias_div, has_bias, causal, keep,
                            has_keep, keep_scale, scale, probs, kept, out)


@kernel()
def _attn_fwd_share(t, nt, q, k, v, bias, bias_div, has_bias, causal, keep, has_keep,
                    keep_scale, scale, probs, kept, out):
    # heads [t N / nt, (t + 1) N / nt) with scratch of their own
    n_prob, n_q, n_k = probs.shape
    rb = min(n_q, _block_rows(n_k, q.shape[2], v.shape[2]))
    scores, row = np.empty((rb, n_k), q.dtype), np.empty(n_k)
    for n in range(t * n_prob // nt, (t + 1) * n_prob // nt):
        _attn_fwd_head(n, q, k, v, bias, bias_div, has_bias, causal, keep, has_keep, keep_scale,
                       scale, probs, kept, out, scores, row)


@kernel()
def _add_to(acc, part):
    # acc += part (2-d, the same shape)
    for a in range(acc.shape[0]):
        for b in range(acc.shape[1]):
            acc[a, b] += part[a, b]


@kernel()
def _attn_bwd_head(n, q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out, d_probs,
                   dp_div, dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias, ds, tk, tv,
                   row, prow):
    # One head n; ds (rows per block, S), tk (S, D), tv (S, Dv), row and prow (S,) float64 are
    # scratch. Per block b of query rows: dP_b = dO_b V^T, dS_b (the softmax backward, row by
    # row, in place), dQ_b = dS_b K, and dK += dS_b^T Q_b, dV += P_kept,b^T dO_b.
    n_q, n_k = probs.shape[1], probs.shape[2]
    rb = ds.shape[0]
    for i0 in range(0, n_q, rb):
        i1 = min(n_q, i0 + rb)
        dsb = ds[:i1 - i0]
        np.dot(d_out[n, i0:i1], v[n].T, dsb)               # d P_kept,b = dO_b V^T
        for i in range(i0, i1):
            dsr, pr = dsb[i - i0], probs[n, i]
            for j in range(n_k):
                row[j] = dsr[j]
                prow[j] = pr[j]
            if has_dprobs:   # the returned weights are P after dropout, as torch's MHA
                gr = d_probs[n // dp_div, i]
                for j in range(n_k):
                    row[j] += np.float64(gr[j]) * dp_scale
            if has_keep:
                keep_r = keep[n, i]
                for j in range(n_k):
                    row[j] = drop(row[j], keep_r[j], keep_scale)
            acc = Vm.fdot(row, prow)
            for j in range(n_k):
                dsr[j] = prow[j] * (row[j] - acc) * scale
            if has_dbias:
                dbr = d_bias[n, i]
                for j in range(n_k):
                    dbr[j] = prow[j] * (row[j] - acc)
        np.dot(dsb, k[n], dq[n, i0:i1])                     # dQ_b = dS_b K (scale in dS)
        if i0 == 0:
            np.dot(dsb.T, q[n, i0:i1], dk[n])               # dK = sum_b dS_b^T Q_b
            np.dot(kept[n, i0:i1].T, d_out[n, i0:i1], dv[n])  # dV = sum_b P_kept,b^T dO_b
        else:
            np.dot(dsb.T, q[n, i0:i1], tk)
            _add_to(dk[n], tk)
            np.dot(kept[n, i0:i1].T, d_out[n, i0:i1], tv)
            _add_to(dv[n], tv)


@kernel(parallel=True)
def _attn_bwd(q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out, d_probs, dp_div,
              dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias, threads):
    # d_probs (N / dp_div, L, S): an upstream gradient of the kept probabilities themselves
    # (the attention weights an MHA returns, after dropout as torch's), times dp_scale.
    # d_bias (N, L, S), when has_dbias: the gradient of the additive mask, dS before the scale.
    _, n_q, n_k = probs.shape
    d, d_v = q.shape[2], v.shape[2]
    rb = min(n_q, _block_rows(n_k, d, d_v))
    # the scratch in two allocations (a row of each per share), not five: on this machine five
    # small ones left the heap so that glibc returned the caller's large arrays to the OS and
    # each call page-faulted them back in (~1500 faults, a fifth of the forward + backward)
    size = rb * n_k + n_k * (d + d_v)
    nt = max(1, threads)
    buf = np.empty((nt, size), q.dtype)
    rows = np.empty((nt, 2, n_k))
    if nt == 1:
        _attn_bwd_share(0, 1, q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out,
                        d_probs, dp_div, dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias,
                        rb, buf, rows)
    else:
        for t in prange(nt):
            _attn_bwd_share(t, nt, q, k, v, probs, kept, keep, has_keep, keep_scale, scale,
                            d_out, d_probs, dp_div, dp_scale, has_dprobs, dq, dk, dv, d_bias,
                            has_dbias, rb, buf, rows)


@kernel()
def _attn_bwd_share(t, nt, q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out,
                    d_probs, dp_div, dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias, rb,
                    buf, rows):
    # heads [t N / nt, (t + 1) N / nt) with share t's scratch
    n_prob, n_k = probs.shape[0], probs.shape[2]
    d, d_v = q.shape[2], v.shape[2]
    ds = buf[t, :rb * n_k].reshape((rb, n_k))
    tk = buf[t, rb * n_k:rb * n_k + n_k * d].reshape((n_k, d))
    tv = buf[t, rb * n_k + n_k * d:].reshape((n_k, d_v))
    row, prow = rows[t, 0], rows[t, 1]
    for n in range(t * n_prob // nt, (t + 1) * n_prob // nt):
        _attn_bwd_head(n, q, k, v, probs, kept, keep, has_keep, keep_scale, scale, d_out, d_probs,
                       dp_div, dp_scale, has_dprobs, dq, dk, dv, d_bias, has_dbias, ds, tk, tv,
                       row, prow)


def _private(a, *given):
    """``a`` as a context may keep it: a private copy if it shares memory with one of the
    caller's arrays ``given`` (see the module docstring)."""
    for g in given:
        a = v.keep(a, g)
    return a


def _as_bias(mask, name, dtype, true_means: str) -> np.ndarray:
    """A bool or float mask as an additive float64 bias of its own shape. ``true_means`` is
    "allowed" (torch's scaled_dot_product_attention) or "masked" (nn.MultiheadAttention)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of bool or {np.dtype(dtype)}, "
                        f"got {type(mask).__name__}")
    if not mask.dtype.isnative:
        mask = mask.astype(mask.dtype.newbyteorder("="))
    if mask.dtype != np.bool_ and mask.dtype != dtype:
        raise TypeError(f"{name} must have dtype bool or the input's {np.dtype(dtype)}, "
                        f"got {mask.dtype}")
    if mask.dtype == np.bool_:
        return np.where(mask if true_means == "masked" else ~mask, -np.inf, 0.0)
    return mask.astype(np.float64)


def _attn_dropout(dropout_p, dropout_mask, target):
    """(keep (N, L, S) or None, keep_scale) from dropout_p and the explicit keep-mask."""
    p = v.real(dropout_p, "dropout_p", lo=0.0, hi=1.0)
    if p == 0.0 and dropout_mask is None:
        return None, 1.0
    if dropout_mask is None:
        raise TypeError(f"dropout_mask must be a bool keep-mask of shape {target} when "
                        f"dropout_p > 0 (True = keep; draw one with "
                        f"reference.layers.dropout_mask), got None")
    keep = v.bool_array(dropout_mask, "dropout_mask", shape=target,
                        like=" (the attention weights' (..., L, S))")
    return keep.reshape((-1,) + target[-2:]), (0.0 if p == 1.0 else 1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------------------
# dense helpers: the projections are reference.layers.linear's own kernels (one matrix product
# over all rows on BLAS, the bias added after it)


def _project(x, w, b, out):
    """out (R, O) = x (R, I) w^T (+ b): ``linear``'s forward kernel, with or without bias."""
    _linear_fwd(x, w, _no_bias(x.dtype) if b is None else b, b is not None, out)
    return out


def _project_bwd(x, w, g, has_bias):
    """``(dx, dw, db)`` of ``_project`` for ``g`` (R, O): ``g w``, ``g^T x`` and, when
    ``has_bias``, the float64 column sums of ``g`` (else None): ``linear_backward``'s kernel."""
    dx, dw = np.empty_like(x), np.empty_like(w)
    db = np.empty(w.shape[0] if has_bias else 0, w.dtype)
    _linear_bwd(x, w, g, dx, dw, db, has_bias)
    return dx, dw, (db if has_bias else None)


_NO_BIAS_1D = {np.dtype(np.float32): np.empty(0, np.float32),
               np.dtype(np.float64): np.empty(0, np.float64)}


def _no_bias(dtype):
    return _NO_BIAS_1D[np.dtype(dtype)]


@kernel()
def _split_rows(a, batch, heads, col0, out):
    # a (B*T, *), rows b*T + t -> out[b*heads + h, t, d] = a[b*T + t, col0 + h*Dh + d] for
    # t < T; out (B*heads, T', Dh) may have more rows (T' >= T), which are left alone.
    n_t, hd = a.shape[0] // batch, out.shape[2]
    for b in range(batch):
        for h in range(heads):
            for t in range(n_t):
                for d in range(hd):
                    out[b * heads + h, t, d] = a[b * n_t + t, col0 + h * hd + d]


@kernel()
def _merge_heads(parts, batch, heads, out, col0):
    # out[b*T + t, col0 + h*Dh + d] = parts[b*heads + h, t, d] for t < T = rows(out) / B; the
    # inverse of _split_rows (rows of parts beyond T are not read)
    n_t, hd = out.shape[0] // batch, parts.shape[2]
    for b in range(batch):
        for h in range(heads):
            for t in range(n_t):
                for d in range(hd):
                    out[b * n_t + t, col0 + h * hd + d] = parts[b * heads + h, t, d]
