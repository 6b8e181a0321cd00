/* rdrop.c — R-Drop (Liang et al., NeurIPS 2021): every micro-batch runs
 * twice with different dropout seeds; the loss is w_ce (l1 + l2) plus alpha
 * times the symmetric KL between the two output distributions (Eq. 3), or
 * the squared difference for regression. Gradients flow into both passes. */
#include "internal.h"

#include <math.h>
#include <string.h>

void ro_rdrop_defaults(ro_rdrop *r)
{
    memset(r, 0, sizeof *r);
    r->alpha = 1.0;
    r->ce_weight = 1.0;
    r->every = 1;
    r->doubled = 1;
}

regopt_status ro_rdrop_set(regopt_trainer *t, regopt_key key, double v)
{
    ro_rdrop *r = &t->rdrop;
    switch (key) {
    case REGOPT_RDROP_ALPHA: r->alpha = v; break;
    case REGOPT_RDROP_CE_WEIGHT: r->ce_weight = v; break;
    case REGOPT_RDROP_KL_SUM: r->kl_sum = (int)v; break;
    case REGOPT_RDROP_EVERY: r->every = (int64_t)v; break;
    case REGOPT_RDROP_DOUBLED: r->doubled = (int)v; break;
    default: break;
    }
    return REGOPT_OK;
}

double ro_rdrop_get(const regopt_trainer *t, regopt_key key)
{
    const ro_rdrop *r = &t->rdrop;
    switch (key) {
    case REGOPT_RDROP_ALPHA: return r->alpha;
    case REGOPT_RDROP_CE_WEIGHT: return r->ce_weight;
    case REGOPT_RDROP_KL_SUM: return r->kl_sum;
    case REGOPT_RDROP_EVERY: return (double)r->every;
    case REGOPT_RDROP_DOUBLED: return r->doubled;
    default: return 0.0;
    }
}

static int use_doubled(const regopt_trainer *t)
{
    return t->rdrop.doubled && (t->model->caps & REGOPT_CAP_DOUBLED_BATCH);
}

regopt_status ro_rdrop_check_model(regopt_trainer *t)
{
    if (t->model->slots < 2 && !(t->model->caps & REGOPT_CAP_DOUBLED_BATCH))
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "R-Drop needs a model with 2 activation slots or "
                       "REGOPT_CAP_DOUBLED_BATCH (this one has %d slot)", (int)t->model->slots);
    return REGOPT_OK;
}

int ro_rdrop_due(const regopt_trainer *t)
{
    return t->rdrop.enabled && t->step % (uint64_t)t->rdrop.every == 0;
}

size_t ro_rows_factor(const regopt_trainer *t)
{
    /* [R-Drop pass 1 | R-Drop pass 2 | SMART's adversarial pass] */
    return (t->rdrop.enabled ? 2 : 1) + (t->smart.enabled ? 1 : 0);
}

/* The consistency term of n rows, scaled like the task loss (or summed),
 * its gradient (times alpha) added to d1, d2. */
double ro_rdrop_consistency(const regopt_trainer *t, const regopt_batch *v, const float *z1,
                            const float *z2, double inv_weight, float *d1, float *d2)
{
    size_t i, k = t->model->output_width;
    double sum = 0.0, norm = t->rdrop.kl_sum ? 1.0 : inv_weight;
    int mse = t->loss_kind == REGOPT_LOSS_MSE;
    for (i = 0; i < v->rows; i++) {
        float rw = ro_row_weight(v, i);
        float c = (float)(rw * norm * t->rdrop.alpha);
        if (rw == 0.0f)
            continue;
        sum += rw * (mse ? ro_sq_diff_row(z1 + i * k, z2 + i * k, k, c, d1 + i * k, d2 + i * k)
                         : ro_sym_kl_row(z1 + i * k, z2 + i * k, k, c, d1 + i * k, d2 + i * k));
    }
    return sum * norm;
}

/* Both forwards: one doubled pass (2n rows, slot 0) or two passes in slots
 * 0 and 1. Either way the outputs land as [z1 (n rows) | z2 (n rows)]. */
regopt_status ro_rdrop_forwards(regopt_trainer *t, regopt_pass *p1, regopt_pass *p2,
                                uint64_t s2)
{
    regopt_status st;
    size_t n = p1->rows;
    if (use_doubled(t)) {
        p1->rows = 2 * n;
        p1->flags |= REGOPT_PASS_DOUBLED;
        p1->seed2 = s2;
        return ro_call_forward(t, p1);
    }
    *p2 = *p1;
    p2->slot = 1;
    p2->seed = s2;
    p2->outputs = t->outputs + n * t->model->output_width;
    st = ro_call_forward(t, p1);
    return st == REGOPT_OK ? ro_call_forward(t, p2) : st;
}

regopt_status ro_rdrop_backwards(regopt_trainer *t, regopt_pass *p1, regopt_pass *p2,
                                 size_t n)
{
    regopt_status st;
    p1->d_outputs = t->d_outputs;
    if (p1->flags & REGOPT_PASS_DOUBLED)
        return ro_call_backward(t, p1);
    p2->d_outputs = t->d_outputs + n * t->model->output_width;
    st = ro_call_backward(t, p1);
    return st == REGOPT_OK ? ro_call_backward(t, p2) : st;
}
