/* update.c — the end of every step: the global gradient norm, clipping and
 * the base optimizer's fused update over every trainable tensor, guarded so
 * that it never writes a non-finite weight or moment (docs/methods.md
 * §2.7). */
#include "trainer/trainer.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* *a = max(*a, v), from any thread. */
static void atomic_max(atomic_uint *a, unsigned v)
{
    unsigned cur = atomic_load_explicit(a, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed))
        ;
}

static float float_of(unsigned bits)
{
    uint32_t b = (uint32_t)bits;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

typedef struct norm_job {
    atomic_uint weight_bits; /* ro_abs_max_bits of every trainable weight */
    const float *held;       /* the weights, if not in the host's buffers */
    int guard;               /* a built-in update follows: it needs that bound */
} norm_job;

/* One chunk of the gradient's sum of squares; the bound on the chunk's
 * weights for the update's guard rides along in this pass. A host's update
 * is not guarded by us, so it is spared the read of every weight. */
static double grad_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    norm_job *job = ctx;
    const float *w = job->held ? job->held + p->offset : p->data;
    if (job->guard)
        atomic_max(&job->weight_bits, ro_abs_max_bits(w + j0, j1 - j0));
    return ro_sum_squares(p->grad + j0, j1 - j0);
}

regopt_status ro_gradient_norm(regopt_trainer *t, const float *held, double *norm)
{
    const regopt_model *m = t->model;
    norm_job job;
    double s;
    unsigned wb;
    size_t i;
    if (m->has_backend)
        return ro_backend_gradient_norm(t, norm);
    atomic_init(&job.weight_bits, 0u);
    job.held = held;
    /* the bound is for the built-in update's guard, and for a regularizer
       that takes the weights after any update (step.c refuses a
       non-finite one it would take) */
    job.guard = t->opt->kind != REGOPT_HOST;
    for (i = 0; i < t->n_regs && !job.guard; i++)
        job.guard = (t->regs[i]->ops->flags & RO_REG_TAKES_WEIGHTS) != 0;
    s = ro_sum_pieces(&t->par, grad_squares, &job);
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
    wb = atomic_load_explicit(&job.weight_bits, memory_order_relaxed);
    t->weight_max = wb >= 0x7f800000u ? HUGE_VAL : (double)float_of(wb);
    /* every |g_i| is at most the exact norm, which the double sum of
       squares misses by less than n 2^-53 relative (n < 2^40 elements) */
    t->grad_max = *norm * (1.0 + 0x1p-10);
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
    const ro_fused *fused;
    const float *held; /* the weights to put back first (ro_step.held) */
} update_job;

/* The scalars of the update of a tensor in `group`: its lr and weight
 * decay, the Adam family's bias corrections. */
static void group_update(const update_job *job, int32_t group, ro_update *u)
{
    const regopt_optimizer *o = job->t->opt;
    const ro_group_cfg *g = &o->groups[group];
    double glr = job->lr * g->lr_scale;
    *u = job->u;
    u->lr = (float)glr;
    u->wd = (float)(g->weight_decay >= 0.0 ? g->weight_decay : o->weight_decay);
    if (o->kind != REGOPT_SGD)
        ro_adam_scalars(u, o, job->t->step + 1, glr);
}

/* The update of elements [j0, j1) of one tensor. */
static void update_block(const update_job *job, const ro_update *u, const ro_param *p,
                         size_t j0, size_t j1)
{
    const regopt_trainer *t = job->t;
    regopt_optimizer_kind kind = t->opt->kind;
    size_t n = t->model->n_trainable, c = j1 - j0;
    float *w = p->data + j0, *st = t->state + p->offset + j0;
    const float *gr = p->grad + j0;
    if (kind == REGOPT_SGD)
        ro_sgd_update(u, w, gr, st, c);
    else if (kind == REGOPT_RADAM)
        ro_radam_update(u, w, gr, st, st + n, c);
    else
        ro_adam_update(u, w, gr, st, st + n, t->per_element > 2 ? st + 2 * n : NULL, c,
                       kind == REGOPT_ADAMW);
}

/* The update of a piece, and the regularizers' elementwise work after it
 * block by block while the block's weights are in cache: one trip through
 * memory instead of one per method (issue 25). Blocks start at multiples
 * of RO_CHUNK within the tensor, as pieces do, so the kernels give the
 * identical bits to those over the whole piece, and the work after them is
 * elementwise. */
