/* backend_io.c — what a checkpoint moves between the host and a model's
 * backend (regopt_model_set_backend): vectors read with REGOPT_VOP_READ
 * into a save's scratch and put into the sink in the bytes the built-in
 * path writes, and written back from a validated checkpoint with
 * REGOPT_VOP_WRITE. Pieces of RO_XFER_FLOATS keep the host memory small
 * and fixed whatever the model's size. */
#include "model/model.h"

#include <string.h>

/* One piece: elements [first, first + count) of part `tensor` of vec. */
static regopt_status xfer(const regopt_model *m, int32_t code, int32_t vec, size_t tensor,
                          size_t first, size_t count, float *host, char *msg)
{
    regopt_vop op;
    ro_vop_init(m, &op, code);
    op.x = vec;
    op.tensor = tensor;
    op.first = first;
    op.count = count;
    op.host = host;
    return ro_vop_run(m, &op, msg);
}

void ro_ck_part(ro_ck_sink *s, const regopt_model *m, int32_t vec, size_t tensor, size_t count,
                char *msg)
{
    size_t at, n;
    if (s->lost || s->failed)
        return;
    if (ro_ck_measuring(s)) { /* a size query: the backend is not asked */
        ro_ck_skip(s, 4 * count);
        return;
    }
    for (at = 0; at < count; at += n) {
        n = count - at < s->scratch_n ? count - at : s->scratch_n;
        if (!s->scratch || xfer(m, REGOPT_VOP_READ, vec, tensor, at, n, s->scratch, msg) !=
                               REGOPT_OK) {
            if (!s->scratch) /* belt and braces: ro_ck_save always gives one */
                (void)ro_fail(msg, REGOPT_ERR_BACKEND, "no scratch to read the backend into");
            s->lost = s->failed = 1;
            s->lost_st = REGOPT_ERR_BACKEND;
            return;
        }
        ro_ck_floats(s, s->scratch, n);
    }
}

void ro_ck_vec(ro_ck_sink *s, const regopt_model *m, int32_t vec, char *msg)
{
    size_t i, k = 0;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            ro_ck_part(s, m, vec, k++, m->params[i].count, msg);
}

regopt_status ro_vec_load_part(const regopt_model *m, int32_t vec, size_t tensor, size_t count,
                               const unsigned char *src, char *msg)
{
    float buf[RO_XFER_FLOATS];
    size_t at, n;
    regopt_status st = REGOPT_OK;
    for (at = 0; at < count && st == REGOPT_OK; at += n) {
        n = count - at < RO_XFER_FLOATS ? count - at : RO_XFER_FLOATS;
        ro_ck_rdfloats(buf, src + 4 * at, n);
        st = xfer(m, REGOPT_VOP_WRITE, vec, tensor, at, n, buf, msg);
    }
    return st;
}

regopt_status ro_vec_load(const regopt_model *m, int32_t vec, const unsigned char *src,
                          char *msg)
{
    size_t i, k = 0;
    regopt_status st = REGOPT_OK;
    for (i = 0; i < m->n_params && st == REGOPT_OK; i++)
        if (m->params[i].grad) {
            st = ro_vec_load_part(m, vec, k++, m->params[i].count, src, msg);
            src += 4 * m->params[i].count;
        }
    return st;
}
