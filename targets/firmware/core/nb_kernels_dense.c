/* Dense int8 kernels: TFLite/CMSIS-NN reference semantics, bit-exact on the host and on the M7.
 *
 * Optimised builds with the Arm DSP extension (Cortex-M7) take hand-scheduled SXTB16/SMLAD paths for
 * convolution, depthwise convolution and fully connected layers (NB_DSP below); every other build
 * (the host library, -O0 builds) runs the plain C loops. int32 accumulation is exact and
 * order-independent, so both give identical results. Outputs are requantized with the fast exact
 * form of nb_requant.h when every channel of the layer allows it, then packed four to a word and
 * clamped to the activation range with byte SIMD. Instruction counts depend on shapes and on the
 * layer's multipliers, shifts and bias bounds (which path), never on activation values.
 */
#include "nb_kernels.h"

#include <stddef.h>
#include <string.h>

#include "nb_requant.h"

/* The M7 paths (inline assembly, up to 14 register operands) need an optimised build without
 * -fno-omit-frame-pointer, as the platform's -O2 build is; -O0 builds run the plain C loops, and
 * -DNB_NO_ASM selects them for any other build. */
#if defined(__ARM_FEATURE_DSP) && defined(__OPTIMIZE__) && !defined(NB_NO_ASM)
#define NB_DSP 1
#include <arm_acle.h>
#else
#define NB_DSP 0
#endif

static inline int8_t nb_out_s8(int32_t acc, int32_t mult, int32_t shift, int32_t zp_out, int32_t lo,
                               int32_t hi)
{
    return (int8_t)nb_clamp(nb_add_sat(nb_requantize(acc, mult, shift), zp_out), lo, hi);
}

static inline int32_t nb_bias(const nb_params_t *p, int32_t c)
{
    return p->bias != NULL ? p->bias[c] : 0;
}

/* First and one-past-last kernel tap inside the input for a window starting at `start`. */
static inline int32_t nb_tap_lo(int32_t start)
{
    return start < 0 ? -start : 0;
}

static inline int32_t nb_tap_hi(int32_t start, int32_t k, int32_t size)
{
    return start + k > size ? size - start : k;
}

/* ---------------------------------------------------------------------------------------------- */
/* Convolution                                                                                     */

void nb_conv2d_s8_generic(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t cin = in->c, cout = out->c, kw = p->kw;
    const int32_t row_len = (int32_t)p->kh * kw * cin; /* weights per output channel */
    int8_t *dst = out->data;

    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        for (int32_t ox = 0; ox < out->w; ox++) {
            const int32_t ix0 = ox * p->sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), kx1 = nb_tap_hi(ix0, kw, in->w);
            for (int32_t co = 0; co < cout; co++) {
                const int8_t *wrow = p->weights + co * row_len;
                int32_t acc = 0, wsum = 0; /* sum w*(x - zp) = sum w*x - zp * sum w */
                for (int32_t ky = ky0; ky < ky1; ky++) {
                    for (int32_t kx = kx0; kx < kx1; kx++) {
                        const int8_t *x = in->data + ((iy0 + ky) * in->w + (ix0 + kx)) * cin;
                        const int8_t *w = wrow + (ky * kw + kx) * cin;
                        for (int32_t ci = 0; ci < cin; ci++) {
                            acc += (int32_t)w[ci] * x[ci];
                            wsum += w[ci];
                        }
                    }
                }
                acc = acc - wsum * in->zp + nb_bias(p, co);
                *dst++ = nb_out_s8(acc, p->mult[co], p->shift[co], out->zp, p->act_min, p->act_max);
            }
        }
    }
}


/* Depthwise convolution, one output pixel, channels [c, c_end), one channel at a time. */
static void nb_dw_pixel_scalar(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p,
                               int8_t *dst, int32_t c, int32_t c_end, int32_t iy0, int32_t ix0,
                               int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1)
{
    const int32_t c_n = in->c, kw = p->kw;
    for (; c < c_end; c++) {
        int32_t acc = 0, wsum = 0;
        for (int32_t ky = ky0; ky < ky1; ky++) {
            /* first in-bounds tap of the row: pointers never leave the tensors */
            const int8_t *x = in->data + ((iy0 + ky) * in->w + ix0 + kx0) * c_n + c;
            const int8_t *w = p->weights + (ky * kw + kx0) * c_n + c;
            for (int32_t kx = kx0; kx < kx1; kx++, x += c_n, w += c_n) {
                acc += (int32_t)*w * *x;
                wsum += *w;
            }
        }
        acc = acc - wsum * in->zp + nb_bias(p, c);
        dst[c] = nb_out_s8(acc, p->mult[c], p->shift[c], out->zp, p->act_min, p->act_max);
    }
}

/* Depthwise channels [c0, c_n) of every output pixel with the scalar loop. */
static void nb_dw_scalar(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p, int32_t c0)
{
    const int32_t c_n = in->c;
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        for (int32_t ox = 0; ox < out->w; ox++, dst += c_n) {
            const int32_t ix0 = ox * p->sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), kx1 = nb_tap_hi(ix0, p->kw, in->w);
            nb_dw_pixel_scalar(in, out, p, dst, c0, c_n, iy0, ix0, ky0, ky1, kx0, kx1);
        }
    }
}

/* Fully connected rows [co, cout) with the scalar loop. */
static void nb_fc_scalar(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p, int32_t co)
{
    const int32_t cin = (int32_t)in->h * in->w * in->c, cout = out->c;
    for (; co < cout; co++) {
        const int8_t *w = p->weights + co * cin;
        int32_t acc = 0, wsum = 0;
        for (int32_t k = 0; k < cin; k++) {
            acc += (int32_t)w[k] * in->data[k];
            wsum += w[k];
        }
        acc = acc - wsum * in->zp + nb_bias(p, co);
        out->data[co] = nb_out_s8(acc, p->mult[co], p->shift[co], out->zp, p->act_min, p->act_max);
    }
}

#if NB_DSP

/* ---------------------------------------------------------------------------------------------- */
/* M7 building blocks                                                                              */

/* Per-channel requantization constants: bias, then the fast form (m2, hz, e) of nb_requant.h, or
 * for the reference form (mult, zp_out, shift). */
