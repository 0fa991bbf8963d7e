r"""Kernels and checks shared by the linear models (``linear_models``, ``logistic_svm``).

- ``check_X``, ``check_target``, ``check_labels``: argument checks that name the argument
  (finiteness included: a NaN or inf in ``X`` or ``y`` is refused, as scikit-learn does).
- ``gram``: one blocked pass over ``[X, y]`` giving the centred cross-products
  :math:`G = X_c^\top X_c`, :math:`q = X_c^\top y_c`, :math:`y_c^\top y_c` and the means,
  in float64. Each block of rows is shifted by the first block's mean (any shift gives the
  same centred products exactly in real arithmetic; one near the mean avoids cancellation)
  and multiplied on BLAS, one thread per product (row ranges in parallel for large X); the
  final centring is the rank-one correction
  :math:`\sum (z-s)(z-s)^\top - n (\bar z - s)(\bar z - s)^\top`.
- ``data_term``: one pass over the rows of ``X`` for a linear model's data term
  :math:`\sum_i \ell(f_i, y_i)`, :math:`f_i = W x_i + b` (``K`` scores per row), and, when
  asked, its gradient :math:`\sum_i \partial_f \ell_i\, x_i^\top` and :math:`\sum_i \partial_f
  \ell_i`. Rows are split in fixed chunks (a deterministic summation order), run in parallel
  for large X; on each chunk the scores and the weights' gradient are two BLAS products (the
  second reads the chunk from the cache), the losses a loop over its rows (scalar code where a
  row has one score); everything accumulates in float64. The per-row losses (``code``):

  - code 0, squared error: :math:`(f - y)^2`, derivative :math:`2 (f - y)`;
  - code 1, binary logistic: :math:`\log(1 + e^{-s f})`, :math:`s = 2y - 1`, derivative
    :math:`\sigma(f) - y`;
  - code 2, multinomial: :math:`\log \sum_k e^{f_k} - f_y`, derivative :math:`p_k - [k = y]`;
  - code 3, squared hinge (OvR): :math:`\sum_k \max(0, 1 - s_k f_k)^2`, derivative
    :math:`-2 s_k \max(0, 1 - s_k f_k)`;
  - code 4, hinge (OvR): :math:`\sum_k \max(0, 1 - s_k f_k)`, derivative
    :math:`-s_k [1 - s_k f_k > 0]`.

  For the hinge losses :math:`s_k = +1` if :math:`y = k` else :math:`-1` (one-vs-rest); with
  one row of scores (binary) :math:`s = 2y - 1`. The hinge's derivative at the kink
  :math:`1 - s f = 0` is 0 (PyTorch's ``relu'(0) = 0``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from reference import _validate as v
from reference._blas import SERIAL_MNK, dot_one_thread
from reference._jit import inline, kernel
from reference._vmath import exp_double, log1p_unit_double

SQUARED, LOGISTIC, MULTINOMIAL, SQUARED_HINGE, HINGE = 0, 1, 2, 3, 4
_CHUNK = 1024  # rows per parallel task (the partial sums of a chunk fit in L1/L2)
_GRAM_BLOCK = 2048  # rows whose mean is the shift in ``gram``
_GRAM_MIN_ROWS = 16  # least rows per product in ``gram`` (wide X: above the BLAS threshold)
_GRAM_PARALLEL = 1 << 26  # multiply-adds (~2 ms on one core) above which ``gram`` goes parallel
_GRAM_TASKS = 16  # most parallel row ranges in ``gram`` (each keeps a (d+1)^2 partial sum)
# Below this many multiply-adds a pass runs serially (~0.3 ms): an OpenMP launch costs a few
# microseconds on an idle machine but measured 22 ms per call on this loaded 2-core one
# (1257 x 64 rows: 0.22 ms serial), so small passes, which L-BFGS makes by the hundred, stay
# on the calling thread.
_PARALLEL_WORK = 1 << 20


# ---------------------------------------------------------------------------------------------
# checks


@kernel(reduce=True)
def _finite_sum(a):
    # sum of a * 0: NaN exactly when some element is NaN or infinite. Serial on purpose: the
    # fits call BLAS (OpenBLAS threads) next, and OpenMP threads still spinning after a
    # parallel check slowed the following X^T X 10-40x on this loaded 2-core machine.
    s = 0.0
    for i in range(a.size):
        s += a[i] * 0.0
    return s


def all_finite(a: np.ndarray) -> bool:
    return a.size == 0 or _finite_sum(a.reshape(-1)) == 0.0


def _nonfinite_error(a: np.ndarray, name: str) -> ValueError:
    bad = np.argwhere(~np.isfinite(a))[0]
    where = ", ".join(str(int(i)) for i in bad)
    return ValueError(f"{name} must be finite (no NaN or inf), got {a[tuple(bad)]} at "
                      f"[{where}]")


def check_X(X, name: str = "X", *, dtype=None, n_features: int | None = None,
            finite: bool = True) -> np.ndarray:
    """A finite, non-empty 2-d float32/float64 array (samples x features).

    ``finite=False`` leaves the finiteness test to ``scores_of_finite``, which a prediction
    calls on its scores instead: checking X first was a second pass over it, as long as the
    prediction itself (medium linear_predict: 136 us of 288)."""
    X = v.float_array(X, name, ndim=2, dtype=dtype)
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one sample and one feature, got shape "
                         f"{X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} features (columns), the coefficients' "
                         f"count, got shape {X.shape}")
    if finite and not all_finite(X):
        raise _nonfinite_error(X, name)
    return X


def scores_of_finite(X: np.ndarray, W: np.ndarray, b: np.ndarray, name: str = "X") -> np.ndarray:
    """``scores(X, W, b)`` for an X that ``check_X(..., finite=False)`` let through: raises
    check_X's error when X holds NaN or inf. A finite score needs every term of its row
    finite (inf * 0 is NaN, NaN propagates), so when all scores are finite so is X; X is
    scanned only when some score is not (an inf or NaN in X or in W, b, or a score that
    overflowed from a finite X, which is returned as it is)."""
    f = scores(X, W, b)
    _refuse_nonfinite(X, name, f)
    return f


def _refuse_nonfinite(X: np.ndarray, name: str, finite_probe: np.ndarray) -> None:
    """check_X's error when X holds NaN or inf, scanning X only when ``finite_probe`` (the
    scores, or a sum of ``score * 0``) is not all finite: with X finite it always is, unless a
    score overflowed, or W or b are not finite."""
    if not all_finite(finite_probe) and not all_finite(X):
        raise _nonfinite_error(X, name)


def check_target(y, X: np.ndarray, name: str = "y") -> np.ndarray:
    """A finite 1-d float regression target of X's dtype, one value per sample."""
    if isinstance(y, np.ndarray) and y.dtype.kind in "iub":
        raise TypeError(f"{name} must be a float array of X's dtype ({X.dtype}) for "
                        f"regression, got dtype {y.dtype}; convert it with "
                        f"y.astype(X.dtype)")
    y = v.float_array(y, name, ndim=1, dtype=X.dtype)
    _same_length(y, X, name)
    if not all_finite(y):
        raise _nonfinite_error(y, name)
    return y


