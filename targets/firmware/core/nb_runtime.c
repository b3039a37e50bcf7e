/* The model runner: validates the generated description, then dispatches each layer on (op, format).
 * conv2d and fc layers stored as csr or nested go through the model's nb_sparse_ops_t to the sparse
 * kernel (nb_kernels_sparse.c), which reads the level's loop bounds and its dense-or-sparse choice
 * from the layer's nb_sparse_t; the run-time level reaches every kernel through nb_params_t.level.
 */
#include "nb_runtime.h"

#include <stddef.h>

#include "nb_hal.h"
#include "nb_kernels.h"

uint32_t nb_tensor_bytes(const nb_model_t *m, uint16_t index)
{
    const nb_tensor_t *t = &m->tensors[index];
    return (uint32_t)t->h * t->w * t->c;
}

int8_t *nb_input(const nb_model_t *m)
{
    return m->arena + m->tensors[m->input].offset;
}

const int8_t *nb_output(const nb_model_t *m)
{
    return m->arena + m->tensors[m->output].offset;
}

const char *nb_status_name(int status)
{
    switch (status) {
    case NB_OK: return "ok";
    case NB_ERR_ABI: return "abi";
    case NB_ERR_LEVEL: return "level";
    case NB_ERR_OP: return "op";
    case NB_ERR_FORMAT: return "format";
    case NB_ERR_MODEL: return "model";
    case NB_ERR_INPUT: return "input-overwritten";
    default: return "unknown";
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Validation: a bad description must give an error code, never a wild write.                      */

static int nb_tensor_ok(const nb_model_t *m, uint16_t index)
{
    if (index >= m->n_tensors) {
        return 0;
    }
    const uint32_t size = nb_tensor_bytes(m, index);
    const uint32_t offset = m->tensors[index].offset;
    return size > 0 && offset <= m->arena_size && size <= m->arena_size - offset;
}

/* Output size of a window op along one axis, or -1 when the window does not fit. */
static int32_t nb_window_out(int32_t in, int32_t k, int32_t s, int32_t pad)
{
    if (k < 1 || s < 1 || pad >= k || in + 2 * pad < k) {
        return -1;
    }
    return (in + 2 * pad - k) / s + 1;
}

static int nb_window_ok(const nb_layer_t *l, const nb_tensor_t *in, const nb_tensor_t *out)
{
    return nb_window_out(in->h, l->kh, l->sh, l->ph) == out->h &&
           nb_window_out(in->w, l->kw, l->sw, l->pw) == out->w;
}

static int nb_is_sparse(const nb_layer_t *l)
{
    return l->format == NB_FMT_CSR || l->format == NB_FMT_NESTED;
}

static int nb_check_layer(const nb_model_t *m, const nb_layer_t *l)
{
    if (!nb_tensor_ok(m, l->in0) || !nb_tensor_ok(m, l->out)) {
        return NB_ERR_MODEL;
    }
    if (l->act_min < -128 || l->act_max > 127 || l->act_min > l->act_max) {
        return NB_ERR_MODEL;
    }
    const nb_tensor_t *in = &m->tensors[l->in0], *out = &m->tensors[l->out];
    const int has_requant = l->mult != NULL && l->shift != NULL;
    switch (l->op) {
    case NB_OP_CONV2D:
        if (nb_is_sparse(l)) {
            if (m->sparse == NULL) return NB_ERR_FORMAT;
            return nb_window_ok(l, in, out) && has_requant && m->sparse->valid(m, l) ? NB_OK
                                                                                       : NB_ERR_MODEL;
        }
        if (l->format != NB_FMT_DENSE) return NB_ERR_FORMAT;
        return nb_window_ok(l, in, out) && l->weights != NULL && has_requant ? NB_OK : NB_ERR_MODEL;
    case NB_OP_DWCONV2D:
        if (l->format != NB_FMT_DENSE) return NB_ERR_FORMAT;
        return nb_window_ok(l, in, out) && in->c == out->c && l->weights != NULL && has_requant
                   ? NB_OK
                   : NB_ERR_MODEL;
    case NB_OP_FC:
        if (nb_is_sparse(l)) {
            if (m->sparse == NULL) return NB_ERR_FORMAT;
            return out->h == 1 && out->w == 1 && has_requant && m->sparse->valid(m, l) ? NB_OK
                                                                                         : NB_ERR_MODEL;
        }
        if (l->format != NB_FMT_DENSE) return NB_ERR_FORMAT;
        return out->h == 1 && out->w == 1 && l->weights != NULL && has_requant ? NB_OK : NB_ERR_MODEL;
    case NB_OP_MAXPOOL:
    case NB_OP_AVGPOOL:
        return nb_window_ok(l, in, out) && in->c == out->c ? NB_OK : NB_ERR_MODEL;
    case NB_OP_GAP:
        return out->h == 1 && out->w == 1 && out->c == in->c ? NB_OK : NB_ERR_MODEL;
    case NB_OP_ADD: {
        if (!nb_tensor_ok(m, l->in1) || !has_requant) return NB_ERR_MODEL;
        const nb_tensor_t *in1 = &m->tensors[l->in1];
        return in->h == out->h && in->w == out->w && in->c == out->c && in1->h == out->h &&
                       in1->w == out->w && in1->c == out->c
                   ? NB_OK
                   : NB_ERR_MODEL;
    }
    default:
        return NB_ERR_OP;
    }
}

static int nb_check_model(const nb_model_t *m)
{
    if (m->abi != NB_MODEL_ABI) {
        return NB_ERR_ABI;
    }
    if (m->tensors == NULL || m->layers == NULL || m->arena == NULL || !nb_tensor_ok(m, m->input) ||
        !nb_tensor_ok(m, m->output)) {
        return NB_ERR_MODEL;
    }
    const uint32_t in_lo = m->tensors[m->input].offset;
    const uint32_t in_hi = in_lo + nb_tensor_bytes(m, m->input);
    for (uint16_t i = 0; i < m->n_layers; i++) {
        const nb_layer_t *l = &m->layers[i];
        const int status = nb_check_layer(m, l);
        if (status != NB_OK) {
            return status;
        }
        const uint32_t out_lo = m->tensors[l->out].offset;
        const uint32_t out_hi = out_lo + nb_tensor_bytes(m, l->out);
        if (out_lo < in_hi && in_lo < out_hi) {
            return NB_ERR_INPUT;
        }
    }
    return NB_OK;
}

/* ---------------------------------------------------------------------------------------------- */

static void nb_layer_kernel(const nb_model_t *m, const nb_layer_t *l, unsigned level)
{
    /* (op, format) pairs were checked by nb_check_model() */
    if (nb_is_sparse(l)) {
        m->sparse->run(m, l, level);
        return;
    }
    const nb_tensor_t *ti = &m->tensors[l->in0], *to = &m->tensors[l->out];
    const nb_in_t in = {m->arena + ti->offset, ti->h, ti->w, ti->c, ti->zero_point};
    const nb_out_t out = {m->arena + to->offset, to->h, to->w, to->c, to->zero_point};
    const unsigned bias_levels = l->n_bias_levels > 0 ? l->n_bias_levels : 1u;
    const unsigned bias_row = level < bias_levels ? level : bias_levels - 1u;
    const nb_params_t p = {
        .kh = l->kh, .kw = l->kw, .sh = l->sh, .sw = l->sw, .ph = l->ph, .pw = l->pw,
        .act_min = l->act_min, .act_max = l->act_max,
        .weights = l->weights,
        .bias = l->bias != NULL ? l->bias + bias_row * (uint32_t)to->c : NULL,
        .mult = l->mult, .shift = l->shift,
        .level = level, .fmt = l->fmt,
    };
    switch (l->op) {
    case NB_OP_CONV2D: nb_conv2d_s8(&in, &out, &p); break;
    case NB_OP_DWCONV2D: nb_dwconv2d_s8(&in, &out, &p); break;
    case NB_OP_FC: nb_fc_s8(&in, &out, &p); break;
    case NB_OP_MAXPOOL: nb_maxpool_s8(&in, &out, &p); break;
    case NB_OP_AVGPOOL: nb_avgpool_s8(&in, &out, &p); break;
    case NB_OP_GAP: nb_gap_s8(&in, &out, &p); break;
    case NB_OP_ADD: {
        const nb_tensor_t *t1 = &m->tensors[l->in1];
        const nb_in_t in1 = {m->arena + t1->offset, t1->h, t1->w, t1->c, t1->zero_point};
        nb_add_s8(&in, &in1, &out, &p);
        break;
    }
    default: break;
    }
}

/* One counter reading per layer boundary: starts[i] (if given) and *end get the raw readings. */
static void nb_run_layers(const nb_model_t *m, unsigned level, unsigned first, unsigned count,
                          uint32_t *starts, uint32_t *end)
{
    uint32_t t = hal_counter();
    for (unsigned i = 0; i < count; i++) {
        if (starts != NULL) {
            starts[i] = t;
        }
        nb_layer_kernel(m, &m->layers[first + i], level);
        t = hal_counter();
    }
    *end = t;
}

static int nb_prepare(const nb_model_t *m, unsigned level, unsigned first, unsigned count)
{
    const int status = nb_check_model(m);
    if (status != NB_OK) {
        return status;
    }
    if (level >= m->n_levels) {
        return NB_ERR_LEVEL;
    }
    if (first > m->n_layers || count > m->n_layers - first) {
        return NB_ERR_MODEL;
    }
    return NB_OK;
}

int nb_run_range(const nb_model_t *m, unsigned level, unsigned first, unsigned count,
                 uint32_t *layer_ticks)
{
    const int status = nb_prepare(m, level, first, count);
    if (status != NB_OK) {
        return status;
    }
    uint32_t end;
    nb_run_layers(m, level, first, count, layer_ticks, &end);
    if (layer_ticks != NULL) {
        /* in place, ascending: entry i + 1 still holds its raw reading when entry i needs it */
        for (unsigned i = 0; i < count; i++) {
            const uint32_t next = i + 1u < count ? layer_ticks[i + 1u] : end;
            layer_ticks[i] = hal_counter_elapsed(layer_ticks[i], next);
        }
    }
    return NB_OK;
}

int nb_run(const nb_model_t *m, unsigned level, uint32_t *layer_ticks)
{
    return nb_run_range(m, level, 0, m->n_layers, layer_ticks);
}

int nb_run_stamped(const nb_model_t *m, unsigned level, uint32_t *stamps)
{
    const int status = nb_prepare(m, level, 0, m->n_layers);
    if (status != NB_OK) {
        return status;
    }
    uint32_t end;
    nb_run_layers(m, level, 0, m->n_layers, stamps, &end);
    if (stamps != NULL) {
        stamps[m->n_layers] = end;
    }
    return NB_OK;
}