typedef struct {
    int32_t bias, m2, hz, e;
} nb_rq_chan_t;

/* Scratch of the DSP kernels, used by one layer at a time: two interleaved im2col columns (conv),
 * the widened input vector (fc) or the widened weights of four channels (depthwise), in words of
 * two int16 lanes, followed by the layer's requantization table when it fits; convolutions whose
 * input channels are not a multiple of 4 keep one pixel's raw int8 patch in the last words. */
#define NB_SCRATCH_WORDS (NB_IM2COL_MAX_K + 4u)
static union {
    uint32_t w[NB_SCRATCH_WORDS];
    nb_rq_chan_t q[NB_SCRATCH_WORDS / 4u];
} nb_scratch __attribute__((aligned(8)));
#define nb_col (nb_scratch.w)

/* Words the raw patch of depth k_total takes at the end of the scratch. */
static inline uint32_t nb_patch_words(int32_t k_total)
{
    return ((uint32_t)k_total + 3u) / 4u + 1u;
}

static inline int8_t *nb_patch(int32_t k_total)
{
    return (int8_t *)(nb_scratch.w + NB_SCRATCH_WORDS - nb_patch_words(k_total));
}

/* The functions holding the hand-scheduled loops stay out of line: the register allocator then has
 * only their own values to place around the assembly. */
#define NB_ASM_FN __attribute__((noinline))

static inline uint32_t nb_ld32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* one LDR: the M7 allows unaligned word loads from normal memory */
    return v;
}

static inline void nb_st32(void *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

/* SXTB16 / SXTAB16 of the operand rotated right by 8 (bytes 1 and 3), in one instruction: GCC 12
 * has no ACLE __ror and does not fold a C rotate into the extend's ROR operand. */
static inline uint32_t nb_sxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

static inline uint32_t nb_sxtab16_ror8(uint32_t acc, uint32_t v)
{
    uint32_t r;
    __asm("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(v));
    return r;
}

static inline uint32_t nb_dup16(int32_t v)
{
    return ((uint32_t)v & 0xFFFFu) * 0x10001u;
}

/* How a layer requantizes: the reference form, or the fast form (every channel allows it) with its
 * constants tabulated in the scratch or, when the table does not fit, computed per use. */
enum { NB_RQ_REF = 0, NB_RQ_TAB = 1, NB_RQ_CALC = 2 };

/* Requantization of one layer, and the activation bounds in four byte lanes. */
typedef struct {
    const nb_params_t *p;
    const nb_rq_chan_t *tab; /* NB_RQ_TAB: the fast form's constants per channel */
    int mode;
    int32_t zp;
    uint32_t lo4, hi4;
    int clamp; /* the activation bounds are narrower than int8 */
} nb_rq_layer_t;

/* 1 when every channel of a layer with reduction depth `depth` allows the fast form. */
static int nb_rq_all_fast(const nb_params_t *p, int32_t n, int32_t depth)
{
    for (int32_t c = 0; c < n; c++) {
        if (!nb_rq_fast_ok(p->mult[c], p->shift[c]) || !nb_rq_fast_acc_ok(nb_bias(p, c), depth)) {
            return 0;
        }
    }
    return 1;
}

static inline __attribute__((always_inline)) nb_rq_chan_t nb_rq_chan_make(const nb_params_t *p, int fast,
                                                                         int32_t c, int32_t zp)
{
    nb_rq_chan_t q = {nb_bias(p, c), p->mult[c], zp, p->shift[c]};
    if (fast) {
        const nb_rq_fast_t f = nb_rq_fast_params(q.m2, q.e, zp);
        q.m2 = f.m2;
        q.hz = f.hz;
        q.e = f.e;
    }
    return q;
}

static nb_rq_layer_t nb_rq_layer_base(const nb_params_t *p, int32_t zp_out)
{
    const nb_rq_layer_t l = {p,
                             NULL,
                             NB_RQ_REF,
                             zp_out,
                             ((uint32_t)p->act_min & 0xFFu) * 0x01010101u,
                             ((uint32_t)p->act_max & 0xFFu) * 0x01010101u,
                             p->act_min > -128 || p->act_max < 127};
    return l;
}

/* The table may use entries [first_free, end) of nb_scratch.q: the layer's other data take the rest. */
static nb_rq_layer_t nb_rq_layer(const nb_params_t *p, int32_t zp_out, int32_t n, int32_t depth,
                                 uint32_t first_free, uint32_t end)
{
    nb_rq_layer_t l = nb_rq_layer_base(p, zp_out);
    if (!nb_rq_all_fast(p, n, depth)) {
        return l;
    }
    l.mode = NB_RQ_CALC;
    if (first_free + (uint32_t)n <= end) {
        nb_rq_chan_t *tab = nb_scratch.q + first_free;
        for (int32_t c = 0; c < n; c++) {
            tab[c] = nb_rq_chan_make(p, 1, c, zp_out);
        }
        l.tab = tab;
        l.mode = NB_RQ_TAB;
    }
    return l;
}

/* The constants of channel c for a kernel specialised on `mode` (a constant after inlining). */
static inline __attribute__((always_inline)) nb_rq_chan_t nb_rq_chan(const nb_rq_layer_t *l, int mode,
                                                                    int32_t c)
{
    return mode == NB_RQ_TAB ? l->tab[c] : nb_rq_chan_make(l->p, mode != NB_RQ_REF, c, l->zp);
}

static inline __attribute__((always_inline)) int32_t nb_rq_bias(const nb_rq_layer_t *l, int mode, int32_t c)
{
    return mode == NB_RQ_TAB ? l->tab[c].bias : nb_bias(l->p, c);
}

/* One accumulator (bias included) → the int8 output before the activation clamp; `fast`: the
 * constants are the fast form's. */
static inline __attribute__((always_inline)) int32_t nb_rq(int fast, const nb_rq_chan_t *q, int32_t acc)
{
    if (fast) {
        return __ssat(nb_requantize_fast(acc, q->m2, q->hz, q->e), 8);
    }
    return nb_clamp(nb_add_sat(nb_requantize(acc, q->m2, q->e), q->hz), -128, 127);
}

/* Four int8 values (in int32s) → one word, b0 in the low byte. */
static inline uint32_t nb_pack4(int32_t b0, int32_t b1, int32_t b2, int32_t b3)
{
    uint32_t w = (uint32_t)b0;
    __asm("bfi %0, %1, #8, #8\n\t"
          "bfi %0, %2, #16, #8\n\t"
          "bfi %0, %3, #24, #8"
          : "+&r"(w)
          : "r"(b1), "r"(b2), "r"(b3));
    return w;
}

/* The activation clamp of four int8 lanes at once: SSUB8 sets the GE flags per byte from the exact
 * difference, SEL picks by them. */
static inline uint32_t nb_act4(const nb_rq_layer_t *l, uint32_t v)
{
    if (l->clamp) {
        uint32_t t;
        __asm("ssub8 %[t], %[v], %[lo]\n\t"
              "sel   %[v], %[v], %[lo]\n\t"
              "ssub8 %[t], %[hi], %[v]\n\t"
              "sel   %[v], %[v], %[hi]"
              : [v] "+r"(v), [t] "=&r"(t)
              : [lo] "r"(l->lo4), [hi] "r"(l->hi4)
              : "cc");
        (void)t;
    }
    return v;
}

static inline void nb_st16(int8_t *dst, uint32_t v)
{
    const uint16_t h = (uint16_t)v;
    memcpy(dst, &h, sizeof h);
}

static inline int8_t nb_act1(const nb_rq_layer_t *l, int32_t v)
{
    return (int8_t)nb_clamp(v, l->p->act_min, l->p->act_max);
}

/* ---------------------------------------------------------------------------------------------- */
/* Convolution: im2col of two output pixels at a time, 2 output channels x 2 pixels per pass       */

/* The column of pixel slot s (0 or 1): reduction group g (elements 4g..4g+3 of the patch, order
 * ky, kx, cin) at words 4g + 2s (lanes k0, k2) and 4g + 2s + 1 (lanes k1, k3), the lane order
 * SXTB16 / SXTB16 ROR 8 give the weights (the CMSIS-NN "unordered" trick, no re-packing). Values are
 * x - zp_in, so padding is 0. A depth K with r = K % 4 != 0 ends with a group holding patch
 * elements K-4..K-1 whose first 4 - r (already counted) are zeroed: the kernel reads that group's
 * weights from offset K - 4 of the row, inside the row, and needs no scalar tail. */

static void nb_fill_c4(uint32_t *dst, const nb_in_t *in, const nb_params_t *p, int32_t iy0, int32_t ix0,
                       uint32_t off2)
{
    const int32_t cin = in->c, n4 = cin >> 2;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = iy0 + ky;
        for (int32_t kx = 0; kx < p->kw; kx++) {
            const int32_t ix = ix0 + kx;
            if (iy < 0 || iy >= in->h || ix < 0 || ix >= in->w) {
                for (int32_t g = 0; g < n4; g++, dst += 4) {
                    dst[0] = 0;
                    dst[1] = 0;
                }
                continue;
            }
            const int8_t *src = in->data + (iy * in->w + ix) * cin;
            for (int32_t g = 0; g < n4; g++, src += 4, dst += 4) {
                const uint32_t v = nb_ld32(src);
                dst[0] = __sxtab16(off2, v);
                dst[1] = nb_sxtab16_ror8(off2, v);
            }
        }
    }
}

/* Copies n bytes with word moves (the last one may overlap the previous one); n >= 4 never
 * reads or writes outside [src, src + n) / [dst, dst + n). */
static inline void nb_copy(int8_t *dst, const int8_t *src, int32_t n)
{
    if (n < 4) {
        for (int32_t i = 0; i < n; i++) {
            dst[i] = src[i];
        }
        return;
    }
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        nb_st32(dst + i, nb_ld32(src + i));
    }
    if (i < n) {
        nb_st32(dst + n - 4, nb_ld32(src + n - 4));
    }
}

