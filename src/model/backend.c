/* backend.c — a model whose parameter memory is the host's backend's
 * (regopt_model_set_backend): the table, and the library's calls of it.
 * Every operation on parameter-sized memory is then one regopt_vop handed
 * to backend.run; nothing here or above dereferences a registered handle. */
#include "model/model.h"

#include <string.h>

static const char *vop_name(int32_t code)
{
    switch (code) {
    case REGOPT_VOP_BIND: return "REGOPT_VOP_BIND";
    case REGOPT_VOP_ALLOC: return "REGOPT_VOP_ALLOC";
    case REGOPT_VOP_FREE: return "REGOPT_VOP_FREE";
    case REGOPT_VOP_ZERO: return "REGOPT_VOP_ZERO";
    case REGOPT_VOP_COPY: return "REGOPT_VOP_COPY";
    case REGOPT_VOP_SUM_SQUARES: return "REGOPT_VOP_SUM_SQUARES";
    case REGOPT_VOP_ABS_MAX: return "REGOPT_VOP_ABS_MAX";
    case REGOPT_VOP_UPDATE: return "REGOPT_VOP_UPDATE";
    case REGOPT_VOP_UPDATE_CHECK: return "REGOPT_VOP_UPDATE_CHECK";
    case REGOPT_VOP_SAM_PERTURB: return "REGOPT_VOP_SAM_PERTURB";
    case REGOPT_VOP_SAM_SQUARES: return "REGOPT_VOP_SAM_SQUARES";
    case REGOPT_VOP_SWAP: return "REGOPT_VOP_SWAP";
    case REGOPT_VOP_EMA: return "REGOPT_VOP_EMA";
    case REGOPT_VOP_SWA: return "REGOPT_VOP_SWA";
    case REGOPT_VOP_SCALE: return "REGOPT_VOP_SCALE";
    case REGOPT_VOP_AXPBY: return "REGOPT_VOP_AXPBY";
    case REGOPT_VOP_DOT: return "REGOPT_VOP_DOT";
    case REGOPT_VOP_READ: return "REGOPT_VOP_READ";
    case REGOPT_VOP_WRITE: return "REGOPT_VOP_WRITE";
    default: return "an unknown operation";
    }
}

/* The first version's table ends at user. */
#define RO_BACKEND_V1_SIZE (offsetof(regopt_backend, user) + sizeof(void *))

regopt_status regopt_model_set_backend(regopt_model *m, const regopt_backend *b)
{
    regopt_status st = ro_model_check(m, "regopt_model_set_backend");
    if (st != REGOPT_OK)
        return st;
    if (!b || !b->run)
        return ro_fail(m->msg, REGOPT_ERR_NULL_POINTER, "regopt_model_set_backend: %s is NULL",
                       b ? "backend->run" : "backend");
    if (b->size < RO_BACKEND_V1_SIZE)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT, "regopt_model_set_backend: "
                       "backend->size is %zu, smaller than any version's table (%zu)", b->size,
                       (size_t)RO_BACKEND_V1_SIZE);
    if (m->bound)
        return ro_fail(m->msg, REGOPT_ERR_STATE, "regopt_model_set_backend: the model is bound "
                       "to a trainer and can no longer change");
    if (m->n_params)
        return ro_fail(m->msg, REGOPT_ERR_STATE, "regopt_model_set_backend: set the backend "
                       "before registering tensors (%zu registered)", m->n_params);
    memset(&m->backend, 0, sizeof m->backend);
    memcpy(&m->backend, b, b->size < sizeof m->backend ? b->size : sizeof m->backend);
    m->backend.size = sizeof m->backend;
    m->has_backend = 1;
    if (m->next_vec < REGOPT_VEC_BUFFER0)
        m->next_vec = REGOPT_VEC_BUFFER0;
    return REGOPT_OK;
}

void ro_vop_init(const regopt_model *m, regopt_vop *op, int32_t code)
{
    size_t i;
    memset(op, 0, sizeof *op);
    op->size = sizeof *op;
    op->code = code;
    op->x = op->y = op->z = op->u = op->v = REGOPT_VEC_NONE;
    for (i = 0; i < m->n_params; i++)
        op->tensors += m->params[i].grad != NULL;
    op->tensor = SIZE_MAX;
}

