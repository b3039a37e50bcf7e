/* Sparse int8 kernels for the csr and nested formats (layout: nb_sparse_t in nb_model.h).
 *
 * One kernel serves conv2d (any kernel size, stride and padding) and fully connected layers (a 1x1
 * conv over a 1x1 "image" of h*w*c channels). Per band of output rows it first widens the input
 * into the int16 scratch (zero point subtracted, padding 0, channel pairs interleaved, stride
 * phases split), then for every output channel runs the channel's level-k prefix of blocks
 * weight-stationary over 4 adjacent output pixels: per group of 4 pixels a block costs four SMLAD,
 * two 64-bit scratch loads and a share of the weight / offset decoding (on the M7 a hand-scheduled
 * loop: 20 instructions per 2 blocks x 4 pixels = 16 MACs); leftover pixels and fully connected
 * layers take a 1-pixel gather of the same blocks (20 instructions per 8 MACs). Accumulators start
 * at the bias and are requantized per channel (exact TFLite double rounding, through a 5-instruction
 * form where it is provably identical). The level only moves the loop bounds. Same semantics and
 * bit-exact results as the dense kernels (TFLite/CMSIS-NN int8, see nb_kernels.h); instruction
 * counts depend on shapes, kept-block counts and requantization parameters, never on activations.
 * The host build runs the same algorithm in plain C.
 */
#ifndef NB_KERNELS_SPARSE_H
#define NB_KERNELS_SPARSE_H

#include <stdint.h>

#include "nb_kernels.h"
#include "nb_model.h"

/* Most levels a sparse table may have. */
#define NB_SPARSE_MAX_LEVELS 16u

/* What a generated model with csr / nested layers points nb_model_t.sparse at:
 * valid(m, l): 1 when layer `l` (op conv2d or fc, format csr or nested) and its nb_sparse_t agree
 *   with the tensors, the model's level count and the arena (the scratch lies inside the arena, clear
 *   of the layer's input and output, and is as large as the geometry needs), 0 otherwise;
 * run(m, l, level): the sparse kernel, or the dense kernel on a dense copy when the table says so
 *   for that level. */
extern const nb_sparse_ops_t nb_sparse_ops;

/* The kernel itself: a sparse-stored conv2d (`is_fc` 0) or fully connected layer (`is_fc` 1) at
 * p->level; `scratch` is the arena at sp->scratch_offset (word aligned, sp->scratch_bytes long). */
void nb_sparse_s8(const nb_in_t *in, const nb_out_t *out, const nb_params_t *p, const nb_sparse_t *sp,
                  uint32_t *scratch, int is_fc);

#endif /* NB_KERNELS_SPARSE_H */
