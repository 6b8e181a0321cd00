/* checkpoint_tensors.c — the parameter-sized sections of a checkpoint,
 * "moments" and "params": written from the trainer's moments and the
 * registered tensors, or with a backend (regopt_model_set_backend) read
 * from its buffers in pieces (model/backend_io.c), the same bytes either
 * way; and applied once the whole checkpoint is validated. The sections'
 * place among the others is checkpoint.c's. */
#include "checkpoint/checkpoint.h"

#include <string.h>

/* The moments block after block (the optimizer's first, second and
 * third state element), each over the trainable tensors in order: t->state's
 * layout, and with a backend its buffers read in that order. */
void ro_ck_emit_moments(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    size_t j;
    (void)arg;
    if (!t->model->has_backend) {
        ro_ck_floats(s, t->state, t->model->n_trainable * t->per_element);
        return;
    }
    for (j = 0; j < t->per_element; j++)
        ro_ck_vec(s, t->model, t->state_vec[j], (char *)t->msg);
}

/* Every tensor in registration order, frozen ones too (with a backend
 * those are REGOPT_VEC_FROZEN's parts, counted apart). */
void ro_ck_emit_params(const regopt_trainer *t, size_t arg, ro_ck_sink *s)
{
    const regopt_model *m = t->model;
    size_t i, k = 0, frozen = 0;
    (void)arg;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!m->has_backend)
            ro_ck_floats(s, p->data, p->count);
        else if (p->grad)
            ro_ck_part(s, m, REGOPT_VEC_WEIGHTS, k++, p->count, (char *)t->msg);
        else
            ro_ck_part(s, m, REGOPT_VEC_FROZEN, frozen++, p->count, (char *)t->msg);
    }
}

/* The backend's share of a load: moments and tensors through
 * REGOPT_VOP_WRITE. */
static regopt_status write_backend(regopt_trainer *t, const ro_ck_found *moments,
                                   const ro_ck_found *params)
{
    regopt_model *m = t->model;
    size_t i, j, k = 0, frozen = 0;
    regopt_status st = REGOPT_OK;
    for (j = 0; j < t->per_element && st == REGOPT_OK; j++)
        st = ro_vec_load(m, t->state_vec[j], moments->data + 4 * j * m->n_trainable, t->msg);
    if (params) {
        const unsigned char *p = params->data;
        for (i = 0; i < m->n_params && st == REGOPT_OK; i++) {
            const ro_param *q = &m->params[i];
            st = ro_vec_load_part(m, q->grad ? REGOPT_VEC_WEIGHTS : REGOPT_VEC_FROZEN,
                                  q->grad ? k++ : frozen++, q->count, p, t->msg);
            p += 4 * q->count;
        }
    }
    return st;
}

/* The bound ro_abs_max_bits gives of the first moments, from the
 * checkpoint's bytes (with a backend they are nowhere else on the host):
 * the largest top half of the sign-cleared bits, the rest of the bits set. */
static float moment_bound(const unsigned char *p, size_t n)
{
    uint32_t top = 0, v;
    size_t i;
    float f;
    for (i = 0; i < n; i++) {
        v = (ro_ck_rd32(p + 4 * i) & 0x7fffffffu) >> 16;
        top = v > top ? v : top;
    }
    top = top << 16 | 0xffffu;
    memcpy(&f, &top, sizeof f);
    return f;
}

regopt_status ro_ck_apply_tensors(regopt_trainer *t, const ro_ck_found *moments,
                                  const ro_ck_found *params)
{
    regopt_model *m = t->model;
    const unsigned char *p = params ? params->data : NULL;
    size_t i;
    if (m->has_backend) {
        regopt_status st = write_backend(t, moments, params);
        if (st != REGOPT_OK)
            return st;
    } else {
        ro_ck_rdfloats(t->state, moments->data, m->n_trainable * t->per_element);
        for (i = 0; p && i < m->n_params; i++) {
            ro_ck_rdfloats(m->params[i].data, p, m->params[i].count);
            p += 4 * m->params[i].count;
        }
    }
    /* the update's guard bounds the first moment (momentum buffer) anew;
       REGOPT_HOST keeps no moments (per_element 0): nothing to bound */
    t->state_bound = t->per_element ? moment_bound(moments->data, m->n_trainable) : 0.0f;
    return REGOPT_OK;
}
