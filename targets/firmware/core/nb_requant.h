/* TFLite/CMSIS-NN fixed-point requantization (double rounding), branch-free.
 *
 * out = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << left, mult), right)
 * with left = max(shift, 0), right = max(-shift, 0). Identical on the host and on the M7: only
 * int32/int64 integer arithmetic, arithmetic right shifts of negative values (GCC defines them).
 *
 * nb_requantize() is the reference form. nb_requantize_fast() gives the same result bit for bit in
 * a fifth of the instructions for the multipliers QuantizeMultiplier produces for scales below 1/2
 * (nb_rq_fast_ok) and accumulators below 2^30 in magnitude (nb_rq_fast_acc_ok); the kernels use it
 * per layer when every channel qualifies.
 */
#ifndef NB_REQUANT_H
#define NB_REQUANT_H

#include <stdint.h>
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

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

/* a + b saturated to int32: adding the output zero point to a saturated requantized value must
 * clamp, as the reference's wide arithmetic does, not wrap (QADD on cores with the DSP extension). */
static inline int32_t nb_add_sat(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP)
    return __qadd(a, b);
#else
    const int64_t sum = (int64_t)a + b;
    return sum > INT32_MAX ? INT32_MAX : sum < INT32_MIN ? INT32_MIN : (int32_t)sum;
#endif
}

static inline int32_t nb_clamp(int32_t v, int32_t lo, int32_t hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* ---------------------------------------------------------------------------------------------- */
/* Fast exact requantization.
 *
 * For M in [2^30, 2^31) and e = -shift >= 1, with p = acc * M and s = (acc < 0):
 *   y = SRDHM(acc, M) = floor((p + 2^30) / 2^31)                        (round half up, see above)
 *   RDBPOT(y, e)      = floor((y + 2^(e-1) - (y < 0)) / 2^e)            (ties away from zero)
 * floor(floor(u / m) / n) = floor(u / (m n)) merges the two roundings into one 64-bit division:
 *   out = floor((p + 2^30 + (2^(e-1) - s) 2^31) / 2^(31+e))
 * (y < 0 was replaced by acc < 0: they differ only when -2^30 <= p < 0, where y = 0 and both
 * forms give 0). Doubling numerator and denominator puts the division on the high word:
 *   2u = acc * (2M) + 2^31 + (2^(e-1) - s) 2^32,   out = hi32(2u) >> e,
 * and acc * 2M = acc * (2M - 2^32) + acc * 2^32, where 2M - 2^32 is the int32 value of 2M: one
 * signed 32x32+64 multiply-accumulate (SMLAL) and one add give hi32(2u). Adding zp * 2^e to the
 * high word before the shift adds the output zero point for free. With |acc| < 2^30 (which the
 * kernels check per layer from the biases and the reduction depth) nothing overflows. */
#define NB_RQ_FAST_MAX_RIGHT 21

static inline int nb_rq_fast_ok(int32_t mult, int32_t shift)
{
    return mult >= (INT32_C(1) << 30) && shift <= -1 && shift >= -NB_RQ_FAST_MAX_RIGHT;
}

/* 1 when bias + any sum of `depth` products of int8 weights and (x - zp) in [-255, 255] stays
 * inside (-2^30, 2^30), the range nb_requantize_fast() is exact on. */
static inline int nb_rq_fast_acc_ok(int32_t bias, int32_t depth)
{
    const int64_t bound = (int64_t)(bias < 0 ? -(int64_t)bias : bias) + (int64_t)depth * (128 * 255);
    return bound < (INT64_C(1) << 30);
}

/* Per-channel constants of the fast form. */
typedef struct {
    int32_t m2; /* (int32_t)(2 * mult) */
    int32_t hz; /* 2^(e-1) + zp_out * 2^e */
    int32_t e;  /* -shift, in [1, NB_RQ_FAST_MAX_RIGHT] */
} nb_rq_fast_t;

static inline nb_rq_fast_t nb_rq_fast_params(int32_t mult, int32_t shift, int32_t zp_out)
{
    const int32_t e = -shift;
    const nb_rq_fast_t q = {(int32_t)((uint32_t)mult << 1),
                            (int32_t)((1u << (e - 1)) + ((uint32_t)zp_out << e)), e};
    return q;
}

/* nb_requantize(acc, mult, shift) + zp_out for nb_rq_fast_ok(mult, shift) and -2^30 < acc < 2^30,
 * with (m2, hz, e) from nb_rq_fast_params(mult, shift, zp_out). Six instructions on the M7. */
static inline int32_t nb_requantize_fast(int32_t acc, int32_t m2, int32_t hz, int32_t e)
{
    int32_t hi = hz + (acc >> 31);
#if defined(__ARM_ARCH_7EM__) || defined(__ARM_ARCH_7M__)
    uint32_t lo = 0x80000000u;
    __asm("smlal %0, %1, %2, %3" : "+r"(lo), "+r"(hi) : "r"(acc), "r"(m2));
    (void)lo;
#else
    hi = (int32_t)(((int64_t)((uint64_t)(uint32_t)hi << 32 | 0x80000000u) + (int64_t)acc * m2) >> 32);
#endif
    return (hi + acc) >> e;
}

#endif /* NB_REQUANT_H */
