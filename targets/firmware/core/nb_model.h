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

#define NB_MODEL_ABI 1u

typedef enum {
    NB_OP_CONV2D = 1,   /* weights [cout][kh][kw][cin] */
    NB_OP_DWCONV2D = 2, /* weights [kh][kw][c], channel multiplier 1 */
    NB_OP_FC = 3,       /* weights [cout][cin], input flattened in HWC order */
    NB_OP_MAXPOOL = 4,
    NB_OP_AVGPOOL = 5,
    NB_OP_GAP = 6,      /* global average pool: output 1x1xC */
    NB_OP_ADD = 7       /* residual add of in0 and in1 */
} nb_op_t;

/* Storage format of a layer's weights. Only dense exists today; sparse formats (csr, nested) add
 * values here and carry their tables behind nb_layer_t.fmt. */
typedef enum { NB_FMT_DENSE = 0 } nb_format_t;

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
    const int8_t *weights;    /* NULL for pools and add */
    const int32_t *bias;      /* [cout] int32; level-indexed [level][cout] when n_bias_levels > 1 */
    const int32_t *mult;      /* [cout] Q31 multipliers; ADD: {in0, in1, out} */
    const int32_t *shift;     /* [cout] shifts, > 0 = left; ADD: {in0, in1, out} */
    uint8_t n_bias_levels;    /* 1 for dense layers */
    const void *fmt;          /* format-specific tables, NULL for NB_FMT_DENSE */
} nb_layer_t;

typedef struct {
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
} nb_model_t;

/* Defined by the generated model.c. */
extern const nb_model_t nb_model;

#endif /* NB_MODEL_H */