/* Any channel count: gather the raw patch (zp_in where the window leaves the input: contributes
 * 0), then widen it four elements at a time. */
static void nb_fill_raw(uint32_t *dst, const nb_in_t *in, const nb_params_t *p, int32_t iy0, int32_t ix0,
                        int32_t k_total, uint32_t off2)
{
    const int32_t cin = in->c, kw = p->kw, run = kw * cin;
    const int8_t zp = (int8_t)in->zp;
    const int h_inside = ix0 >= 0 && ix0 + kw <= in->w;
    int8_t *const patch = nb_patch(k_total);
    int8_t *raw = patch;
    for (int32_t ky = 0; ky < p->kh; ky++, raw += run) {
        const int32_t iy = iy0 + ky;
        if (iy < 0 || iy >= in->h) {
            for (int32_t i = 0; i < run; i++) {
                raw[i] = zp;
            }
        } else if (h_inside) {
            nb_copy(raw, in->data + (iy * in->w + ix0) * cin, run);
        } else {
            for (int32_t kx = 0; kx < kw; kx++) {
                const int32_t ix = ix0 + kx;
                int8_t *d = raw + kx * cin;
                if (ix < 0 || ix >= in->w) {
                    for (int32_t c = 0; c < cin; c++) {
                        d[c] = zp;
                    }
                } else {
                    nb_copy(d, in->data + (iy * in->w + ix) * cin, cin);
                }
            }
        }
    }
    const int32_t n4 = k_total >> 2, r = k_total & 3;
    const int8_t *src = patch;
    for (int32_t g = 0; g < n4; g++, src += 4, dst += 4) {
        const uint32_t v = nb_ld32(src);
        dst[0] = __sxtab16(off2, v);
        dst[1] = nb_sxtab16_ror8(off2, v);
    }
    if (r != 0) {
        const uint32_t low = 0xFFFFFFFFu >> (8 * r); /* the 4 - r bytes already counted */
        const uint32_t zp4 = (uint32_t)(uint8_t)zp * 0x01010101u;
        const uint32_t v = (nb_ld32(patch + k_total - 4) & ~low) | (zp4 & low);
        dst[0] = __sxtab16(off2, v);
        dst[1] = nb_sxtab16_ror8(off2, v);
    }
}

/* One reduction group (16 MACs) of the 2 x 2 tile: channel a = row at w, channel b = row at w + k;
 * pixel 0 = words x[0..1], pixel 1 = words x[2..3]. 18 instructions, 8 SMLAD. */
