/* rdrop.c — R-Drop (Liang et al., NeurIPS 2021): every micro-batch runs
 * twice with different dropout seeds; the loss is w_ce (l1 + l2) plus alpha
 * times the symmetric KL between the two output distributions (Eq. 3), or
 * the squared difference for regression; docs/methods.md §4. The two task
 * copies are the pipeline's (ro_plan.copies); this file adds the
 * consistency rdrop_term. */
#include "reg/reg.h"

#include <math.h>
#include <string.h>

typedef struct rdrop {
    double alpha, ce_weight;
    int kl_sum, doubled;
    int64_t every;
} rdrop;

enum { RD_LOSS1, RD_LOSS2, RD_CONSISTENCY, RD_N_ACC };

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc rdrop_keys[] = {
    {REGOPT_RDROP_ALPHA, "rdrop.alpha", D, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_RDROP_CE_WEIGHT, "rdrop.ce_weight", D, RO_OWNER_REG, 0, 1e3, 1, 0},
    {REGOPT_RDROP_KL_SUM, "rdrop.kl_sum", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_RDROP_EVERY, "rdrop.every", I, RO_OWNER_REG, 1, 2147483648.0, 1, 0},
    {REGOPT_RDROP_DOUBLED, "rdrop.doubled", I, RO_OWNER_REG, 0, 1, 1, 0},
    {REGOPT_STAT_RDROP_LOSS1, "rdrop.loss1", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_RDROP_LOSS2, "rdrop.loss2", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_RDROP_CONSISTENCY, "rdrop.consistency", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL,
     0, RO},
    {REGOPT_STAT_RDROP_APPLIED, "rdrop.applied", I, RO_OWNER_REG, 0, 1, 0, RO},
};

static void rdrop_init(ro_reg *r)
{
    rdrop *d = r->self;
    d->alpha = 1.0;
    d->ce_weight = 1.0;
    d->every = 1;
    d->doubled = 1;
}

static regopt_status rdrop_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    rdrop *d = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_RDROP_ALPHA: d->alpha = v; break;
    case REGOPT_RDROP_CE_WEIGHT: d->ce_weight = v; break;
    case REGOPT_RDROP_KL_SUM: d->kl_sum = (int)v; break;
    case REGOPT_RDROP_EVERY: d->every = (int64_t)v; break;
    default: d->doubled = (int)v; break;
    }
    return REGOPT_OK;
}

static double rdrop_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    const rdrop *d = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_RDROP_ALPHA: return d->alpha;
    case REGOPT_RDROP_CE_WEIGHT: return d->ce_weight;
    case REGOPT_RDROP_KL_SUM: return d->kl_sum;
    case REGOPT_RDROP_EVERY: return (double)d->every;
    default: return d->doubled;
    }
}

static int use_doubled(const ro_reg *r)
{
    return ((const rdrop *)r->self)->doubled &&
           (r->env->model->caps & REGOPT_CAP_DOUBLED_BATCH);
}

static regopt_status rdrop_attach(ro_reg *r)
{
    const regopt_model *m = r->env->model;
    if (m->slots < 2 && !(m->caps & REGOPT_CAP_DOUBLED_BATCH))
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "R-Drop needs a model with 2 activation slots or "
                       "REGOPT_CAP_DOUBLED_BATCH (this one has %d slot)", (int)m->slots);
    return REGOPT_OK;
}

static int rdrop_due(const ro_reg *r, uint64_t step)
{
    return step % (uint64_t)((const rdrop *)r->self)->every == 0;
}

/* The second copy: a slot of its own unless doubled (whether rdrop_due or not,
 * so slot numbers do not move with rdrop.every), its output block, and
 * fresh dropout copy 0. */
static void rdrop_plan(ro_reg *r, ro_plan *p, int now)
{
    int two_call = !use_doubled(r);
    if (two_call)
        p->copy_slot = p->slots++;
    p->fresh++;
    if (!now)
        return;
    p->copies = 2;
    p->doubled = !two_call;
    p->task_scale = ((const rdrop *)r->self)->ce_weight;
    p->blocks++;
}

/* The consistency rdrop_term of the view's rows, scaled like the task loss (or
 * summed), its gradient (times alpha) added to both copies' gradients. */
static regopt_status rdrop_term(ro_reg *r, ro_view *v, double *weighted)
{
    const rdrop *d = r->self;
    ro_step *s = v->s;
    size_t i, k = v->k, nk = v->n * k;
    const float *z1 = v->z, *z2 = v->z + nk;
    float *d1 = v->dz, *d2 = v->dz + nk;
    double sum = 0.0, norm = d->kl_sum ? 1.0 : s->inv_weight;
    int mse = s->env->loss_kind == REGOPT_LOSS_MSE;
    for (i = 0; i < v->n; i++) {
        float rw = ro_row_weight(&v->rows, i);
        float c = (float)(rw * norm * d->alpha);
        if (rw == 0.0f)
            continue;
        sum += rw * (mse ? ro_sq_diff_row(z1 + i * k, z2 + i * k, k, c, d1 + i * k, d2 + i * k)
                         : ro_sym_kl_row(z1 + i * k, z2 + i * k, k, c, d1 + i * k, d2 + i * k));
    }
    sum *= norm;
    *weighted = d->alpha * sum;
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS)) {
        s->acc[r->acc0 + RD_LOSS1] += v->task[0];
        s->acc[r->acc0 + RD_LOSS2] += v->task[1];
        s->acc[r->acc0 + RD_CONSISTENCY] += sum;
    }
    return REGOPT_OK;
}

static void rdrop_commit(ro_reg *r, const ro_step *s)
{
    const double *a = s->acc + r->acc0;
    r->stats[0] = r->due ? a[RD_LOSS1] : 0.0;
    r->stats[1] = r->due ? a[RD_LOSS2] : 0.0;
    r->stats[2] = a[RD_CONSISTENCY];
    r->stats[3] = r->due;
}

const ro_reg_ops ro_rdrop_ops = {
    .name = "rdrop",
    .title = "R-Drop",
    .kind = REGOPT_REG_RDROP,
    .flags = REGOPT_REG_SINGLE | RO_REG_BACKEND,
    .order = 10,
    .size = sizeof(rdrop),
    .keys = rdrop_keys,
    .n_keys = sizeof rdrop_keys / sizeof rdrop_keys[0],
    .stat0 = REGOPT_STAT_RDROP_LOSS1,
    .n_stats = 4,
    .n_acc = RD_N_ACC,
    .init = rdrop_init,
    .attach = rdrop_attach,
    .set = rdrop_set,
    .get = rdrop_get,
    .due = rdrop_due,
    .plan = rdrop_plan,
    .term = rdrop_term,
    .commit = rdrop_commit,
};