static void update_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const update_job *job = ctx;
    const ro_fused *f = job->fused;
    ro_update u;
    size_t a, b, k;
    group_update(job, p->group, &u);
    if (!job->held && f->n == 0) {
        update_block(job, &u, p, j0, j1);
        return;
    }
    for (a = j0; a < j1; a = b) {
        b = (a / RO_CHUNK + 1) * RO_CHUNK;
        b = b < j1 ? b : j1;
        if (job->held) /* w + eps out, w in: the update then reads it from cache */
            memcpy(p->data + a, job->held + p->offset + a, (b - a) * sizeof(float));
        update_block(job, &u, p, a, b);
        for (k = 0; k < f->n; k++)
            f->fn[k](f->ctx[k], p, a, b);
    }
}

/* ---- the guard ----------------------------------------------------------
 * The update writes in place and its rounding cannot be undone, so whether
 * it would write a non-finite value is settled before it writes anything:
 * a proof from bounds on |w|, |g| and the first moment (ro_*_safe, a few
 * double operations per group), else the update's exact arithmetic over
 * every element, writing nothing (ro_*_check; only after huge values). */

/* Every group holding a trainable tensor proved safe; *state bounds the
 * first moment (momentum buffer) after the update. */
static int proved_safe(const update_job *job, double *state)
{
    const regopt_trainer *t = job->t;
    const regopt_model *m = t->model;
    unsigned char seen[REGOPT_MAX_GROUPS];
    ro_bounds b;
    size_t i;
    memset(seen, 0, sizeof seen);
    b.w = t->weight_max;
    b.g = t->grad_max;
    b.state = t->state_bound;
    *state = 0.0;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        ro_update u;
        double s = 0.0;
        int ok;
        if (!p->grad || seen[p->group])
            continue;
        seen[p->group] = 1;
        group_update(job, p->group, &u);
        if (t->opt->kind == REGOPT_SGD)
            ok = ro_sgd_safe(&u, &b, &s);
        else if (t->opt->kind == REGOPT_RADAM)
            ok = ro_radam_safe(&u, &b, &s);
        else
            ok = ro_adam_safe(&u, &b, t->opt->kind == REGOPT_ADAMW, &s);
        if (!ok)
            return 0;
        *state = s > *state ? s : *state;
    }
    return 1;
}

/* The exact check of elements [j0, j1) of one tensor: the first with a
 * non-finite result (j1 - j0 if none), what, and max |first moment|. */
static size_t check_range(const update_job *job, const ro_param *p, size_t j0, size_t j1,
                          int *what, float *state_max)
{
    const regopt_trainer *t = job->t;
    regopt_optimizer_kind kind = t->opt->kind;
    size_t n = t->model->n_trainable, c = j1 - j0;
    const float *w = p->data + j0, *st = t->state + p->offset + j0, *gr = p->grad + j0;
    ro_update u;
    group_update(job, p->group, &u);
    if (kind == REGOPT_SGD)
        return ro_sgd_check(&u, w, gr, st, c, what, state_max);
    if (kind == REGOPT_RADAM)
        return ro_radam_check(&u, w, gr, st, st + n, c, what, state_max);
    return ro_adam_check(&u, w, gr, st, st + n, t->per_element > 2 ? st + 2 * n : NULL, c,
                         kind == REGOPT_ADAMW, what, state_max);
}

typedef struct check_job {
    const update_job *up;
    atomic_uint state_bits; /* max |first moment| after the update, as bits */
    atomic_uint bad;        /* some element would be non-finite */
} check_job;

static void check_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    check_job *cj = ctx;
    float smax;
    uint32_t bits;
    int what;
    if (check_range(cj->up, p, j0, j1, &what, &smax) < j1 - j0) {
        atomic_store_explicit(&cj->bad, 1u, memory_order_relaxed);
        return;
    }
    memcpy(&bits, &smax, sizeof bits);
    atomic_max(&cj->state_bits, bits);
}

static const char *nonfinite_what(regopt_optimizer_kind kind, int what)
{
    switch (what) {
    case RO_NF_FIRST:
        return kind == REGOPT_SGD ? "the momentum buffer" : "the first moment";
    case RO_NF_SECOND: return "the second moment";
    case RO_NF_SECOND_MAX: return "AMSGrad's maximum of the second moment";
    default: return "the weight";
    }
}

/* Every element checked exactly (on the trainer's threads); on failure the
 * first offender in registration order is named, on one thread. */
