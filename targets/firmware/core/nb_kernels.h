/* int8 kernels the runtime dispatches to. TFLite/CMSIS-NN semantics (harness/qmodel.py):
 *   acc = bias[c] + sum w * (x - zp_in)         (out-of-bounds taps skipped = zero-point padding)
 *   out = clamp(requantize(acc, mult[c], shift[c]) + zp_out, act_min, act_max)
 * Activations are NHWC with batch 1. Kernels never allocate; shapes are checked by the runtime.
 * Instruction counts depend on shapes and on a layer's requantization parameters (which path the
 * dense kernels take), never on activation values.
 */
#ifndef NB_KERNELS_H
#define NB_KERNELS_H

#include <stdint.h>

typedef struct {
    const int8_t *data;
    uint16_t h, w, c;
    int32_t zp;
} nb_in_t;

typedef struct {
    int8_t *data;
    uint16_t h, w, c;
    int32_t zp;
} nb_out_t;

typedef struct {
    uint8_t kh, kw, sh, sw, ph, pw;
    int32_t act_min, act_max;
    const int8_t *weights;
    const int32_t *bias;  /* the selected level's row [cout], or NULL for no bias */
    const int32_t *mult;  /* per output channel; ADD: {in0, in1, out} */
    const int32_t *shift; /* per output channel; ADD: {in0, in1, out} */
    unsigned level;       /* run-time level, for formats whose weights depend on it */
    const void *fmt;      /* format-specific tables (NULL for dense) */
} nb_params_t;

/* Dense kernels (nb_kernels_dense.c). */
void nb_conv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_dwconv2d_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_fc_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_maxpool_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_avgpool_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_gap_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);
void nb_add_s8(const nb_in_t *in0, const nb_in_t *in1, const nb_out_t *out, const nb_params_t *p);

/* The plain-C convolution, also the fallback of the DSP path (exposed for tests and benchmarks). */
void nb_conv2d_s8_generic(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p);

/* Largest im2col depth (kh*kw*cin) the DSP convolution handles; deeper layers use the generic path
 * (fully connected layers take inputs up to 2 * NB_IM2COL_MAX_K). DSP builds keep one static
 * scratch of 4 * NB_IM2COL_MAX_K + 16 bytes (two int16 im2col columns, then the layer's
 * requantization table when it fits) and a raw patch of NB_IM2COL_MAX_K + 4 bytes. */
#ifndef NB_IM2COL_MAX_K
#define NB_IM2COL_MAX_K 1152u
#endif

#endif /* NB_KERNELS_H */
