/* The model description the harness generates (model.c) and the portable runtime executes.
 *
 * Plain const data: tensors live at fixed offsets in one static activation arena sized at export
 * time; layers run in order. int8 semantics are TFLite/CMSIS-NN (see harness/qmodel.py): per-channel
 * weight scales, per-tensor activations, int32 accumulation, (multiplier, shift) requantization with
 * double rounding. Part of the portable core: no board header here or in anything it includes.
 */
#ifndef NB_MODEL_H
#define NB_MODEL_H

#include <stdint.h>

/* 2: sparse formats (NB_FMT_CSR, NB_FMT_NESTED) with their nb_sparse_t tables behind nb_layer_t.fmt */
#define NB_MODEL_ABI 2u

typedef enum {
    NB_OP_CONV2D = 1,   /* weights [cout][kh][kw][cin] */
    NB_OP_DWCONV2D = 2, /* weights [kh][kw][c], channel multiplier 1 */
    NB_OP_FC = 3,       /* weights [cout][cin], input flattened in HWC order */
    NB_OP_MAXPOOL = 4,
    NB_OP_AVGPOOL = 5,
    NB_OP_GAP = 6,      /* global average pool: output 1x1xC */
    NB_OP_ADD = 7       /* residual add of in0 and in1 */
} nb_op_t;

/* Storage format of a layer's weights. The sparse formats carry an nb_sparse_t behind
 * nb_layer_t.fmt and apply to NB_OP_CONV2D and NB_OP_FC only. */
typedef enum {
    NB_FMT_DENSE = 0,  /* nb_layer_t.weights in the op's dense layout */
    NB_FMT_CSR = 1,    /* one sparsity level: the standalone baseline (n_levels 1) */
    NB_FMT_NESTED = 2  /* every level of the model, level k a prefix of each channel's blocks */
} nb_format_t;

/* Index encodings of the sparse formats. */
typedef enum {
    NB_INDEX_U16 = 0,     /* fast: one uint16 scratch byte offset per block */
    NB_INDEX_U8_DELTA = 1 /* compact: one uint8 position delta per block, restarting at every level
                           * segment, gaps over 255 bridged by zero-weight filler blocks; a position
                           * is turned into a byte offset through `lut` */
} nb_index_t;

/* Sparse weights of one conv2d / fc layer (csr and nested share this layout and the kernels).
 *
 * Blocks. A block is a pair of weights of one output channel at channels (2j, 2j+1) of the same
 * kernel tap (fc: inputs 2j, 2j+1 of the HWC-flattened input); a pair with one kept weight stores a
 * zero for the other. Channel o's blocks are stored level-major: the blocks kept at the sparsest
 * level first, then those each denser level adds, each segment in ascending position order. The
 * blocks of level k are the first end[k][o] blocks of the channel, so switching level changes only
 * loop bounds.
 *
 * values: per channel, blocks 2i and 2i+1 share one word: bytes [lo(2i), lo(2i+1), hi(2i),
 * hi(2i+1)], so SXTB16 gives block 2i's pair and SXTB16 ROR 8 block 2i+1's; a channel with an odd
 * block count ends with a zero half-word. index (fast): one uint16 per block, likewise padded to
 * whole words per channel, so channel o's values and index both start at word
 * sum_{o' < o} ceil(end[0][o'] / 2). delta (compact): channel o's bytes start at
 * sum_{o' < o} end[0][o'].
 *
 * A block's index is the byte offset, from the scratch word of the output pixel's window origin,
 * of the word holding its channel pair at its kernel tap: 4 * (pair * rows * sw * wq +
 * ky * sw * wq + (kx % sw) * wq + kx / sw).
 *
 * Scratch. The kernels first copy the input into an int16 scratch in the arena, zero point
 * subtracted (so padding is 0 and the bias needs no per-level folding): one 32-bit word per
 * (channel pair, padded row, padded column) holding (x[2j] - zp, x[2j+1] - zp), channel-pair planes
 * of `rows` x (sw * wq) words, every row split into sw column phases of wq words (column xp at
 * phase xp % sw, word xp / sw) so that adjacent output pixels read adjacent words at any stride.
 * Large inputs are processed in bands of `band_rows` output rows; the scratch holds one band,
 * followed by NB_SPARSE_ACC_WORDS int32 accumulators and, with the compact index, one channel's
 * index decoded to the fast form (ceil(max_o end[0][o] / 2) words). */
