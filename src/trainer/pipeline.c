/* pipeline.c — one gradient evaluation of the step's objective: for every
 * view (a micro-batch, or a chunk of one), the task forwards (one copy, or
 * two when a regularizer's plan asks for them), the passes regularizers add, the task loss and every
 * loss-side term in their fixed order, then the backwards. Loops over the
 * attached regularizers through their ops; names no method. */
#include "trainer/pipeline.h"

#include <math.h>
#include <string.h>

/* Rows of the step before micro-batch bi, kept as a cursor: views arrive in
 * micro-batch order, so this is O(1) per view. */
static size_t rows_before(ro_step *s, size_t bi)
{
    if (bi < s->row_bi) {
        s->row_bi = 0;
        s->row_at = 0;
    }
    while (s->row_bi < bi)
        s->row_at += ro_batch_at(s->batches, s->row_bi++)->rows;
    return s->row_at;
}

/* The task forwards: copy 0 in slot 0 and, when the plan has two copies, copy 1 either in
 * one pass over 2n rows (DOUBLED) or in its own slot. Outputs land as
 * [z1 (n rows) | z2 (n rows)]. */
static regopt_status copies_forward(ro_view *v)
{
    ro_step *s = v->s;
    regopt_pass *p1 = &v->pass[0], *p2 = &v->pass[1];
    regopt_status st;
    uint64_t s2;
    ro_pass_init(s->env, p1, &v->rows, v->bi, v->flags, v->seed, v->z);
    p1->row_offset = v->r0;
    p1->task_scale = ro_task_scale(&v->rows, s->inv_weight, s->plan.task_scale);
    p1->input_perturbation = v->task_perturbation;
    if (s->plan.copies < 2)
        return ro_call_forward(s->env, p1);
    s2 = ro_step_seed(s, v->bi, v->role | RO_SEED_SECOND | (v->chunk << 8));
    if (s->plan.doubled) {
        p1->rows = 2 * v->n;
        p1->flags |= REGOPT_PASS_DOUBLED;
        p1->task_scale *= 2.0; /* both copies' task losses, one mean over 2n rows */
        p1->seed2 = s2;
        return ro_call_forward(s->env, p1);
    }
    *p2 = *p1;
    p2->input_perturbation = NULL; /* copy 1 stays clean */
    p2->slot = s->plan.copy_slot;
    p2->seed = s2;
    p2->outputs = v->z + v->n * v->k;
    st = ro_call_forward(s->env, p1);
    return st == REGOPT_OK ? ro_call_forward(s->env, p2) : st;
}

static regopt_status copies_backward(ro_view *v)
{
    ro_step *s = v->s;
    regopt_pass *p1 = &v->pass[0], *p2 = &v->pass[1];
    regopt_status st;
    p1->d_outputs = v->dz;
    if (s->plan.copies < 2 || (p1->flags & REGOPT_PASS_DOUBLED))
        return ro_call_backward(s->env, p1);
    p2->d_outputs = v->dz + v->n * v->k;
    st = ro_call_backward(s->env, p1);
    return st == REGOPT_OK ? ro_call_backward(s->env, p2) : st;
}

/* Task loss of every copy, then each due term in order; the objective is
 * summed in exactly that order: w_ce (l1 + l2), then each regularizer's
 * term in step order (ro_reg_ops.order; docs/methods.md §1.6). Gradients w.r.t. the outputs land in v->dz. */
static regopt_status view_objective(ro_view *v, double *objective)
{
    ro_step *s = v->s;
    size_t nk = v->n * v->k, i;
    int two = s->plan.copies == 2;
    double l1 = 0.0, l2 = 0.0, obj;
    regopt_status st = ro_batch_loss(s->env, &v->rows, v->z, s->inv_weight, s->plan.task_scale,
                                     v->dz, &l1);
    if (st == REGOPT_OK && two)
        st = ro_batch_loss(s->env, &v->rows, v->z + nk, s->inv_weight, s->plan.task_scale,
                           v->dz + nk, &l2);
    if (st != REGOPT_OK)
        return st;
    v->task[0] = l1;
    v->task[1] = l2;
    obj = s->plan.task_scale * (two ? l1 + l2 : l1);
    for (i = 0; i < s->n_regs && st == REGOPT_OK; i++) {
        ro_reg *r = s->regs[i];
        double w = 0.0;
        if (r->due && r->ops->term) {
            st = r->ops->term(r, v, &w);
            obj += w;
        }
    }
    if (st != REGOPT_OK)
        return st;
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS)) /* the objective's terms at w */
        s->acc[0] += two ? 0.5 * (l1 + l2) : l1;
    *objective = obj;
    return REGOPT_OK;
}