#define NB_MAC2X2                                                                                  \
    "ldrd   %[t0], %[t1], [%[x], #8]\n\t"                                                         \
    "ldrd   %[t2], %[t3], [%[x]], #16\n\t"                                                        \
    "ldr    %[t4], [%[w], %[k]]\n\t"                                                              \
    "sxtb16 %[t5], %[t4]\n\t"                                                                     \
    "sxtb16 %[t4], %[t4], ror #8\n\t"                                                             \
    "smlad  %[b0], %[t5], %[t2], %[b0]\n\t"                                                       \
    "smlad  %[b1], %[t5], %[t0], %[b1]\n\t"                                                       \
    "smlad  %[b0], %[t4], %[t3], %[b0]\n\t"                                                       \
    "smlad  %[b1], %[t4], %[t1], %[b1]\n\t"                                                       \
    "ldr    %[t4], [%[w]], #4\n\t"                                                                \
    "sxtb16 %[t5], %[t4]\n\t"                                                                     \
    "sxtb16 %[t4], %[t4], ror #8\n\t"                                                             \
    "smlad  %[a0], %[t5], %[t2], %[a0]\n\t"                                                       \
    "smlad  %[a1], %[t5], %[t0], %[a1]\n\t"                                                       \
    "smlad  %[a0], %[t4], %[t3], %[a0]\n\t"                                                       \
    "smlad  %[a1], %[t4], %[t1], %[a1]\n\t"

#define NB_MAC2X2_OUT                                                                              \
    : [a0] "+r"(acc[0]), [a1] "+r"(acc[1]), [b0] "+r"(acc[2]), [b1] "+r"(acc[3]), [w] "+r"(w),      \
      [x] "+r"(x), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3), [t4] "=&r"(t4),  \
      [t5] "=&r"(t5)
#define NB_MAC2X2_IN                                                                               \
    : [k] "r"(k)                                                                                   \
    : "cc", "memory"

/* acc = {a0, a1, b0, b1} over the whole column: n_full groups from w, then (back > 0) the last
 * group from w - back. */
static inline __attribute__((always_inline)) void nb_mac2x2(int32_t acc[4], const int8_t *w, int32_t k,
                                                           const uint32_t *x, uint32_t n_full,
                                                           uint32_t back)
{
    uint32_t t0, t1, t2, t3, t4, t5;
    uint32_t n = n_full >> 1;
    if (n != 0) {
        __asm volatile("1:\n\t" NB_MAC2X2 NB_MAC2X2 "subs   %[n], %[n], #1\n\t"
                                                     "bne    1b\n\t" NB_MAC2X2_OUT, [n] "+r"(n)
                           NB_MAC2X2_IN);
    }
    if (n_full & 1u) {
        __asm volatile(NB_MAC2X2 NB_MAC2X2_OUT NB_MAC2X2_IN);
    }
    if (back != 0) {
        w -= back;
        __asm volatile(NB_MAC2X2 NB_MAC2X2_OUT NB_MAC2X2_IN);
    }
}

/* All output channels of two pixels (`out1` NULL: one pixel, slot 1's results are dropped). */
static inline __attribute__((always_inline)) void nb_conv_tile(const nb_rq_layer_t *l, int mode,
                                                              int32_t cout, int32_t k_total,
                                                              int8_t *out0, int8_t *out1)
{
    const int fast = mode != NB_RQ_REF;
    const int8_t *weights = l->p->weights;
    const uint32_t n_full = (uint32_t)k_total >> 2;
    const uint32_t back = (k_total & 3) != 0 ? 4u - (uint32_t)(k_total & 3) : 0u;
    int32_t co = 0;
    for (; co + 1 < cout; co += 2) {
        const int32_t ba = nb_rq_bias(l, mode, co), bb = nb_rq_bias(l, mode, co + 1);
        int32_t acc[4] = {ba, ba, bb, bb};
        nb_mac2x2(acc, weights + co * k_total, k_total, nb_col, n_full, back);
        /* read after the multiply-accumulates, which need every register */
        const nb_rq_chan_t qa = nb_rq_chan(l, mode, co), qb = nb_rq_chan(l, mode, co + 1);
        /* bytes: pixel 0 channels a, b, then pixel 1 channels a, b */
        const uint32_t v = nb_act4(l, nb_pack4(nb_rq(fast, &qa, acc[0]), nb_rq(fast, &qb, acc[2]),
                                               nb_rq(fast, &qa, acc[1]), nb_rq(fast, &qb, acc[3])));
        nb_st16(out0 + co, v);
        if (out1 != NULL) {
            nb_st16(out1 + co, v >> 16);
        }
    }
    if (co < cout) { /* odd channel count: channel b repeats channel a (k = 0) */
        const nb_rq_chan_t qa = nb_rq_chan(l, mode, co);
        int32_t acc[4] = {qa.bias, qa.bias, qa.bias, qa.bias};
        nb_mac2x2(acc, weights + co * k_total, 0, nb_col, n_full, back);
        out0[co] = nb_act1(l, nb_rq(fast, &qa, acc[0]));
        if (out1 != NULL) {
            out1[co] = nb_act1(l, nb_rq(fast, &qa, acc[1]));
        }
    }
}

typedef void nb_tile_fn(const nb_rq_layer_t *l, int32_t cout, int32_t k_total, int8_t *out0, int8_t *out1);

static NB_ASM_FN void nb_conv_tile_tab(const nb_rq_layer_t *l, int32_t cout, int32_t k_total, int8_t *out0,
                                       int8_t *out1)
{
    nb_conv_tile(l, NB_RQ_TAB, cout, k_total, out0, out1);
}

static NB_ASM_FN void nb_conv_tile_calc(const nb_rq_layer_t *l, int32_t cout, int32_t k_total,
                                        int8_t *out0, int8_t *out1)
{
    nb_conv_tile(l, NB_RQ_CALC, cout, k_total, out0, out1);
}

static NB_ASM_FN void nb_conv_tile_ref(const nb_rq_layer_t *l, int32_t cout, int32_t k_total, int8_t *out0,
                                       int8_t *out1)
{
    nb_conv_tile(l, NB_RQ_REF, cout, k_total, out0, out1);
}

