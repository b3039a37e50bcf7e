/* Dense int8 kernels: TFLite/CMSIS-NN reference semantics, bit-exact on the host and on the M7.
 *
 * Builds with the Arm DSP extension (__ARM_FEATURE_DSP, i.e. Cortex-M7) use SXTB16/SXTAB16/SMLAD for
 * convolution and fully connected layers; every other build (the host library) uses plain C. int32
 * accumulation is exact and order-independent, so both paths give identical results.
 */
#include "nb_kernels.h"

#include <stddef.h>
#include <string.h>

#include "nb_requant.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

static inline int8_t nb_out_s8(int32_t acc, int32_t mult, int32_t shift, int32_t zp_out, int32_t lo,
                               int32_t hi)
{
    return (int8_t)nb_clamp(nb_requantize(acc, mult, shift) + zp_out, lo, hi);
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

#if defined(__ARM_FEATURE_DSP)

/* Two im2col columns of int16 (x - zp_in, 0 for padding). Within every aligned group of 4 the
 * elements are stored "unordered" as k0,k2,k1,k3: that is the lane order SXTB16 / SXTB16 ROR #8
 * give the weights, so the inner loop needs no re-packing (the CMSIS-NN trick). A tail of K % 4
 * elements stays in order. */
static int16_t nb_im2col[2u * NB_IM2COL_MAX_K + 2u] __attribute__((aligned(8)));

static inline uint32_t nb_ld32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* one LDR: the M7 allows unaligned word loads from normal memory */
    return v;
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

static inline void nb_st32(void *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline uint32_t nb_perm4(uint32_t k)
{
    return (k & ~3u) | ((k & 1u) << 1) | ((k >> 1) & 1u);
}

static void nb_im2col_fill(int16_t *col, const nb_in_t *in, const nb_params_t *p, int32_t iy0,
                           int32_t ix0)
{
    const int32_t cin = in->c;
    if ((cin & 3) == 0) {
        /* whole groups of 4 per tap: widen 4 bytes at once, adding -zp to both lanes */
        const uint32_t off2 = ((uint32_t)(-in->zp) & 0xFFFFu) * 0x10001u;
        int16_t *dst = col;
        for (int32_t ky = 0; ky < p->kh; ky++) {
            const int32_t iy = iy0 + ky;
            for (int32_t kx = 0; kx < p->kw; kx++) {
                const int32_t ix = ix0 + kx;
                if (iy < 0 || iy >= in->h || ix < 0 || ix >= in->w) {
                    memset(dst, 0, (size_t)cin * sizeof *dst);
                    dst += cin;
                    continue;
                }
                const int8_t *src = in->data + (iy * in->w + ix) * cin;
                for (int32_t c = 0; c < cin; c += 4) {
                    const uint32_t v = nb_ld32(src + c);
                    nb_st32(dst, __sxtab16(off2, v));
                    nb_st32(dst + 2, nb_sxtab16_ror8(off2, v));
                    dst += 4;
                }
            }
        }
        return;
    }
    /* few input channels (e.g. the first layer): element by element */
    const uint32_t k_total = (uint32_t)p->kh * p->kw * (uint32_t)cin;
    const uint32_t k4 = k_total & ~3u;
    uint32_t k = 0;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = iy0 + ky;
        for (int32_t kx = 0; kx < p->kw; kx++) {
            const int32_t ix = ix0 + kx;
            const int inside = iy >= 0 && iy < in->h && ix >= 0 && ix < in->w;
            const int8_t *src = in->data + (inside ? (iy * in->w + ix) * cin : 0);
            for (int32_t c = 0; c < cin; c++, k++) {
                const int16_t v = inside ? (int16_t)(src[c] - in->zp) : 0;
                col[k < k4 ? nb_perm4(k) : k] = v;
            }
        }
    }
}

/* 2 output channels x 2 pixels per pass over K (the CMSIS-NN s8 x s16 tile): 8 SMLAD per 16 MACs.
 * `out1` NULL means a single pixel (col1 then aliases col0 and its results are dropped). */
static void nb_conv_tile(const nb_params_t *p, int32_t cout, int32_t k_total, const int16_t *col0,
                         const int16_t *col1, int32_t zp_out, int8_t *out0, int8_t *out1)
{
    const int32_t lo = p->act_min, hi = p->act_max;
    const int32_t k4 = k_total >> 2, k_tail = k_total & 3;
    int32_t co = 0;
    for (; co + 1 < cout; co += 2) {
        const int8_t *wa = p->weights + co * k_total;
        const int8_t *wb = wa + k_total;
        const int16_t *x0 = col0, *x1 = col1;
        int32_t a0 = 0, a1 = 0, b0 = 0, b1 = 0; /* channel a/b x pixel 0/1 */
        for (int32_t k = k4; k > 0; k--) {
            const uint32_t wva = nb_ld32(wa), wvb = nb_ld32(wb);
            wa += 4;
            wb += 4;
            const uint32_t wa02 = __sxtb16(wva), wa13 = nb_sxtb16_ror8(wva);
            const uint32_t wb02 = __sxtb16(wvb), wb13 = nb_sxtb16_ror8(wvb);
            const uint32_t x0a = nb_ld32(x0), x0b = nb_ld32(x0 + 2);
            const uint32_t x1a = nb_ld32(x1), x1b = nb_ld32(x1 + 2);
            x0 += 4;
            x1 += 4;
            a0 = __smlad(wa02, x0a, a0);
            a0 = __smlad(wa13, x0b, a0);
            a1 = __smlad(wa02, x1a, a1);
            a1 = __smlad(wa13, x1b, a1);
            b0 = __smlad(wb02, x0a, b0);
            b0 = __smlad(wb13, x0b, b0);
            b1 = __smlad(wb02, x1a, b1);
            b1 = __smlad(wb13, x1b, b1);
        }
        for (int32_t k = 0; k < k_tail; k++) {
            a0 += wa[k] * x0[k];
            a1 += wa[k] * x1[k];
            b0 += wb[k] * x0[k];
            b1 += wb[k] * x1[k];
        }
        const int32_t ma = p->mult[co], sa = p->shift[co], ba = nb_bias(p, co);
        const int32_t mb = p->mult[co + 1], sb = p->shift[co + 1], bb = nb_bias(p, co + 1);
        out0[co] = nb_out_s8(a0 + ba, ma, sa, zp_out, lo, hi);
        out0[co + 1] = nb_out_s8(b0 + bb, mb, sb, zp_out, lo, hi);
        if (out1 != NULL) {
            out1[co] = nb_out_s8(a1 + ba, ma, sa, zp_out, lo, hi);
            out1[co + 1] = nb_out_s8(b1 + bb, mb, sb, zp_out, lo, hi);
        }
    }
    if (co < cout) { /* odd channel count: one channel x 2 pixels */
        const int8_t *wa = p->weights + co * k_total;
        const int16_t *x0 = col0, *x1 = col1;
        int32_t a0 = 0, a1 = 0;
        for (int32_t k = k4; k > 0; k--) {
            const uint32_t wva = nb_ld32(wa);
            wa += 4;
            const uint32_t wa02 = __sxtb16(wva), wa13 = nb_sxtb16_ror8(wva);
            a0 = __smlad(wa02, nb_ld32(x0), a0);
            a0 = __smlad(wa13, nb_ld32(x0 + 2), a0);
            a1 = __smlad(wa02, nb_ld32(x1), a1);
            a1 = __smlad(wa13, nb_ld32(x1 + 2), a1);
            x0 += 4;
            x1 += 4;
        }
        for (int32_t k = 0; k < k_tail; k++) {
            a0 += wa[k] * x0[k];
            a1 += wa[k] * x1[k];
        }
        const int32_t ba = nb_bias(p, co);
        out0[co] = nb_out_s8(a0 + ba, p->mult[co], p->shift[co], zp_out, lo, hi);
        if (out1 != NULL) {
            out1[co] = nb_out_s8(a1 + ba, p->mult[co], p->shift[co], zp_out, lo, hi);
        }
    }
}

void nb_conv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t k_total = (int32_t)p->kh * p->kw * in->c;
    if (k_total > (int32_t)NB_IM2COL_MAX_K) {
        nb_conv2d_s8_generic(in, out, p);
        return;
    }
    /* even column stride keeps the second column word-aligned */
    int16_t *const col0 = nb_im2col;
    int16_t *const col1 = nb_im2col + ((k_total + 1) & ~1);
    const int32_t cout = out->c;
    int8_t *pending = NULL; /* output of the pixel whose column waits in col0 */
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        for (int32_t ox = 0; ox < out->w; ox++, dst += cout) {
            const int32_t iy0 = oy * p->sh - p->ph, ix0 = ox * p->sw - p->pw;
            if (pending == NULL) {
                nb_im2col_fill(col0, in, p, iy0, ix0);
                pending = dst;
            } else {
                nb_im2col_fill(col1, in, p, iy0, ix0);
                nb_conv_tile(p, cout, k_total, col0, col1, out->zp, pending, dst);
                pending = NULL;
            }
        }
    }
    if (pending != NULL) {
        nb_conv_tile(p, cout, k_total, col0, col0, out->zp, pending, NULL);
    }
}

