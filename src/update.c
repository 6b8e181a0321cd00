/* update.c — the end of every step: the global gradient norm, clipping and
 * the base optimizer's fused update over every trainable tensor. */
#include "internal.h"

#include <math.h>
#include <string.h>

regopt_status ro_gradient_norm(regopt_trainer *t, double *norm)
{
    const regopt_model *m = t->model;
    double s = 0.0;
    size_t i;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].grad)
            s += ro_sum_squares(m->params[i].grad, m->params[i].count);
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

void ro_apply_update(regopt_trainer *t, double lr, double scale)
{
    const regopt_model *m = t->model;
    const regopt_optimizer *o = t->opt;
    size_t n = m->n_trainable, i;
    ro_update u;
    memset(&u, 0, sizeof u);
    u.grad_scale = (float)scale;
    u.momentum = (float)o->momentum;
    u.one_minus_dampening = (float)(1.0 - o->dampening);
    u.nesterov = o->nesterov;
    u.first = !t->momentum_ready;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        const ro_group_cfg *g = &o->groups[p->group];
        double glr = lr * g->lr_scale;
        float *st = t->state + p->offset;
        if (!p->grad)
            continue;
        u.lr = (float)glr;
        u.wd = (float)(g->weight_decay >= 0.0 ? g->weight_decay : o->weight_decay);
        if (o->kind == REGOPT_SGD) {
            ro_sgd_update(&u, p->data, p->grad, st, p->count);
            continue;
        }
        ro_adam_scalars(&u, o, t->step + 1, glr);
        if (o->kind == REGOPT_RADAM)
            ro_radam_update(&u, p->data, p->grad, st, st + n, p->count);
        else
            ro_adam_update(&u, p->data, p->grad, st, st + n,
                           t->per_element > 2 ? st + 2 * n : NULL, p->count,
                           o->kind == REGOPT_ADAMW);
    }
    if (o->kind == REGOPT_SGD && o->momentum > 0.0)
        t->momentum_ready = 1;
}
