#include "nb_host_api.h"

#include <string.h>

#include "nb_model.h"
#include "nb_runtime.h"

int nb_host_infer(const int8_t *input, int8_t *output, unsigned level)
{
    const nb_model_t *m = &nb_model;
    memcpy(nb_input(m), input, nb_tensor_bytes(m, m->input));
    const int status = nb_run(m, level, NULL);
    if (status == NB_OK) {
        memcpy(output, nb_output(m), nb_tensor_bytes(m, m->output));
    }
    return status;
}

int nb_host_infer_until(const int8_t *input, unsigned level, unsigned n_layers, int8_t *out,
                        uint32_t cap)
{
    const nb_model_t *m = &nb_model;
    if (n_layers == 0 || n_layers > m->n_layers) {
        return NB_ERR_MODEL;
    }
    memcpy(nb_input(m), input, nb_tensor_bytes(m, m->input));
    const int status = nb_run_range(m, level, 0, n_layers, NULL);
    if (status != NB_OK) {
        return status;
    }
    const uint16_t t = m->layers[n_layers - 1].out;
    const uint32_t size = nb_tensor_bytes(m, t);
    memcpy(out, m->arena + m->tensors[t].offset, size < cap ? size : cap);
    return (int)size;
}

uint32_t nb_host_input_bytes(void)
{
    return nb_tensor_bytes(&nb_model, nb_model.input);
}

uint32_t nb_host_output_bytes(void)
{
    return nb_tensor_bytes(&nb_model, nb_model.output);
}

unsigned nb_host_levels(void)
{
    return nb_model.n_levels;
}

unsigned nb_host_layers(void)
{
    return nb_model.n_layers;
}

uint32_t nb_host_arena_bytes(void)
{
    return nb_model.arena_size;
}

const char *nb_host_model_hash(void)
{
    return nb_model.hash;
}

const char *nb_host_model_name(void)
{
    return nb_model.name;
}
