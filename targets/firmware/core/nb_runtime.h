/* The model runner: executes nb_model's layers in order over the static activation arena.
 * Portable core: no board header; time is read through nb_hal.h's hal_counter().
 */
#ifndef NB_RUNTIME_H
#define NB_RUNTIME_H

#include <stdint.h>

#include "nb_model.h"

/* nb_run status codes (0 = success). */
#define NB_OK 0
#define NB_ERR_ABI (-1)     /* model built against another NB_MODEL_ABI */
#define NB_ERR_LEVEL (-2)   /* level >= n_levels */
#define NB_ERR_OP (-3)      /* unknown layer op */
#define NB_ERR_FORMAT (-4)  /* unknown weight format for the op */
#define NB_ERR_MODEL (-5)   /* inconsistent description: tensor index, shape, arena bounds, clamp */
#define NB_ERR_INPUT (-6)   /* a layer writes over the input tensor (repeated runs need it intact) */

/* The input tensor in the arena: the host writes the input here before nb_run. */
int8_t *nb_input(const nb_model_t *m);
/* The output tensor of the last run. */
const int8_t *nb_output(const nb_model_t *m);
/* Bytes of tensor `index` (h * w * c). */
uint32_t nb_tensor_bytes(const nb_model_t *m, uint16_t index);

/* Checks the description, then runs every layer at run-time `level` (0 = densest). When
 * `layer_ticks` is not NULL it receives n_layers counts, one per layer, in the board's reported units
 * (hal_counter() read between layers, converted by hal_counter_elapsed() after the run).
 * The input tensor is left intact, so the same input can be run again. */
int nb_run(const nb_model_t *m, unsigned level, uint32_t *layer_ticks);

/* Like nb_run, but `stamps` (n_layers + 1 entries, or NULL) receives the raw hal_counter() readings
 * at the layer boundaries: layer i ran from stamps[i] to stamps[i + 1]. Nothing is converted during
 * the run, so the code between a caller's own counter readings is the same every time: this is what
 * the protocol's timed runs use. */
int nb_run_stamped(const nb_model_t *m, unsigned level, uint32_t *stamps);

/* Runs layers [first, first + count) only (after checking the whole description): lets host tools
 * inspect intermediate tensors. layer_ticks, when given, is indexed from `first`. */
int nb_run_range(const nb_model_t *m, unsigned level, unsigned first, unsigned count,
                 uint32_t *layer_ticks);

/* Short name of a status code, e.g. "level" for NB_ERR_LEVEL. */
const char *nb_status_name(int status);

#endif /* NB_RUNTIME_H */