static regopt_status exact_check(regopt_trainer *t, const update_job *job, double *state)
{
    const regopt_model *m = t->model;
    check_job cj;
    size_t i;
    cj.up = job;
    atomic_init(&cj.state_bits, 0u);
    atomic_init(&cj.bad, 0u);
    ro_each_piece(&t->par, check_piece, &cj);
    if (!atomic_load_explicit(&cj.bad, memory_order_relaxed)) {
        float f = float_of(atomic_load_explicit(&cj.state_bits, memory_order_relaxed));
        /* SGD without momentum keeps its buffer as it is */
        *state = t->opt->kind == REGOPT_SGD && job->u.momentum == 0.0f ? t->state_bound : f;
        return REGOPT_OK;
    }
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        float smax;
        int what;
        size_t k;
        if (!p->grad || (k = check_range(job, p, 0, p->count, &what, &smax)) == p->count)
            continue;
        if (what == RO_NF_WEIGHT_BEFORE)
            return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                           "parameter \"%.64s\" holds a non-finite weight at element %zu "
                           "before the update; nothing was updated", p->name, k);
        return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                       "the update of parameter \"%.64s\" would make %s non-finite at element "
                       "%zu (gradient %g); nothing was updated", p->name,
                       nonfinite_what(t->opt->kind, what), k, (double)p->grad[k]);
    }
    return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT, "the update would write a non-finite "
                   "value; nothing was updated");
}

static void job_init(update_job *job, const regopt_trainer *t, double lr, double scale)
{
    const regopt_optimizer *o = t->opt;
    memset(job, 0, sizeof *job);
    job->t = t;
    job->lr = lr;
    job->u.grad_scale = (float)scale;
    job->u.momentum = (float)o->momentum;
    job->u.one_minus_dampening = (float)(1.0 - o->dampening);
    job->u.nesterov = o->nesterov;
    job->u.first = !t->momentum_ready;
}

regopt_status ro_apply_update(regopt_trainer *t, double lr, double scale, const ro_fused *f,
                              ro_step *s)
{
    const regopt_optimizer *o = t->opt;
    update_job job;
    double bound;
    if (t->model->has_backend) /* nothing of f: its methods are refused there */
        return ro_backend_update(t, lr, scale);
    job_init(&job, t, lr, scale);
    job.fused = f;
    job.held = s->held;
    if (!proved_safe(&job, &bound)) {
        regopt_status st;
        /* the exact check reads the weights where they are: put them back */
        ro_step_settle(t, s);
        job.held = NULL;
        st = exact_check(t, &job, &bound);
        if (st != REGOPT_OK)
            return st;
    }
    ro_each_piece(&t->par, update_piece, &job);
    if (o->kind == REGOPT_SGD && o->momentum > 0.0)
        t->momentum_ready = 1;
    t->state_bound = bound;
    return REGOPT_OK;
}

/* ---- through the model's backend (regopt_model_set_backend) -------------- */

/* The trainable tensor at position k of the backend's vectors. */
static const ro_param *trainable_at(const regopt_model *m, size_t k)
{
    size_t i;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].grad && k-- == 0)
            return &m->params[i];
    return NULL;
}

static regopt_status backend_reduce(regopt_trainer *t, int32_t code, int32_t vec,
                                    size_t tensor, double *out)
{
    regopt_vop op;
    regopt_status st;
    ro_vop_init(t->model, &op, code);
    op.x = vec;
    op.tensor = tensor;
    st = ro_vop_run(t->model, &op, t->msg);
    *out = op.out[0];
    return st;
}

/* As ro_gradient_norm: the sum of squares, the tensor named when it is not
 * finite (one more call per tensor, only then), and |w|'s bound for the
 * update's guard. */
regopt_status ro_backend_gradient_norm(regopt_trainer *t, double *norm)
{
    const regopt_model *m = t->model;
    double s, wmax = 0.0;
    size_t k = 0;
    regopt_status st = backend_reduce(t, REGOPT_VOP_SUM_SQUARES, REGOPT_VEC_GRADS, SIZE_MAX, &s);
    if (st != REGOPT_OK)
        return st;
    if (!isfinite(s)) {
        const ro_param *p;
        double sk = 0.0;
        for (p = trainable_at(m, 0); p; p = trainable_at(m, ++k)) {
            st = backend_reduce(t, REGOPT_VOP_SUM_SQUARES, REGOPT_VEC_GRADS, k, &sk);
            if (st != REGOPT_OK || !isfinite(sk))
                break;
        }
        if (st != REGOPT_OK)
            return st;
        return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                       "the gradient of parameter \"%.64s\" is not finite", p ? p->name : "?");
    }
    st = backend_reduce(t, REGOPT_VOP_ABS_MAX, REGOPT_VEC_WEIGHTS, SIZE_MAX, &wmax);
    if (st != REGOPT_OK)
        return st;
    *norm = sqrt(s);
    /* no finite float exceeds 2^128: above it (or NaN) a weight is not finite */
    t->weight_max = wmax >= 0x1p128 || wmax != wmax ? HUGE_VAL : (double)(float)wmax;
    t->grad_max = *norm * (1.0 + 0x1p-10);
    return REGOPT_OK;
}

