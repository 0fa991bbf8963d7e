r"""Elementary functions that vectorise inside Numba loops: exp, expm1, tanh, sigmoid, Phi, log.

The llvmlite wheel has no SVML, so ``math.exp`` in a loop is a scalar libm call (~10 ns) and
the loop does not vectorise. The functions here are plain arithmetic (fused multiply-adds,
integer bit operations, selects) that LLVM inlines into the calling loop and vectorises.

Two families:

- float64 arithmetic, with the precision picked by the kernel's output dtype
  (``exp(x, y.dtype)``): ``*_single`` evaluates a short polynomial whose error is far below a
  float32 ulp, so a float32 result is the exact value rounded once (measured <= 0.51 ulp, where
  torch's float32 exp and tanh are 0.57 ulp and its sigmoid and GELU much worse); ``*_double``
  a longer one for float64 results (1-2.5 ulp; tanh stays libm's). GELU, the RNN gates and
  all float64 kernels use these.
- float32 arithmetic, ``exp_f32``, ``exp_f32_scaled``, ``sigmoid_f32`` and ``tanh_f32``: 16
  lanes per AVX-512 register instead of 8, about 0.9 ulp (sigmoid 1.5; tanh 0.52 with
  error-free pairs, see their sections). The float32 softmax rows, sigmoid and tanh use them,
  where speed against torch is the target.

log (``log_double``, ``log1m_double``, ``log1p_unit_double``): float64 only, about 1 ulp, so a
float32 result rounded from them is the exact value rounded once.

exp: Cody-Waite range reduction ``x = n ln2 + r``, ``|r| <= ln2/2``, ``n`` rounded by the
``1.5 * 2**52`` shifter (its low bits are ``n``, no float-to-int conversion), a Taylor
polynomial for ``e^r`` and ``2^n`` built in the exponent bits. The Lagrange remainder bounds the
polynomial's relative error by ``|r|^{d+1} / (d+1)! * e^{|r|}``: degree 8 gives 2.8e-10
(single), degree 13 gives 5.9e-18 (double). Taylor coefficients cost one or two more terms than
a minimax fit and need no derivation to check.

.. math:: e^x = 2^n e^r, \qquad e^x - 1 = 2^n (e^r - 1) + (2^n - 1), \qquad
          \Phi(-\sqrt2 z) = \tfrac12 e^{-z^2} \operatorname{erfcx}(z)

Special values follow IEEE and libm: NaN propagates, ``exp(+inf) = inf``, ``exp(-inf) = 0``,
overflow gives inf, underflow gives subnormals then 0 (``exp_single`` flushes below 2^-1022,
far under float32's range). The measured ulp bounds and the special values are asserted by
``suites/selftest/test_vmath.py``.

Never call these from a kernel compiled with ``reduce=True``: Numba applies a function's
fast-math flags to the code inlined into it, and ``reassoc`` may fold the shifter's
``(t + S) - S`` or regroup the two-factor scaling ``(p * 2^h) * 2^(n-h)`` that keeps overflow
and underflow exact. Keep sums in their own ``reduce=True`` helper (``fsum``, ``fdot``).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from reference._jit import kernel

# Scalar helpers are ordinary cached functions; LLVM inlines them into the calling loop, which
# then vectorises (inlining at Numba's IR level instead costs compile time at every call site).
_scalar = kernel()

__all__ = [
    "fma", "maxnum", "fsum", "fdot",
    "exp", "expm1", "tanh", "sigmoid", "ndtr",
    "exp_single", "exp_double", "expm1_single", "expm1_double", "tanh_single", "tanh_double",
    "sigmoid_single", "sigmoid_double", "ndtr_single", "ndtr_double", "exp_f32", "exp_f32_scaled",
    "log_double", "log1m_double", "log1p_unit_double",
]


# ---------------------------------------------------------------------------------------------
# LLVM intrinsics Numba does not expose


def _same_floats(*args) -> bool:
    return isinstance(args[0], types.Float) and all(a == args[0] for a in args)


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``: one instruction on any x86-64 with FMA)."""
    if not _same_floats(a, b, c):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum: the larger of ``a`` and ``b``, ignoring a NaN operand.

    Unlike ``max``, a loop ``m = maxnum(m, x[i])`` vectorises without fast-math flags.
    """
    if not _same_floats(a, b):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.args[0])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ty, [ty, ty]), f"llvm.maxnum.f{sig.args[0].bitwidth}")
        return builder.call(fn, args)

    return a(a, b), codegen


@kernel(reduce=True)
def fsum(a):
    """Sum of a 1-d float array in float64, vectorised (``reassoc`` picks the order)."""
    s = 0.0
    for i in range(a.size):
        s += np.float64(a[i])
    return s


@kernel(reduce=True)
def fdot(a, b):
    """Dot product of two 1-d float arrays in float64, vectorised."""
    s = 0.0
    for i in range(a.size):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


# ---------------------------------------------------------------------------------------------
# building blocks

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 6.93147180369123816490e-01  # 21 low bits zero: n * _LN2_HI is exact for |n| < 2^21
_LN2_LO = 1.90821492927058770002e-10  # ln2 - _LN2_HI
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: fl(x + _SHIFT) - _SHIFT rounds x to an integer
_SHIFT_BITS = 0x4338000000000000


@_scalar
def _clamp(x, lo, hi):
    # Written so that NaN passes through (both comparisons are false); one max and one min.
    a = lo if x < lo else x
    return hi if a > hi else a


@_scalar
def _round_log2(x):
    # n = round(x / ln2) as a float and as an int64 (the shifter's low bits).
    t = fma(x, _LOG2E, _SHIFT)
    return t - _SHIFT, np.float64(t).view(np.int64) - _SHIFT_BITS


@_scalar
def _pow2(k):
    # 2^k for integer -1023 <= k <= 1023 (k = -1023 gives +0.0), from the exponent bits.
    return np.int64((k + 1023) << 52).view(np.float64)


@_scalar
def _exp_poly8(r):
    # e^r, Taylor degree 8: relative error <= 0.3466^9 / 9! * e^0.3466 = 2.8e-10.
    p = 1.0 / 40320.0
    p = fma(p, r, 1.0 / 5040.0)
    p = fma(p, r, 1.0 / 720.0)
    p = fma(p, r, 1.0 / 120.0)
    p = fma(p, r, 1.0 / 24.0)
    p = fma(p, r, 1.0 / 6.0)
    p = fma(p, r, 0.5)
    p = fma(p, r, 1.0)
    return fma(p, r, 1.0)


@_scalar
def _exp_poly13(r):
    # e^r, Taylor degree 13: relative error <= 0.3466^14 / 14! * e^0.3466 = 5.9e-18.
    p = 1.0 / 6227020800.0
    p = fma(p, r, 1.0 / 479001600.0)
    p = fma(p, r, 1.0 / 39916800.0)
    p = fma(p, r, 1.0 / 3628800.0)
    p = fma(p, r, 1.0 / 362880.0)
    p = fma(p, r, 1.0 / 40320.0)
    p = fma(p, r, 1.0 / 5040.0)
    p = fma(p, r, 1.0 / 720.0)
    p = fma(p, r, 1.0 / 120.0)
    p = fma(p, r, 1.0 / 24.0)
    p = fma(p, r, 1.0 / 6.0)
    p = fma(p, r, 0.5)
    p = fma(p, r, 1.0)
    return fma(p, r, 1.0)


@_scalar
def _expm1_poly9(r):
    # e^r - 1 = r + r^2 P(r), Taylor degree 9: relative error <= |r|^9 / 10! * e^|r| / (1 -
    # |r|/2) = 3.4e-11 (|expm1(r)| >= |r| (1 - |r|/2)).
    p = 1.0 / 362880.0
    p = fma(p, r, 1.0 / 40320.0)
    p = fma(p, r, 1.0 / 5040.0)
    p = fma(p, r, 1.0 / 720.0)
    p = fma(p, r, 1.0 / 120.0)
    p = fma(p, r, 1.0 / 24.0)
    p = fma(p, r, 1.0 / 6.0)
    p = fma(p, r, 0.5)
    return fma(r * r, p, r)


@_scalar
def _expm1_poly14(r):
    # e^r - 1, Taylor degree 14: relative error <= |r|^14 / 15! * e^|r| / (1 - |r|/2) = 4.7e-19.
    p = 1.0 / 87178291200.0
    p = fma(p, r, 1.0 / 6227020800.0)
    p = fma(p, r, 1.0 / 479001600.0)
    p = fma(p, r, 1.0 / 39916800.0)
    p = fma(p, r, 1.0 / 3628800.0)
    p = fma(p, r, 1.0 / 362880.0)
    p = fma(p, r, 1.0 / 40320.0)
    p = fma(p, r, 1.0 / 5040.0)
    p = fma(p, r, 1.0 / 720.0)
    p = fma(p, r, 1.0 / 120.0)
    p = fma(p, r, 1.0 / 24.0)
    p = fma(p, r, 1.0 / 6.0)
    p = fma(p, r, 0.5)
    return fma(r * r, p, r)


# ---------------------------------------------------------------------------------------------
# exp


@_scalar
def exp_single(x):
    """``e^x`` accurate to 2.8e-10 relative, for results rounded to float32 (x: float64).

    Below -709 it returns +0.0 (``2^-1023`` is built as zero bits); float32 underflows long
    before. One rounding-free reduction step: ``r = fma(n, -ln2, x)`` is off by at most
    ``|n| * |ln2 - fl(ln2)| < 1024 * 2.4e-17``.
    """
    xc = _clamp(x, -709.0, 89.0)  # round(-709 / ln2) = -1023; e^89 > float32 max
    n, k = _round_log2(xc)
    r = fma(n, -_LN2, xc)
    return _exp_poly8(r) * _pow2(k)


@_scalar
def exp_double(x):
    """``e^x`` to about 1 float64 ulp, with float64 overflow, subnormals and underflow.

    Two-step (Cody-Waite) reduction; ``2^n`` applied as two factors ``2^h 2^(n-h)`` so that
    ``n`` from -1076 to 1024 scales exactly, rounding once when the result is subnormal.
    """
    xc = _clamp(x, -746.0, 710.0)  # beyond: 0 and inf
    n, k = _round_log2(xc)
    r = fma(n, -_LN2_HI, xc)
    r = fma(n, -_LN2_LO, r)
    h = k >> 1
    return (_exp_poly13(r) * _pow2(h)) * _pow2(k - h)


# ---------------------------------------------------------------------------------------------
# exp in float32 arithmetic (8 lanes per AVX2 register instead of 4), for softmax's inner loop
#
# The same reduction with a 9-bit ln2 head (n * head exact for |n| < 2^15) and a degree-6
# polynomial (below); the float32 roundings in the reduction and in Horner's scheme bring the
# total to about 0.9 ulp (measured).
# Float32 x in, float32 out; a float64 x is rounded to float32 first.

_F = np.float32
_LOG2E_F = _F(_LOG2E)
_LN2_HI_F = _F(0.693359375)
_LN2_LO_F = _F(-2.12194440e-4)
_SHIFT_F = _F(12582912.0)  # 1.5 * 2**23
_SHIFT_F_BITS = 0x4B400000


# e^r = 1 + r + r^2 Q(r), Q of degree 4 fitted (weighted least squares with Lawson's iteration,
# against mpmath, on 4000 Chebyshev nodes of [-ln2/2, ln2/2]) for minimax relative error of e^r:
# 3.6e-9 with the float32 coefficients (0.06 ulp), one term fewer than Taylor for the same error.
_Q0, _Q1, _Q2, _Q3, _Q4 = (_F(0.4999999403953552), _F(0.1666652113199234),
                           _F(0.04166838899254799), _F(0.00836874544620514),
                           _F(0.0013814539415761828))


@_scalar
def _exp_poly_f32(r):
    p = fma(_Q4, r, _Q3)
    p = fma(p, r, _Q2)
    p = fma(p, r, _Q1)
    p = fma(p, r, _Q0)
    p = fma(p, r, _F(1.0))
    return fma(p, r, _F(1.0))


@_scalar
def _reduce_f32(xc):
    # xc = n ln2 + r; returns r and n as an integer.
    t = fma(xc, _LOG2E_F, _SHIFT_F)
    n = t - _SHIFT_F
    r = fma(n, -_LN2_HI_F, xc)
    r = fma(n, -_LN2_LO_F, r)
    return r, np.int64(np.float32(t).view(np.int32)) - _SHIFT_F_BITS


@_scalar
def _pow2_f32(k):
    # 2^k for integer -127 <= k <= 127 (k = -127 gives +0.0).
    return np.int32((k + 127) << 23).view(np.float32)


@_scalar
def exp_f32(x):
    """``e^x`` in float32 arithmetic, for a float32 ``x``: ~1 ulp, full IEEE range.

    ``2^n`` as two factors so that subnormal results round once and ``e^89`` overflows.
    """
    xc = _clamp(np.float32(x), _F(-110.0), _F(89.0))
    r, k = _reduce_f32(xc)
    h = k >> 1
    return (_exp_poly_f32(r) * _pow2_f32(h)) * _pow2_f32(k - h)


@_scalar
def exp_f32_scaled(x):
    """``e^x * 2^64`` in float32 arithmetic, for float32 ``x <= 0`` (or NaN).

    Softmax divides by the sum of these, so the common factor cancels, and every ``e^x`` down to
    ``e^-130`` stays a normal float32 (one scaling factor, no subnormal handling). Below -130 the
    ratio underflows in float32 anyway.
    """
    x = np.float32(x)
    xc = _F(-130.0) if x < _F(-130.0) else x
    r, k = _reduce_f32(xc)
    return _exp_poly_f32(r) * _pow2_f32(k + 64)


# ---------------------------------------------------------------------------------------------
# expm1: e^x - 1 without cancellation near 0
#
# With x = n ln2 + r: e^x - 1 = 2^n (e^r - 1) + (2^n - 1), one fma. For n = 0 this is the
# polynomial itself, so tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) keeps full relative
# accuracy near 0. 2^n - 1 is exact for -53 <= n <= 53 and below that rounds to -1, which is
# what the result does. Valid for n <= 1023, i.e. x <= 709 (the public versions handle more).


@_scalar
def _expm1_core_double(x):
    xc = _clamp(x, -40.0, 709.0)
    n, k = _round_log2(xc)
    r = fma(n, -_LN2_HI, xc)
    r = fma(n, -_LN2_LO, r)
    s = _pow2(k)
    return fma(s, _expm1_poly14(r), s - 1.0)


@_scalar
def _expm1_core_single(x):
    xc = _clamp(x, -40.0, 89.0)  # e^-40 - 1 rounds to -1 even in float64; e^89 > float32 max
    n, k = _round_log2(xc)
    r = fma(n, -_LN2, xc)
    s = _pow2(k)
    return fma(s, _expm1_poly9(r), s - 1.0)


@_scalar
def expm1_single(x):
    """``e^x - 1`` accurate to ~4e-11 relative, for results rounded to float32 (x: float64).

    ``expm1(-0.0) = -0.0`` (the polynomial's ``r + r^2 P`` would give +0.0).
    """
    y = _expm1_core_single(x)
    return y if x != 0.0 else x


@_scalar
def expm1_double(x):
    """``e^x - 1`` to about 2 float64 ulps; above 709, ``e^x`` (the -1 is below an ulp)."""
    y = _expm1_core_double(x)
    y = exp_double(x) if x > 709.0 else y
    return y if x != 0.0 else x


# ---------------------------------------------------------------------------------------------
# tanh and the logistic sigmoid


@_scalar
def tanh_single(x):
    """``tanh x`` for float32 results: ``-e / (2 + e)`` with ``e = expm1(-2|x|)``, sign of x.

    No cancellation anywhere (``e`` is in (-1, 0], ``2 + e`` in (1, 2]): relative error ~1e-10
    for every x, including ``tanh(x) = x`` near 0 and ``-0.0 -> -0.0``.
    """
    e = _expm1_core_single(-2.0 * abs(x))
    return math.copysign(-e / (2.0 + e), x)


@_scalar
def tanh_double(x):
    """``tanh x`` from libm (a scalar call): the expm1 route above measured 2.6 float64 ulps,
    libm 1.2 and torch 0.64, and a reference must not be the less accurate side."""
    return math.tanh(x)


@_scalar
def sigmoid_single(x):
    """``1 / (1 + e^-x)`` as ``(1 or e) / (1 + e)`` with ``e = e^-|x|`` (never overflows)."""
    e = exp_single(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@_scalar
def sigmoid_double(x):
    e = exp_double(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


# ---------------------------------------------------------------------------------------------
# the standard normal CDF Phi, for exact GELU
#
# Phi(-a) = erfc(z) / 2 with z = a / sqrt(2) >= 0, and erfc(z) = e^{-z^2} erfcx(z), where
# erfcx is smooth and decreasing from 1 to ~1 / (z sqrt(pi)). With w = 2c / (c + z) in (0, 2]
# and u = w - 1 in (-1, 1], erfcx(z) = w / 2 * H(u) where H is a degree-12 polynomial fitted
# (Chebyshev basis, Lawson's iteration for minimax relative error, against scipy's erfcx on
# 6000 Chebyshev nodes of u; c = 2.5 needed the lowest degree) to relative error 4.4e-10
# over the WHOLE half-line z >= 0 (u = -1 is z = inf). e^{-a^2 / 2}: a^2 is exact for float32
# inputs. Phi(a) = 1 - Phi(-a) loses nothing: Phi(a) >= 1/2.

_C = 2.5
_SQRT_HALF = math.sqrt(0.5)
_H = (4.5926518791140756e-06, 2.722780540780845e-06, -4.183807579364642e-05,
      -1.828874649734235e-05, 0.00027920653896903146, 0.00017305376326318166,
      -0.0019269727103601933, -0.003356525747494241, 0.01134455093375787,
      0.0685003791744068, 0.18156564942978737, 0.3218607423381816, 0.4216127281131187)
_H0, _H1, _H2, _H3, _H4, _H5, _H6, _H7, _H8, _H9, _H10, _H11, _H12 = _H


@_scalar
def _erfcx_poly(w):
    u = w - 1.0
    p = fma(_H0, u, _H1)
    p = fma(p, u, _H2)
    p = fma(p, u, _H3)
    p = fma(p, u, _H4)
    p = fma(p, u, _H5)
    p = fma(p, u, _H6)
    p = fma(p, u, _H7)
    p = fma(p, u, _H8)
    p = fma(p, u, _H9)
    p = fma(p, u, _H10)
    p = fma(p, u, _H11)
    p = fma(p, u, _H12)
    return 0.5 * w * p


@_scalar
def ndtr_single(x):
    """``(Phi(x), e^{-x^2/2})`` accurate to ~5e-10 relative, for float32 results (x: float64).

    The Gaussian factor comes along because GELU's derivative needs ``phi = e^{-x^2/2} /
    sqrt(2 pi)`` too. ``Phi(-inf) = 0``, ``Phi(inf) = 1``, NaN propagates.
    """
    a = abs(x)
    e = exp_single(-0.5 * (a * a))
    w = (2.0 * _C) / (_C + a * _SQRT_HALF)
    h = 0.5 * e * _erfcx_poly(w)  # Phi(-|x|)
    return (h if x < 0.0 else 1.0 - h), e


@_scalar
def ndtr_double(x):
    """``(Phi(x), e^{-x^2/2})`` from libm's erfc (a scalar call: no float64-accurate
    vectorisable erfc here; a piecewise rational one like fdlibm's is 4 branches of work).

    ``x^2 = hi + lo`` exactly (``lo`` by fma), so ``e^{-x^2/2} = e^{-hi/2} (1 - lo/2)``.
    """
    hi = x * x
    lo = fma(x, x, -hi)
    return 0.5 * math.erfc(-x * _SQRT_HALF), exp_double(-0.5 * hi) * (1.0 - 0.5 * lo)


# ---------------------------------------------------------------------------------------------
# log, log(1 - x) and log(1 + u): float64 arithmetic and integer bit operations, no libm call
#
# All three reduce to k ln2 + log(1 + f) for a small f (-0.3 <= f <= 0.5) through
# s = f / (2 + f) (|s| <= 0.2): log(1 + f) = 2 atanh(s) = 2s + s R(s^2), an odd series, and
# since 2s = f - s f,
#
#     log(1 + f) = f - s (f - R).
#
# f is exact (m - 1, (u - 1) / 2; log1m carries its rounding error along), so the roundings
# of 2 + f and of the division only touch the correction s (f - R), about f^2 / 2: the result
# is within about an ulp (measured bounds in test_vmath). The losses use these (binary
# cross-entropy's log x and log(1 - x), and log(1 + e^{-|x|}) for logits).

_SQRT2 = math.sqrt(2.0)
_MIN_NORMAL = 2.2250738585072014e-308
_TWO54 = 18014398509481984.0  # 2^54: scales a subnormal into the normal range


@_scalar
def _atanh_rest(z):
    # R(z) = 2 (z/3 + z^2/5 + ... + z^10/21), z = s^2, so that 2 atanh(s) = 2s + s R. For
    # |s| <= 0.2 the first term left out, 2 s^23 / 23, is below (1/25)^11 / 23 * 25/24 < 2e-17
    # of 2s.
    p = 2.0 / 21.0
    p = fma(p, z, 2.0 / 19.0)
    p = fma(p, z, 2.0 / 17.0)
    p = fma(p, z, 2.0 / 15.0)
    p = fma(p, z, 2.0 / 13.0)
    p = fma(p, z, 2.0 / 11.0)
    p = fma(p, z, 2.0 / 9.0)
    p = fma(p, z, 2.0 / 7.0)
    p = fma(p, z, 2.0 / 5.0)
    p = fma(p, z, 2.0 / 3.0)
    return z * p


@_scalar
def _split(w):
    # w = 2^k m with m in [sqrt(1/2), sqrt 2): (k as a float, k as an int, m); w >= 0 finite.
    # Subnormals are scaled by 2^54 first.
    sub = w < _MIN_NORMAL
    bits = np.float64(w * _TWO54 if sub else w).view(np.int64)
    k = (bits >> 52) - (1023 + 54 if sub else 1023)
    m = np.int64((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).view(np.float64)
    big = m > _SQRT2
    k = k + 1 if big else k
    return np.float64(k), k, 0.5 * m if big else m


@_scalar
def _log1p_rest(f):
    # log(1 + f) - f for -0.3 <= f <= 0.5: -s (f - R(s^2)), s = f / (2 + f) (|s| <= 0.2).
    s = f / (2.0 + f)
    return -s * (f - _atanh_rest(s * s))


@_scalar
def _log_k(kf, g, e):
    # k ln2 + g + e, where g (|g| <= 1/2) is exact and e (small beside g) holds the rest of
    # log(1 + f). For k = +-1 and g of the other sign, k ln2 and the log cancel in part, so
    # k ln2_hi + g is summed first, its rounding error kept (Fast2Sum, |k ln2_hi| > |g|), and
    # the small terms come last. Otherwise k ln2_hi is exact and g + e + k ln2_lo, rounded,
    # is small beside it or nothing cancels.
    hi = kf * _LN2_HI
    lo = kf * _LN2_LO
    head = hi + g
    near = head + ((e + lo) + (g - (head - hi)))
    far = hi + ((g + e) + lo)
    return near if abs(kf) <= 1.0 and kf * g <= 0.0 else far


@_scalar
def log_double(x):
    """``log x`` for any float64 ``x``, to about 1 ulp (libm's special values).

    ``x = 2^k m`` with ``m`` in ``[sqrt(1/2), sqrt 2)``: ``log x = k ln2 + log(1 + f)``, ``f =
    m - 1`` exact; ``k ln2`` in two parts (``k * _LN2_HI`` exact). ``log(+-0) = -inf``,
    ``log(inf) = inf``, ``log`` of a negative number is NaN, NaN propagates.
    """
    kf, _, m = _split(x)
    f = m - 1.0
    r = _log_k(kf, f, _log1p_rest(f))
    r = np.inf if x == np.inf else r
    r = np.nan if x < 0.0 else r
    r = -np.inf if x == 0.0 else r
    return r if x == x else x


@_scalar
def log1m_double(x):
    """``log(1 - x)`` for any float64 ``x``, to about 1 ulp, accurate for tiny ``x``.

    ``1 - x = w + c`` exactly (Fast2Sum: ``w`` rounded, ``c`` its error), ``w = 2^k m`` as in
    ``log_double``, so ``log(1 - x) = k ln2 + log(1 + F)`` with ``F = (m - 1) + c 2^-k`` held
    exactly as ``f + f_lo`` (Fast2Sum again), and ``log(1 + F) = F + (log(1 + f) - f) -
    f_lo f`` to far below an ulp. For ``k = 0`` the sum is ``-x`` itself, so tiny ``x`` keep
    every digit. One division, as ``log_double``. ``log1m(1) = -inf``, ``log1m(-inf) = inf``,
    ``x > 1`` gives NaN, ``x = +-0`` gives ``+0.0`` (``log 1``).
    """
    w = 1.0 - x
    c_small = (1.0 - w) - x  # Fast2Sum takes the larger magnitude first
    c_big = (-x - w) + 1.0
    c = c_small if x >= -1.0 else c_big
    kf, k, m = _split(w)
    g = m - 1.0
    # 2^-k for k in [-53, 1024] (w >= 2^-53 when not 0); 2^-1023 is built as +0.0, which also
    # stands in for 2^-1024, where c is far below an ulp of the result.
    cs = c * _pow2(max(-k, -1023))
    f = g + cs
    f_lo = cs - (f - g)  # |g| >= |cs|: g is a multiple of 2^-53, or 0 where cs = f exactly
    r = _log_k(kf, g, (cs + _log1p_rest(f)) - f_lo * f)
    r = np.inf if w == np.inf else r
    r = np.nan if w < 0.0 else r
    r = -np.inf if w == 0.0 else r
    return r if w == w else w


@_scalar
def log1p_unit_double(u):
    """``log(1 + u)`` for float64 ``u`` in ``[-0.3, 1]`` only (e.g. ``u = e^{-|x|}``), to about
    1 ulp: ``u + (log(1 + u) - u)`` for ``u < 1/2``, else ``ln2 + log(1 + f)`` with ``f = (u -
    1) / 2`` (exact). Cheaper than ``log1m_double(-u)``, which takes any ``u``. NaN
    propagates; ``-0.0`` stays.
    """
    hi = u >= 0.5
    f = (u - 1.0) * 0.5 if hi else u
    r = _log_k(1.0 if hi else 0.0, f, _log1p_rest(f))
    return r if u != 0.0 else u  # log1p(-0.0) = -0.0


# ---------------------------------------------------------------------------------------------
# generic entry points: the precision follows a dtype (a kernel passes ``y.dtype``)


def _bits(dtype) -> int:
    dt = getattr(dtype, "dtype", dtype)  # types.DType / types.NumberClass -> the float type
    if isinstance(dt, types.Float):
        return dt.bitwidth
    raise TypeError(f"precision must be a float32/float64 dtype, got {dtype}")


def _generic(name, single, double):
    def stub(x, dtype):
        raise NotImplementedError(f"_vmath.{name} is only callable inside a Numba kernel")

    stub.__name__ = stub.__qualname__ = name

    @overload(stub, jit_options={"cache": True, "error_model": "numpy"})
    def _ov(x, dtype):
        if _bits(dtype) == 32:
            return lambda x, dtype: single(np.float64(x))
        return lambda x, dtype: double(np.float64(x))

    return stub


exp = _generic("exp", exp_single, exp_double)
expm1 = _generic("expm1", expm1_single, expm1_double)
tanh = _generic("tanh", tanh_single, tanh_double)
sigmoid = _generic("sigmoid", sigmoid_single, sigmoid_double)
ndtr = _generic("ndtr", ndtr_single, ndtr_double)


# ---------------------------------------------------------------------------------------------
# the logistic sigmoid in float32 arithmetic (16 lanes per AVX-512 register instead of 8)
#
# y = n / (2^64 + E) with E = e^-|x| 2^64 from exp_f32_scaled (<= 0.9 ulp, always normal) and
# n = 2^64 (x >= 0) or E (x < 0): the scaling keeps e^x normal down to x = -130, so a
# subnormal y comes from one rounding of the quotient. Two roundings are put back:
# - the sum: dh = fl(2^64 + E), dl = E - (dh - 2^64) exactly (Fast2Sum, 2^64 >= E);
# - the quotient: y0 = fl(n / dh), and n - y0 dh is exact (fma; the remainder of a correctly
#   rounded quotient is representable). With rem = n - y0 dh - y0 dl (rounded once, ~2^-48
#   relative), y = y0 + rem / (dh + dl) to second order, and |rem / dh| <= 1.5 ulp(y0).
# 1/dh only scales that correction, so a linear fit on [2^64, 2^65] serves (relative error
# 1/17, i.e. <= 0.09 ulp). What remains: E's relative error (<= 0.9 ulp of E, i.e. 1.8 2^-24),
# which reaches y multiplied by 1/(1 + e^-|x|) <= 1 (x < 0) or e^-|x|/(1 + e^-|x|) <= 1/2
# (x >= 0), the final rounding (0.5 ulp) and the correction's 0.09: at most 0.59 ulp + 1.8
# 2^-24 y / ulp(y) <= 2.4 ulp where E and y sit at opposite ends of their binades; measured
# 1.46 over all float32 (torch 2.13's float32 sigmoid: 2.0 for |x| <= 10, 2e6 in the tails).

_TWO64_F = _F(2.0 ** 64)
# 1/z ~ (24 - 8z) / 17 on [1, 2], relative error 1/17, evaluated at z = dh 2^-64 (exact). Every
# constant is a normal float32: an operand below 2^-126 (as -8/17 2^-128 was, folding the 2^-64
# into the slope) makes each vector fma a microcode assist on Intel cores: measured 5.9 ns an
# element instead of 0.4 on an AVX-512 Xeon (the AMD EPYC this was first measured on does not
# penalise it, which hid it).
_TWO_M64_F = _F(2.0 ** -64)
_RECIP_A = _F(24.0 / 17.0 * 2.0 ** -64)
_RECIP_B = _F(-8.0 / 17.0 * 2.0 ** -64)


@_scalar
def sigmoid_f32(x):
    """``1 / (1 + e^-x)`` in float32 arithmetic, for a float32 ``x``: <= 1.5 ulp (see above).

    ``sigmoid(+-inf) = 1, 0``, ``sigmoid(-0.0) = 0.5``, NaN propagates, subnormal results
    below ``x = -87.3`` round once.
    """
    x = np.float32(x)
    e = exp_f32_scaled(-abs(x))
    dh = _TWO64_F + e
    dl = e - (dh - _TWO64_F)
    n = _TWO64_F if x >= _F(0.0) else e
    y0 = n / dh
    rem = fma(-y0, dl, fma(-y0, dh, n))
    return fma(rem, fma(dh * _TWO_M64_F, _RECIP_B, _RECIP_A), y0)


# float32 lanes for float32 results, the float64 routes above for float64 ones
sigmoid_fast = _generic("sigmoid_fast", sigmoid_f32, sigmoid_double)

__all__ += ["sigmoid_f32", "sigmoid_fast"]


# ---------------------------------------------------------------------------------------------
# tanh in float32 arithmetic (16 lanes per AVX-512 register instead of 8): <= 0.531 ulp derived,
# 0.5122 measured over every float32 (torch 2.13's float32 tanh: 0.567)
#
# Reduction: a = |x| (clamped to 9.02: above 9.0109 tanh rounds to 1), n = round(2a / ln2)
# (0..26, the shifter), a = n ln2/2 + d exactly up to a tiny known term:
#   d = a - n H/2, H = ln2 rounded to 19 bits (n H/2 has <= 24 bits, and d is a multiple of
#   ulp(a) below 1/4 in magnitude: exact), |d| <= ln2/4 (+ the rounding of a 2/ln2);
#   L = ln2 - H = -4.8e-7: e^{-2a} = 2^-n e^{-2d} e^{nL}.
# With tau = tanh d, A = 1 + tau, s = 2^-n and B = s (1 - tau) e^{nL} (so B/A = e^{-2a}):
#   tanh a = (A - B) / (A + B) = 2 A / (A + B) - 1.
# - tau = d + d t, t = w P(w), w = d^2: P of degree 2 fitted for minimax relative error of tau
#   on |d| <= 0.17347 (Lawson's iteration, weighted least squares against mpmath on 3000
#   Chebyshev nodes of w; coefficients rounded to float32 one at a time from the lowest,
#   refitting the others): 1.65e-10 (0.003 ulp). n = 0 (a < ln2/4): the result is
#   fl(d + d t), d = a exact, rounded once by the fma (tiny and subnormal x: t = 0, x itself).
# - A = ph + pl and 2 - A = mh + ml as float pairs (error-free: 1 - ph, (2 - mh) - ph and d +
#   (1 - ph) are exact by Sterbenz/Fast2Sum; only d t is approximate); B = s (mh + ml) (1 + nL)
#   (s a power of two; (nL)^2/2 <= 8e-11 is dropped); A + B = dh + dl by Fast2Sum (ph >= 0.82 >
#   bh). The quotient: q = fl(ph / dh) through r = 1/dh, the remainder rem = (ph + pl) -
#   q (dh + dl) from two fmas (|rem| ~ 2^-23, so its rounding is ~2^-47), and y = 2q - 1 +
#   2 rem r: 2q - 1 is exact (q in [0.58, 1)), r's relative error (<= 3u with dl) touches only
#   the correction: y is the exact (A - B)/(A + B) rounded once, up to ~2^-18 ulp.
# Error bound (u = 2^-24): t's roundings (w, P's last fma: 2^-26 on ~1/3, the product) give
# |dt| <= 2.76u |t|, |t| <= d^2/3 <= 0.01003; with P's own 1.65e-10, |d tau| <= 0.031u |tau|.
# - n = 0: y = fl(a + a t): 0.5 ulp + 2.76 |t| / (1 - |t|) + 0.003 <= 0.531 ulp.
# - n >= 1: dy = (1 - y^2) / (1 - tau^2) d tau <= 1.03 (1 - y^2) 0.031u |tau|, largest against
#   ulp(y) at y = tanh(ln2/4) = 0.1716 (ulp 2^-26): <= 0.021 ulp; with the final rounding and
#   the df residues (< 1e-4 ulp): <= 0.522 ulp.
# Measured over all 2^32 float32: 0.5122 at x = +-0.17086098 (n = 0, where the bound is
# largest); 131620 of the 4.28e9 finite results are above half an ulp. A stride-7 sweep of the
# positive half saw 0.5102 on the n >= 1 side (x = 0.18233913).
# Every constant is a normal float32, no float64 anywhere (the loop is <16 x float> only).

_TANH_MAX_F = _F(9.02)  # tanh(9.02) = 1 - 2^-25.03: rounds to 1, as does all above 9.0109
_TANH_P0, _TANH_P1, _TANH_P2 = (_F(-0.33333322405815125), _F(0.1333114206790924),
                                _F(-0.05271520838141441))
_TWO_LOG2E_F = _F(2.0 * _LOG2E)
_HALF_LN2_HI19_F = _F(0.6931476593017578 / 2)  # H/2, H = ln2 to 19 bits: n H/2 exact, n < 32
_LN2_LO19_F = _F(-4.787418125030827e-07)  # ln2 - H


@_scalar
def tanh_f32(x):
    """``tanh x`` in float32 arithmetic, for a float32 ``x``: <= 0.531 ulp (see above).

    ``tanh(+-inf) = +-1``, ``tanh(-0.0) = -0.0``, NaN propagates, tiny and subnormal ``x``
    return ``x``.
    """
    x = np.float32(x)
    a = abs(x)
    a = _TANH_MAX_F if a > _TANH_MAX_F else a  # NaN passes (the comparison is false)
    sh = fma(a, _TWO_LOG2E_F, _SHIFT_F)
    n = sh - _SHIFT_F
    d = fma(n, -_HALF_LN2_HI19_F, a)  # exact
    kc = n * _LN2_LO19_F  # e^{nL} ~ 1 + kc
    s = _pow2_f32(np.int64(_SHIFT_F_BITS) - np.int64(np.float32(sh).view(np.int32)))  # 2^-n
    w = d * d
    p = fma(_TANH_P2, w, _TANH_P1)
    p = fma(p, w, _TANH_P0)
    t = w * p
    th = fma(d, t, d)  # tanh d rounded once: the result when n = 0
    ph = _F(1.0) + th  # 1 + tanh d = ph + pl
    pl = fma(d, t, (_F(1.0) - ph) + d)
    mh = _F(2.0) - ph  # 1 - tanh d = mh + ml
    ml = ((_F(2.0) - mh) - ph) - pl
    bh = s * mh  # B = bh + bl
    bl = fma(kc, bh, s * ml)
    dh = ph + bh  # A + B = dh + dl
    dl = ((ph - dh) + bh) + (pl + bl)
    r = _F(1.0) / dh
    q = ph * r
    rem = fma(-q, dh, ph) + fma(-q, dl, pl)
    y = fma(rem, r + r, fma(q, _F(2.0), _F(-1.0)))
    y = th if n == _F(0.0) else y
    return math.copysign(y, x)


tanh_fast = _generic("tanh_fast", tanh_f32, tanh_double)

__all__ += ["tanh_f32", "tanh_fast"]
