/* pass.c — one pass of the host network as the library drives it: the
 * pass descriptor, the callbacks, views of a batch's rows and the task loss
 * on a pass's outputs. Names no method. */
#include "model/model.h"

#include <math.h>
#include <string.h>

regopt_status ro_batch_loss(ro_env *e, const regopt_batch *b, const float *z,
                            double inv_weight, double grad_scale, float *dz, double *loss)
{
    size_t i, j, k = e->model->output_width;
    double sum = 0.0;
    if (e->loss_kind == REGOPT_LOSS_CALLBACK) {
        float *g = dz ? dz : e->d_scratch;
        int rc;
        ro_host_enter(e);
        rc = e->loss_fn(b, z, b->rows, k, e->row_loss, g, e->loss_user);
        ro_host_leave(e);
        if (rc != 0)
            return ro_fail(e->msg, REGOPT_ERR_LOSS_CALLBACK,
                           "the loss callback returned %d", rc);
        for (i = 0; i < b->rows; i++) {
            float rw = ro_row_labelled(b, i) ? ro_row_weight(b, i) : 0.0f;
            float c = (float)(rw * inv_weight * grad_scale);
            if (rw != 0.0f)
                sum += (double)rw * e->row_loss[i];
            for (j = 0; j < k; j++)
                g[i * k + j] = rw != 0.0f ? c * g[i * k + j] : 0.0f;
        }
    } else {
        for (i = 0; i < b->rows; i++) {
            /* unlabelled rows (task_mask 0) take no task loss, like padding,
               but keep their weight in inv_weight (regopt.h, regopt_batch) */
            float rw = ro_row_labelled(b, i) ? ro_row_weight(b, i) : 0.0f;
            float c = (float)(rw * inv_weight * grad_scale);
            float *dzi = dz ? dz + i * k : NULL;
            if (rw == 0.0f) {
                if (dzi)
                    ro_zero(dzi, k);
                continue;
            }
            sum += rw * (e->loss_kind == REGOPT_LOSS_MSE
                            ? ro_mse_row(z + i * k, b->targets + i * k, k, c, dzi)
                            : ro_softmax_ce_row(z + i * k, k, b->labels[i],
                                                e->label_smoothing, c, dzi));
        }
    }
    *loss = sum * inv_weight;
    return REGOPT_OK;
}

double ro_task_scale(const regopt_batch *b, double inv_weight, double coef)
{
    double w = 0.0;
    size_t i;
    for (i = 0; i < b->rows; i++)
        if (ro_row_labelled(b, i))
            w += ro_row_weight(b, i);
    return coef * w * inv_weight;
}

void ro_pass_init(const ro_env *e, regopt_pass *p, const regopt_batch *b, size_t bi,
                  uint32_t flags, uint64_t seed, float *outputs)
{
    const regopt_model *m = e->model;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->batch = b->data;
    p->rows = b->rows;
    p->slot = 0;
    p->flags = flags;
    p->seed = seed;
    p->micro_batch = bi;
    p->output_width = m->output_width;
    p->outputs = outputs;
    p->input_width = m->input_width;
    p->input_rows = m->input_width ? (b->input_rows ? b->input_rows : b->rows) : 0;
    p->loss_scale = e->loss_scale;
}

regopt_status ro_call_forward(ro_env *e, regopt_pass *p)
{
    float saved[RO_OUT_GUARD];
    int rc;
    if (e->check_host)
        ro_contract_before_forward(p, saved);
    ro_model_publish(e); /* half tensors: the host sees round(w) */
    ro_host_enter(e);
    rc = e->model->forward(p, e->model->user);
    ro_host_leave(e);
    e->forward_calls++;
    if (rc != 0)
        return ro_fail(e->msg, REGOPT_ERR_FORWARD,
                       "the forward callback returned %d (micro-batch %zu, slot %d)", rc,
                       p->micro_batch, (int)p->slot);
    return e->check_host ? ro_contract_after_forward(e, p, saved) : REGOPT_OK;
}

regopt_status ro_call_backward(ro_env *e, regopt_pass *p)
{
    uint64_t before = e->check_host ? ro_contract_grad_signature(e) : 0;
    const float *d = p->d_outputs;
    regopt_status st = REGOPT_OK;
    int rc;
    /* loss scaling: the host receives d(loss)/d(outputs) x S (pass->loss_scale) */
    if (e->loss_scale != 1.0 && d) {
        size_t n = p->rows * p->output_width;
        if (n > e->d_cap)
            return ro_fail(e->msg, REGOPT_ERR_STATE, "internal: a pass of %zu outputs exceeds "
                           "the scaled-gradient scratch (%zu)", n, e->d_cap);
        ro_scale_copy(e->d_scaled, d, n, e->loss_scale);
        p->d_outputs = e->d_scaled;
    }
    p->loss_scale = e->loss_scale;
    ro_host_enter(e);
    rc = e->model->backward(p, e->model->user);
    ro_host_leave(e);
    p->d_outputs = d;
    e->backward_calls++;
    if (rc != 0)
        return ro_fail(e->msg, REGOPT_ERR_BACKWARD,
                       "the backward callback returned %d (micro-batch %zu, slot %d)", rc,
                       p->micro_batch, (int)p->slot);
    if (e->check_host)
        st = ro_contract_after_backward(e, p, before);
    if (st != REGOPT_OK)
        return st;
    /* SMART's d_input arrives scaled too: unscale it first */
    if (p->d_input && e->loss_scale != 1.0 &&
        ro_unscale(p->d_input, p->input_rows * p->input_width, 1.0 / e->loss_scale) &&
        e->skip_overflow)
        return ro_fail(e->msg, REGOPT_ERR_OVERFLOW, "d_input overflow at loss scale %g "
                       "(micro-batch %zu)", e->loss_scale, p->micro_batch);
    if (!(p->flags & REGOPT_PASS_NO_PARAM_GRAD))
        st = ro_grads_flush(e);
    return st;
}

/* A view of rows [r0, r0 + rows) of a batch: same host data, shifted
 * per-row arrays, so the loss code never needs to know about chunks. */
void ro_batch_rows(regopt_batch *v, const regopt_batch *b, size_t r0, size_t rows, size_t k)
{
    regopt_batch_init(v);
    v->data = b->data;
    v->rows = rows;
    v->labels = b->labels ? b->labels + r0 : NULL;
    v->targets = b->targets ? b->targets + r0 * k : NULL;
    v->mask = b->mask ? b->mask + r0 : NULL;
    v->weights = b->weights ? b->weights + r0 : NULL;
    v->task_mask = ro_task_mask(b) ? ro_task_mask(b) + r0 : NULL;
    /* a whole batch keeps its embedding rows; a chunk (m-sharpness, where
       they must be a multiple of rows) gets its share */
    v->input_rows = rows == b->rows ? b->input_rows
                    : b->input_rows ? b->input_rows / b->rows * rows : 0;
}

size_t ro_input_rows(const regopt_batch *v)
{
    return v->input_rows ? v->input_rows : v->rows;
}