regopt_status ro_vop_run(const regopt_model *m, regopt_vop *op, char *msg)
{
    int rc = m->backend.run(m->backend.user, op);
    if (rc != 0)
        return ro_fail(msg, REGOPT_ERR_BACKEND, "the backend failed %s (it returned %d)",
                       vop_name(op->code), rc);
    return REGOPT_OK;
}

regopt_status ro_vop_xy(const regopt_model *m, int32_t code, int32_t x, int32_t y, double s0,
                        double s1, double *out0, char *msg)
{
    regopt_vop op;
    regopt_status st;
    ro_vop_init(m, &op, code);
    op.x = x;
    op.y = y;
    op.s[0] = s0;
    op.s[1] = s1;
    st = ro_vop_run(m, &op, msg);
    if (out0)
        *out0 = op.out[0];
    return st;
}

regopt_status ro_vec_alloc(regopt_model *m, int32_t *vec, char *msg)
{
    regopt_vop op;
    regopt_status st;
    *vec = REGOPT_VEC_NONE;
    if (m->next_vec == INT32_MAX)
        return ro_fail(msg, REGOPT_ERR_NO_MEMORY, "the model has used up its backend buffer "
                       "ids");
    ro_vop_init(m, &op, REGOPT_VOP_ALLOC);
    op.x = m->next_vec;
    st = ro_vop_run(m, &op, msg);
    if (st != REGOPT_OK)
        return st;
    *vec = m->next_vec++;
    return REGOPT_OK;
}

void ro_vec_free(const regopt_model *m, int32_t *vec)
{
    regopt_vop op;
    if (*vec == REGOPT_VEC_NONE)
        return;
    ro_vop_init(m, &op, REGOPT_VOP_FREE);
    op.x = *vec;
    (void)m->backend.run(m->backend.user, &op);
    *vec = REGOPT_VEC_NONE;
}

/* ---- the elementwise and reducing operations, one call each ------------- */

regopt_status ro_vop_copy(const regopt_model *m, int32_t x, int32_t y, char *msg)
{
    regopt_vop op;
    ro_vop_init(m, &op, y == REGOPT_VEC_NONE ? REGOPT_VOP_ZERO : REGOPT_VOP_COPY);
    op.x = x;
    op.y = y;
    return ro_vop_run(m, &op, msg);
}

regopt_status ro_vop_axpby(const regopt_model *m, int32_t x, int32_t y, int32_t z, double a,
                           double b, const double *per_tensor, const int32_t *flags, char *msg)
{
    regopt_vop op;
    ro_vop_init(m, &op, REGOPT_VOP_AXPBY);
    op.x = x;
    op.y = y;
    op.z = z;
    op.s[0] = a;
    op.s[1] = b;
    op.per_tensor = per_tensor;
    op.flags = flags;
    return ro_vop_run(m, &op, msg);
}

regopt_status ro_vop_reduce(const regopt_model *m, int32_t code, int32_t variant, int32_t x,
                            int32_t y, size_t tensor, double *out, char *msg)
{
    regopt_vop op;
    regopt_status st;
    ro_vop_init(m, &op, code);
    op.variant = variant;
    op.x = x;
    op.y = y;
    op.tensor = tensor;
    st = ro_vop_run(m, &op, msg);
    *out = op.out[0];
    return st;
}

regopt_status ro_backend_refuse(char *msg, const char *what)
{
    return ro_fail(msg, REGOPT_ERR_UNSUPPORTED, "%s cannot run on a model with a backend "
                   "(regopt_model_set_backend) yet", what);
}

regopt_status ro_backend_nonfinite_weight(const regopt_model *m, const char *taker, char *msg)
{
    regopt_vop op;
    regopt_status st = REGOPT_OK;
    size_t i, k = 0;
    for (i = 0; i < m->n_params && st == REGOPT_OK; i++) {
        if (!m->params[i].grad)
            continue;
        ro_vop_init(m, &op, REGOPT_VOP_ABS_MAX);
        op.x = REGOPT_VEC_WEIGHTS;
        op.tensor = k++;
        st = ro_vop_run(m, &op, msg);
        if (st == REGOPT_OK && !(op.out[0] < 0x1p128))
            return ro_fail(msg, REGOPT_ERR_NONFINITE_GRADIENT, "parameter \"%.64s\" holds a "
                           "non-finite weight, which the %s would take; nothing was updated",
                           m->params[i].name, taker);
    }
    return st != REGOPT_OK ? st : ro_fail(msg, REGOPT_ERR_NONFINITE_GRADIENT,
                                          "a weight is not finite");
}
