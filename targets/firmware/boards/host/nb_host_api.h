/* C API of the host build (a shared library for ctypes): the firmware's runtime and kernels
 * with the generated model, no UART, no protocol. */
#ifndef NB_HOST_API_H
#define NB_HOST_API_H

#include <stdint.h>

/* Copy `input` (the input tensor's bytes) into the arena, run all layers at `level`, copy the
 * output tensor to `output`. Returns nb_run's status (0 = success, negative = error). */
int nb_host_infer(const int8_t *input, int8_t *output, unsigned level);

/* Run only the first `n_layers` layers and copy the output tensor of the last of them into `out`
 * (at most `cap` bytes). Returns the tensor's size, or nb_run's negative status. */
int nb_host_infer_until(const int8_t *input, unsigned level, unsigned n_layers, int8_t *out,
                        uint32_t cap);

uint32_t nb_host_input_bytes(void);
uint32_t nb_host_output_bytes(void);
unsigned nb_host_levels(void);
unsigned nb_host_layers(void);
uint32_t nb_host_arena_bytes(void);
const char *nb_host_model_hash(void);
const char *nb_host_model_name(void);

#endif /* NB_HOST_API_H */