enum { HOOK_BEGIN, HOOK_FORWARD, HOOK_BACKWARD };

/* Run one hook of every due regularizer over the view. */
static regopt_status each_view_hook(ro_view *v, int which)
{
    ro_step *s = v->s;
    regopt_status st = REGOPT_OK;
    size_t i;
    for (i = 0; i < s->n_regs && st == REGOPT_OK; i++) {
        ro_reg *r = s->regs[i];
        regopt_status (*hook)(ro_reg *, ro_view *) =
            which == HOOK_BACKWARD ? r->ops->backward
            : which == HOOK_FORWARD ? r->ops->forward : r->ops->begin;
        if (r->due && hook)
            st = hook(r, v);
    }
    return st;
}

regopt_status ro_eval_rows(ro_step *s, size_t bi, size_t r0, size_t rows, uint32_t chunk,
                           uint32_t flags, uint32_t role, double *loss)
{
    const regopt_batch *b = ro_batch_at(s->batches, bi);
    ro_view v;
    double obj = 0.0;
    regopt_status st;
    v.s = s;
    v.bi = bi;
    v.r0 = r0;
    v.n = rows;
    v.k = s->env->model->output_width;
    v.step_row = rows_before(s, bi) + r0;
    v.flags = flags;
    v.role = role;
    v.chunk = chunk;
    v.seed = ro_step_seed(s, bi, role | (chunk << 8));
    v.z = s->outputs;
    v.dz = s->d_outputs;
    v.task_perturbation = NULL;
    v.extra = 0.0;
    ro_batch_rows(&v.rows, b, r0, rows, v.k);
    st = each_view_hook(&v, HOOK_BEGIN);
    if (st == REGOPT_OK)
        st = copies_forward(&v);
    if (st == REGOPT_OK)
        st = each_view_hook(&v, HOOK_FORWARD);
    if (st == REGOPT_OK)
        st = view_objective(&v, &obj);
    if (st == REGOPT_OK && !isfinite(obj))
        st = ro_fail(s->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                     "the loss of micro-batch %zu is %g", bi, obj);
    if (st != REGOPT_OK)
        return st;
    st = copies_backward(&v);
    if (st == REGOPT_OK)
        st = each_view_hook(&v, HOOK_BACKWARD);
    if (st == REGOPT_OK && !isfinite(v.extra)) /* the hooks check their own; belt and braces */
        st = ro_fail(s->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                     "the loss of micro-batch %zu after its backward passes is %g", bi, v.extra);
    if (st == REGOPT_OK)
        *loss += obj + v.extra;
    return st;
}

static void zero_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    ro_zero(p->grad + j0, j1 - j0);
    ro_param_zero_host_grad(p, j0, j1);
}

regopt_status ro_zero_gradients(ro_step *s)
{
    const regopt_model *m = s->env->model;
    if (m->has_backend) {
        regopt_vop op;
        ro_vop_init(m, &op, REGOPT_VOP_ZERO);
        op.x = REGOPT_VEC_GRADS;
        return ro_vop_run(m, &op, s->env->msg);
    }
    ro_each_piece(s->env->par, zero_piece, NULL);
    return REGOPT_OK;
}

regopt_status ro_eval_all(ro_step *s, uint32_t flags, uint32_t role, double *loss)
{
    regopt_status st = REGOPT_OK;
    size_t bi;
    if (!s->grads_zero)
        st = ro_zero_gradients(s);
    s->grads_zero = 0;
    for (bi = 0; bi < s->count && st == REGOPT_OK; bi++) {
        const regopt_batch *b = ro_batch_at(s->batches, bi);
        st = ro_eval_rows(s, bi, 0, b->rows, 0, flags, role, loss);
    }
    return st;
}
