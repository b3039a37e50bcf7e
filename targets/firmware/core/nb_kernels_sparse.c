/* Sparse int8 kernels for the csr and nested formats: layout in nb_model.h (nb_sparse_t), design in
 * nb_kernels_sparse.h. Builds with the Arm DSP extension use SXTB16/SXTAB16/SMLAD through ACLE; the
 * host build runs the same algorithm with the same arithmetic in plain C, so the host tests check
 * exactly the data layout and loop structure the M7 runs.
 */
#include "nb_kernels_sparse.h"

#include <stddef.h>
#include <string.h>

#include "nb_requant.h"

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* ---------------------------------------------------------------------------------------------- */
/* 16-bit SIMD helpers                                                                             */

#if defined(__ARM_FEATURE_DSP)

static inline uint32_t nb_sp_sxtb16(uint32_t v)
{
    return (uint32_t)__sxtb16((int32_t)v);
}

/* the extend's own ROR operand: GCC 12 does not fold a C rotate into it */
static inline uint32_t nb_sp_sxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

static inline uint32_t nb_sp_sxtab16(uint32_t acc, uint32_t v)
{
    return (uint32_t)__sxtab16((int32_t)acc, (int32_t)v);
}

static inline uint32_t nb_sp_sxtab16_ror8(uint32_t acc, uint32_t v)
{
    uint32_t r;
    __asm("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(v));
    return r;
}

static inline int32_t nb_sp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    return __smlad((int32_t)a, (int32_t)b, acc);
}

static inline int32_t nb_sp_ssat8(int32_t v)
{
    return __ssat(v, 8);
}

/* (a * b + 2^31) >> 32: the rounded high word of the product */
static inline int32_t nb_sp_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* (lo half of a, lo half of b) and (hi half of a, hi half of b) */
static inline uint32_t nb_sp_pkhbt(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

static inline uint32_t nb_sp_pkhtb(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
    return r;
}

/* base + zero-extended low half-word of v, in one UXTAH */
static inline const uint8_t *nb_sp_add_lo16(const uint8_t *base, uint32_t v)
{
    const uint8_t *r;
    __asm("uxtah %0, %1, %2" : "=r"(r) : "r"(base), "r"(v));
    return r;
}

#else

static inline int32_t nb_sp_lo16(uint32_t v)
{
    return (int32_t)(int16_t)(uint16_t)(v & 0xFFFFu);
}

static inline int32_t nb_sp_hi16(uint32_t v)
{
    return (int32_t)(int16_t)(uint16_t)(v >> 16);
}

static inline uint32_t nb_sp_sxtab16(uint32_t acc, uint32_t v)
{
    const uint32_t lo = (acc + (uint32_t)(int32_t)(int8_t)(uint8_t)(v & 0xFFu)) & 0xFFFFu;
    const uint32_t hi = ((acc >> 16) + (uint32_t)(int32_t)(int8_t)(uint8_t)((v >> 16) & 0xFFu)) & 0xFFFFu;
    return lo | (hi << 16);
}

static inline uint32_t nb_sp_sxtab16_ror8(uint32_t acc, uint32_t v)
{
    return nb_sp_sxtab16(acc, (v >> 8) | (v << 24));
}

static inline uint32_t nb_sp_sxtb16(uint32_t v)
{
    return nb_sp_sxtab16(0u, v);
}

static inline uint32_t nb_sp_sxtb16_ror8(uint32_t v)
{
    return nb_sp_sxtab16_ror8(0u, v);
}

static inline int32_t nb_sp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    /* wraps like the instruction: the bias may start the sum anywhere in int32 */
    const int64_t sum = (int64_t)acc + nb_sp_lo16(a) * nb_sp_lo16(b) + nb_sp_hi16(a) * nb_sp_hi16(b);
    return (int32_t)(uint32_t)(uint64_t)sum;
}

static inline const uint8_t *nb_sp_add_lo16(const uint8_t *base, uint32_t v)
{
    return base + (v & 0xFFFFu);
}

static inline uint32_t nb_sp_pkhbt(uint32_t a, uint32_t b)
{
    return (a & 0xFFFFu) | (b << 16);
}

static inline uint32_t nb_sp_pkhtb(uint32_t a, uint32_t b)
{
    return (a >> 16) | (b & 0xFFFF0000u);
}

static inline int32_t nb_sp_smmulr(int32_t a, int32_t b)
{
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 31)) >> 32);
}

static inline int32_t nb_sp_ssat8(int32_t v)
{
    return nb_clamp(v, -128, 127);
}

#endif

static inline uint32_t nb_sp_ld32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* Table access                                                                                    */

static inline uint32_t nb_sp_end(const nb_sparse_t *sp, uint32_t level, uint32_t o)
{
    const uint32_t i = level * sp->cout + o;
    return sp->end8 != NULL ? sp->end8[i] : sp->end16[i];
}

/* Layer geometry as the sparse kernel sees it (a fully connected layer is a 1x1 conv on 1x1). */
typedef struct {
    int32_t ih, iw, ic;     /* input */
    int32_t oh, ow;         /* output plane */
    int32_t kh, sh, sw, ph, pw;
} nb_sp_geom_t;

