/* passes.c — one pass of the host network as the library drives it: the
 * pass descriptor, the callbacks, the task loss on the outputs, and the
 * forward-loss-backward unit every step is made of. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* ---- the loss ---------------------------------------------------------- */

regopt_status ro_batch_loss(regopt_trainer *t, const regopt_batch *b, const float *z,
                            double inv_weight, double grad_scale, float *dz, double *loss)
{
    size_t i, j, k = t->model->output_width;
    double sum = 0.0;
    if (t->loss_kind == REGOPT_LOSS_CALLBACK) {
        float *g = dz ? dz : t->d_outputs;
        int rc = t->loss_fn(b, z, b->rows, k, t->row_loss, g, t->loss_user);
        if (rc != 0)
            return ro_fail(t->msg, REGOPT_ERR_LOSS_CALLBACK,
                           "the loss callback returned %d", rc);
        for (i = 0; i < b->rows; i++) {
            float rw = ro_row_weight(b, i), c = (float)(rw * inv_weight * grad_scale);
            if (rw != 0.0f)
                sum += (double)rw * t->row_loss[i];
            for (j = 0; j < k; j++)
                g[i * k + j] = rw != 0.0f ? c * g[i * k + j] : 0.0f;
        }
    } else {
        for (i = 0; i < b->rows; i++) {
            float rw = ro_row_weight(b, i), c = (float)(rw * inv_weight * grad_scale);
            float *dzi = dz ? dz + i * k : NULL;
            if (rw == 0.0f) {
                if (dzi)
                    ro_zero(dzi, k);
                continue;
            }
            sum += rw * (t->loss_kind == REGOPT_LOSS_MSE
                            ? ro_mse_row(z + i * k, b->targets + i * k, k, c, dzi)
                            : ro_softmax_ce_row(z + i * k, k, b->labels[i],
                                                t->label_smoothing, c, dzi));
        }
    }
    *loss = sum * inv_weight;
    return REGOPT_OK;
}

/* ---- passes ------------------------------------------------------------ */

void ro_pass_init(const regopt_trainer *t, regopt_pass *p, const regopt_batch *b,
                      size_t bi, uint32_t flags, uint64_t seed)
{
    const regopt_model *m = t->model;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->batch = b->data;
    p->rows = b->rows;
    p->slot = 0;
    p->flags = flags;
    p->seed = seed;
    p->micro_batch = bi;
    p->output_width = m->output_width;
    p->outputs = t->outputs;
    p->input_width = m->input_width;
    p->input_rows = m->input_width ? (b->input_rows ? b->input_rows : b->rows) : 0;
}

regopt_status ro_call_forward(regopt_trainer *t, regopt_pass *p)
{
    int rc = t->model->forward(p, t->model->user);
    t->forward_calls++;
    if (rc != 0)
        return ro_fail(t->msg, REGOPT_ERR_FORWARD,
                       "the forward callback returned %d (micro-batch %zu, slot %d)", rc,
                       p->micro_batch, (int)p->slot);
    return REGOPT_OK;
}

regopt_status ro_call_backward(regopt_trainer *t, regopt_pass *p)
{
    int rc = t->model->backward(p, t->model->user);
    t->backward_calls++;
    if (rc != 0)
        return ro_fail(t->msg, REGOPT_ERR_BACKWARD,
                       "the backward callback returned %d (micro-batch %zu, slot %d)", rc,
                       p->micro_batch, (int)p->slot);
    return REGOPT_OK;
}

/* A view of rows [r0, r0 + rows) of a batch: same host data, shifted
 * per-row arrays, so the loss code never needs to know about chunks. */
void ro_batch_rows(regopt_batch *v, const regopt_batch *b, size_t r0, size_t rows,
                       size_t k)
{
    regopt_batch_init(v);
    v->data = b->data;
    v->rows = rows;
    v->labels = b->labels ? b->labels + r0 : NULL;
    v->targets = b->targets ? b->targets + r0 * k : NULL;
    v->mask = b->mask ? b->mask + r0 : NULL;
    v->weights = b->weights ? b->weights + r0 : NULL;
    v->input_rows = b->input_rows && b->input_rows != b->rows
                        ? b->input_rows / b->rows * rows : 0;
}

regopt_status ro_gradient_rows(regopt_trainer *t, const regopt_batch *b, size_t bi,
                               size_t r0, size_t rows, double inv_weight,
                               uint32_t flags, uint32_t role, uint32_t chunk,
                               double *loss)
{
    regopt_pass p;
    regopt_batch v;
    double l = 0.0;
    regopt_status st;
    uint64_t seed = ro_pass_seed(t->seed, t->step, (uint32_t)bi, role | (chunk << 8));
    ro_batch_rows(&v, b, r0, rows, t->model->output_width);
    if (t->rdrop_now)
        return ro_rdrop_rows(t, &v, bi, r0, inv_weight, flags, role, chunk, loss);
    ro_pass_init(t, &p, &v, bi, flags, seed);
    p.row_offset = r0;
    st = ro_call_forward(t, &p);
    if (st == REGOPT_OK)
        st = ro_batch_loss(t, &v, t->outputs, inv_weight, 1.0, t->d_outputs, &l);
    if (st == REGOPT_OK && !isfinite(l))
        st = ro_fail(t->msg, REGOPT_ERR_NONFINITE_LOSS,
                     "the loss of micro-batch %zu is %g", bi, l);
    if (st != REGOPT_OK)
        return st;
    *loss += l;
    if (!(flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        t->acc[RO_ACC_TASK] += l;
    p.d_outputs = t->d_outputs;
    return ro_call_backward(t, &p);
}

regopt_status ro_gradient(regopt_trainer *t, const regopt_batch *batches, size_t count,
                          double inv_weight, uint32_t flags, uint32_t role, double *loss)
{
    regopt_status st = REGOPT_OK;
    size_t bi;
    ro_zero_gradients(t->model);
    for (bi = 0; bi < count && st == REGOPT_OK; bi++) {
        const regopt_batch *b = ro_batch_at(batches, bi);
        st = ro_gradient_rows(t, b, bi, 0, b->rows, inv_weight, flags, role, 0, loss);
    }
    return st;
}

void ro_zero_gradients(const regopt_model *m)
{
    size_t i;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            ro_zero(m->params[i].grad, m->params[i].count);
}