def _same_length(y: np.ndarray, X: np.ndarray, name: str) -> None:
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{name} must have one entry per sample of X ({X.shape[0]}), got "
                         f"{y.shape[0]}")


def check_labels(y, X: np.ndarray, name: str = "y", *, n_classes: int | None = None,
                 ) -> tuple[np.ndarray, int]:
    """Integer class labels ``0 .. K-1``, one per sample. With ``n_classes`` the labels must
    lie below it; without, every class ``0 .. max(y)`` must occur and there must be at least
    two (what a fit needs). Returns (labels as int64, K)."""
    if isinstance(y, np.ndarray) and y.dtype.kind == "f":
        raise TypeError(f"{name} must hold integer class labels 0..K-1, got dtype {y.dtype}; "
                        f"encode the classes first, e.g. np.unique(y, return_inverse=True)[1]")
    y = v.int_array(y, name, ndim=1)
    _same_length(y, X, name)
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must hold class labels 0..K-1, got {y.min()}")
    if n_classes is not None:
        v.labels(y, name, n_classes)
        return y, n_classes
    k = int(y.max()) + 1
    counts = np.bincount(y, minlength=k)
    if k < 2:
        raise ValueError(f"{name} must contain at least two classes to fit a classifier, got "
                         f"only class {k - 1}")
    if not counts.all():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"{name} must contain every class 0..{k - 1} (labels encoded "
                         f"densely), class {missing} is missing")
    return y, k