static nb_sp_geom_t nb_sp_geometry(uint16_t in_h, uint16_t in_w, uint16_t in_c, uint16_t out_h,
                                   uint16_t out_w, uint8_t kh, uint8_t sh, uint8_t sw, uint8_t ph,
                                   uint8_t pw, int is_fc)
{
    nb_sp_geom_t g;
    if (is_fc) {
        g.ih = 1, g.iw = 1, g.ic = (int32_t)in_h * in_w * in_c;
        g.oh = 1, g.ow = 1;
        g.kh = 1, g.sh = 1, g.sw = 1, g.ph = 0, g.pw = 0;
    } else {
        g.ih = in_h, g.iw = in_w, g.ic = in_c;
        g.oh = out_h, g.ow = out_w;
        g.kh = kh, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
    }
    return g;
}

/* ---------------------------------------------------------------------------------------------- */
/* Validation                                                                                      */

static int nb_sp_disjoint(uint32_t a, uint32_t a_len, uint32_t b, uint32_t b_len)
{
    return a + a_len <= b || b + b_len <= a;
}

static int nb_sparse_valid(const nb_model_t *m, const nb_layer_t *l)
{
    const nb_tensor_t *in = &m->tensors[l->in0], *out = &m->tensors[l->out];
    const unsigned n_levels = m->n_levels;
    const uint32_t arena_size = m->arena_size;
    const nb_sparse_t *sp = (const nb_sparse_t *)l->fmt;
    if (sp == NULL || (l->op != NB_OP_CONV2D && l->op != NB_OP_FC)) {
        return 0;
    }
    if (sp->cout != out->c || sp->n_levels != n_levels || n_levels == 0u ||
        n_levels > NB_SPARSE_MAX_LEVELS) {
        return 0;
    }
    if ((sp->end16 == NULL) == (sp->end8 == NULL) || sp->values == NULL || sp->kernel == NULL) {
        return 0;
    }
    if (sp->index_kind == NB_INDEX_U16 ? sp->index == NULL
        : sp->index_kind == NB_INDEX_U8_DELTA ? sp->delta == NULL || sp->lut == NULL
                                               : 1) {
        return 0;
    }
    if (sp->n_dense > 0u && sp->dense == NULL) {
        return 0;
    }
    for (uint32_t k = 0; k < n_levels; k++) {
        if (sp->kernel[k] > sp->n_dense) {
            return 0;
        }
    }
    for (uint32_t o = 0; o < sp->cout; o++) { /* level k + 1 is a prefix of level k */
        for (uint32_t k = 0; k + 1u < n_levels; k++) {
            if (nb_sp_end(sp, k + 1u, o) > nb_sp_end(sp, k, o)) {
                return 0;
            }
        }
    }
    const int is_fc = l->op == NB_OP_FC;
    const nb_sp_geom_t g =
        nb_sp_geometry(in->h, in->w, in->c, out->h, out->w, l->kh, l->sh, l->sw, l->ph, l->pw, is_fc);
    if (sp->cpairs != (uint32_t)(g.ic + 1) / 2u || sp->band_rows < 1u || sp->band_rows > g.oh ||
        sp->rows != (uint32_t)((sp->band_rows - 1) * g.sh + g.kh) ||
        sp->wq != (uint32_t)((g.iw + 2 * g.pw + g.sw - 1) / g.sw)) {
        return 0;
    }
    uint64_t need = ((uint64_t)sp->cpairs * sp->rows * (uint32_t)g.sw * sp->wq + NB_SPARSE_ACC_WORDS) * 4u;
    if (sp->index_kind == NB_INDEX_U8_DELTA) { /* room for the longest channel's decoded index */
        uint32_t longest = 0;
        for (uint32_t o = 0; o < sp->cout; o++) {
            const uint32_t n = nb_sp_end(sp, 0u, o);
            longest = n > longest ? n : longest;
        }
        need += 4u * ((longest + 1u) >> 1);
    }
    if (need > sp->scratch_bytes || (sp->scratch_offset & 3u) != 0u ||
        sp->scratch_offset > arena_size || sp->scratch_bytes > arena_size - sp->scratch_offset) {
        return 0;
    }
    const uint32_t in_bytes = (uint32_t)in->h * in->w * in->c;
    const uint32_t out_bytes = (uint32_t)out->h * out->w * out->c;
    return nb_sp_disjoint(sp->scratch_offset, sp->scratch_bytes, in->offset, in_bytes) &&
           nb_sp_disjoint(sp->scratch_offset, sp->scratch_bytes, out->offset, out_bytes);
}

/* ---------------------------------------------------------------------------------------------- */
/* Scratch fill: NHWC int8 rows -> channel-pair planes of int16 (x - zp), padding 0                 */