void nb_conv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t k_total = (int32_t)p->kh * p->kw * in->c;
    const int c4 = (in->c & 3) == 0;
    /* the columns take 4 words (one table entry) per group of 4; the raw patch the last words */
    const uint32_t groups = ((uint32_t)k_total + 3u) >> 2;
    const uint32_t end = c4 ? NB_SCRATCH_WORDS : NB_SCRATCH_WORDS - nb_patch_words(k_total);
    if (k_total < 4 || 4u * groups > end) {
        nb_conv2d_s8_generic(in, out, p);
        return;
    }
    const int32_t cout = out->c;
    const nb_rq_layer_t l = nb_rq_layer(p, out->zp, cout, k_total, groups, end / 4u);
    nb_tile_fn *const tile = l.mode == NB_RQ_TAB    ? nb_conv_tile_tab
                             : l.mode == NB_RQ_CALC ? nb_conv_tile_calc
                                                    : nb_conv_tile_ref;
    const uint32_t off2 = nb_dup16(-in->zp);
    int8_t *pending = NULL; /* output of the pixel whose column waits in slot 0 */
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        for (int32_t ox = 0; ox < out->w; ox++, dst += cout) {
            const int32_t ix0 = ox * p->sw - p->pw;
            uint32_t *slot = nb_col + (pending == NULL ? 0 : 2);
            if (c4) {
                nb_fill_c4(slot, in, p, iy0, ix0, off2);
            } else {
                nb_fill_raw(slot, in, p, iy0, ix0, k_total, off2);
            }
            if (pending == NULL) {
                pending = dst;
            } else {
                tile(&l, cout, k_total, pending, dst);
                pending = NULL;
            }
        }
    }
    if (pending != NULL) {
        tile(&l, cout, k_total, pending, NULL);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Depthwise convolution: four channels at a time over every output pixel                         */

/* First output index whose window starts inside the input (start = o * stride - pad >= 0). */
static inline int32_t nb_inside_lo(int32_t pad, int32_t stride, int32_t n_out)
{
    const int32_t lo = (pad + stride - 1) / stride;
    return lo < n_out ? lo : n_out;
}

/* One past the last output index whose k-wide window ends inside the input, at least `lo`. */
static inline int32_t nb_inside_hi(int32_t size, int32_t k, int32_t pad, int32_t stride, int32_t lo,
                                   int32_t n_out)
{
    const int32_t hi = size - k + pad >= 0 ? (size - k + pad) / stride + 1 : 0;
    return hi < lo ? lo : (hi > n_out ? n_out : hi);
}

/* One tap for channels c..c+3: weights pre-widened at w + WOFF bytes (lanes (c, c+2), then
 * (c+1, c+3)), four input bytes at XADDR, widened with EXT (with or without the input offset).
 * 8 instructions per 4 MACs. */
#define NB_DW_OFF(R, X) "sxtab16 %[" R "], %[off], %[" X "]"
#define NB_DW_RAW(R, X) "sxtb16  %[" R "], %[" X "]"
#define NB_DW_TAP_EXT(EXT, WOFF, XADDR)                                                            \
    "ldrd    %[w02], %[w13], [%[w], #" WOFF "]\n\t"                                                \
    "ldr     %[xv], " XADDR "\n\t" EXT("x02", "xv") "\n\t" EXT("xv", "xv") ", ror #8\n\t"           \
    "smlabb  %[a0], %[w02], %[x02], %[a0]\n\t"                                                     \
    "smlatt  %[a2], %[w02], %[x02], %[a2]\n\t"                                                     \
    "smlabb  %[a1], %[w13], %[xv], %[a1]\n\t"                                                      \
    "smlatt  %[a3], %[w13], %[xv], %[a3]\n\t"
#define NB_DW_TAP(WOFF, XADDR) NB_DW_TAP_EXT(NB_DW_OFF, WOFF, XADDR)
#define NB_DW_TAP_RAW(WOFF, XADDR) NB_DW_TAP_EXT(NB_DW_RAW, WOFF, XADDR)
#define NB_DW_OPERANDS                                                                             \
    : [a0] "+r"(acc[0]), [a1] "+r"(acc[1]), [a2] "+r"(acc[2]), [a3] "+r"(acc[3]), [w02] "=&r"(w02), \
      [w13] "=&r"(w13), [xv] "=&r"(xv), [x02] "=&r"(x02)

/* One kernel row of `n` taps `step` bytes apart (border windows). */
static inline __attribute__((always_inline)) void nb_dw_row(int32_t acc[4], const uint32_t *w,
                                                           const int8_t *x, int32_t step, int32_t n,
                                                           uint32_t off2)
{
    uint32_t w02, w13, xv, x02;
    if (n == 3) {
        __asm volatile(NB_DW_TAP("0", "[%[x]]") NB_DW_TAP("8", "[%[x], %[s]]")
                           NB_DW_TAP("16", "[%[x], %[s], lsl #1]") NB_DW_OPERANDS
                       : [w] "r"(w), [x] "r"(x), [s] "r"(step), [off] "r"(off2)
                       : "memory");
        return;
    }
    for (; n > 0; n--, w += 2, x += step) {
        __asm volatile(NB_DW_TAP("0", "[%[x]]") NB_DW_OPERANDS
                       : [w] "r"(w), [x] "r"(x), [off] "r"(off2)
                       : "memory");
    }
}

/* The nine taps of a 3x3 window inside the input: rows `row` bytes apart, taps `step` apart. The
 * input offset is not applied: the caller starts from bias - zp_in * sum(w) instead, which keeps
 * the operands to 12 registers (frame-pointer builds have no more). */
static inline __attribute__((always_inline)) void nb_dw_3x3(int32_t acc[4], const uint32_t *w,
                                                           const int8_t *x, int32_t step, int32_t row)
{
    uint32_t w02, w13, xv, x02;
    __asm volatile(NB_DW_TAP_RAW("0", "[%[x]]") NB_DW_TAP_RAW("8", "[%[x], %[s]]")
                       NB_DW_TAP_RAW("16", "[%[x], %[s], lsl #1]") "add     %[x], %[x], %[r]\n\t"
                       NB_DW_TAP_RAW("24", "[%[x]]") NB_DW_TAP_RAW("32", "[%[x], %[s]]")
                           NB_DW_TAP_RAW("40", "[%[x], %[s], lsl #1]") "add     %[x], %[x], %[r]\n\t"
                       NB_DW_TAP_RAW("48", "[%[x]]") NB_DW_TAP_RAW("56", "[%[x], %[s]]")
                           NB_DW_TAP_RAW("64", "[%[x], %[s], lsl #1]") NB_DW_OPERANDS,
                   [x] "+r"(x)
                   : [w] "r"(w), [s] "r"(step), [r] "r"(row)
                   : "memory");
}

/* Requantizes and stores the 4 outputs of one pixel. */
static inline __attribute__((always_inline)) void nb_dw_store(const nb_rq_layer_t *l, int fast,
                                                             const nb_rq_chan_t q[4], const int32_t acc[4],
                                                             int8_t *dst)
{
    nb_st32(dst, nb_act4(l, nb_pack4(nb_rq(fast, &q[0], acc[0]), nb_rq(fast, &q[1], acc[1]),
                                     nb_rq(fast, &q[2], acc[2]), nb_rq(fast, &q[3], acc[3]))));
}

static inline __attribute__((always_inline)) void nb_dw_group(const nb_in_t *in, const nb_out_t *out,
                                                             const nb_rq_layer_t *l, int fast, int32_t c)
{
    const nb_params_t *p = l->p;
    const int32_t c_n = in->c, kw = p->kw, taps = (int32_t)p->kh * kw;
    const int32_t x_row = in->w * c_n, sw = p->sw;
    /* output columns whose 3x3 window lies inside the input horizontally: [ox_lo, ox_hi) */
    const int is3x3 = p->kh == 3 && kw == 3;
    const int32_t ox_lo = nb_inside_lo(p->pw, sw, out->w);
    const int32_t ox_hi = nb_inside_hi(in->w, 3, p->pw, sw, ox_lo, out->w);
    const int32_t oy_lo = nb_inside_lo(p->ph, p->sh, out->h);
    const int32_t oy_hi = nb_inside_hi(in->h, 3, p->ph, p->sh, oy_lo, out->h);
    const int any_inside = is3x3 && ox_lo < ox_hi && oy_lo < oy_hi;
    /* the group's weights, widened once for the whole layer pass, and (3x3) their lane sums */
    uint32_t s02 = 0, s13 = 0; /* |sum| <= 9 * 128: no 16-bit lane overflows */
    for (int32_t t = 0; t < taps; t++) {
        const uint32_t v = nb_ld32(p->weights + t * c_n + c);
        nb_col[2 * t] = __sxtb16(v);
        nb_col[2 * t + 1] = nb_sxtb16_ror8(v);
        if (any_inside) {
            s02 = __sadd16(s02, nb_col[2 * t]);
            s13 = __sadd16(s13, nb_col[2 * t + 1]);
        }
    }
    const int32_t zo = l->zp;
    const nb_rq_chan_t q[4] = {nb_rq_chan_make(p, fast, c, zo), nb_rq_chan_make(p, fast, c + 1, zo),
                               nb_rq_chan_make(p, fast, c + 2, zo), nb_rq_chan_make(p, fast, c + 3, zo)};
    /* inside windows (all taps present): sum w (x - zp) = sum w x - zp sum w */
    const int32_t zp = in->zp;
    const int32_t inner[4] = {q[0].bias - zp * (int16_t)s02, q[1].bias - zp * (int16_t)s13,
                              q[2].bias - zp * ((int32_t)s02 >> 16), q[3].bias - zp * ((int32_t)s13 >> 16)};
    const uint32_t off2 = nb_dup16(-zp);
    int8_t *dst = out->data + c;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        /* rows whose windows lie inside vertically run their inside columns [lo, hi) unrolled */
        const int inside = is3x3 && ky0 == 0 && ky1 == 3;
        const int32_t lo = inside ? ox_lo : out->w, hi = inside ? ox_hi : out->w;
        for (int32_t ox = 0; ox < out->w; ox++, dst += c_n) {
            if (ox == lo) {
                const int8_t *x = in->data + (iy0 * in->w + ox * sw - p->pw) * c_n + c;
                for (; ox < hi; ox++, dst += c_n, x += sw * c_n) {
                    int32_t acc[4] = {inner[0], inner[1], inner[2], inner[3]};
                    nb_dw_3x3(acc, nb_col, x, c_n, x_row);
                    nb_dw_store(l, fast, q, acc, dst);
                }
                if (ox == out->w) {
                    break;
                }
            }
            const int32_t ix0 = ox * sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), n_kx = nb_tap_hi(ix0, kw, in->w) - kx0;
            const int8_t *x = in->data + ((iy0 + ky0) * in->w + ix0 + kx0) * c_n + c;
            const uint32_t *w = nb_col + 2 * (ky0 * kw + kx0);
            int32_t acc[4] = {q[0].bias, q[1].bias, q[2].bias, q[3].bias};
            for (int32_t ky = ky0; ky < ky1; ky++, x += x_row, w += 2 * kw) {
                nb_dw_row(acc, w, x, c_n, n_kx, off2);
            }
            nb_dw_store(l, fast, q, acc, dst);
        }
    }
}

