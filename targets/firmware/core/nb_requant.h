/* TFLite/CMSIS-NN fixed-point requantization (double rounding), branch-free.
 *
 * out = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << left, mult), right)
 * with left = max(shift, 0), right = max(-shift, 0). Identical on the host and on the M7: only
 * int32/int64 integer arithmetic, arithmetic right shifts of negative values (GCC defines them).
 */
#ifndef NB_REQUANT_H
#define NB_REQUANT_H

#include <stdint.h>

/* gemmlowp's SaturatingRoundingDoublingHighMul without the saturation branch. The only saturating
 * input is a == b == INT32_MIN, and our multipliers come from QuantizeMultiplier: always in
 * [2^30, 2^31) or 0, never INT32_MIN. For every other input gemmlowp's sign-dependent nudge equals
 * a single "+2^30 then arithmetic >> 31" on the 64-bit product (round half up). */
static inline int32_t nb_srdhm(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 30)) >> 31);
}

/* gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded half away from zero, 0 <= exponent <= 31. */
static inline int32_t nb_rdbpot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)((1u << exponent) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (int32_t)((uint32_t)x >> 31); /* +1 for negative x */
    return (x >> exponent) + (remainder > threshold);
}

/* TFLite MultiplyByQuantizedMultiplier: shift > 0 shifts left before the multiply. */
static inline int32_t nb_requantize(int32_t acc, int32_t mult, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    return nb_rdbpot(nb_srdhm((int32_t)((uint32_t)acc << left), mult), right);
}

static inline int32_t nb_clamp(int32_t v, int32_t lo, int32_t hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

#endif /* NB_REQUANT_H */
