"""TFLite/CMSIS-NN fixed-point helpers, vectorised over NumPy arrays.

These are the integer rules the firmware implements, written from the TFLite reference semantics
(tensorflow/lite/kernels/internal/common.h and quantization_util.cc; gemmlowp fixedpoint.h;
CMSIS-NN `arm_nn_requantize`, see /work/shared/references/kernels.md §1.1):

- SaturatingRoundingDoublingHighMul(a, b) = (a*b + nudge) / 2^31 with C's truncating division,
  nudge = 2^30 for a*b >= 0 and 1 - 2^30 otherwise; saturates the single overflow case
  INT32_MIN * INT32_MIN to INT32_MAX.
- RoundingDivideByPOT(x, e) = arithmetic shift right by e, rounding half away from zero.
- MultiplyByQuantizedMultiplier(x, M, shift): left-shift x by max(shift, 0) in int32 (two's
  complement wrap, as the C code does), SRDHM by M, then RoundingDivideByPOT by max(-shift, 0).
  This is the default "double rounding" of TFLite and CMSIS-NN.

Every array function takes and returns int64 arrays holding int32 values (int64 so the 64-bit
product never overflows); inputs broadcast like NumPy operands.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Reduce int64 values to int32 two's complement (what C's int32 arithmetic does on our targets)."""
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0 or (x.min() >= INT32_MIN and x.max() <= INT32_MAX):
        return x  # the common case: nothing wraps
    return ((x + 2**31) & 0xFFFFFFFF) - 2**31


def saturating_rounding_doubling_high_mul(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (given as int64 arrays).

    gemmlowp computes (a*b + nudge) / 2^31 with C's truncating division and nudge = 2^30 for
    a*b >= 0, 1 - 2^30 otherwise. Writing a*b = q*2^31 + r (0 <= r < 2^31) both branches give
    q + (r >= 2^30), i.e. floor((a*b + 2^30) / 2^31): one add and one arithmetic shift. The test
    suite checks this against the literal definition.
    """
    a64 = np.asarray(a, dtype=np.int64)
    b64 = np.asarray(b, dtype=np.int64)
    ab = a64 * b64  # |ab| <= 2^62: fits int64
    ab += 1 << 30
    ab >>= 31
    if np.any(b64 == INT32_MIN) and np.any(a64 == INT32_MIN):  # rare: check before a full mask
        ab = np.where((a64 == INT32_MIN) & (b64 == INT32_MIN), np.int64(INT32_MAX), ab)
    return ab


def rounding_divide_by_pot(x: np.ndarray | int, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero, exponent in [0, 31]."""
    x64 = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    if np.any((e < 0) | (e > 31)):
        raise ValueError("RoundingDivideByPOT exponent must lie in [0, 31]")
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask  # two's-complement bits, as the C code sees them
    threshold = (mask >> 1) + (x64 < 0).astype(np.int64)
    return (x64 >> e) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(
    x: np.ndarray | int, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (double rounding); shift > 0 shifts left first."""
    s = np.asarray(shift, dtype=np.int64)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    # C computes x * (1 << left) in int32; a left shift only happens for effective scales >= 1,
    # where the product may wrap exactly as it does on the device.
    shifted = wrap_int32(np.asarray(x, dtype=np.int64) << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def _round_half_away(v: float) -> float:
    """TfLiteRound / std::round for doubles: ties away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real ≈ M * 2^(shift - 31) with M a Q31 significand in [2^30, 2^31).

    frexp splits `real` into q in [0.5, 1) and an exponent; q * 2^31 is rounded half away from zero;
    the carry case q_fixed == 2^31 halves it and bumps the shift; shifts below -31 flush to (0, 0)
    as TFLite does (every bit would be shifted out). Returns (multiplier, shift), shift > 0 = left.
    """
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"multiplier must be finite and >= 0, got {real!r}")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(_round_half_away(q * float(1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"multiplier {real!r} is too large for a 32-bit left shift")
    return q_fixed, shift


def quantize_multiplier_smaller_than_one_exp(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplierSmallerThanOneExp: QuantizeMultiplier for 0 < real < 1 (shift <= 0)."""
    if not 0.0 < real < 1.0:
        raise ValueError(f"multiplier must lie in (0, 1), got {real!r}")
    multiplier, shift = quantize_multiplier(real)
    if shift > 0:  # cannot happen for real < 1; kept as the check TFLite makes
        raise ValueError(f"multiplier {real!r} needs a left shift")
    return multiplier, shift


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_multiplier` over an array of float64 effective scales → (int32 M, int32 shift)."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).ravel()]
    mult = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return mult, shift


def round_half_away_div(total: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """TFLite/CMSIS average-pool rounding: sum / count with C division, ties away from zero.

    `sum > 0 ? (sum + count/2) / count : (sum - count/2) / count` (integer_ops/pooling.h).
    """
    s = np.asarray(total, dtype=np.int64)
    c = np.asarray(count, dtype=np.int64)
    half = c // 2
    pos = (s + half) // c  # numerator > 0: floor == truncation
    neg = -((-s + half) // c)  # numerator <= 0: truncation toward zero
    return np.where(s > 0, pos, neg)