#define NB_SPARSE_ACC_WORDS 64u
typedef struct {
    uint16_t cout;              /* output channels */
    uint8_t n_levels;           /* rows of the end table: the model's n_levels */
    uint8_t index_kind;         /* nb_index_t */
    uint8_t n_dense;            /* dense weight copies behind `dense` */
    const uint16_t *end16;      /* [n_levels][cout] blocks in each channel's level-k prefix, or NULL */
    const uint8_t *end8;        /* the same as uint8 (when every count fits), or NULL */
    const int8_t *values;       /* block weights, layout above (word aligned) */
    const uint16_t *index;      /* NB_INDEX_U16: scratch byte offset of each block */
    const uint8_t *delta;       /* NB_INDEX_U8_DELTA: position delta of each block */
    const uint16_t *lut;        /* NB_INDEX_U8_DELTA: position (pair * kh * kw + ky * kw + kx)
                                 * -> scratch byte offset */
    const uint8_t *kernel;      /* [n_levels]: 0 = sparse kernel; c > 0 = dense kernel on copy c-1 */
    const int8_t *dense;        /* dense weight copies [copies][op's dense layout], or NULL */
    uint32_t scratch_offset;    /* byte offset of the scratch in the arena (planned at export) */
    uint32_t scratch_bytes;     /* its size: (cpairs * rows * sw * wq + NB_SPARSE_ACC_WORDS) * 4, plus
                                 * the compact index's decoded words */
    uint16_t cpairs;            /* channel pairs: ceil(cin / 2) (fc: ceil(h * w * c / 2)) */
    uint16_t band_rows;         /* output rows per band */
    uint16_t rows;              /* scratch rows per plane: (band_rows - 1) * sh + kh */
    uint16_t wq;                /* words per column phase: ceil((w + 2 * pw) / sw) */
} nb_sparse_t;

typedef struct {
    uint16_t h, w, c;
    uint32_t offset;    /* byte offset of the tensor in the arena */
    int32_t zero_point; /* per-tensor activation zero point */
} nb_tensor_t;

typedef struct {
    uint8_t op;     /* nb_op_t */
    uint8_t format; /* nb_format_t */
    uint8_t kh, kw; /* kernel (pools too) */
    uint8_t sh, sw; /* stride */
    uint8_t ph, pw; /* symmetric zero-point padding */
    uint16_t in0, in1, out; /* tensor indices; in1 only for NB_OP_ADD */
    int16_t act_min, act_max; /* fused ReLU/ReLU6 as an output clamp in the int8 domain */
    const int8_t *weights;    /* NULL for pools, add and the sparse formats */
    const int32_t *bias;      /* [cout] int32; level-indexed [level][cout] when n_bias_levels > 1 */
    const int32_t *mult;      /* [cout] Q31 multipliers; ADD: {in0, in1, out} */
    const int32_t *shift;     /* [cout] shifts, > 0 = left; ADD: {in0, in1, out} */
    uint8_t n_bias_levels;    /* 1 for dense layers */
    const void *fmt;          /* NB_FMT_DENSE: NULL; NB_FMT_CSR / NB_FMT_NESTED: nb_sparse_t */
} nb_layer_t;

struct nb_model;

/* The sparse kernels as the runtime reaches them. A model with csr / nested layers points at
 * nb_sparse_ops (nb_kernels_sparse.h); a model without sets NULL, so its image links no sparse code
 * (the linker drops the unreferenced functions). */
typedef struct {
    /* 1 when layer `l` and its nb_sparse_t agree with the model (tensors, levels, arena) */
    int (*valid)(const struct nb_model *m, const nb_layer_t *l);
    /* runs layer `l` at run-time `level` */
    void (*run)(const struct nb_model *m, const nb_layer_t *l, unsigned level);
} nb_sparse_ops_t;

typedef struct nb_model {
    uint32_t abi;             /* NB_MODEL_ABI */
    const char *name;         /* model name from the suite */
    const char *hash;         /* hex content hash of the int8 model (harness QModel.content_hash) */
    uint8_t n_levels;         /* run-time levels; 1 for a dense model */
    uint16_t n_tensors, n_layers;
    const nb_tensor_t *tensors;
    const nb_layer_t *layers;
    const char *const *layer_names;
    uint16_t input, output;   /* tensor indices */
    int8_t *arena;            /* static activation arena */
    uint32_t arena_size;
    const nb_sparse_ops_t *sparse; /* &nb_sparse_ops when any layer is csr / nested, else NULL */
} nb_model_t;

/* Defined by the generated model.c. */
extern const nb_model_t nb_model;

#endif /* NB_MODEL_H */