#else

void nb_conv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    nb_conv2d_s8_generic(in, out, p);
}

#endif /* __ARM_FEATURE_DSP */

/* ---------------------------------------------------------------------------------------------- */
/* Depthwise convolution, channel multiplier 1, weights [kh][kw][c]                                 */

/* One output pixel, channels [c, c_end), one channel at a time (taps inner). */
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

void nb_dwconv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t c_n = in->c;
    int8_t *dst = out->data;
    for (int32_t oy = 0; oy < out->h; oy++) {
        const int32_t iy0 = oy * p->sh - p->ph;
        const int32_t ky0 = nb_tap_lo(iy0), ky1 = nb_tap_hi(iy0, p->kh, in->h);
        for (int32_t ox = 0; ox < out->w; ox++, dst += c_n) {
            const int32_t ix0 = ox * p->sw - p->pw;
            const int32_t kx0 = nb_tap_lo(ix0), kx1 = nb_tap_hi(ix0, p->kw, in->w);
            int32_t c = 0;
#if defined(__ARM_FEATURE_DSP)
            /* 4 channels at a time: one word of inputs and one of weights per tap, widened with the
             * input offset folded in, then one 16x16 multiply-accumulate per channel */
            const uint32_t off2 = ((uint32_t)(-in->zp) & 0xFFFFu) * 0x10001u;
            const int32_t n_ky = ky1 - ky0, n_kx = kx1 - kx0;
            const int32_t x_row = in->w * c_n, w_row = p->kw * c_n;
            const int8_t *x_px = in->data + ((iy0 + ky0) * in->w + ix0 + kx0) * c_n;
            const int8_t *w_px = p->weights + (ky0 * p->kw + kx0) * c_n;
            for (; c + 3 < c_n; c += 4) {
                int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                const int8_t *xr = x_px + c, *wr = w_px + c;
                for (int32_t ky = n_ky; ky > 0; ky--, xr += x_row, wr += w_row) {
                    const int8_t *x = xr, *w = wr;
                    for (int32_t kx = n_kx; kx > 0; kx--, x += c_n, w += c_n) {
                        const uint32_t xv = nb_ld32(x), wv = nb_ld32(w);
                        const uint32_t x02 = __sxtab16(off2, xv), x13 = nb_sxtab16_ror8(off2, xv);
                        const uint32_t w02 = __sxtb16(wv), w13 = nb_sxtb16_ror8(wv);
                        a0 = __smlabb(w02, x02, a0);
                        a2 = __smlatt(w02, x02, a2);
                        a1 = __smlabb(w13, x13, a1);
                        a3 = __smlatt(w13, x13, a3);
                    }
                }
                const int32_t zo = out->zp, lo = p->act_min, hi = p->act_max;
                dst[c] = nb_out_s8(a0 + nb_bias(p, c), p->mult[c], p->shift[c], zo, lo, hi);
                dst[c + 1] = nb_out_s8(a1 + nb_bias(p, c + 1), p->mult[c + 1], p->shift[c + 1], zo, lo, hi);
                dst[c + 2] = nb_out_s8(a2 + nb_bias(p, c + 2), p->mult[c + 2], p->shift[c + 2], zo, lo, hi);
                dst[c + 3] = nb_out_s8(a3 + nb_bias(p, c + 3), p->mult[c + 3], p->shift[c + 3], zo, lo, hi);
            }
#endif
            nb_dw_pixel_scalar(in, out, p, dst, c, c_n, iy0, ix0, ky0, ky1, kx0, kx1);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Fully connected: weights [cout][cin], input flattened in HWC order                              */

void nb_fc_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p)
{
    const int32_t cin = (int32_t)in->h * in->w * in->c, cout = out->c;
    const int32_t lo = p->act_min, hi = p->act_max;
    int32_t co = 0;
#if defined(__ARM_FEATURE_DSP)
    /* two weight rows per pass; the input offset is folded into the widening (SXTAB16) */
    const uint32_t off2 = ((uint32_t)(-in->zp) & 0xFFFFu) * 0x10001u;
    const int32_t k4 = cin >> 2, k_tail = cin & 3;
    for (; co + 1 < cout; co += 2) {
        const int8_t *wa = p->weights + co * cin;
        const int8_t *wb = wa + cin;
        const int8_t *x = in->data;
        int32_t a = 0, b = 0;
        for (int32_t k = k4; k > 0; k--) {
            const uint32_t xv = nb_ld32(x), wva = nb_ld32(wa), wvb = nb_ld32(wb);
            x += 4;
            wa += 4;
            wb += 4;
            const uint32_t x02 = __sxtab16(off2, xv), x13 = nb_sxtab16_ror8(off2, xv);
            a = __smlad(__sxtb16(wva), x02, a);
            a = __smlad(nb_sxtb16_ror8(wva), x13, a);
            b = __smlad(__sxtb16(wvb), x02, b);
            b = __smlad(nb_sxtb16_ror8(wvb), x13, b);
        }
        for (int32_t k = 0; k < k_tail; k++) {
            const int32_t xs = x[k] - in->zp;
            a += wa[k] * xs;
            b += wb[k] * xs;
        }
        out->data[co] = nb_out_s8(a + nb_bias(p, co), p->mult[co], p->shift[co], out->zp, lo, hi);
        out->data[co + 1] =
            nb_out_s8(b + nb_bias(p, co + 1), p->mult[co + 1], p->shift[co + 1], out->zp, lo, hi);
    }
#endif
    for (; co < cout; co++) {
        const int8_t *w = p->weights + co * cin;
        int32_t acc = 0, wsum = 0;
        for (int32_t k = 0; k < cin; k++) {
            acc += (int32_t)w[k] * in->data[k];
            wsum += w[k];
        }
        acc = acc - wsum * in->zp + nb_bias(p, co);
        out->data[co] = nb_out_s8(acc, p->mult[co], p->shift[co], out->zp, lo, hi);
    }
}

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