/* One pixel's channels into the planes starting at dst (one word per channel pair). */
static inline void nb_sp_fill_pixel(uint32_t *dst, const int8_t *src, int32_t ic, uint32_t plane,
                                    uint32_t off2, int32_t zp)
{
    int32_t c = ic >> 2;
    for (; c > 0; c--) {
        const uint32_t v = nb_sp_ld32(src);
        src += 4;
        const uint32_t x02 = nb_sp_sxtab16(off2, v);      /* (x0 - zp, x2 - zp) */
        const uint32_t x13 = nb_sp_sxtab16_ror8(off2, v); /* (x1 - zp, x3 - zp) */
        dst[0] = nb_sp_pkhbt(x02, x13);                   /* (x0, x1) */
        dst[plane] = nb_sp_pkhtb(x02, x13);               /* (x2, x3) */
        dst += 2u * plane;
    }
    for (c = ic & 3; c >= 2; c -= 2, src += 2) {
        const uint32_t lo = (uint32_t)(src[0] - zp) & 0xFFFFu;
        const uint32_t hi = (uint32_t)(src[1] - zp) & 0xFFFFu;
        *dst = lo | (hi << 16);
        dst += plane;
    }
    if (c > 0) { /* odd channel count: the last pair's second half is 0 */
        *dst = (uint32_t)(src[0] - zp) & 0xFFFFu;
    }
}

/* Zero word `col` of one scratch row in every channel-pair plane (a padding column). */
static inline void nb_sp_zero_col(uint32_t *col, uint32_t cpairs, uint32_t plane)
{
    for (uint32_t cp = 0; cp < cpairs; cp++, col += plane) {
        *col = 0u;
    }
}

/* One scratch row (padded row inside the input) for every channel pair: phase by phase, the left
 * padding columns, the input pixels, the right padding columns. */
static __attribute__((noinline)) void nb_sp_fill_row(uint32_t *row, const int8_t *src,
                                                     const nb_sparse_t *sp, const nb_sp_geom_t *g,
                                                     uint32_t off2, int32_t zp)
{
    const uint32_t wq = sp->wq, cpairs = sp->cpairs, plane = sp->rows * (uint32_t)g->sw * wq;
    const int32_t sw = g->sw, pw = g->pw, wp = g->iw + 2 * pw;
    for (int32_t phase = 0; phase < sw; phase++, row += wq) {
        /* column xp = phase + sw * q is input pixel xp - pw */
        const int32_t q_in = (pw - phase + sw - 1) / sw;           /* first q inside the input */
        const int32_t q_out = (pw + g->iw - phase + sw - 1) / sw;  /* first q past it */
        const int32_t q_end = (wp - phase + sw - 1) / sw;          /* first q past the padding */
        int32_t q = 0;
        for (; q < q_in; q++) {
            nb_sp_zero_col(row + q, cpairs, plane);
        }
        if (q < q_out) {
            const int8_t *px = src + (phase + sw * q - pw) * g->ic;
            for (; q < q_out; q++, px += sw * g->ic) {
                nb_sp_fill_pixel(row + q, px, g->ic, plane, off2, zp);
            }
        }
        for (; q < q_end; q++) {
            nb_sp_zero_col(row + q, cpairs, plane);
        }
    }
}