# ---------------------------------------------------------------------------------------------
# centred cross-products


@kernel()
def _gram_rows(X, y, shift, r0, r1, Z, prod, acc, sums):
    """acc += sum over rows r0..r1 of (z - shift)(z - shift)^T, z = [x, y], and sums += the
    rows' sum of (z - shift); in blocks of Z's rows, each product on the calling thread."""
    d = X.shape[1]
    bsz = Z.shape[0]
    for b0 in range(r0, r1, bsz):
        b1 = min(r1, b0 + bsz)
        m = b1 - b0
        for i in range(m):
            for j in range(d):
                Z[i, j] = np.float64(X[b0 + i, j]) - shift[j]
            Z[i, d] = np.float64(y[b0 + i]) - shift[d]
            for j in range(d + 1):
                sums[j] += Z[i, j]
        blk = Z[:m]
        np.dot(blk.T, blk, prod)
        for a in range(d + 1):
            for b in range(d + 1):
                acc[a, b] += prod[a, b]


@kernel(parallel=True)
def _gram_parallel(X, y, shift, bsz, task_rows, accs, sums):
    n, d = X.shape
    for t in prange(accs.shape[0]):
        Z = np.empty((bsz, d + 1))
        prod = np.empty((d + 1, d + 1))
        accs[t] = 0.0
        sums[t] = 0.0
        _gram_rows(X, y, shift, t * task_rows, min(n, (t + 1) * task_rows), Z, prod, accs[t],
                   sums[t])