static NB_ASM_FN void nb_dw_group_fast(const nb_in_t *in, const nb_out_t *out, const nb_rq_layer_t *l,
                                       int32_t c)
{
    nb_dw_group(in, out, l, 1, c);
}

static NB_ASM_FN void nb_dw_group_ref(const nb_in_t *in, const nb_out_t *out, const nb_rq_layer_t *l,
                                      int32_t c)
{
    nb_dw_group(in, out, l, 0, c);
}

void nb_dwconv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t c_n = in->c;
    int32_t c = 0;
    if (2 * (int32_t)p->kh * p->kw <= (int32_t)NB_SCRATCH_WORDS) {
        /* no table: the group code makes the constants of its own 4 channels */
        const nb_rq_layer_t l = nb_rq_layer_base(p, out->zp);
        const int fast = nb_rq_all_fast(p, c_n, (int32_t)p->kh * p->kw);
        for (; c + 3 < c_n; c += 4) {
            if (fast) {
                nb_dw_group_fast(in, out, &l, c);
            } else {
                nb_dw_group_ref(in, out, &l, c);
            }
        }
    }
    if (c < c_n) {
        nb_dw_scalar(in, out, p, c);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Fully connected: the input widened once, then 4 weight rows per pass                            */

/* One reduction group (16 MACs) of 4 rows: rows 0, 1 at wa, wa + k; rows 2, 3 at wc, wc + k. */
#define NB_FC_ROW(R, LOAD)                                                                         \
    LOAD "sxtb16 %[u], %[t]\n\t"                                                                   \
         "sxtb16 %[t], %[t], ror #8\n\t"                                                           \
         "smlad  %[" R "], %[u], %[x0], %[" R "]\n\t"                                              \
         "smlad  %[" R "], %[t], %[x1], %[" R "]\n\t"
#define NB_MAC4X1                                                                                  \
    "ldrd   %[x0], %[x1], [%[x]], #8\n\t"                                                         \
    NB_FC_ROW("r1", "ldr    %[t], [%[wa], %[k]]\n\t")                                              \
    NB_FC_ROW("r0", "ldr    %[t], [%[wa]], #4\n\t")                                                \
    NB_FC_ROW("r3", "ldr    %[t], [%[wc], %[k]]\n\t")                                              \
    NB_FC_ROW("r2", "ldr    %[t], [%[wc]], #4\n\t")
#define NB_MAC4X1_OUT                                                                              \
    : [r0] "+r"(acc[0]), [r1] "+r"(acc[1]), [r2] "+r"(acc[2]), [r3] "+r"(acc[3]), [wa] "+r"(wa),    \
      [wc] "+r"(wc), [x] "+r"(x), [x0] "=&r"(x0), [x1] "=&r"(x1), [t] "=&r"(t), [u] "=&r"(u)
#define NB_MAC4X1_IN                                                                               \
    : [k] "r"(k)                                                                                   \
    : "cc", "memory"

static inline __attribute__((always_inline)) void nb_mac4x1(int32_t acc[4], const int8_t *wa, int32_t k,
                                                           const uint32_t *x, uint32_t n_full,
                                                           uint32_t back)
{
    const int8_t *wc = wa + 2 * k;
    uint32_t x0, x1, t, u;
    /* the loop stays in C: with its counter the assembly would need 13 registers, more than
     * -O1 / -Og builds leave free */
    for (uint32_t n = n_full >> 1; n != 0; n--) {
        __asm volatile(NB_MAC4X1 NB_MAC4X1 NB_MAC4X1_OUT NB_MAC4X1_IN);
    }
    if (n_full & 1u) {
        __asm volatile(NB_MAC4X1 NB_MAC4X1_OUT NB_MAC4X1_IN);
    }
    if (back != 0) {
        wa -= back;
        wc -= back;
        __asm volatile(NB_MAC4X1 NB_MAC4X1_OUT NB_MAC4X1_IN);
    }
}

/* One row: 6 instructions per 4 MACs. */
static inline __attribute__((always_inline)) int32_t nb_mac1x1(int32_t acc, const int8_t *w,
                                                              const uint32_t *x, uint32_t n_full,
                                                              uint32_t back)
{
    uint32_t x0, x1, t, u, n = n_full;
#define NB_MAC1X1                                                                                  \
    "ldrd   %[x0], %[x1], [%[x]], #8\n\t"                                                         \
    "ldr    %[t], [%[w]], #4\n\t"                                                                 \
    "sxtb16 %[u], %[t]\n\t"                                                                       \
    "sxtb16 %[t], %[t], ror #8\n\t"                                                               \
    "smlad  %[a], %[u], %[x0], %[a]\n\t"                                                          \
    "smlad  %[a], %[t], %[x1], %[a]\n\t"
#define NB_MAC1X1_OPERANDS                                                                         \
    : [a] "+r"(acc), [w] "+r"(w), [x] "+r"(x), [n] "+r"(n), [x0] "=&r"(x0), [x1] "=&r"(x1),         \
      [t] "=&r"(t), [u] "=&r"(u)                                                                   \
    :                                                                                              \
    : "cc", "memory"
    if (n != 0) {
        __asm volatile("1:\n\t" NB_MAC1X1 "subs   %[n], %[n], #1\n\t"
                                          "bne    1b\n\t" NB_MAC1X1_OPERANDS);
    }
    if (back != 0) {
        w -= back;
        __asm volatile(NB_MAC1X1 NB_MAC1X1_OPERANDS);
    }
#undef NB_MAC1X1
#undef NB_MAC1X1_OPERANDS
    return acc;
}

static inline __attribute__((always_inline)) void nb_fc_rows(const nb_in_t *in, const nb_out_t *out,
                                                            const nb_rq_layer_t *l, int mode)
{
    const int fast = mode != NB_RQ_REF;
    const int32_t cin = (int32_t)in->h * in->w * in->c, cout = out->c;
    const uint32_t n_full = (uint32_t)cin >> 2;
    const uint32_t back = (cin & 3) != 0 ? 4u - (uint32_t)(cin & 3) : 0u;
    const int8_t *weights = l->p->weights;
    int32_t co = 0;
    for (; co + 3 < cout; co += 4) {
        int32_t acc[4] = {nb_rq_bias(l, mode, co), nb_rq_bias(l, mode, co + 1), nb_rq_bias(l, mode, co + 2),
                          nb_rq_bias(l, mode, co + 3)};
        nb_mac4x1(acc, weights + co * cin, cin, nb_col, n_full, back);
        const nb_rq_chan_t q0 = nb_rq_chan(l, mode, co), q1 = nb_rq_chan(l, mode, co + 1);
        const nb_rq_chan_t q2 = nb_rq_chan(l, mode, co + 2), q3 = nb_rq_chan(l, mode, co + 3);
        nb_st32(out->data + co, nb_act4(l, nb_pack4(nb_rq(fast, &q0, acc[0]), nb_rq(fast, &q1, acc[1]),
                                                    nb_rq(fast, &q2, acc[2]), nb_rq(fast, &q3, acc[3]))));
    }
    for (; co < cout; co++) {
        const nb_rq_chan_t q = nb_rq_chan(l, mode, co);
        const int32_t acc = nb_mac1x1(q.bias, weights + co * cin, nb_col, n_full, back);
        out->data[co] = nb_act1(l, nb_rq(fast, &q, acc));
    }
}

static NB_ASM_FN void nb_fc_rows_fast(const nb_in_t *in, const nb_out_t *out, const nb_rq_layer_t *l)
{
    nb_fc_rows(in, out, l, NB_RQ_TAB);
}

static NB_ASM_FN void nb_fc_rows_ref(const nb_in_t *in, const nb_out_t *out, const nb_rq_layer_t *l)
{
    nb_fc_rows(in, out, l, NB_RQ_REF);
}

void nb_fc_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t cin = (int32_t)in->h * in->w * in->c;
    /* the widened input takes 2 words per group of 4 inputs */
    if (cin < 4 || cin > 2 * (int32_t)NB_IM2COL_MAX_K) {
        nb_fc_scalar(in, out, p, 0);
        return;
    }
    const uint32_t off2 = nb_dup16(-in->zp);
    const int32_t n4 = cin >> 2, r = cin & 3;
    uint32_t *dst = nb_col;
    for (int32_t g = 0; g < n4; g++, dst += 2) {
        const uint32_t v = nb_ld32(in->data + 4 * g);
        dst[0] = __sxtab16(off2, v);
        dst[1] = nb_sxtab16_ror8(off2, v);
    }
    if (r != 0) { /* last group: inputs cin-4..cin-1, the first 4 - r (already counted) zeroed */
        const uint32_t low = 0xFFFFFFFFu >> (8 * r);
        const uint32_t zp4 = (uint32_t)(uint8_t)in->zp * 0x01010101u;
        const uint32_t v = (nb_ld32(in->data + cin - 4) & ~low) | (zp4 & low);
        dst[0] = __sxtab16(off2, v);
        dst[1] = nb_sxtab16_ror8(off2, v);
    }
    const nb_rq_layer_t l =
        nb_rq_layer(p, out->zp, out->c, cin, ((uint32_t)n4 + 2u) >> 1, NB_SCRATCH_WORDS / 4u);
    if (l.mode == NB_RQ_TAB) { /* a table too large for the scratch: the reference form */
        nb_fc_rows_fast(in, out, &l);
    } else {
        nb_fc_rows_ref(in, out, &l);
    }
}

