"""exp_into(): exp of a float64 buffer in a loop LLVM vectorises, for the softmax rows of the
full-batch evaluation (full.py).

numba compiles np.exp to a call of the C library's scalar exp (6 to 11 ns a value on the
2-core AVX2 host of docs/development.md, against 2.2 to 3.1 ns here); a vectorised one needs
Intel's SVML, which the llvmlite wheels on PyPI are not built with. At an L-BFGS evaluation's
C = 10 classes those calls (with the rows' logs) were about a sixth of a float32 evaluation.
Here exp is arithmetic the loop vectoriser takes:

    x = n ln2 + r, |r| <= ln2 / 2   (n = floor(x / ln2 + 1/2); ln2 in two parts, Cody and
                                     Waite's reduction, so that n ln2 is exact)
    exp(r) = sum_{j <= 13} r^j / j!  (the Taylor series, Horner's rule; the first term left
                                     out is below 5e-18 relative on |r| <= ln2 / 2)
    exp(x) = exp(r) * 2^(n - h) * 2^h, h = n >> 1: two powers of two built from their
                                     exponent bits, so that results below 2^-1022 come out
                                     as the subnormals they are, and under 2^-1075 as 0

Measured against numpy's exp (tests/test_kernels.py): at most 1 ulp apart where the result
is normal, at most 1 subnormal step below that. Only x <= 0 is handled (the max-shifted
scores of a softmax row); x below -746 (exp rounds to 0 there) is taken as -746, so -inf and
any clip give 0. error_model "numpy": no ZeroDivisionError branch anywhere in the loop, which
would keep LLVM from vectorising it.
"""

from __future__ import annotations

import math

import numpy as np

from .cache import njit

# ln2 = LN2_HI + LN2_LO, LN2_HI with 11 bits of mantissa, so that n * LN2_HI is exact for
# every |n| < 2^11 that a float64 exponent needs
LN2_HI = 6.93145751953125e-1
LN2_LO = 1.42860682030941723212e-6
LOG2_E = 1.4426950408889634
LOWEST = -746.0  # exp(x) rounds to 0 below about -745.13
EXPONENT_BIAS = 1023
MANTISSA_BITS = 52
DEGREE = 13
TAYLOR = tuple(1.0 / math.factorial(j) for j in range(DEGREE + 1))  # 1 / j!, j = 0..DEGREE


@njit(cache=True)
def exp_scratch(n):
    """The two float64 (n,) buffers exp_into builds its powers of two in (as int64 bits)."""
    return np.empty(n, np.float64), np.empty(n, np.float64)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def exp_into(x, out, n, low_power, high_power):
    """out[:n] = exp(x[:n]), x (>= n,) float64 <= 0, out (>= n,) float64; low_power and
    high_power (>= n,) float64 scratch (exp_scratch) that the powers of two are built in."""
    low_bits = low_power.view(np.int64)
    high_bits = high_power.view(np.int64)
    for k in range(n):
        value = x[k] if x[k] > LOWEST else LOWEST
        whole = np.floor(LOG2_E * value + 0.5)
        r = (value - whole * LN2_HI) - whole * LN2_LO
        e = TAYLOR[DEGREE]
        for j in range(DEGREE - 1, -1, -1):  # Horner's rule
            e = e * r + TAYLOR[j]
        out[k] = e
        # a float64 -> int32 conversion: AVX has it packed (int64 needs AVX-512)
        power = np.int32(whole)
        half = power >> 1
        low_bits[k] = np.int64(half + EXPONENT_BIAS) << MANTISSA_BITS
        high_bits[k] = np.int64(power - half + EXPONENT_BIAS) << MANTISSA_BITS
    for k in range(n):
        out[k] = out[k] * high_power[k] * low_power[k]