def gram(X: np.ndarray, y: np.ndarray, fit_intercept: bool):
    """(G, q, yy, x_mean, y_mean), all float64: the centred products when ``fit_intercept``,
    else the raw ones (zero means). Raises when they overflow (finite input too large).

    Blocks of rows small enough that each product ``Z^T Z`` stays under OpenBLAS's threading
    threshold run on the calling thread; row ranges run in parallel (Numba threads) above
    ``_GRAM_PARALLEL`` multiply-adds. No OpenBLAS threads: on this loaded 2-core machine a
    threaded X^T X per block stalled for scheduler slices (a 2 ms medium ridge fit had a
    median of 166 ms), and one fork-join for the whole pass replaces one per block.
    """
    n, d = X.shape
    shift = np.zeros(d + 1)
    if fit_intercept:
        head = min(n, _GRAM_BLOCK)
        shift[:d] = X[:head].mean(axis=0, dtype=np.float64)
        shift[d] = y[:head].mean(dtype=np.float64)
    bsz = max(_GRAM_MIN_ROWS, SERIAL_MNK // ((d + 1) * (d + 1)))
    n_tasks = 1
    if n * (d + 1) * (d + 1) >= _GRAM_PARALLEL:
        n_tasks = max(1, min(_GRAM_TASKS, n // (4 * bsz)))
    accs = np.zeros((n_tasks, d + 1, d + 1))
    part = np.zeros((n_tasks, d + 1))
    if n_tasks == 1:
        _gram_rows(X, y, shift, 0, n, np.empty((min(n, bsz), d + 1)), np.empty((d + 1, d + 1)),
                   accs[0], part[0])
    else:
        _gram_parallel(X, y, shift, bsz, -(-n // n_tasks), accs, part)
    acc = accs.sum(axis=0)
    sums = part.sum(axis=0)
    mean = shift.copy()
    if fit_intercept:
        delta = sums / n
        acc -= n * np.outer(delta, delta)
        mean += delta
    if not np.isfinite(acc).all():
        raise ValueError("X and y are finite but too large: their cross-products overflow "
                         "float64; rescale them")
    return (np.ascontiguousarray(acc[:d, :d]), acc[:d, d].copy(), float(acc[d, d]), mean[:d],
            float(mean[d]))


# ---------------------------------------------------------------------------------------------
# fused data term of a linear model


@kernel(reduce=True)
def _xdot(X, i, W, k):
    """x_i . W_k in float64 (``reassoc``: the sum vectorises; kept in its own function so the
    flag reaches no other code)."""
    s = 0.0
    for j in range(W.shape[1]):
        s += np.float64(X[i, j]) * W[k, j]
    return s


@inline()
def _softplus(z):
    # log(1 + e^z) without overflow: z + log1p(e^-z) for z > 0.
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@inline()
def _row_loss(code, f, yi, dl):
    """Loss of one row's scores ``f`` (K,) against target ``yi``; writes d loss / d f to dl."""
    K = f.shape[0]
    if code == SQUARED:
        r = f[0] - yi
        dl[0] = 2.0 * r
        return r * r
    if code == LOGISTIC:
        s = 2.0 * yi - 1.0
        z = -s * f[0]
        # sigma(f) - y = -s sigma(-s f), computed on the side where exp does not overflow
        if z > 0.0:
            e = math.exp(-z)
            dl[0] = -s / (1.0 + e)
        else:
            e = math.exp(z)
            dl[0] = -s * e / (1.0 + e)
        return _softplus(z)
    if code == MULTINOMIAL:
        m = f[0]
        for k in range(1, K):
            m = max(m, f[k])
        t = 0.0
        for k in range(K):
            dl[k] = math.exp(f[k] - m)
            t += dl[k]
        y = int(yi)
        for k in range(K):
            dl[k] /= t
        dl[y] -= 1.0
        return (m - f[y]) + math.log(t)
    total = 0.0
    y = int(yi)
    for k in range(K):
        if K == 1:
            s = 2.0 * yi - 1.0
        else:
            s = 1.0 if k == y else -1.0
        margin = 1.0 - s * f[k]
        if margin > 0.0:
            if code == SQUARED_HINGE:
                total += margin * margin
                dl[k] = -2.0 * s * margin
            else:
                total += margin
                dl[k] = -s
        else:
            dl[k] = 0.0
    return total


def _rows64(X, r0, r1):
    raise NotImplementedError("_rows64 is only callable inside a Numba kernel")


@overload(_rows64, jit_options={"cache": True, "error_model": "numpy"})
def _rows64_impl(X, r0, r1):
    """Rows r0:r1 of X in float64: a view of a float64 X, else a float64 copy."""
    if X.dtype == types.float64:
        return lambda X, r0, r1: X[r0:r1]

    def copy(X, r0, r1):
        out = np.empty((r1 - r0, X.shape[1]))
        for i in range(r1 - r0):
            for j in range(X.shape[1]):
                out[i, j] = X[r0 + i, j]
        return out
    return copy


@inline()
def _loss1(code, f, yi):
    """``_row_loss`` for one score ``f`` and the squared or hinge losses (the logistic one has
    its own loop in ``_data_rows``): (loss, d loss / d f)."""
    if code == SQUARED:
        r = f - yi
        return r * r, 2.0 * r
    s = 2.0 * yi - 1.0
    margin = 1.0 - s * f
    if margin <= 0.0:
        return 0.0, 0.0
    if code == SQUARED_HINGE:
        return margin * margin, -2.0 * s * margin
    return margin, -s


@kernel()
def _data_rows(X, y, W, b, code, want_grad, r0, r1, gW, gb, bad):
    # The scores of the rows, F = X W^T, and the weights' gradient, dL^T X, are two products
    # on BLAS (one thread; float64), the rows few enough (``_CHUNK``) for the second to read
    # them from the cache; only the per-row losses are a loop.
    K, d = W.shape
    m = r1 - r0
    Xc = _rows64(X, r0, r1)
    F = np.empty((m, K))
    dot_one_thread(Xc, W.T, F)
    dL = np.empty((K, m))  # d loss / d score, transposed: the rows of dL X
    total = 0.0
    if K == 1 and code == LOGISTIC:
        # One loop per loss where a row has one score (regression, binary classification): the
        # generic loop below (arrays of K scores) took 43 ns a row, these ~1-3; the logistic
        # one vectorises with _vmath's exp and log1p (libm's do not vectorise here).
        b0, probe = b[0], 0.0
        for i in range(m):
            f = F[i, 0] + b0
            probe += f * 0.0
            s = 2.0 * y[r0 + i] - 1.0
            z = -s * f
            e = exp_double(-abs(z))  # log(1 + e^z) = max(z, 0) + log1p(e^-|z|)
            total += max(z, 0.0) + log1p_unit_double(e)
            dL[0, i] = -s * (1.0 if z > 0.0 else e) / (1.0 + e)
        bad[0] += probe
    elif K == 1 and code != MULTINOMIAL:
        b0, probe = b[0], 0.0
        for i in range(m):
            f = F[i, 0] + b0
            probe += f * 0.0
            loss, dL[0, i] = _loss1(code, f, y[r0 + i])
            total += loss
        bad[0] += probe
    else:
        f = np.empty(K)
        dl = np.empty(K)
        for i in range(m):
            for k in range(K):
                f[k] = F[i, k] + b[k]
                bad[0] += f[k] * 0.0
            total += _row_loss(code, f, y[r0 + i], dl)
            for k in range(K):
                dL[k, i] = dl[k]
    if want_grad:
        part = np.empty((K, d))
        dot_one_thread(dL, Xc, part)
        for k in range(K):
            s = 0.0
            for i in range(m):
                s += dL[k, i]
            gb[k] += s
            for j in range(d):
                gW[k, j] += part[k, j]
    return total


@kernel()
def _data_chunk(X, y, W, b, code, want_grad, r0, r1, gW, gb, bad):
    # bad[0] += f * 0 over every score: NaN exactly when some score is not finite
    total = 0.0
    for c0 in range(r0, r1, _CHUNK):
        total += _data_rows(X, y, W, b, code, want_grad, c0, min(r1, c0 + _CHUNK), gW, gb, bad)
    return total


@kernel(parallel=True)
def _data_parallel(X, y, W, b, code, want_grad, parts, gW, gb, bad):
    n = X.shape[0]
    for c in prange(parts.shape[0]):
        r0 = c * _CHUNK
        parts[c] = _data_chunk(X, y, W, b, code, want_grad, r0, min(n, r0 + _CHUNK),
                               gW[c], gb[c], bad[c:c + 1])


def data_term(X: np.ndarray, y64: np.ndarray, W: np.ndarray, b: np.ndarray, code: int,
              want_grad: bool, x_name: str | None = None):
    """sum_i loss(W x_i + b, y_i) and, when ``want_grad``, its gradients (gW (K, d), gb (K,)),
    all float64. ``W`` (K, d) and ``b`` (K,) are float64; ``y64`` the targets or labels as
    float64. ``x_name``: X came through ``check_X(..., finite=False)``; raise check_X's error
    under that name when X holds NaN or inf (found through the scores, as
    ``scores_of_finite``)."""
    n = X.shape[0]
    K, d = W.shape
    chunks = -(-n // _CHUNK) if n * d * K >= _PARALLEL_WORK else 1
    gW = np.zeros((chunks, K, d))
    gb = np.zeros((chunks, K))
    bad = np.zeros(chunks)
    if chunks == 1 or n * d * K < _PARALLEL_WORK:
        total = _data_chunk(X, y64, W, b, code, want_grad, 0, n, gW[0], gb[0], bad)
        out = total, gW[0], gb[0]
    else:
        parts = np.zeros(chunks)
        _data_parallel(X, y64, W, b, code, want_grad, parts, gW, gb, bad)
        out = float(parts.sum()), gW.sum(axis=0), gb.sum(axis=0)
    if x_name is not None:
        _refuse_nonfinite(X, x_name, bad)
    return out


@kernel()
def _scores_rows(X, W, b, out, r0, r1):
    K, d = W.shape
    for i in range(r0, r1):
        for k in range(K):
            out[i, k] = b[k] + _xdot(X, i, W, k)


@kernel(parallel=True)
def _scores_parallel(X, W, b, out):
    n = X.shape[0]
    for c in prange(-(-n // _CHUNK)):
        _scores_rows(X, W, b, out, c * _CHUNK, min(n, (c + 1) * _CHUNK))


def scores(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """F = X W^T + b in float64, (n, K); W (K, d) and b (K,) float64."""
    out = np.empty((X.shape[0], W.shape[0]))
    W = np.ascontiguousarray(W, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if X.size * W.shape[0] < _PARALLEL_WORK:
        _scores_rows(X, W, b, out, 0, X.shape[0])
    else:
        _scores_parallel(X, W, b, out)
    return out