#else /* plain C: the host library and unoptimised builds */

void nb_conv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    nb_conv2d_s8_generic(in, out, p);
}

void nb_dwconv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    nb_dw_scalar(in, out, p, 0);
}

void nb_fc_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    nb_fc_scalar(in, out, p, 0);
}

#endif /* NB_DSP */

/* ---------------------------------------------------------------------------------------------- */
/* Pooling: output keeps the input's scale and zero point; raw int8 values are pooled.             */

void nb_maxpool_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t c_n = in->c;
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        for (int32_t ox = 0; ox < out->w; ox++) {
            const int32_t ix0 = ox * p->sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), kx1 = nb_tap_hi(ix0, p->kw, in->w);
            for (int32_t c = 0; c < c_n; c++) {
                int32_t m = -128;
                for (int32_t ky = ky0; ky < ky1; ky++) {
                    const int8_t *x = in->data + ((iy0 + ky) * in->w + ix0 + kx0) * c_n + c;
                    for (int32_t kx = kx0; kx < kx1; kx++, x += c_n) {
                        const int32_t v = *x;
                        m = v > m ? v : m;
                    }
                }
                *dst++ = (int8_t)nb_clamp(m, p->act_min, p->act_max);
            }
        }
    }
}

/* TFLite's rounding: sum / count, half away from zero, without a data-dependent branch. */
static inline int32_t nb_round_div(int32_t sum, int32_t count)
{
    const int32_t sign = sum >> 31; /* 0 or -1 */
    const int32_t half = count >> 1;
    return (sum + ((half ^ sign) - sign)) / count;
}