/* REGOPT_VOP_UPDATE's operation: the scalars of every tensor's group. */
static void backend_update_op(regopt_trainer *t, const update_job *job, regopt_vop *op,
                              int32_t code)
{
    const regopt_model *m = t->model;
    const ro_param *p;
    ro_update u = job->u;
    size_t k = 0;
    ro_vop_init(m, op, code);
    op->variant = (int32_t)t->opt->kind;
    op->x = REGOPT_VEC_WEIGHTS;
    op->y = REGOPT_VEC_GRADS;
    op->z = t->state_vec[0];
    op->u = t->state_vec[1];
    op->v = t->state_vec[2];
    for (p = trainable_at(m, 0); p; p = trainable_at(m, ++k)) {
        group_update(job, p->group, &u);
        t->vop_tensor[3 * k] = u.lr;
        t->vop_tensor[3 * k + 1] = u.wd;
        t->vop_tensor[3 * k + 2] = u.step_size;
    }
    op->per_tensor = t->vop_tensor;
    op->s[REGOPT_VOP_S_GRAD_SCALE] = u.grad_scale;
    op->s[REGOPT_VOP_S_MOMENTUM] = u.momentum;
    op->s[REGOPT_VOP_S_ONE_MINUS_DAMPENING] = u.one_minus_dampening;
    op->s[REGOPT_VOP_S_NESTEROV] = u.nesterov;
    op->s[REGOPT_VOP_S_FIRST] = u.first;
    op->s[REGOPT_VOP_S_BETA1] = u.beta1;
    op->s[REGOPT_VOP_S_BETA2] = u.beta2;
    op->s[REGOPT_VOP_S_EPS] = u.eps;
    op->s[REGOPT_VOP_S_ONE_MINUS_BETA1] = u.one_minus_beta1;
    op->s[REGOPT_VOP_S_ONE_MINUS_BETA2] = u.one_minus_beta2;
    op->s[REGOPT_VOP_S_BC2_SQRT] = u.bc2_sqrt;
    op->s[REGOPT_VOP_S_AMSGRAD] = u.amsgrad;
    op->s[REGOPT_VOP_S_RECTIFIED] = u.rectified;
}

/* As ro_apply_update: the proof, else the backend's exact check, and only
 * then the update. */
regopt_status ro_backend_update(regopt_trainer *t, double lr, double scale)
{
    const regopt_optimizer *o = t->opt;
    update_job job;
    regopt_vop op;
    double bound;
    regopt_status st;
    job_init(&job, t, lr, scale);
    if (!proved_safe(&job, &bound)) {
        const ro_param *p;
        backend_update_op(t, &job, &op, REGOPT_VOP_UPDATE_CHECK);
        op.out[0] = -1.0;
        st = ro_vop_run(t->model, &op, t->msg);
        if (st != REGOPT_OK)
            return st;
        if (op.out[0] >= 0.0 && (p = trainable_at(t->model, (size_t)op.out[0])) != NULL) {
            if ((int)op.out[2] == RO_NF_WEIGHT_BEFORE)
                return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                               "parameter \"%.64s\" holds a non-finite weight at element %.0f "
                               "before the update; nothing was updated", p->name, op.out[1]);
            return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                           "the update of parameter \"%.64s\" would make %s non-finite at "
                           "element %.0f; nothing was updated", p->name,
                           nonfinite_what(o->kind, (int)op.out[2]), op.out[1]);
        }
        if (op.out[0] >= 0.0)
            return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT, "the update would write a "
                           "non-finite value; nothing was updated");
        bound = o->kind == REGOPT_SGD && job.u.momentum == 0.0f ? t->state_bound : op.out[3];
    }
    backend_update_op(t, &job, &op, REGOPT_VOP_UPDATE);
    st = ro_vop_run(t->model, &op, t->msg);
    if (st != REGOPT_OK)
        return st;
    if (o->kind == REGOPT_SGD && o->momentum > 0.0)
        t->momentum_ready = 1;
    t->state_bound = bound;
    return REGOPT_OK;
}
