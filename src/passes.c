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
    /* a whole batch keeps its embedding rows; a chunk (m-sharpness, where
       they must be a multiple of rows) gets its share */
    v->input_rows = rows == b->rows ? b->input_rows
                    : b->input_rows ? b->input_rows / b->rows * rows : 0;
}

size_t ro_input_rows(const regopt_batch *v)
{
    return v->input_rows ? v->input_rows : v->rows;
}

/* The loss-side terms of one view, on outputs already computed: task loss
 * (per R-Drop pass), R-Drop's consistency, Bregman's proximal term and
 * SMART's adversarial term (whose own passes run here). Gradients w.r.t.
 * the clean outputs land in t->d_outputs; returns the objective. */
static regopt_status loss_terms(regopt_trainer *t, const regopt_batch *v, size_t bi,
                                size_t r0, uint32_t flags, uint64_t seed, uint32_t role,
                                uint32_t chunk, double inv_weight, double *objective)
{
    size_t nk = v->rows * t->model->output_width;
    float *z = t->outputs, *dz = t->d_outputs;
    int two = t->rdrop_now;
    double w_ce = two ? t->rdrop.ce_weight : 1.0, l1 = 0.0, l2 = 0.0, c = 0.0, br = 0.0,
           rs = 0.0;
    regopt_status st = ro_batch_loss(t, v, z, inv_weight, w_ce, dz, &l1);
    if (st == REGOPT_OK && two)
        st = ro_batch_loss(t, v, z + nk, inv_weight, w_ce, dz + nk, &l2);
    if (st != REGOPT_OK)
        return st;
    if (two)
        c = ro_rdrop_consistency(t, v, z, z + nk, inv_weight, dz, dz + nk);
    if (t->bregman.enabled)
        br = ro_bregman_term(t, v, bi, r0, z, inv_weight, dz);
    if (t->smart.enabled)
        st = ro_smart_term(t, v, bi, r0, flags, seed, role, chunk, inv_weight, z, dz, &rs);
    if (st != REGOPT_OK)
        return st;
    *objective = (two ? w_ce * (l1 + l2) + t->rdrop.alpha * c : l1) + t->bregman.mu * br *
                 t->bregman.enabled + t->smart.lambda * rs * t->smart.enabled;
    if (!(flags & REGOPT_PASS_PERTURBED_WEIGHTS)) { /* terms of the objective at w */
        t->acc[RO_ACC_TASK] += two ? 0.5 * (l1 + l2) : l1;
        t->acc[RO_ACC_LOSS1] += l1;
        t->acc[RO_ACC_LOSS2] += l2;
        t->acc[RO_ACC_CONSISTENCY] += c;
        t->acc[RO_ACC_BREGMAN] += br;
        t->acc[RO_ACC_SMART_RS] += rs;
    }
    return REGOPT_OK;
}

regopt_status ro_gradient_rows(regopt_trainer *t, const regopt_batch *b, size_t bi,
                               size_t r0, size_t rows, double inv_weight,
                               uint32_t flags, uint32_t role, uint32_t chunk,
                               double *loss)
{
    regopt_pass p1, p2;
    regopt_batch v;
    double obj = 0.0;
    regopt_status st;
    uint64_t s1 = ro_pass_seed(t->seed, t->step, (uint32_t)bi, role | (chunk << 8));
    ro_batch_rows(&v, b, r0, rows, t->model->output_width);
    ro_pass_init(t, &p1, &v, bi, flags, s1);
    p1.row_offset = r0;
    if (t->rdrop_now)
        st = ro_rdrop_forwards(t, &p1, &p2,
                               ro_pass_seed(t->seed, t->step, (uint32_t)bi,
                                            role | RO_SEED_SECOND | (chunk << 8)));
    else
        st = ro_call_forward(t, &p1);
    if (st == REGOPT_OK)
        st = loss_terms(t, &v, bi, r0, flags, s1, role, chunk, inv_weight, &obj);
    if (st == REGOPT_OK && !isfinite(obj))
        st = ro_fail(t->msg, REGOPT_ERR_NONFINITE_LOSS,
                     "the loss of micro-batch %zu is %g", bi, obj);
    if (st != REGOPT_OK)
        return st;
    *loss += obj;
    if (t->rdrop_now)
        return ro_rdrop_backwards(t, &p1, &p2, rows);
    p1.d_outputs = t->d_outputs;
    return ro_call_backward(t, &p1);
}

regopt_status ro_gradient(regopt_trainer *t, const regopt_batch *batches, size_t count,
                          double inv_weight, uint32_t flags, uint32_t role, double *loss)
{
    regopt_status st = REGOPT_OK;
    size_t bi;
    ro_zero_gradients(t);
    for (bi = 0; bi < count && st == REGOPT_OK; bi++) {
        const regopt_batch *b = ro_batch_at(batches, bi);
        st = ro_gradient_rows(t, b, bi, 0, b->rows, inv_weight, flags, role, 0, loss);
    }
    return st;
}

static void zero_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    ro_zero(p->grad + j0, j1 - j0);
}

void ro_zero_gradients(const regopt_trainer *t) { ro_each_piece(t, zero_piece, NULL); }
