/* precision.c — mixed precision on the model's side (METHODS2.md, "Mixed
 * precision"; Micikevicius et al., ICLR 2018): the host's half-precision
 * buffers around the library's fp32 master, and the fp32 accumulation of
 * gradients that the host computes at the loss scale S.
 *
 * Everything the library does to the parameters (updates, SAM's perturb
 * and restore, the teacher's swap, checkpoints) happens on the fp32 master,
 * ro_param.data. The host's buffer is written from it, rounded to nearest
 * even, right before every forward: so a perturbed pass sees round(w + e),
 * and after a restore the host sees round(w) again, bit for bit.
 *
 * Gradients: the host accumulates into its own buffer (in the registered
 * dtype) during one backward; after each backward the library adds that
 * buffer times 1/S into its fp32 accumulator ro_param.grad and zeroes it.
 * So the sum over micro-batches and passes is an fp32 sum of unscaled
 * gradients whatever the host's dtype, and every regularizer reads fp32
 * gradients at scale 1. Names no method. */
#include "model/model.h"

#include <string.h>

size_t ro_dtype_size(int dtype)
{
    return dtype == REGOPT_DTYPE_FLOAT16 || dtype == REGOPT_DTYPE_BFLOAT16 ? 2u : 4u;
}

static void publish_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    if (p->dtype != REGOPT_DTYPE_FLOAT32)
        ro_half_from_f32((uint16_t *)p->host_data + j0, p->data + j0, j1 - j0, p->dtype);
}

void ro_model_publish(const ro_env *e)
{
    const regopt_model *m = e->model;
    size_t i;
    if (!m->n_half)
        return;
    ro_each_piece(e->par, publish_piece, NULL);
    /* frozen tensors: their master changes only through a checkpoint, and
       round(widen(h)) = h, so rewriting an unchanged one is a no-op even
       where its buffer is shared */
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad && p->dtype != REGOPT_DTYPE_FLOAT32)
            ro_half_from_f32(p->host_data, p->data, p->count, p->dtype);
    }
}

regopt_status ro_model_stage(regopt_model *m, char *msg)
{
    size_t i, k;
    float *acc[64];
    if (m->staged)
        return REGOPT_OK;
    /* allocate in rounds of up to 64 before committing any: a failure
       leaves the tensors of earlier rounds staged, which is harmless (a
       staged float32 tensor at S = 1 computes the same sums) */
    for (i = 0; i < m->n_params;) {
        size_t n = 0, j = i;
        for (; j < m->n_params && n < 64; j++) {
            ro_param *p = &m->params[j];
            if (!p->grad || p->staged)
                continue;
            acc[n] = ro_calloc(&m->alloc, p->count, sizeof(float));
            if (!acc[n]) {
                for (k = 0; k < n; k++)
                    ro_free(&m->alloc, acc[k]);
                return ro_fail(msg, REGOPT_ERR_NO_MEMORY, "out of memory for the fp32 gradient "
                               "accumulator of \"%.64s\" (%zu elements)", p->name, p->count);
            }
            n++;
        }
        for (k = 0; i < j; i++) {
            ro_param *p = &m->params[i];
            if (!p->grad || p->staged)
                continue;
            p->grad = acc[k++];
            p->staged = 1;
        }
    }
    m->staged = 1;
    return REGOPT_OK;
}

void ro_param_zero_host_grad(const ro_param *p, size_t j0, size_t j1)
{
    size_t es = ro_dtype_size(p->dtype);
    if (p->staged)
        memset((char *)p->host_grad + j0 * es, 0, (j1 - j0) * es);
}

typedef struct flush_ctx {
    double inv;
} flush_ctx;

static double flush_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flush_ctx *f = ctx;
    if (!p->staged)
        return 0.0;
    return (double)ro_grad_flush(p->grad + j0, (char *)p->host_grad + j0 * ro_dtype_size(p->dtype),
                                 j1 - j0, p->dtype, f->inv);
}

regopt_status ro_grads_flush(ro_env *e)
{
    flush_ctx f;
    double bad;
    size_t i;
    if (!e->model->staged && !e->model->n_half)
        return REGOPT_OK;
    f.inv = 1.0 / e->loss_scale;
    /* a count per chunk, summed in chunk order: the same on every thread count */
    bad = ro_sum_pieces(e->par, flush_piece, &f);
    if (bad == 0.0 || !e->skip_overflow)
        return REGOPT_OK; /* without skipping, the gradient-norm check reports it */
    for (i = 0; i < e->model->n_params; i++) {
        const ro_param *p = &e->model->params[i];
        size_t j;
        for (j = 0; p->grad && j < p->count; j++)
            if (!(p->grad[j] - p->grad[j] == 0.0f))
                return ro_fail(e->msg, REGOPT_ERR_OVERFLOW,
                               "gradient overflow at loss scale %g: \"%.64s\"[%zu] is %g",
                               e->loss_scale, p->name, j, (double)p->grad[j]);
    }
    return ro_fail(e->msg, REGOPT_ERR_OVERFLOW, "gradient overflow at loss scale %g",
                   e->loss_scale);
}