static void nb_sp_fill(uint32_t *x, const nb_in_t *in, const nb_sparse_t *sp, const nb_sp_geom_t *g,
                       int32_t yp0, int32_t nrows)
{
    const uint32_t wrow = (uint32_t)g->sw * sp->wq, plane = sp->rows * wrow;
    const uint32_t off2 = ((uint32_t)(-in->zp) & 0xFFFFu) * 0x10001u;
    for (int32_t r = 0; r < nrows; r++) {
        uint32_t *row = x + (uint32_t)r * wrow;
        const int32_t iy = yp0 + r - g->ph;
        if (iy < 0 || iy >= g->ih) { /* a padding row */
            for (uint32_t cp = 0; cp < sp->cpairs; cp++) {
                memset(row + cp * plane, 0, wrow * sizeof *row);
            }
            continue;
        }
        nb_sp_fill_row(row, in->data + iy * g->iw * g->ic, sp, g, off2, in->zp);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Dot products of a channel's blocks with the scratch                                             */

typedef struct {
    int32_t a0, a1, a2, a3;
} nb_acc4_t;

#define NB_SP_MAC4(W, P)                                                                           \
    do {                                                                                           \
        const uint32_t *const xp_ = (const uint32_t *)(const void *)(P);                          \
        acc.a0 = nb_sp_smlad((W), xp_[0], acc.a0);                                                 \
        acc.a1 = nb_sp_smlad((W), xp_[1], acc.a1);                                                 \
        acc.a2 = nb_sp_smlad((W), xp_[2], acc.a2);                                                 \
        acc.a3 = nb_sp_smlad((W), xp_[3], acc.a3);                                                 \
    } while (0)

/* One channel's blocks for the 4-pixel group loop (fast index), set once per channel. */
typedef struct {
    const uint32_t *wv;     /* 0: the channel's value words */
    const uint32_t *ix;     /* 4: its index words */
    const uint32_t *wv_end; /* 8: wv + n / 2 */
    int32_t bias;           /* 12: accumulators start here */
    int32_t *acc;           /* 16: 4 accumulators per group, advances */
    int32_t *acc_end;       /* 20: acc + 4 * groups (groups >= 1) */
    const uint8_t *x;       /* 24: scratch byte of the first group's first pixel */
    uint32_t run_left;      /* 28: groups left in the current run (>= 1), counts down */
    uint32_t run_groups;    /* 32: groups per run */
    uint32_t run_skip;      /* 36: scratch bytes from the end of a run to the next run */
} nb_sp_job4_t;

#if defined(__ARM_FEATURE_DSP)

/* Fast index, M7: groups of 4 adjacent pixels of one channel, every group through the channel's
 * blocks [0, n). Naked functions, because the block loop needs all 14 allocatable registers (4
 * accumulators, value / index / end pointers, scratch base, a word of two blocks' weights, a word of
 * their offsets, decoded weights, address, a 64-bit load pair) and GCC 12, given the same loop in C
 * or as inline asm, spills and splits the 64-bit loads. Per two blocks: 2 LDR, 2 SXTB16, UXTAH +
 * ADD for the addresses, 4 LDRD, 8 SMLAD, CMP + BNE = 20 instructions for 16 MACs; per group 15
 * more (reload, bias, store), and 10 for the last block of an odd count (its own variant, so even
 * counts do not test for it). */

#define NB_SP_GROUPS4_ASM(ODD_TAIL)                                                                \
    "push    {r0, r4-r11, lr}\n\t" /* [sp] = job */                                                \
    "ldr     r8, [r0, #24]\n\t"    /* x */                                                         \
    "ldr     r7, [r0, #8]\n\t"     /* wv_end */                                                    \
    "1:\n\t"                       /* next group */                                                \
    "ldr     r0, [sp]\n\t"                                                                         \
    "ldrd    r5, r6, [r0]\n\t"  /* wv, ix */                                                       \
    "ldr     r1, [r0, #12]\n\t" /* a0..a3 = bias */                                                \
    "mov     r2, r1\n\t"                                                                           \
    "mov     r3, r1\n\t"                                                                           \
    "mov     r4, r1\n\t"                                                                           \
    "cmp     r5, r7\n\t"                                                                           \
    "beq     3f\n\t"                                                                               \
    "2:\n\t"                          /* two blocks */                                             \
    "ldr     r9, [r5], #4\n\t"        /* their weights */                                          \
    "ldr     r10, [r6], #4\n\t"       /* their offsets */                                          \
    "sxtb16  r11, r9\n\t"                                                                          \
    "uxtah   r12, r8, r10\n\t"                                                                     \
    "ldrd    lr, r0, [r12]\n\t"                                                                    \
    "smlad   r1, r11, lr, r1\n\t"                                                                  \
    "smlad   r2, r11, r0, r2\n\t"                                                                  \
    "ldrd    lr, r0, [r12, #8]\n\t"                                                                \
    "smlad   r3, r11, lr, r3\n\t"                                                                  \
    "smlad   r4, r11, r0, r4\n\t"                                                                  \
    "sxtb16  r11, r9, ror #8\n\t"                                                                  \
    "add     r12, r8, r10, lsr #16\n\t"                                                            \
    "ldrd    lr, r0, [r12]\n\t"                                                                    \
    "smlad   r1, r11, lr, r1\n\t"                                                                  \
    "smlad   r2, r11, r0, r2\n\t"                                                                  \
    "ldrd    lr, r0, [r12, #8]\n\t"                                                                \
    "smlad   r3, r11, lr, r3\n\t"                                                                  \
    "smlad   r4, r11, r0, r4\n\t"                                                                  \
    "cmp     r5, r7\n\t"                                                                           \
    "bne     2b\n\t"                                                                               \
    "3:\n\t" ODD_TAIL                                                                              \
    "ldr     r0, [sp]\n\t"                                                                         \
    "ldr     r9, [r0, #16]\n\t" /* acc */                                                          \
    "stmia   r9!, {r1-r4}\n\t"                                                                     \
    "str     r9, [r0, #16]\n\t"                                                                    \
    "add     r8, r8, #16\n\t"                                                                      \
    "ldr     r10, [r0, #28]\n\t" /* end of a run: skip to the next */                               \
    "subs    r10, r10, #1\n\t"                                                                     \
    "bne     5f\n\t"                                                                               \
    "ldr     r10, [r0, #36]\n\t"                                                                   \
    "add     r8, r8, r10\n\t"                                                                      \
    "ldr     r10, [r0, #32]\n\t"                                                                   \
    "5:\n\t"                                                                                       \
    "str     r10, [r0, #28]\n\t"                                                                   \
    "ldr     r10, [r0, #20]\n\t" /* acc_end */                                                     \
    "cmp     r9, r10\n\t"                                                                          \
    "bne     1b\n\t"                                                                               \
    "pop     {r0, r4-r11, pc}\n\t"

/* the last block of an odd count: the low half of the next value word */
#define NB_SP_ODD_BLOCK_ASM                                                                        \
    "ldr     r9, [r5]\n\t"                                                                         \
    "ldrh    r10, [r6]\n\t"                                                                        \
    "sxtb16  r11, r9\n\t"                                                                          \
    "add     r12, r8, r10\n\t"                                                                     \
    "ldrd    lr, r9, [r12]\n\t"                                                                    \
    "smlad   r1, r11, lr, r1\n\t"                                                                  \
    "smlad   r2, r11, r9, r2\n\t"                                                                  \
    "ldrd    lr, r9, [r12, #8]\n\t"                                                                \
    "smlad   r3, r11, lr, r3\n\t"                                                                  \
    "smlad   r4, r11, r9, r4\n\t"

_Static_assert(offsetof(nb_sp_job4_t, bias) == 12 && offsetof(nb_sp_job4_t, x) == 24 &&
                   offsetof(nb_sp_job4_t, run_skip) == 36,
               "nb_sp_groups4 reads nb_sp_job4_t at fixed offsets");

__attribute__((naked, noinline)) static void nb_sp_groups4_even(nb_sp_job4_t *job __attribute__((unused)))
{
    __asm volatile(NB_SP_GROUPS4_ASM(""));
}

__attribute__((naked, noinline)) static void nb_sp_groups4_odd(nb_sp_job4_t *job __attribute__((unused)))
{
    __asm volatile(NB_SP_GROUPS4_ASM(NB_SP_ODD_BLOCK_ASM));
}

#else

/* Fast index, portable: the blocks [0, n) of a channel over 4 adjacent pixels whose window origin
 * is scratch byte `x`; `wv` / `ix` are the channel's value and index words (two blocks per word). */
static inline nb_acc4_t nb_sp_dot4_u16(const uint32_t *wv, const uint32_t *ix, uint32_t n,
                                       const uint8_t *x, int32_t init)
{
    nb_acc4_t acc = {init, init, init, init};
    for (uint32_t i = n >> 1; i > 0u; i--) {
        const uint32_t w = *wv++, r = *ix++;
        const uint8_t *xa = nb_sp_add_lo16(x, r);
        const uint8_t *xb = x + (r >> 16);
        NB_SP_MAC4(nb_sp_sxtb16(w), xa);
        NB_SP_MAC4(nb_sp_sxtb16_ror8(w), xb);
    }
    if (n & 1u) {
        NB_SP_MAC4(nb_sp_sxtb16(*wv), nb_sp_add_lo16(x, *ix));
    }
    return acc;
}

#endif

/* The same blocks for one pixel (a gather: fully connected layers and leftover pixels). */
static inline __attribute__((always_inline)) int32_t
nb_sp_dot1_u16(const uint32_t *wv, const uint32_t *ix, uint32_t n, const uint8_t *x, int32_t init)
{
    int32_t a = init, b = 0;
#if defined(__ARM_FEATURE_DSP)
    /* four blocks per pass: LDRD of their weights and of their offsets, then per block one offset
     * extraction, one register-offset load, one SXTB16, one SMLAD: 20 instructions for 8 MACs */
    if (n >= 4u) {
        const uint32_t *const wv_end = wv + 2u * (n >> 2);
        uint32_t w0, w1, r0, r1, t, xv, wx;
        __asm volatile(
            "1:\n\t"
            "ldrd    %[w0], %[w1], [%[wv]], #8\n\t"
            "ldrd    %[r0], %[r1], [%[ix]], #8\n\t"
            "uxth    %[t], %[r0]\n\t"
            "ldr     %[xv], [%[x], %[t]]\n\t"
            "sxtb16  %[wx], %[w0]\n\t"
            "smlad   %[a], %[wx], %[xv], %[a]\n\t"
            "lsr     %[t], %[r0], #16\n\t"
            "ldr     %[xv], [%[x], %[t]]\n\t"
            "sxtb16  %[wx], %[w0], ror #8\n\t"
            "smlad   %[b], %[wx], %[xv], %[b]\n\t"
            "uxth    %[t], %[r1]\n\t"
            "ldr     %[xv], [%[x], %[t]]\n\t"
            "sxtb16  %[wx], %[w1]\n\t"
            "smlad   %[a], %[wx], %[xv], %[a]\n\t"
            "lsr     %[t], %[r1], #16\n\t"
            "ldr     %[xv], [%[x], %[t]]\n\t"
            "sxtb16  %[wx], %[w1], ror #8\n\t"
            "smlad   %[b], %[wx], %[xv], %[b]\n\t"
            "cmp     %[wv], %[end]\n\t"
            "bne     1b\n\t"
            : [a] "+r"(a), [b] "+r"(b), [wv] "+r"(wv), [ix] "+r"(ix), [w0] "=&r"(w0), [w1] "=&r"(w1),
              [r0] "=&r"(r0), [r1] "=&r"(r1), [t] "=&r"(t), [xv] "=&r"(xv), [wx] "=&r"(wx)
            : [x] "r"(x), [end] "r"(wv_end)
            : "cc", "memory");
    }
    if (n & 2u) {
        const uint32_t w = *wv++, r = *ix++;
        a = nb_sp_smlad(nb_sp_sxtb16(w), nb_sp_ld32(nb_sp_add_lo16(x, r)), a);
        b = nb_sp_smlad(nb_sp_sxtb16_ror8(w), nb_sp_ld32(x + (r >> 16)), b);
    }
#else
    for (uint32_t i = n >> 1; i > 0u; i--) {
        const uint32_t w = *wv++, r = *ix++;
        a = nb_sp_smlad(nb_sp_sxtb16(w), nb_sp_ld32(nb_sp_add_lo16(x, r)), a);
        b = nb_sp_smlad(nb_sp_sxtb16_ror8(w), nb_sp_ld32(x + (r >> 16)), b);
    }
#endif
    if (n & 1u) {
        a = nb_sp_smlad(nb_sp_sxtb16(*wv), nb_sp_ld32(nb_sp_add_lo16(x, *ix)), a);
    }
    return a + b;
}

/* ---------------------------------------------------------------------------------------------- */
/* Output channels over one band                                                                   */

/* Accumulators are collected for up to NB_SP_CHUNK pixels (in the scratch, after the input band),
 * then requantized in a separate tight loop: keeping the requantization constants out of the
 * accumulation loop avoids register spills in both. */
#define NB_SP_CHUNK NB_SPARSE_ACC_WORDS

/* Requantization of accumulators (bias included) to int8 outputs.
 *
 * Fast path, for right shifts e in [1, 20] and multipliers M in {0} or [2^30, 2^31) (every channel
 * QuantizeMultiplier makes, in practice): x = SMMULR(QADD(acc, acc), M) is exactly
 * SaturatingRoundingDoublingHighMul(acc, M) when |acc| < 2^30, and (x + 2^(e-1) - (x < 0)) >> e
 * is exactly RoundingDivideByPOT(x, e) (no overflow: |x| <= 2^30). When |acc| >= 2^30 the doubled
 * value saturates and x may differ from the exact one, but both are at least 2^29 - 1 in magnitude
 * with acc's sign, so both outputs clamp to the same int8 bound (2^(29-e) - 1 >= 511 > 255). The
 * output zero point rides in the rounding constant (zp << e is a multiple of 2^e). Everything else
 * takes the exact nb_requant.h path. */
typedef struct {
    int32_t mult, shift, zp, lo, hi;
    int32_t fast, e, round; /* fast path and its constants */
} nb_sp_rq_t;

static nb_sp_rq_t nb_sp_rq_make(int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    nb_sp_rq_t q = {mult, shift, zp, lo, hi, 0, 0, 0};
    if (shift <= -1 && shift >= -20 && (mult == 0 || mult >= (1 << 30))) {
        q.fast = 1;
        q.e = -shift;
        q.round = (int32_t)((1u << (q.e - 1)) + ((uint32_t)zp << q.e));
    }
    return q;
}

static void nb_sp_requant(const int32_t *acc, uint32_t n, int8_t *dst, uint32_t stride,
                          const nb_sp_rq_t *q)
{
    const int32_t mult = q->mult, lo = q->lo, hi = q->hi;
    if (q->fast) {
        const int32_t e = q->e, round = q->round;
        const int32_t *const end = acc + n;
        if (hi == 127 && lo == -128) { /* no activation: SSAT is the whole clamp */
            for (; acc != end; acc++, dst += stride) {
                const int32_t x = nb_sp_smmulr(nb_add_sat(*acc, *acc), mult);
                *dst = (int8_t)nb_sp_ssat8((x + round + (x >> 31)) >> e);
            }
            return;
        }
        if (hi == 127) { /* ReLU: SSAT does the upper bound */
            for (; acc != end; acc++, dst += stride) {
                const int32_t x = nb_sp_smmulr(nb_add_sat(*acc, *acc), mult);
                int32_t v = nb_sp_ssat8((x + round + (x >> 31)) >> e);
                if (v < lo) {
                    v = lo;
                }
                *dst = (int8_t)v;
            }
            return;
        }
        for (; acc != end; acc++, dst += stride) {
            const int32_t x = nb_sp_smmulr(nb_add_sat(*acc, *acc), mult);
            *dst = (int8_t)nb_clamp((x + round + (x >> 31)) >> e, lo, hi);
        }
        return;
    }
    const int32_t left = q->shift > 0 ? q->shift : 0, right = q->shift > 0 ? 0 : -q->shift;
    for (uint32_t i = 0; i < n; i++, dst += stride) {
        const int32_t v = nb_rdbpot(nb_srdhm((int32_t)((uint32_t)acc[i] << left), mult), right);
        *dst = (int8_t)nb_clamp(nb_add_sat(v, q->zp), lo, hi); /* saturating: v may be near INT32_MIN */
    }
}

/* Pixels of the band as runs of adjacent scratch words: one run per output row, or chunk-sized runs
 * of the whole band when rows follow each other in the scratch (1x1 kernels at stride 1, fc). */
typedef struct {
    uint32_t n_runs, run_len, run_stride; /* run_stride in scratch bytes */
} nb_sp_runs_t;

/* Walks the channels' blocks. The fast index is used in place; the compact one is decoded, one
 * channel at a time, into index words in the scratch (position deltas restarting at every level
 * segment, through the layer's position table), so both run the same block loops: the decoding
 * costs a few instructions per block once per channel and band, not per pixel. */
typedef struct {
    const uint32_t *wv; /* value words of the current channel */
    const uint32_t *ix; /* fast index: its index words */
    const uint8_t *d;   /* compact index: its deltas */
    uint32_t *buf;      /* compact index: decoded index words */
} nb_sp_cursor_t;

static nb_sp_cursor_t nb_sp_cursor(const nb_sparse_t *sp, uint32_t *buf)
{
    nb_sp_cursor_t c = {(const uint32_t *)(const void *)sp->values,
                        (const uint32_t *)(const void *)sp->index, sp->delta, buf};
    return c;
}

/* Index words of channel o's blocks [0, end[level][o]). */
static const uint32_t *nb_sp_index(const nb_sparse_t *sp, const nb_sp_cursor_t *c, uint32_t o,
                                   uint32_t level)
{
    if (sp->index_kind == NB_INDEX_U16) {
        return c->ix;
    }
    uint16_t *out = (uint16_t *)(void *)c->buf;
    const uint16_t *lut = sp->lut;
    uint32_t b = 0;
    for (uint32_t j = sp->n_levels; j-- > level;) { /* segments, sparsest level first */
        const uint32_t e = nb_sp_end(sp, j, o);
        for (uint32_t pos = 0; b < e; b++) {
            pos += c->d[b];
            out[b] = lut[pos];
        }
    }
    return c->buf;
}

static void nb_sp_next_channel(const nb_sparse_t *sp, nb_sp_cursor_t *c, uint32_t o)
{
    const uint32_t n_all = nb_sp_end(sp, 0u, o);
    c->wv += (n_all + 1u) >> 1;
    if (sp->index_kind == NB_INDEX_U16) {
        c->ix += (n_all + 1u) >> 1;
    } else {
        c->d += n_all;
    }
}

/* One output pixel (fully connected layers, 1x1 output planes): a gather per channel, requantized
 * on the spot. */
static void nb_sp_channels_1px(const nb_out_t *out, const nb_params_t *p, const nb_sparse_t *sp,
                               const uint8_t *x, int8_t *dst, uint32_t *buf)
{
    nb_sp_cursor_t c = nb_sp_cursor(sp, buf);
    for (uint32_t o = 0; o < sp->cout; o++) {
        const int32_t bias = p->bias != NULL ? p->bias[o] : 0;
        const uint32_t *ix = nb_sp_index(sp, &c, o, p->level);
        const int32_t acc = nb_sp_dot1_u16(c.wv, ix, nb_sp_end(sp, p->level, o), x, bias);
        const nb_sp_rq_t q = nb_sp_rq_make(p->mult[o], p->shift[o], out->zp, p->act_min, p->act_max);
        nb_sp_requant(&acc, 1u, dst + o, 1u, &q);
        nb_sp_next_channel(sp, &c, o);
    }
}

/* Accumulators of n_px adjacent pixels (window origins from scratch byte x) of one channel whose
 * blocks `job` holds. */
static void nb_sp_accumulate(nb_sp_job4_t *job, uint32_t n, const uint8_t *x, uint32_t n_px,
                             int32_t *acc)
{
    uint32_t g = 0;
#if defined(__ARM_FEATURE_DSP)
    g = n_px & ~3u;
    if (g > 0u) {
        job->acc = acc;
        job->acc_end = acc + g;
        job->x = x;
        job->run_left = job->run_groups = g >> 2; /* one run */
        if (n & 1u) {
            nb_sp_groups4_odd(job);
        } else {
            nb_sp_groups4_even(job);
        }
    }
#else
    for (; g + 4u <= n_px; g += 4u) {
        const nb_acc4_t a = nb_sp_dot4_u16(job->wv, job->ix, n, x + 4u * g, job->bias);
        acc[g] = a.a0, acc[g + 1u] = a.a1, acc[g + 2u] = a.a2, acc[g + 3u] = a.a3;
    }
#endif
    for (; g < n_px; g++) {
        acc[g] = nb_sp_dot1_u16(job->wv, job->ix, n, x + 4u * g, job->bias);
    }
}

/* Every output channel over the band. Accumulators of up to NB_SP_CHUNK pixels are collected, then
 * requantized into the NHWC output, whose pixels of the band are consecutive. On the M7, runs of
 * whole 4-pixel groups go to the group loop several runs per call (it hops between runs itself). */
static void nb_sp_channels(const nb_out_t *out, const nb_params_t *p, const nb_sparse_t *sp,
                           const uint8_t *x, const nb_sp_runs_t *runs, int8_t *dst0, int32_t *acc,
                           uint32_t *buf)
{
    if (runs->n_runs == 1u && runs->run_len == 1u) {
        nb_sp_channels_1px(out, p, sp, x, dst0, buf);
        return;
    }
    const uint32_t cout = sp->cout, level = p->level, len = runs->run_len;
#if defined(__ARM_FEATURE_DSP)
    const int whole = len % 4u == 0u && len <= NB_SP_CHUNK; /* runs of whole groups */
#else
    const int whole = 0;
#endif
    nb_sp_cursor_t c = nb_sp_cursor(sp, buf);
    nb_sp_job4_t job;
    job.run_groups = len >> 2;
    job.run_skip = runs->run_stride - 4u * len;
    for (uint32_t o = 0; o < cout; o++) {
        const uint32_t n = nb_sp_end(sp, level, o);
        job.wv = c.wv;
        job.ix = nb_sp_index(sp, &c, o, level);
        job.wv_end = c.wv + (n >> 1);
        job.bias = p->bias != NULL ? p->bias[o] : 0;
        const nb_sp_rq_t q = nb_sp_rq_make(p->mult[o], p->shift[o], out->zp, p->act_min, p->act_max);
        int8_t *dst = dst0 + o;
        if (whole) {
#if defined(__ARM_FEATURE_DSP)
            const uint32_t per_call = NB_SP_CHUNK / len; /* runs per group-loop call */
            for (uint32_t r = 0; r < runs->n_runs; r += per_call) {
                const uint32_t k = runs->n_runs - r < per_call ? runs->n_runs - r : per_call;
                job.acc = acc;
                job.acc_end = acc + k * len;
                job.x = x + r * runs->run_stride;
                job.run_left = job.run_groups;
                if (n & 1u) {
                    nb_sp_groups4_odd(&job);
                } else {
                    nb_sp_groups4_even(&job);
                }
                nb_sp_requant(acc, k * len, dst, cout, &q);
                dst += k * len * cout;
            }
#endif
        } else {
            uint32_t held = 0; /* accumulators waiting in acc[] */
            const uint8_t *xr = x;
            for (uint32_t r = 0; r < runs->n_runs; r++, xr += runs->run_stride) {
                for (uint32_t g0 = 0; g0 < len; g0 += NB_SP_CHUNK) {
                    const uint32_t n_px = len - g0 < NB_SP_CHUNK ? len - g0 : NB_SP_CHUNK;
                    if (held + n_px > NB_SP_CHUNK) {
                        nb_sp_requant(acc, held, dst, cout, &q);
                        dst += held * cout;
                        held = 0;
                    }
                    nb_sp_accumulate(&job, n, xr + 4u * g0, n_px, acc + held);
                    held += n_px;
                }
            }
            nb_sp_requant(acc, held, dst, cout, &q);
        }
        nb_sp_next_channel(sp, &c, o);
    }
}

/* ---------------------------------------------------------------------------------------------- */

void nb_sparse_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p, const nb_sparse_t *sp,
                  uint32_t *scratch, int is_fc)
{
    const unsigned copy = sp->kernel[p->level];
    if (copy > 0u) {
        /* above the measured crossover with a dense copy of this level's weights: the dense kernel */
        const uint32_t k_total =
            is_fc ? (uint32_t)in->h * in->w * in->c : (uint32_t)p->kh * p->kw * in->c;
        nb_params_t dense = *p;
        dense.weights = sp->dense + (copy - 1u) * k_total * sp->cout;
        if (is_fc) {
            nb_fc_s8(in, out, &dense);
        } else {
            nb_conv2d_s8(in, out, &dense);
        }
        return;
    }
    const nb_sp_geom_t g =
        nb_sp_geometry(in->h, in->w, in->c, out->h, out->w, p->kh, p->sh, p->sw, p->ph, p->pw, is_fc);
    const uint32_t wrow = (uint32_t)g.sw * sp->wq;
    const uint32_t row_step = (uint32_t)g.sh * wrow; /* scratch words between output rows */
    /* after the input band: the accumulators, then (compact index) one channel's index words */
    int32_t *const acc = (int32_t *)(void *)(scratch + sp->cpairs * sp->rows * wrow);
    uint32_t *const buf = (uint32_t *)(void *)(acc + NB_SPARSE_ACC_WORDS);
    for (int32_t oy0 = 0; oy0 < g.oh; oy0 += sp->band_rows) {
        const int32_t n_out = g.oh - oy0 < (int32_t)sp->band_rows ? g.oh - oy0 : (int32_t)sp->band_rows;
        nb_sp_fill(scratch, in, sp, &g, oy0 * g.sh, (n_out - 1) * g.sh + g.kh);
        nb_sp_runs_t runs;
        if (row_step == (uint32_t)g.ow) { /* rows follow each other: chunk-sized runs */
            const uint32_t total = (uint32_t)(n_out * g.ow);
            const uint32_t len = total > NB_SP_CHUNK && total % NB_SP_CHUNK == 0u ? NB_SP_CHUNK : total;
            runs.n_runs = total / len, runs.run_len = len, runs.run_stride = 4u * len;
        } else {
            runs.n_runs = (uint32_t)n_out, runs.run_len = (uint32_t)g.ow, runs.run_stride = 4u * row_step;
        }
        int8_t *dst0 = out->data + (uint32_t)oy0 * (uint32_t)g.ow * sp->cout;
        nb_sp_channels(out, p, sp, (const uint8_t *)scratch, &runs, dst0, acc, buf);
    }
}

/* The runtime's entry: the layer's tensors and parameters (one bias row: nothing is folded per
 * level), then the kernel. */
static void nb_sparse_run(const nb_model_t *m, const nb_layer_t *l, unsigned level)
{
    const nb_sparse_t *sp = (const nb_sparse_t *)l->fmt;
    const nb_tensor_t *ti = &m->tensors[l->in0], *to = &m->tensors[l->out];
    const nb_in_t in = {m->arena + ti->offset, ti->h, ti->w, ti->c, ti->zero_point};
    const nb_out_t out = {m->arena + to->offset, to->h, to->w, to->c, to->zero_point};
    const nb_params_t p = {
        .kh = l->kh, .kw = l->kw, .sh = l->sh, .sw = l->sw, .ph = l->ph, .pw = l->pw,
        .act_min = l->act_min, .act_max = l->act_max,
        .weights = NULL, .bias = l->bias, .mult = l->mult, .shift = l->shift,
        .level = level, .fmt = sp,
    };
    nb_sparse_s8(&in, &out, &p, sp, (uint32_t *)(void *)(m->arena + sp->scratch_offset),
                 l->op == NB_OP_FC);
}

const nb_sparse_ops_t nb_sparse_ops = {nb_sparse_valid, nb_sparse_run};