void nb_avgpool_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t c_n = in->c;
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        for (int32_t ox = 0; ox < out->w; ox++) {
            const int32_t ix0 = ox * p->sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), kx1 = nb_tap_hi(ix0, p->kw, in->w);
            int32_t count = (ky1 - ky0) * (kx1 - kx0); /* in-bounds taps only */
            count = count > 0 ? count : 1;
            for (int32_t c = 0; c < c_n; c++) {
                int32_t sum = 0;
                for (int32_t ky = ky0; ky < ky1; ky++) {
                    const int8_t *x = in->data + ((iy0 + ky) * in->w + ix0 + kx0) * c_n + c;
                    for (int32_t kx = kx0; kx < kx1; kx++, x += c_n) {
                        sum += *x;
                    }
                }
                *dst++ = (int8_t)nb_clamp(nb_round_div(sum, count), p->act_min, p->act_max);
            }
        }
    }
}

/* Global average pool = average pool over the whole map (same rounding); output 1x1xC. */
void nb_gap_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t c_n = in->c, n = (int32_t)in->h * in->w;
    for (int32_t c = 0; c < c_n; c++) {
        const int8_t *x = in->data + c;
        int32_t sum = 0;
        for (int32_t i = 0; i < n; i++) {
            sum += x[i * c_n];
        }
        out->data[c] = (int8_t)nb_clamp(nb_round_div(sum, n > 0 ? n : 1), p->act_min, p->act_max);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Residual add: TFLite quantized ADD (left shift 20, per-input multipliers, output multiplier).   */

#define NB_ADD_LEFT_SHIFT 20

void nb_add_s8(const nb_in_t *in0, const nb_in_t *in1, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t n = (int32_t)out->h * out->w * out->c;
    const int32_t m0 = p->mult[0], m1 = p->mult[1], mo = p->mult[2];
    const int32_t s0 = p->shift[0], s1 = p->shift[1], so = p->shift[2];
    for (int32_t i = 0; i < n; i++) {
        const int32_t a = (int32_t)((uint32_t)(in0->data[i] - in0->zp) << NB_ADD_LEFT_SHIFT);
        const int32_t b = (int32_t)((uint32_t)(in1->data[i] - in1->zp) << NB_ADD_LEFT_SHIFT);
        const int32_t sum = nb_requantize(a, m0, s0) + nb_requantize(b, m1, s1);
        out->data[i] = nb_out_s8(sum, mo, so, out->zp, p->act_min, p->act_max);
    }
}
