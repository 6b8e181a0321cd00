/* update.c — the end of every step: the global gradient norm, clipping and
 * the base optimizer's fused update over every trainable tensor. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

static double grad_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    return ro_sum_squares(p->grad + j0, j1 - j0);
}

regopt_status ro_gradient_norm(regopt_trainer *t, double *norm)
{
    const regopt_model *m = t->model;
    double s = ro_sum_pieces(&t->par, grad_squares, NULL);
    size_t i;
    if (!isfinite(s)) {
        for (i = 0; i < m->n_params; i++) {
            const ro_param *p = &m->params[i];
            if (p->grad && !isfinite(ro_sum_squares(p->grad, p->count)))
                break;
        }
        return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                       "the gradient of parameter \"%.64s\" is not finite",
                       i < m->n_params ? m->params[i].name : "?");
    }
    *norm = sqrt(s);
    return REGOPT_OK;
}

/* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), capped
 * at 1. */
double ro_clip_scale(const regopt_optimizer *o, double norm)
{
    double c;
    if (o->clip_norm <= 0.0)
        return 1.0;
    c = o->clip_norm / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

typedef struct update_job {
    const regopt_trainer *t;
    double lr;
    ro_update u; /* the scalars shared by every tensor */
} update_job;

/* The update of elements [j0, j1) of one tensor, with its group's lr and
 * weight decay. */
static void update_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const update_job *job = ctx;
    const regopt_trainer *t = job->t;
    const regopt_optimizer *o = t->opt;
    const ro_group_cfg *g = &o->groups[p->group];
    size_t n = t->model->n_trainable, c = j1 - j0;
    double glr = job->lr * g->lr_scale;
    float *w = p->data + j0, *st = t->state + p->offset + j0;
    const float *gr = p->grad + j0;
    ro_update u = job->u;
    u.lr = (float)glr;
    u.wd = (float)(g->weight_decay >= 0.0 ? g->weight_decay : o->weight_decay);
    if (o->kind == REGOPT_SGD) {
        ro_sgd_update(&u, w, gr, st, c);
        return;
    }
    ro_adam_scalars(&u, o, t->step + 1, glr);
    if (o->kind == REGOPT_RADAM)
        ro_radam_update(&u, w, gr, st, st + n, c);
    else
        ro_adam_update(&u, w, gr, st, st + n, t->per_element > 2 ? st + 2 * n : NULL, c,
                       o->kind == REGOPT_ADAMW);
}

void ro_apply_update(regopt_trainer *t, double lr, double scale)
{
    const regopt_optimizer *o = t->opt;
    update_job job;
    memset(&job, 0, sizeof job);
    job.t = t;
    job.lr = lr;
    job.u.grad_scale = (float)scale;
    job.u.momentum = (float)o->momentum;
    job.u.one_minus_dampening = (float)(1.0 - o->dampening);
    job.u.nesterov = o->nesterov;
    job.u.first = !t->momentum_ready;
    ro_each_piece(&t->par, update_piece, &job);
    if (o->kind == REGOPT_SGD && o->momentum > 0.0)
        t->momentum_ready = 1;
}
